"""Stage 3, machine labels: the teacher labels documents that no expert labeled.

Each document gets its raw output, reasoning, parsed answer, parse status and a confidence, from
the answering layer (`answer.label_rows`): without reasoning (the CPU profile) the answer is
decoded under the schema (classification: the label set scored, confidence the top label's
probability; extraction: the JSON skeleton forced, confidence the values' geometric mean token
probability); otherwise the teacher generates and the one parser reads it (confidence: the first
answer item's probability), and unparsable output is kept and marked `failed`, never dropped.
Labels are written in shards as they finish, under `out/shards/`; a rerun after a crash labels
only the documents no shard holds yet, so every document ends up exactly once.
The same labeling path then labels the expert held-out seeds, which measures whether the
confidence can be trusted: expected calibration error and accuracy at 50/80/100% coverage
(`label_eval.parquet`, and the stage's `heldout` metrics).
Once every shard is written, the corpus's class prior is estimated by EM from the probability
rows the shards hold, calibrated by one temperature fitted on the validation seeds (`prior`; a
whole-corpus quantity, so never from a part of a run), and the
held-out accuracy is reweighted to it (`heldout.top1_corpus_mix`: the seeds are usually balanced,
the corpus is not). With `label.prior_correction` a final pass re-ranks the labels under the
corrected posteriors into `machine_labels.parquet`, which the student then reads; the shards keep
the teacher's own answers, so a rerun after a crash repeats only this pass.
Every label also says how typical of the task its document is (`scope.py`, fitted on the seeds and
the documents labeled, before the first shard): `in_scope`, `out_of_scope` (its confidence capped)
and `needs_review`; the scope is saved (`scope.pkl`) and travels with the student to bulk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import json

import numpy as np
import pyarrow as pa

from distillery import lake, prior, scope
from distillery.answer import LABEL_SCHEMA as SCHEMA, answer_rows, constrained, grade_label_rows, label_rows, \
    ranked_answers
from distillery.errors import DistilleryError
from distillery.evaluate import calibration, gold_label, seed_items, summarize
from distillery.members import load_labeler
from distillery.spec import ClassificationOutput, TaskSpec


@dataclass(frozen=True)
class Inputs:
    """What labeling reads: the teacher's model, the documents' text and the seed labels (seeded
    documents are not machine-labeled; the held-out split measures the labels)."""

    reads: ClassVar = ("teacher", "ingest", "seed")
    teacher: Path
    documents: Path
    seed_labels: Path

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        return cls(results["teacher"].path("model"), results["ingest"].path("documents"),
                   results["seed"].path("seed_labels"))


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None,
        on_progress: Callable[[int, int], None] | None = None) -> lake.StageResult:
    """Machine-label the corpus with the teacher; `on_progress(done, total)` after every shard."""
    return machine_label(spec, inputs.teacher, inputs.documents, inputs.seed_labels, out=out, run_id=run_id,
                         on_progress=on_progress)


def pick_documents(documents: Path, seeds: Path, limit: int) -> list[dict]:
    """Documents no expert labeled, in a stable order (by hash), at most `limit`."""
    docs = lake.read_table(documents).to_pandas()
    seeded = set(lake.read_table(seeds).column("sha256").to_pylist())
    docs = docs[~docs["sha256"].isin(seeded)].sort_values("sha256").head(limit)
    return docs[["sha256", "text"]].to_dict("records")


def done_hashes(shards: Path) -> set[str]:
    if not shards.exists():
        return set()
    return {h for f in sorted(shards.glob("*.parquet")) for h in lake.read_table(f).column("sha256").to_pylist()}


def machine_label(spec: TaskSpec, teacher: Path, documents: Path, seeds: Path, *, out: Path,
                  run_id: str | None = None, on_progress: Callable[[int, int], None] | None = None) -> lake.StageResult:
    """Label the documents no shard holds yet; `on_progress(done, total)` after every shard."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("label")
    check_prior_correction(spec)
    shards = out / "shards"
    todo_all = pick_documents(documents, seeds, spec.label.limit)
    done = done_hashes(shards)
    todo = [d for d in todo_all if d["sha256"] not in done]
    model_id = f"{teacher}@{lake.hash_model(teacher)}"
    backend = load_labeler(teacher, batch_size=spec.label.batch_size, backend=spec.label.backend)
    seeded = seed_items(spec, seeds, documents, ("train", "validation", "heldout"))
    scope_model = scope.fit(spec, [d["text"] for d in seeded + todo_all], [d["sha256"] for d in seeded + todo_all])
    labeling_started = time.perf_counter()
    n_shard = len(list(shards.glob("*.parquet"))) if shards.exists() else 0
    for start in range(0, len(todo), spec.label.shard_size):
        chunk = todo[start:start + spec.label.shard_size]
        rows = label_rows(spec, backend, chunk, model_id=model_id, run_id=run_id)
        if scope_model is not None:
            rows = scope_model.mark(rows, [d["text"] for d in chunk], [d["sha256"] for d in chunk])
        lake.write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), shards / f"shard-{n_shard:05d}.parquet")
        n_shard += 1
        if on_progress:
            on_progress(len(done) + start + len(chunk), len(todo_all))
    seconds = time.perf_counter() - labeling_started
    items = seed_items(spec, seeds, documents, "heldout")
    teacher_heldout = seed_rows(spec, backend, items, model_id=model_id)
    if scope_model is not None:  # each seed compared with the other in-scope documents, as the threshold was
        teacher_heldout = scope_model.mark(teacher_heldout, [it["text"] for it in items], [it["sha256"] for it in items])
    calibration_set = validation_probs(spec, backend, seeds, documents, model_id=model_id)
    table, corpus, machine_labels, heldout = prior_pass(spec, shards, seeds, out, teacher_heldout, calibration_set)
    evaluation = grade_label_rows(spec, items, heldout).assign(
        probs=[r.get("probs") for r in heldout], needs_review=[r.get("needs_review") for r in heldout],
        out_of_scope=[r.get("out_of_scope") for r in heldout])
    status = table.column("parse_status").to_pylist()
    conf = table.column("confidence").to_pylist()
    metrics = {"docs_per_s": len(todo) / seconds if todo and seconds > 0 else None,
               "mean_confidence": sum(conf) / len(conf) if conf else 0.0,
               "heldout": heldout_metrics(evaluation, corpus)}
    if scope_model is not None:
        metrics["scope"] = scope_metrics(scope_model, table, evaluation)
    if corpus:
        metrics["prior"] = {**corpus, **prior_effect(spec, items, teacher_heldout, corpus)}
    counts = {"labeled": len(status), "ok": status.count("ok"), "partial": status.count("partial"),
              "failed": status.count("failed"), "resumed_from": len(done)}
    outputs = {"machine_labels": str(machine_labels),
               **({"scope": str(scope.save(scope_model, out))} if scope_model else {}),
               "label_eval": str(lake.write_parquet(evaluation.assign(task=spec.name, run_id=run_id, stage="label"),
                                                    out / "label_eval.parquet"))}
    return lake.StageResult("label", run_id, outputs, counts, metrics, time.perf_counter() - started)


def scores_labels(spec: TaskSpec) -> bool:
    """Whether the teacher's labels carry a probability per label (classification under the schema)."""
    return isinstance(spec.output, ClassificationOutput) and constrained(spec)


def validation_probs(spec: TaskSpec, backend, seeds: Path, documents: Path, *,
                     model_id: str) -> tuple[list[list[float]], list[int]]:
    """The teacher's probability rows on the validation seeds and their gold classes: what the
    temperature is fitted on (seeds it was not trained on, and not the held-out ones it is reported on)."""
    if not scores_labels(spec):
        return [], []
    labels = list(spec.output.labels)
    items = [it for it in seed_items(spec, seeds, documents, "validation") if gold_label(it["answer"]) in labels]
    rows = seed_rows(spec, backend, items, model_id=model_id)
    return [json.loads(r["probs"]) for r in rows], [labels.index(gold_label(it["answer"])) for it in items]


def seed_rows(spec: TaskSpec, backend, items: list[dict], *, model_id: str) -> list[dict]:
    """Label rows for seed items. A committee was refitted on every seed, so it answers with its
    out-of-fold rows (`Committee.out_of_fold`), never in-sample; another model labels them as it
    labels documents."""
    if not items:
        return []
    held = getattr(backend, "out_of_fold", None)
    if held is None:
        return label_rows(spec, backend, items, model_id=model_id, run_id="")
    missing = [it["sha256"][:12] for it in items if it["sha256"] not in held]
    if missing:
        raise DistilleryError(f"the committee has no out-of-fold row for seed(s) {missing}: rerun `make teacher`")
    rows = [held[it["sha256"]] for it in items]
    return answer_rows(spec, items, ranked_answers(spec, np.asarray(rows)), rows, model_id=model_id, run_id="")


def prior_pass(spec: TaskSpec, shards: Path, seeds: Path, out: Path, heldout: list[dict],
               calibration_set: tuple[list, list]) -> tuple[pa.Table, dict | None, Path, list[dict]]:
    """After the last shard: the corpus's prior from every stored probability row; with
    `label.prior_correction`, the labels re-ranked under it into out/machine_labels.parquet and the
    held-out rows re-ranked alike. Returns (labels, prior, the labels' path, held-out rows)."""
    table = lake.read_table(shards) if shards.exists() else pa.Table.from_pylist([], schema=SCHEMA)
    corpus = corpus_prior(spec, table.to_pylist(), seeds, calibration_set)
    if not (corpus and spec.label.prior_correction):
        return table, corpus, shards, heldout
    table = pa.Table.from_pylist(corrected(spec, table.to_pylist(), corpus), schema=SCHEMA)
    path = lake.write_parquet(table, out / "machine_labels.parquet")
    return table, corpus, path, corrected(spec, heldout, corpus)


def check_prior_correction(spec: TaskSpec) -> None:
    """The prior correction needs a probability per label: classification scored under the schema."""
    if spec.label.prior_correction and not scores_labels(spec):
        raise DistilleryError("label.prior_correction needs classification labels scored under the schema "
                              "(output.kind: classification, teacher.reasoning: false); set "
                              "label.prior_correction: false for this task")


def corpus_prior(spec: TaskSpec, rows: list[dict], seeds: Path, calibration_set: tuple[list, list]) -> dict | None:
    """The seeds' class mix (the teacher's training prior) and the corpus's, estimated by EM over the
    labeled documents' probability rows at the temperature fitted on `calibration_set`; None when no
    row has probabilities."""
    scored = [json.loads(r["probs"]) for r in rows if r.get("probs")]
    if not isinstance(spec.output, ClassificationOutput) or not scored:
        return None
    labels = list(spec.output.labels)
    seed_rows = lake.read_table(seeds).to_pandas()
    answers = [json.loads(a) for a in seed_rows.loc[seed_rows["split"] == "train", "answer"]]
    seeds_mix = prior.seed_prior(labels, [gold_label(a) for a in answers])
    t = prior.fit_temperature(*calibration_set) if calibration_set[1] else 1.0
    fit = prior.estimate_prior(prior.temperature(scored, t), [seeds_mix[c] for c in labels])
    return {"seeds": seeds_mix, "corpus": dict(zip(labels, fit["prior"].tolist())), "documents": len(scored),
            "temperature": t, "calibrated_on": len(calibration_set[1]), "iterations": fit["iterations"],
            "converged": fit["converged"], "applied": spec.label.prior_correction}


def corrected(spec: TaskSpec, rows: list[dict], corpus: dict) -> list[dict]:
    """Label rows re-ranked under the corpus's estimated prior."""
    labels = list(spec.output.labels)
    rows = prior.rerank_rows(rows, labels, spec.output.top_k, [corpus["corpus"][c] for c in labels],
                             [corpus["seeds"][c] for c in labels], corpus["temperature"])
    if not rows or any(r.get("in_scope") is None for r in rows):
        return rows
    return scope.marked(rows, [r["in_scope"] for r in rows], [r["out_of_scope"] for r in rows],
                        spec.scope.review_below)  # the re-ranked confidence capped again where out of scope


def scope_metrics(in_scope: scope.Scope, table: pa.Table, evaluation) -> dict:
    """The scope's settings, the share of machine labels flagged, and on the held-out seeds (in scope
    by the expert's word) the share flagged and the top-1 of labels that need review and of the rest."""
    out = table.column("out_of_scope").to_pylist() if "out_of_scope" in table.column_names else []
    review = table.column("needs_review").to_pylist() if "needs_review" in table.column_names else []
    metrics = {**in_scope.summary(), "labels": len(out),
               "out_of_scope": sum(map(bool, out)) / len(out) if out else None,
               "needs_review": sum(map(bool, review)) / len(review) if review else None}
    if len(evaluation):
        flagged = evaluation["needs_review"].fillna(False).astype(bool)
        metrics["heldout"] = {
            "n": len(evaluation), "out_of_scope": float(evaluation["out_of_scope"].fillna(False).astype(bool).mean()),
            "review": {"n": int(flagged.sum()), "top1": float(evaluation.loc[flagged, "top1"].mean()) if flagged.any() else None},
            "rest": {"n": int((~flagged).sum()),
                     "top1": float(evaluation.loc[~flagged, "top1"].mean()) if (~flagged).any() else None}}
    return metrics


def prior_effect(spec: TaskSpec, items: list[dict], heldout: list[dict], corpus: dict) -> dict:
    """Held-out top-1 of the teacher's own answers and of the corrected ones, under the seeds' mix and
    the corpus's, whichever the labels delivered: what switching `label.prior_correction` changes."""
    if not items:
        return {}
    out = {}
    for name, rows in (("uncorrected", heldout), ("corrected", corrected(spec, heldout, corpus))):
        graded = grade_label_rows(spec, items, rows)
        out[name] = {"top1_seed_mix": prior.class_mix_accuracy(graded, corpus["seeds"])["top1"],
                     "top1_corpus_mix": prior.class_mix_accuracy(graded, corpus["corpus"])["top1"]}
    return out


def heldout_metrics(rows, mixes: dict | None = None) -> dict:
    """Accuracy, reward and how far the confidence can be trusted, on graded rows; with the class
    mixes (`seeds`, `corpus`), the top-1 under each and its bootstrap interval."""
    cal = calibration(rows["confidence"], rows["top1"]) if len(rows) else calibration([], [])
    metrics = {**summarize(rows), "ece": cal["ece"], "acc_at_coverage": cal["acc_at_coverage"]}
    for name in ("seeds", "corpus") if mixes else ():
        mix = prior.class_mix_accuracy(rows, mixes[name])
        key = "top1_seed_mix" if name == "seeds" else "top1_corpus_mix"
        metrics.update({key: mix["top1"], f"{key}_ci95": mix["ci95"]})
    return metrics
