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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import pyarrow as pa

from distillery import lake
from distillery.answer import LABEL_SCHEMA as SCHEMA, evaluate_labels, label_rows
from distillery.evaluate import calibration, seed_items, summarize
from distillery.inference import make_backend
from distillery.spec import TaskSpec


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
    shards = out / "shards"
    todo_all = pick_documents(documents, seeds, spec.label.limit)
    done = done_hashes(shards)
    todo = [d for d in todo_all if d["sha256"] not in done]
    model_id = f"{teacher}@{lake.hash_model(teacher)}"
    backend = make_backend(str(teacher), kind=spec.label.backend, batch_size=spec.label.batch_size)
    labeling_started = time.perf_counter()
    n_shard = len(list(shards.glob("*.parquet"))) if shards.exists() else 0
    for start in range(0, len(todo), spec.label.shard_size):
        chunk = todo[start:start + spec.label.shard_size]
        rows = label_rows(spec, backend, chunk, model_id=model_id, run_id=run_id)
        lake.write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), shards / f"shard-{n_shard:05d}.parquet")
        n_shard += 1
        if on_progress:
            on_progress(len(done) + start + len(chunk), len(todo_all))
    seconds = time.perf_counter() - labeling_started
    evaluation = evaluate_labels(spec, backend, seed_items(spec, seeds, documents, "heldout"), model_id=model_id)
    table = lake.read_table(shards) if shards.exists() else pa.Table.from_pylist([], schema=SCHEMA)
    status = table.column("parse_status").to_pylist()
    conf = table.column("confidence").to_pylist()
    metrics = {"docs_per_s": len(todo) / seconds if todo and seconds > 0 else None,
               "mean_confidence": sum(conf) / len(conf) if conf else 0.0,
               "heldout": heldout_metrics(evaluation)}
    counts = {"labeled": len(status), "ok": status.count("ok"), "partial": status.count("partial"),
              "failed": status.count("failed"), "resumed_from": len(done)}
    outputs = {"machine_labels": str(shards),
               "label_eval": str(lake.write_parquet(evaluation.assign(task=spec.name, run_id=run_id, stage="label"),
                                                    out / "label_eval.parquet"))}
    return lake.StageResult("label", run_id, outputs, counts, metrics, time.perf_counter() - started)


def heldout_metrics(rows) -> dict:
    """Accuracy, reward and how far the confidence can be trusted, on graded rows."""
    cal = calibration(rows["confidence"], rows["top1"]) if len(rows) else calibration([], [])
    return {**summarize(rows), "ece": cal["ece"], "acc_at_coverage": cal["acc_at_coverage"]}
