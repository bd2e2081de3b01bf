"""`python -m bench.worth`: is the pipeline worth it? The TF-IDF baseline fitted on the task's train
seeds, the base model, and the teacher and student the pipeline trained, all scored on the same
documents of each corpus, with paired 95% intervals and the targets -> data/bench/worth.json.

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

from bench import common
from distillery import lake
from distillery.errors import DistilleryError

HELDOUT = "../shared/corpora/texlive_dev/heldout.csv"
CORPORA = {  # margin: how far above the baseline's top-1 teacher and student must be (the targets)
    "demo": {"spec": "data/demo/clinical.yaml", "docs": 300, "margin": 0.0, "run": "make demo"},
    "texlive_dev": {"spec": "data/texlive/texlive_dev.yaml", "margin": 0.05,
                    "run": "make run SPEC=data/texlive/texlive_dev.yaml"},
}
STUDENT_SHARE = 0.95  # the student keeps at least this share of the teacher's top-1
GAINS = {"teacher_minus_baseline": ("teacher", "baseline"), "student_minus_baseline": ("student", "baseline"),
         "student_minus_teacher": ("student", "teacher"), "teacher_minus_base": ("teacher", "base")}


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
    train = seed_items(spec, outputs["seed"]["seed_labels"], outputs["ingest"]["documents"], "train")
    if corpus == "demo":
        items, missing = common.fresh_items(limit or cfg["docs"]), {"n": 0, "documents": [], "reasons": {}}
    else:
        items, missing = heldout_items(heldout, outputs["ingest"], limit)
    models = {"base": str(spec.path(spec.models.base)), "teacher": outputs["teacher"]["model"],
              "student": outputs["student"]["model"]}
    scored = score_arms(spec, items, train, models)
    return {"docs": len(items), **scored, "targets": targets(scored, cfg["margin"]), "missing": missing,
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


def score_arms(spec, items: list[dict], train: list[dict], models: dict[str, str]) -> dict:
    """Baseline (fitted on `train`), base, teacher and student scored on `items`: top-1, mean reward,
    n and docs/s per arm, and the paired 95% intervals of the gains in top-1 and in reward."""
    from distillery import baseline
    from distillery.answer import evaluate_labeling, score_answers
    from distillery.evaluate import grade_items, paired_difference, summarize
    from distillery.inference import TransformersBackend

    why = baseline.skipped(spec, train)
    if why:
        raise DistilleryError(f"bench worth compares the models with the TF-IDF baseline, which cannot run here: {why}")
    result, rows = {}, {}

    def arm(name: str, grade, model: str, **extra) -> None:
        started = time.perf_counter()
        rows[name] = grade()
        seconds = time.perf_counter() - started
        summary = summarize(rows[name])
        result[name] = {"top1": summary["top1"], "mean_reward": summary["mean_reward"], "n": summary["n"],
                        "docs_per_s": summary["n"] / seconds, "model": model, **extra}

    arm("baseline", lambda: baseline.evaluate(spec, train, items)[0], "tfidf+logreg", trained_on=len(train))
    for name in ("base", "teacher"):  # as the labeling stage makes them answer
        backend = TransformersBackend(models[name], batch_size=spec.label.batch_size)
        arm(name, lambda: evaluate_labeling(spec, backend, items)[0], models[name])
    student = TransformersBackend(models["student"], batch_size=spec.student.batch_size)
    texts = [it["text"] for it in items]
    arm("student", lambda: grade_items(spec, items, score_answers(spec, student, texts, student=True)[0]),
        models["student"])

    def paired(a: str, b: str, column: str) -> dict:
        return paired_difference(rows[a][column].fillna(0).astype(float), rows[b][column].fillna(0).astype(float))

    gains = {name: {"top1": paired(a, b, "top1"), "mean_reward": paired(a, b, "score")} for name, (a, b) in GAINS.items()}
    return {**result, "gains_ci95": gains}


def targets(scored: dict, margin: float) -> dict[str, bool]:
    """The issue's targets on top-1: teacher and student at least `margin` above the baseline, and
    the student at least STUDENT_SHARE of the teacher."""
    bar = scored["baseline"]["top1"] + margin
    above = f"baseline+{margin:g}" if margin else "baseline"
    return {f"teacher>={above}": scored["teacher"]["top1"] >= bar,
            f"student>={above}": scored["student"]["top1"] >= bar,
            f"student>={STUDENT_SHARE:g}*teacher": scored["student"]["top1"] >= STUDENT_SHARE * scored["teacher"]["top1"]}


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
                                        for arm in ("baseline", "base", "teacher", "student"))
              + f"; targets {result[corpus]['targets']}")
        common.write("worth", result, args.out, args.profile)  # after each corpus: a later failure keeps it


if __name__ == "__main__":
    main()
