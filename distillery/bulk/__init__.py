"""Stage 5, bulk labels: the promoted student labels every PDF of a source, incrementally.

Sources: a local folder or glob, or any fsspec URL (s3://, gs://, memory://, file://), listed one
folder at a time so a bucket of millions of files is never held in memory. Engines (`bulk.engine`):
`local` (`bulk/local.py`) extracts in worker processes (per-file timeout) while this process scores
batches with the student, through a bounded window (memory stays flat); `ray` (`bulk/ray.py`) runs
extraction and scoring as a Ray Data pipeline on a cluster and streams results back here. Either
way results land in Parquet shards written atomically and committed through `manifest.json` by
this process alone (`bulk/ledger.py`); only committed shards count, so a crash between shard and
manifest loses nothing and duplicates nothing (the rerun labels that batch again). A document
already labeled by the same student (content hash + model id) is skipped; `relabel=True` labels
everything with the current student. A byte-identical copy of a done file gets its twin's row
under its own path (`duplicate_of`). One bulk run per output folder at a time (a file lock); a
second gets a clear error instead of double-labeling.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from distillery import lake, pdf, sources
from distillery.bulk import local
from distillery.bulk.ledger import (LABEL_SCHEMA, QUARANTINE_SCHEMA, BulkBusy, Run, committed, done, exclusive,
                                    read_manifest)
from distillery.spec import TaskSpec

__all__ = ["COUNT_LIMIT", "LABEL_SCHEMA", "QUARANTINE_SCHEMA", "BulkBusy", "bulk_label", "committed", "exclusive",
           "read_manifest"]

COUNT_LIMIT = 200_000  # a local source up to this size is counted first (a second os.walk, ~1 s), for an ETA


def bulk_label(spec: TaskSpec, student: Path, *, out: Path, relabel: bool = False, run_id: str | None = None,
               source: str | None = None, progress: bool = True, engine: str | None = None) -> lake.StageResult:
    """Label every PDF of the source the student has not labeled yet; `engine` overrides `bulk.engine`."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("bulk")
    cfg = spec.bulk
    source = source or sources.resolve_source(spec, cfg.source)
    engine = engine or cfg.engine
    model_id = f"{student}@{lake.hash_model(student)}"
    meta = {"task": spec.name, "run_id": run_id, "stage": "bulk"}
    with exclusive(out):
        finished = done(out, model_id, relabel)
        total = sources.count_pdfs(source, COUNT_LIMIT) if progress else None
        bar = _progress(progress, total, engine)
        run = Run(out, run_id, cfg.shard_size, finished, model_id, meta, bar)
        items = run.listed(_items(source))
        if engine == "ray":
            from distillery.bulk import ray as ray_engine  # Ray loads only for the engine that uses it

            events = ray_engine.events(spec, student, items, run)
        else:
            events = local.events(spec, student, items, run)
        for r, fields in events:
            run.add(r, fields)
        run.finish()
        bar.close()
    seconds = time.perf_counter() - started
    counts = run.counts
    files_out = [str(f) for f in committed(out, "labels")]
    outputs = {"bulk_labels": json.dumps(files_out), "folder": str(out)}
    metrics = {"docs_per_s": counts["seen"] / seconds if seconds else 0.0,
               "labeled_per_s": counts["labeled"] / seconds if seconds else 0.0,
               "quarantine_by_reason": dict(sorted(run.by_reason.items())), "engine": engine, "source": source,
               **({"nodes": run.nodes} if run.nodes else {}),
               "seconds": seconds,
               "model": model_id}
    return lake.StageResult("bulk", run_id, outputs, counts, metrics, seconds)


def _items(source: str) -> Iterator[pdf.Item]:
    """The source's files as extraction items; a process-local filesystem's bytes are read here."""
    paths = sources.list_pdfs(source, field="bulk.source")
    if sources.process_local(source):
        return ((p, sources.read_bytes(p)) for p in paths)
    return paths


def _progress(enabled: bool, total: int | None = None, engine: str = "local"):
    """docs/s always; an ETA when the total is known (local sources up to COUNT_LIMIT files)."""
    from tqdm import tqdm

    return tqdm(desc=f"bulk ({engine})", unit="doc", total=total, disable=not enabled, mininterval=2.0,
                smoothing=0.1)
