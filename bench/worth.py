"""`python -m bench.worth`: is the pipeline worth it? The TF-IDF baseline fitted on the seeds the
teacher learned from, the base model, the teacher's members (LLM, encoder), the committee and the
student the pipeline trained, all scored on the same documents of each corpus, with paired 95%
intervals and the targets -> data/bench/worth.json.

- demo: 300 new case reports from the demo generator (numbered past any demo corpus: no model saw them);
- texlive_dev: the 839 held-out manuals named in the corpus's heldout.csv (`document,answer`), their
  text as the task's own ingest extracted it; a named document ingest does not hold (quarantined, or
  not in the source) is counted and listed under `missing`, never silently dropped. The task's
  student learned from the teacher's labels of these documents (the labeling stage labels the whole
  corpus), never from their truth.

The benchmark never trains: the teacher and student are the latest the pipeline made for the task
(`make demo`; `make run SPEC=data/texlive/texlive_dev.yaml`). Each arm is scored as its stage uses it:
base and teacher as the labeling stage makes them answer, the student as bulk labeling does, the
baseline on exactly the seed stage's train split. Each corpus is written into worth.json beside the
corpora already there, so one can be rerun alone.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench import common
from distillery import lake
from distillery.errors import DistilleryError

HELDOUT = "../shared/corpora/texlive_dev/heldout.csv"
CORPORA = {  # margin: how far above the baseline's top-1 the committee must be; floor: its least top-1
    "demo": {"spec": "data/demo/clinical.yaml", "docs": 300, "margin": 0.0, "run": "make demo"},
    "texlive_dev": {"spec": "data/texlive/texlive_dev.yaml", "margin": 0.12, "floor": 0.76,
                    "run": "make run SPEC=data/texlive/texlive_dev.yaml"},
}
STUDENT_SHARE = 0.95  # the student keeps at least this share of the teacher's top-1
GAINS = {"committee_minus_baseline": ("committee", "baseline"), "student_minus_baseline": ("student", "baseline"),
         "student_minus_committee": ("student", "committee"), "committee_minus_base": ("committee", "base")}
ARMS = ("baseline", "base", "llm", "encoder", "committee", "student")


def worth(corpus: str, layout: lake.Layout, *, profile: str = "demo", limit: int | None = None,
          heldout: str | Path = HELDOUT, spec_path: str | Path | None = None) -> dict:
    """One corpus: every arm on the same documents, the paired gains and the targets. `spec_path`:
    another task on that corpus (e.g. one `distillery init` wrote) instead of the one in CORPORA."""
    from distillery.evaluate import seed_items
    from distillery.spec import load_spec

    started = time.perf_counter()
    cfg = CORPORA[corpus]
    spec_path = str(spec_path or cfg["spec"])
    spec = load_spec(spec_path, profile=profile)
    outputs = {stage: common.stage_outputs(spec, stage, layout, cfg["run"])
               for stage in ("ingest", "seed", "teacher", "student")}
    split = {s: seed_items(spec, outputs["seed"]["seed_labels"], outputs["ingest"]["documents"], s)
             for s in ("train", "validation", "heldout")}
    if corpus == "demo":
        items, missing = common.fresh_items(limit or cfg["docs"]), {"n": 0, "documents": [], "reasons": {}}
    else:
        items, missing = heldout_items(heldout, outputs["ingest"], limit)
    models = {"base": str(spec.path(spec.models.base)), "teacher": outputs["teacher"]["model"],
              "student": outputs["student"]["model"]}
    scored = score_arms(spec, items, split["train"], models, seeds=[it for rows in split.values() for it in rows])
    return {"docs": len(items), **scored, "targets": targets(scored, cfg["margin"], cfg.get("floor")),
            "missing": missing,
            "task": spec.name, "spec": spec_path, "seconds": time.perf_counter() - started,
            **common.machine(torch_threads=True)}


def heldout_items(path: str | Path, ingest: dict[str, str], limit: int | None = None) -> tuple[list[dict], dict]:
    """The documents a `document,answer` file names (document: the file name), their text from the
    task's ingest; and those ingest does not hold, with why (its quarantine reason, when it has one)."""
    path = Path(path)
    if not path.is_file():
        raise DistilleryError(f"bench worth: no held-out labels at {path}: pass --heldout with the corpus's "
                              "heldout.csv (columns document,answer)")
    with open(path, newline="") as f:
        named = list(csv.DictReader(f))[:limit]
    docs = lake.read_table(ingest["documents"]).to_pandas()
    texts = {name: (sha, text) for name, sha, text in zip(docs["name"], docs["sha256"], docs["text"])}
    quarantine = lake.read_table(ingest["quarantine"]).to_pandas()
    why = {Path(p).name: reason for p, reason in zip(quarantine["path"], quarantine["reason"])}
    items = [{"sha256": texts[r["document"]][0], "document": r["document"], "text": texts[r["document"]][1],
              "answer": r["answer"]} for r in named if r["document"] in texts]
    lost = [r["document"] for r in named if r["document"] not in texts]
    reasons = Counter(why.get(name, "not in the ingested source") for name in lost)
    return items, {"n": len(lost), "documents": lost, "reasons": dict(reasons)}


def score_arms(spec, items: list[dict], train: list[dict], models: dict[str, str], *,
               seeds: list[dict] | None = None) -> dict:
    """Every arm scored on `items`: top-1, mean reward, n and docs/s per arm, and the paired 95%
    intervals of the gains in top-1 and in reward.

    The teacher is a committee (the pipeline's teacher for classification): each of its members is an
    arm (`llm`, `encoder`, and `baseline`, its TF-IDF member), fitted on what the committee fitted them
    on (every seed, `seeds`; the LLM on the train split), and `committee` combines the rows its members
    gave here, at its weights. A teacher that is an LLM alone (an older run) is the arm `committee`,
    with the baseline fitted on `train`, the seeds it learned from. Base and the student answer as
    the labeling stage and bulk make them answer."""
    from distillery import baseline, committee
    from distillery.answer import ranked_answers, score_answers
    from distillery.evaluate import grade_items, paired_difference, summarize
    from distillery.inference import TransformersBackend
    from distillery.members import load_labeler

    why = baseline.skipped(spec, train)
    if why:
        raise DistilleryError(f"bench worth compares the models with the TF-IDF baseline, which cannot run here: {why}")
    result, rows, probs, seconds = {}, {}, {}, {}
    texts = [it["text"] for it in items]

    def arm(name: str, model, label: str, **extra) -> None:
        started = time.perf_counter()
        probs[name] = np.asarray(score_answers(spec, model, texts, student=name == "student")[1])
        seconds[name] = time.perf_counter() - started
        record(name, label, **extra)

    def record(name: str, label: str, **extra) -> None:
        rows[name] = grade_items(spec, items, ranked_answers(spec, probs[name]))
        summary = summarize(rows[name])
        result[name] = {"top1": summary["top1"], "mean_reward": summary["mean_reward"], "n": summary["n"],
                        "docs_per_s": summary["n"] / seconds[name] if seconds[name] else None, "model": label, **extra}

    teacher = load_labeler(models["teacher"], batch_size=spec.label.batch_size, backend="transformers")
    board = teacher if isinstance(teacher, committee.Committee) else None
    fitted = board.members if board else {"llm": teacher}
    if "tfidf" in fitted:
        arm("baseline", fitted["tfidf"], "tfidf+logreg (the committee's member)", trained_on=len(seeds or []))
    else:
        learned_from = seeds if board and seeds else train  # the seeds the teacher learned from
        arm("baseline", baseline.fit(spec, learned_from), "tfidf+logreg", trained_on=len(learned_from))
    arm("base", TransformersBackend(models["base"], batch_size=spec.label.batch_size), models["base"])
    for name, member in fitted.items():
        if name != "tfidf":
            arm(name, member, f"{models['teacher']}:{name}",
                **({"weight": board.weights[name]} if board else {}))
    if board:
        started = time.perf_counter()
        arm_of = {m: "baseline" if m == "tfidf" else m for m in board.weights}  # the TF-IDF member is the baseline
        probs["committee"] = committee.combine({m: probs[a] for m, a in arm_of.items()}, board.weights,
                                               board.temperatures)
        seconds["committee"] = time.perf_counter() - started + sum(
            seconds[arm_of[m]] for m, w in board.weights.items() if w > 0)
        record("committee", models["teacher"], weights=board.weights)
    else:
        probs["committee"], seconds["committee"] = probs["llm"], seconds["llm"]
        record("committee", models["teacher"])
    arm("student", load_labeler(models["student"], batch_size=spec.student.batch_size, backend="transformers"),
        models["student"])

    def paired(a: str, b: str, column: str) -> dict:
        return paired_difference(rows[a][column].fillna(0).astype(float), rows[b][column].fillna(0).astype(float))

    singles = [m for m in ("baseline", "encoder", "llm") if m in result]
    best = max(singles, key=lambda m: result[m]["top1"])
    pairs = {**GAINS, "committee_minus_best_member": ("committee", best)}
    if "llm" in result:
        pairs["llm_minus_base"] = ("llm", "base")
    gains = {name: {"top1": paired(a, b, "top1"), "mean_reward": paired(a, b, "score")} for name, (a, b) in pairs.items()}
    return {**result, "best_member": best, "gains_ci95": gains}


def targets(scored: dict, margin: float, floor: float | None = None) -> dict[str, bool]:
    """The issues' targets on top-1: the committee `margin` above the baseline fitted on the same
    seeds (and at `floor` where the corpus sets one), never more than 0.01 below its best member;
    the student at least STUDENT_SHARE of the committee."""
    bar = scored["baseline"]["top1"] + margin
    above = f"baseline+{margin:g}" if margin else "baseline"
    out = {f"committee>={above}": scored["committee"]["top1"] >= bar,
           "committee>=best_member-0.01": scored["committee"]["top1"] >= scored[scored["best_member"]]["top1"] - 0.01,
           f"student>={STUDENT_SHARE:g}*committee": scored["student"]["top1"] >= STUDENT_SHARE * scored["committee"]["top1"]}
    if floor is not None:
        out[f"committee>={floor:g}"] = scored["committee"]["top1"] >= floor
    return out


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, spec=False)
    ap.add_argument("--corpus", choices=[*CORPORA, "all"], default="all")
    ap.add_argument("--home", default=None,
                    help="the data root the task's stages ran in (default: $DISTILLERY_HOME, else data); "
                         "the result still goes to --out")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N documents of each corpus")
    ap.add_argument("--heldout", default=HELDOUT, help="texlive_dev: the held-out labels (document,answer)")
    ap.add_argument("--spec", default=None, help="with one --corpus: the task spec whose teacher and student to "
                                                 "score (default: the corpus's own spec)")
    args = ap.parse_args(argv)
    if args.spec and args.corpus == "all":
        ap.error("--spec names the task of one corpus: give --corpus too")
    layout = lake.Layout.at(args.home)
    path = common.result_path("worth", args.out, args.profile)
    result = json.loads(path.read_text()) if path.exists() else {}
    for corpus in CORPORA if args.corpus == "all" else [args.corpus]:
        result[corpus] = worth(corpus, layout, profile=args.profile, limit=args.limit, heldout=args.heldout,
                               spec_path=args.spec)
        print(f"{corpus}: " + ", ".join(f"{arm} {result[corpus][arm]['top1']:.3f}"
                                        for arm in ARMS if arm in result[corpus])
              + f"; targets {result[corpus]['targets']}")
        common.write("worth", result, args.out, args.profile)  # after each corpus: a later failure keeps it


if __name__ == "__main__":
    main()
