"""Stage 3, machine labels: the teacher labels documents that no expert labeled.

Each document gets its raw output, reasoning, parsed answer, parse status and a confidence.
Classification without reasoning (the CPU profile) is decoded under the schema, as vLLM's
structured `choice` would: the label set is scored after the `Answer:` prefill in one pass (by
each label's first token when they differ, `teacher.first_token`; else by every label's token
sequence), the answer is the labels ranked by probability and the confidence is the top label's.
Extraction without reasoning is decoded under the schema too (`constrained.decode`: the JSON
skeleton forced, each value typed; confidence, the values' geometric mean token probability).
Otherwise (a reasoning teacher, or a backend without the constrained path) the teacher generates,
and its output goes through the one parser; unparsable output is kept and marked `failed`, never dropped (confidence: the first answer item's probability).
Labels are written in shards as they finish, under `out/shards/`; a rerun after a crash labels
only the documents no shard holds yet, so every document ends up exactly once.
The same labeling path then labels the expert held-out seeds, which measures whether the
confidence can be trusted: expected calibration error and accuracy at 50/80/100% coverage
(`label_eval.parquet`, and the stage's `heldout` metrics).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa

from distillery import lake
from distillery.evaluate import calibration, grade_items, seed_items, summarize
from distillery.inference import make_backend
from distillery.prompts import format_answer, parse_answer, prompt_hash, render_prompt
from distillery.sft import score_answers
from distillery.spec import ClassificationOutput, TaskSpec

SCHEMA = pa.schema([
    ("sha256", pa.string()), ("raw_output", pa.string()), ("reasoning", pa.string()), ("answer", pa.string()),
    ("parse_status", pa.string()), ("parse_error", pa.string()), ("confidence", pa.float64()),
    ("model", pa.string()), ("prompt_hash", pa.string()), ("task", pa.string()), ("run_id", pa.string()),
    ("stage", pa.string()),
])


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


def constrained(spec: TaskSpec) -> bool:
    """Without reasoning the answer is decoded under the schema: classification by scoring the label
    set, extraction by forcing the JSON skeleton and typing each value (`constrained.decode`)."""
    return not spec.teacher.reasoning


def label_rows(spec: TaskSpec, backend, docs: list[dict], *, model_id: str, run_id: str) -> list[dict]:
    method = "score_labels" if isinstance(spec.output, ClassificationOutput) else "extract"
    if constrained(spec) and hasattr(backend, method):
        return _scored_rows(spec, backend, docs, model_id=model_id, run_id=run_id)
    reasoning = spec.teacher.reasoning
    prompts = [render_prompt(d["text"], spec, backend.tokenizer, reasoning=reasoning) for d in docs]
    gens = backend.generate(prompts, max_new_tokens=spec.label.max_new_tokens, seed=spec.seed)
    phash = prompt_hash(spec, reasoning)
    rows = []
    for doc, g in zip(docs, gens):
        a = parse_answer(g[0].text, spec, prefilled=not reasoning)
        value = a.ranked if isinstance(spec.output, ClassificationOutput) else a.value
        rows.append({"sha256": doc["sha256"], "raw_output": g[0].text, "reasoning": a.reasoning,
                     "answer": json.dumps(value) if a.ok else None, "parse_status": a.status, "parse_error": a.error,
                     "confidence": g[0].confidence if a.ok else 0.0, "model": model_id, "prompt_hash": phash,
                     "task": spec.name, "run_id": run_id, "stage": "label"})
    return rows


def _scored_rows(spec: TaskSpec, backend, docs: list[dict], *, model_id: str, run_id: str) -> list[dict]:
    """The teacher's answer under the schema: the label set ordered by P(label | prompt, `Answer:`),
    or the JSON object decoded under the schema."""
    answers, probs = score_answers(spec, backend, [d["text"] for d in docs])
    phash = prompt_hash(spec, False)
    values = [a.ranked if a.value is None else a.value for a in answers]
    return [{"sha256": d["sha256"], "raw_output": format_answer(v), "reasoning": "", "answer": json.dumps(v),
             "parse_status": "ok", "parse_error": "", "confidence": max(p),
             "model": model_id, "prompt_hash": phash, "task": spec.name, "run_id": run_id, "stage": "label"}
            for d, v, p in zip(docs, values, probs)]


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


def evaluate_labels(spec: TaskSpec, backend, items: list[dict], *, model_id: str):
    """Label expert-labeled items exactly as machine labels are made, and grade them (one row each)."""
    rows = label_rows(spec, backend, items, model_id=model_id, run_id="") if items else []
    prefilled = not spec.teacher.reasoning  # constrained labels are formatted as a prefilled answer too
    answers = [parse_answer(r["raw_output"], spec, prefilled=prefilled) for r in rows]
    return grade_items(spec, items, answers, [{"confidence": r["confidence"]} for r in rows])


def heldout_metrics(rows) -> dict:
    """Accuracy, reward and how far the confidence can be trusted, on graded rows."""
    cal = calibration(rows["confidence"], rows["top1"]) if len(rows) else calibration([], [])
    return {**summarize(rows), "ece": cal["ece"], "acc_at_coverage": cal["acc_at_coverage"]}
