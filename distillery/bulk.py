"""Stage 5, bulk labels: the promoted student labels every PDF of a source, incrementally.

Extraction runs in worker processes (per-file timeout) and streams into batched label scoring.
Results land in Parquet shards written atomically and committed through `manifest.json`; only
committed shards count, so a crash between shard and manifest loses nothing and duplicates nothing
(the rerun labels that batch again). A document already labeled by the same student (content hash
+ model id) is skipped; `relabel=True` labels everything with the current student. One bulk run
per output folder at a time (a file lock); a second gets a clear error instead of double-labeling.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from distillery import lake, pdf
from distillery.errors import DistilleryError
from distillery.ingest import list_pdfs
from distillery.inference import TransformersBackend
from distillery.sft import score_answers
from distillery.spec import TaskSpec

LABEL_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("path", pa.string()), ("label", pa.string()), ("ranked", pa.string()),
    ("confidence", pa.float64()), ("probs", pa.string()), ("model", pa.string()), ("task", pa.string()),
    ("run_id", pa.string()), ("stage", pa.string()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()), ("reason", pa.string()),
    ("detail", pa.string()), ("task", pa.string()), ("run_id", pa.string()), ("stage", pa.string()),
])


class BulkBusy(DistilleryError):
    """Another bulk run holds the output folder."""


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the folder's lock. A POSIX record lock, not flock: forked extraction workers do not
    inherit it, so a killed run's orphaned workers cannot keep the next run out."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BulkBusy(f"another bulk run is labeling into {folder}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def read_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"labels": [], "quarantine": []}


def committed(out: Path, kind: str) -> list[Path]:
    return [out / name for name in read_manifest(out)[kind]]


def _commit(out: Path, kind: str, table: pa.Table, run_id: str, n: int) -> None:
    name = f"{kind}/{run_id}-{n:05d}.parquet"
    lake.write_parquet(table, out / name)
    manifest = read_manifest(out)
    manifest[kind].append(name)
    lake.write_json(manifest, out / "manifest.json")


def _seen(out: Path, model_id: str, relabel: bool) -> set[str]:
    """Hashes to skip: labeled by this very student, or already quarantined (unless relabeling)."""
    if relabel:
        return set()
    seen = set()
    for f in committed(out, "labels"):
        t = lake.read_table(f)
        seen.update(h for h, m in zip(t.column("sha256").to_pylist(), t.column("model").to_pylist()) if m == model_id)
    for f in committed(out, "quarantine"):
        seen.update(lake.read_table(f).column("sha256").to_pylist())
    return seen


def bulk_label(spec: TaskSpec, student: Path, *, out: Path, relabel: bool = False, run_id: str | None = None,
               source: str | None = None, progress: bool = True) -> lake.StageResult:
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("bulk")
    cfg, ing = spec.bulk, spec.ingest
    source = source or str(spec.path(cfg.source))
    model_id = f"{student}@{lake.hash_model(student)}"
    with exclusive(out):
        seen = _seen(out, model_id, relabel)
        backend = TransformersBackend(str(student), batch_size=cfg.batch_size)
        counts = {"seen": 0, "skipped": 0, "labeled": 0, "quarantined": 0}
        batch: list[pdf.Extracted] = []
        labels: list[dict] = []
        bad: list[dict] = []
        shards = 0
        meta = {"task": spec.name, "run_id": run_id, "stage": "bulk"}
        bar = _progress(progress)
        files = pdf.extract_many(_unseen(list_pdfs(source), seen, counts, bar), workers=ing.workers,
                                 timeout_s=ing.timeout_s, max_bytes=int(ing.max_file_mb * 2**20),
                                 min_chars=ing.min_chars)
        for r in files:
            if r.sha256 in seen:  # a byte-identical copy met earlier in this run
                counts["skipped"] += 1
                continue
            seen.add(r.sha256)
            if r.verdict != "ok":
                bad.append({"path": r.path, "sha256": r.sha256, "bytes": r.bytes, "reason": r.verdict,
                            "detail": r.reason, **meta})
                continue
            batch.append(r)
            if len(batch) >= cfg.batch_size:
                labels += _label_batch(spec, backend, batch, model_id, meta)
                batch = []
            if len(labels) >= cfg.shard_size:
                shards = _flush(out, labels, bad, run_id, shards, counts)
                labels, bad = [], []
        if batch:
            labels += _label_batch(spec, backend, batch, model_id, meta)
        _flush(out, labels, bad, run_id, shards, counts)
        bar.close()
    seconds = time.perf_counter() - started
    files_out = [str(f) for f in committed(out, "labels")]
    outputs = {"bulk_labels": json.dumps(files_out), "folder": str(out)}
    metrics = {"docs_per_s": counts["seen"] / seconds if seconds else 0.0, "model": model_id}
    return lake.StageResult("bulk", run_id, outputs, counts, metrics, seconds)


def _unseen(paths, seen: set[str], counts: dict, bar):
    """Paths whose content hash is not done yet: skipping before extraction keeps reruns cheap.

    Only regular files are hashed here; anything else (a FIFO, a device) goes to the extraction
    workers, whose per-file timeout handles it.
    """
    for path in paths:
        counts["seen"] += 1
        bar.update(1)
        if os.path.isfile(path) and pdf.sha256_file(path) in seen:
            counts["skipped"] += 1
            continue
        yield path


def _flush(out: Path, labels: list[dict], bad: list[dict], run_id: str, shards: int, counts: dict) -> int:
    if labels:
        _commit(out, "labels", pa.Table.from_pylist(labels, schema=LABEL_SCHEMA), run_id, shards)
        counts["labeled"] += len(labels)
    if bad:
        _commit(out, "quarantine", pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA), run_id, shards)
        counts["quarantined"] += len(bad)
    return shards + 1


def _label_batch(spec: TaskSpec, backend, batch: list[pdf.Extracted], model_id: str, meta: dict) -> list[dict]:
    answers, probs = score_answers(spec, backend, [r.text for r in batch], student=True)
    return [{"sha256": r.sha256, "path": r.path, "label": a.top, "ranked": json.dumps(a.ranked),
             "confidence": max(p), "probs": json.dumps(p), "model": model_id, **meta}
            for r, a, p in zip(batch, answers, probs)]


def _progress(enabled: bool):
    from tqdm import tqdm

    return tqdm(desc="bulk", unit="doc", disable=not enabled, mininterval=2.0)
