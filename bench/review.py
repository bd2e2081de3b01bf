"""`python -m bench.review`: what forty expert labels chosen by the review queue buy, against forty
chosen at random, and how well out-of-scope documents are flagged -> data/bench/review.json.

The loop is simulated on a real corpus (texlive_dev) with its held-out truth standing in for the
expert. Every arm is the same recipe, only its seeds differ:
- teacher: the committee of the TF-IDF and encoder members (`committee.build`, weights on
  out-of-fold seed predictions), fitted on the arm's seeds, labels every manual that is no seed.
  The LLM member is left out: on texlive_dev the pipeline gives it weight 0, and a fit costs ~18
  CPU minutes, seven times over;
- student: the `static` kind trained on those labels, as the pipeline's student is, but honestly held
  out: one student learns the labels of half the manuals (by hash) and is scored on the other half.
Arms: `start` (the corpus's seeds), `queue` (+ the 40 the queue picks from start's labels,
`review.queue` as `distillery review` runs it), `random` (+ 40 drawn at random, DRAWS times).
All are scored on the held-out manuals that no arm added to its seeds, so every comparison is
paired; `gain_ci95`: queue minus the mean of the random draws, per manual, 95% bootstrap interval.

Out of scope: the scope fitted as labeling fits it (the seeds and every labeled manual); the
share flagged of the held-out manuals (each compared with the others, leave-one-out), of 300 new
demo case reports, and of the readable files of the hostile PDF corpus (outside the label set).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import common, worth
from bench.robustness import DEFAULT_HOSTILE
from distillery import committee, members, pdf, review, scope
from distillery.evaluate import paired_difference, seed_items

SPEC = "data/texlive/texlive_dev.yaml"
QUEUE, DRAWS = 40, 5
TEACHER_MEMBERS = ["tfidf", "encoder"]


def half(item: dict) -> int:
    return int(item["sha256"][:8], 16) % 2


def arm(spec, seeds: list[dict], pool: list[dict], encoder) -> dict:
    """Teacher fitted on `seeds`, its labels of `pool`, and two static students: student k learns the
    labels of the pool's half k and is scored on the other half, so none is scored on a manual whose
    (teacher's) label it learned."""
    teacher, _ = committee.build(spec, seeds, TEACHER_MEMBERS, encoder=encoder)
    probs = teacher.probabilities([it["text"] for it in pool])
    labels = np.array(spec.output.labels)
    taught = [{"sha256": it["sha256"], "text": it["text"], "answer": str(labels[i])} for it, i in
              zip(pool, probs.argmax(axis=1))]
    students = [members.make_member("static", spec, encoder=encoder).fit([it for it in taught if half(it) == k])
                for k in (0, 1)]
    return {"teacher": teacher, "probs": probs, "students": students}


def correct(model, items: list[dict], labels: list[str]) -> np.ndarray:
    guess = np.array(labels)[model.probabilities([it["text"] for it in items]).argmax(axis=1)] if items else []
    return np.asarray(guess == np.array([it["answer"] for it in items]), dtype=bool)


def student_correct(students: list, items: list[dict], labels: list[str]) -> np.ndarray:
    """Each item scored by the student that learned the other half's labels."""
    out = np.zeros(len(items), dtype=bool)
    for k in (0, 1):
        rows = [i for i, it in enumerate(items) if half(it) != k]
        out[rows] = correct(students[k], [items[i] for i in rows], labels)
    return out


def hostile_texts(spec, corpus: Path = DEFAULT_HOSTILE) -> list[str]:
    """The text of every file of the hostile corpus that ingestion reads (verdict ok), as the task reads it."""
    rows = list(csv.DictReader(open(corpus / "manifest.csv", newline="")))
    paths = [str(corpus / "files" / r["file"]) for r in rows]
    ing = spec.ingest
    results = pdf.extract_many(paths, workers=ing.workers, timeout_s=ing.timeout_s, max_bytes=int(ing.max_file_mb * 2**20),
                               min_chars=ing.min_chars, read=ing.read)
    return [r.text for r in results if r.verdict == "ok"]


def out_of_scope(spec, fitted: scope.Scope, heldout: list[dict]) -> dict:
    _, inside = fitted.score([it["text"] for it in heldout], [it["sha256"] for it in heldout])
    sets = {"demo_case_reports": [it["text"] for it in common.fresh_items(300)], "hostile_readable": hostile_texts(spec)}
    flagged = {name: fitted.score(texts)[1] for name, texts in sets.items()}
    pooled = np.concatenate(list(flagged.values()))
    return {"flagged_out_of_set": float(pooled.mean()), "flagged_in_scope": float(inside.mean()),
            "n_out_of_set": int(pooled.size), "n_in_scope": int(inside.size),
            "by_set": {name: {"n": int(f.size), "flagged": float(f.mean())} for name, f in flagged.items()},
            "targets": {"out_of_set>=0.90": bool(pooled.mean() >= 0.9), "in_scope<=0.10": bool(inside.mean() <= 0.1)},
            **fitted.summary()}


def simulate(spec_path: str = SPEC, profile: str = "demo", heldout_csv: str = worth.HELDOUT) -> dict:
    from distillery.spec import load_spec

    started = time.perf_counter()
    spec = load_spec(spec_path, profile=profile)
    outputs = {s: common.stage_outputs(spec, s) for s in ("ingest", "seed")}
    labels = list(spec.output.labels)
    seeds = seed_items(spec, outputs["seed"]["seed_labels"], outputs["ingest"]["documents"], ("train", "validation", "heldout"))
    heldout, missing = worth.heldout_items(heldout_csv, outputs["ingest"])
    seeded = {it["sha256"] for it in seeds}
    heldout = sorted([it for it in heldout if it["sha256"] not in seeded], key=lambda it: it["sha256"])
    encoder = members.spec_encoder(spec)
    fitted = scope.fit(spec, [it["text"] for it in seeds + heldout], [it["sha256"] for it in seeds + heldout])
    start = arm(spec, seeds, heldout, encoder)

    typical, flags = fitted.score([it["text"] for it in heldout], [it["sha256"] for it in heldout])
    candidates = pd.DataFrame({"sha256": [it["sha256"] for it in heldout], "text": [it["text"] for it in heldout],
                               "probs": [json.dumps(p) for p in start["probs"].tolist()], "in_scope": typical,
                               "out_of_scope": flags})  # as the labeling stage writes them
    chosen = review.queue(spec, candidates, start["teacher"], fitted, QUEUE)
    picks = {"queue": set(chosen["sha256"])}
    rng = np.random.default_rng(0)
    for d in range(DRAWS):
        picks[f"random-{d}"] = {heldout[i]["sha256"] for i in rng.choice(len(heldout), QUEUE, replace=False)}
    added = set().union(*picks.values())
    scored = [it for it in heldout if it["sha256"] not in added]
    by_sha = {it["sha256"]: it for it in heldout}

    def figures(fit: dict) -> dict:
        return {"teacher": correct(fit["teacher"], scored, labels), "student": student_correct(fit["students"], scored, labels)}

    right = {"start": figures(start)}
    for name, shas in picks.items():
        right[name] = figures(arm(spec, seeds + [by_sha[s] for s in sorted(shas)], heldout, encoder))
        print(name, {k: round(float(v.mean()), 3) for k, v in right[name].items()}, flush=True)
    draws = [right[f"random-{d}"] for d in range(DRAWS)]
    mean_random = {m: np.mean([d[m] for d in draws], axis=0) for m in ("teacher", "student")}

    def top1(r: dict) -> dict:
        return {"teacher_top1": float(np.mean(r["teacher"])), "student_top1": float(np.mean(r["student"]))}

    chosen_truth = [by_sha[s]["answer"] for s in chosen["sha256"]]
    return {
        "task": spec.name, "seeds": len(seeds), "queue_size": QUEUE, "draws": DRAWS, "scored": len(scored),
        "missing": missing["n"], "teacher_members": TEACHER_MEMBERS, "student_kind": "static",
        "start": top1(right["start"]), "queue": top1(right["queue"]),
        "random": {**{f"{m}_top1": float(np.mean(v)) for m, v in mean_random.items()}, "draws": [top1(d) for d in draws]},
        "gain_ci95": {m: paired_difference(right["queue"][m], mean_random[m]) for m in ("teacher", "student")},
        "queue_minus_start": {m: paired_difference(right["queue"][m], right["start"][m]) for m in ("teacher", "student")},
        "queue_labels": {k: int(v) for k, v in pd.Series(chosen_truth).value_counts().sort_index().items()},
        "queue_teacher_top1": float(np.mean([labels[int(np.argmax(json.loads(p)))] == t
                                             for p, t in zip(chosen["probs"], chosen_truth)])),
        "out_of_scope": out_of_scope(spec, fitted, heldout),
        "seconds": time.perf_counter() - started, **common.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, spec=False)
    ap.add_argument("--spec", default=SPEC)
    ap.add_argument("--heldout", default=worth.HELDOUT)
    args = ap.parse_args(argv)
    common.write("review", simulate(args.spec, args.profile, args.heldout), args.out, args.profile)


if __name__ == "__main__":
    main()
