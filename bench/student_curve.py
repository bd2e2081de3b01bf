"""`python -m bench.student_curve`: the student kinds on a real corpus, honestly held out: how each
kind's top-1 grows with the number of teacher labels, how it should learn from the teacher's
probabilities, and how fast it reads fresh text -> data/bench/student_<corpus>.json.

The pipeline's student learns from the teacher's labels of every document, the held-out manuals
included, so its figure on them measures how well it copies the teacher. Here the held-out
documents are split in two halves by content hash: a student learns from the teacher's labels of
one half (the latest labeling stage's, `make run SPEC=...`) and is scored on the truth of the other
half, which it never saw a label for, then the halves swap (every document is scored once). The
teacher's own labels of the scored half are the reference, and the TF-IDF baseline fitted on the
seed train split sits beside them.

- curve: hard labels (the teacher's first answer), n labels per half, a stable subset, then all of
  the half (`halves` gives their sizes);
- targets, at every label: `hard`; `weighted` (each label weighted by the teacher's confidence);
  `filtered` (confidence >= 0.5 only); `soft` (a row per label the teacher gave >= 0.05, weighted
  by its probability): the teacher's probabilities used three ways;
- speed: docs/s on fresh text, no embedding cache (`student.fresh_speed`).
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from bench import common, worth
from distillery import baseline, lake, members
from distillery.evaluate import paired_difference, seed_items

KINDS = ("static", "encoder")
SIZES = (50, 100, 200, 400)
TARGETS = ("hard", "weighted", "filtered", "soft")
SOFT_FLOOR, FILTER = 0.05, 0.5


def training_rows(items: list[dict], target: str, labels: list[str]) -> list[dict]:
    """The teacher's labels of `items` as training rows, used the `target` way."""
    if target == "hard":
        return [{**it, "answer": it["teacher"]} for it in items]
    if target == "weighted":
        return [{**it, "answer": it["teacher"], "weight": it["confidence"]} for it in items]
    if target == "filtered":
        return [{**it, "answer": it["teacher"]} for it in items if it["confidence"] >= FILTER]
    return [{**it, "answer": label, "weight": p} for it in items
            for label, p in zip(labels, it["probs"]) if p >= SOFT_FLOOR]


def curve(spec_path: str, profile: str = "demo", heldout: str = worth.HELDOUT, speed_docs: int = 200) -> dict:
    from distillery.spec import load_spec
    from distillery.student import fresh_speed

    started = time.perf_counter()
    spec = load_spec(spec_path, profile=profile)
    outputs = {s: common.stage_outputs(spec, s) for s in ("ingest", "seed", "label")}
    labels = list(spec.output.labels)
    machine = lake.read_table(outputs["label"]["machine_labels"]).to_pandas().set_index("sha256")
    items, missing = worth.heldout_items(heldout, outputs["ingest"])
    items = [{**it, "truth": it["answer"], "teacher": json.loads(machine.loc[it["sha256"], "answer"])[0],
              "confidence": float(machine.loc[it["sha256"], "confidence"]),
              "probs": json.loads(machine.loc[it["sha256"], "probs"])} for it in items if it["sha256"] in machine.index]
    half = [int(hashlib.sha256(it["sha256"].encode()).hexdigest(), 16) % 2 for it in items]
    halves = [[it for it, h in zip(items, half) if h == k] for k in (0, 1)]
    scored = halves[1] + halves[0]  # the order every arm's per-document results come in
    truth = np.array([it["truth"] for it in scored])

    def score(make, target: str = "hard", n: int | None = None) -> np.ndarray:
        right = []
        for train, test in ((halves[0], halves[1]), (halves[1], halves[0])):
            train = sorted(train, key=lambda it: it["sha256"])[:n] if n else train
            model = make().fit(training_rows(train, target, labels))
            right.append(np.array(labels)[model.probabilities([it["text"] for it in test]).argmax(axis=1)])
        return np.concatenate(right) == truth

    def summary(right: np.ndarray, reference: np.ndarray | None = None) -> dict:
        out = {"top1": float(right.mean()), "n": int(right.size)}
        if reference is not None:
            out["minus_teacher"] = paired_difference(right, reference)
        return out

    teacher = np.array([it["teacher"] for it in scored]) == truth
    train_seeds = seed_items(spec, outputs["seed"]["seed_labels"], outputs["ingest"]["documents"], "train")
    base = baseline.fit(spec, train_seeds).probabilities([it["text"] for it in scored])
    result = {"docs": len(scored), "missing": missing["n"], "halves": [len(h) for h in halves], "teacher": summary(teacher),
              "baseline": summary(np.array(labels)[base.argmax(axis=1)] == truth, teacher), "kinds": {}}
    encoder = members.spec_encoder(spec)
    for kind in KINDS:
        make = lambda kind=kind: members.make_member(kind, spec, encoder=encoder)  # noqa: E731
        arm = {"curve": {str(n): summary(score(make, n=n), teacher)["top1"] for n in SIZES if n < len(halves[0])}}
        right = {t: score(make, t) for t in TARGETS}
        arm["targets"] = {t: {**summary(r, teacher), **({"minus_hard": paired_difference(r, right["hard"])}
                                                        if t != "hard" else {})} for t, r in right.items()}
        arm["curve"]["all"] = arm["targets"]["hard"]["top1"]
        fitted = make().fit(training_rows(halves[0], "hard", labels))
        arm["docs_per_s"] = fresh_speed(spec, fitted, [it["text"] for it in halves[1][:speed_docs]])
        arm["ratio_to_teacher"] = arm["targets"]["hard"]["top1"] / result["teacher"]["top1"]
        result["kinds"][kind] = arm
        print(kind, json.dumps(arm)[:400], flush=True)
    return {**result, "task": spec.name, "spec": spec_path, "gate": spec.student.gate,
            "seconds": time.perf_counter() - started, **common.machine(torch_threads=True)}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--heldout", default=worth.HELDOUT)
    ap.add_argument("--name", default="texlive_dev")
    args = ap.parse_args(argv)
    common.write(f"student_{args.name}", curve(args.spec, args.profile, args.heldout), args.out, args.profile)


if __name__ == "__main__":
    main()
