"""Stage 5, bulk labels: the promoted student labels every PDF of a source, incrementally.

Sources: a local folder or glob, or any fsspec URL (s3://, gs://, memory://, file://), listed one
folder at a time so a bucket of millions of files is never held in memory. Engines (`bulk.engine`):
`local` extracts in worker processes (per-file timeout) while this process scores batches with the
student, through a bounded window (memory stays flat); `ray` runs extraction and scoring on a Ray
cluster (`distillery.bulk_ray`) and streams results back here. Either way results land in Parquet
shards written atomically and committed through `manifest.json` by this process alone; only
committed shards count, so a crash between shard and manifest loses nothing and duplicates nothing
(the rerun labels that batch again). A document already labeled by the same student (content hash
+ model id) is skipped; `relabel=True` labels everything with the current student. One bulk run
per output folder at a time (a file lock); a second gets a clear error instead of double-labeling.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from distillery import lake, pdf, sources
from distillery.errors import DistilleryError
from distillery.sources import list_pdfs
from distillery.inference import TransformersBackend
from distillery.answer import score_answers
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


COUNT_LIMIT = 200_000  # a local source up to this size is counted first (a second os.walk, ~1 s), for an ETA


class _Run:
    """The run's bookkeeping on the driver: the done set, counts, and the shards it commits."""

    def __init__(self, out: Path, run_id: str, shard_size: int, seen: set[str], bar):
        self.out, self.run_id, self.shard_size, self.seen, self.bar = out, run_id, shard_size, seen, bar
        self.counts = {"seen": 0, "skipped": 0, "labeled": 0, "quarantined": 0}
        self.by_reason: dict[str, int] = {}
        self.labels: list[dict] = []
        self.bad: list[dict] = []
        self.shards = 0

    def listed(self, items):
        for item in items:
            self.counts["seen"] += 1
            yield item

    def fresh(self, r: pdf.Extracted) -> bool:
        """False (and counted as skipped) for a file done before or a byte-identical copy met earlier."""
        if r.verdict == "skipped" or r.sha256 in self.seen:
            self.counts["skipped"] += 1
            self.bar.update(1)
            return False
        self.seen.add(r.sha256)
        return True

    def add(self, r: pdf.Extracted, label: dict | None, meta: dict) -> None:
        self.bar.update(1)
        if r.verdict != "ok":
            self.bad.append({"path": r.path, "sha256": r.sha256, "bytes": r.bytes, "reason": r.verdict,
                             "detail": r.reason, **meta})
            self.by_reason[r.verdict] = self.by_reason.get(r.verdict, 0) + 1
        else:
            self.labels.append(label)
        if len(self.labels) >= self.shard_size or len(self.bad) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        self.shards = _flush(self.out, self.labels, self.bad, self.run_id, self.shards, self.counts)
        self.labels, self.bad = [], []


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
        seen = _seen(out, model_id, relabel)
        total = sources.count_pdfs(source, COUNT_LIMIT) if progress else None
        bar = _progress(progress, total, engine)
        run = _Run(out, run_id, cfg.shard_size, seen, bar)
        items = run.listed(_items(source))
        if engine == "ray":
            from distillery import bulk_ray

            events = bulk_ray.label_events(spec, student, items, run, model_id, meta)
        else:
            events = _local_events(spec, student, items, run, model_id, meta)
        for r, label in events:
            run.add(r, label, meta)
        run.flush()
        bar.close()
    seconds = time.perf_counter() - started
    counts = run.counts
    files_out = [str(f) for f in committed(out, "labels")]
    outputs = {"bulk_labels": json.dumps(files_out), "folder": str(out)}
    metrics = {"docs_per_s": counts["seen"] / seconds if seconds else 0.0,
               "labeled_per_s": counts["labeled"] / seconds if seconds else 0.0,
               "quarantine_by_reason": dict(sorted(run.by_reason.items())), "engine": engine, "source": source,
               "seconds": seconds,
               "model": model_id}
    return lake.StageResult("bulk", run_id, outputs, counts, metrics, seconds)


def _items(source: str) -> Iterator[pdf.Item]:
    """The source's files as extraction items; a process-local filesystem's bytes are read here."""
    paths = list_pdfs(source)
    if sources.process_local(source):
        return ((p, sources.read_bytes(p)) for p in paths)
    return paths


def _local_events(spec: TaskSpec, student: Path, items, run: _Run, model_id: str, meta: dict):
    """(extracted, label row or None) per new file: extraction in worker processes, scoring here.

    The pool works through its window (4 batches or more) while this thread scores a batch, so
    extraction and inference overlap; files come back as they finish (one slow file holds back
    nothing), and workers hash each file first and skip the ones done before without extracting.
    """
    cfg, ing = spec.bulk, spec.ingest
    backend = TransformersBackend(str(student), batch_size=cfg.batch_size)
    window = max(64, 4 * cfg.batch_size, 8 * ing.workers)
    files = pdf.extract_many(items, workers=ing.workers, timeout_s=ing.timeout_s,
                             max_bytes=int(ing.max_file_mb * 2**20), min_chars=ing.min_chars,
                             window=window, ordered=False, skip=run.seen, read=ing.read)
    batch: list[pdf.Extracted] = []
    for r in files:
        if not run.fresh(r):
            continue
        if r.verdict != "ok":
            yield r, None
            continue
        batch.append(r)
        if len(batch) >= cfg.batch_size:
            yield from zip(batch, _label_batch(spec, backend, batch, model_id, meta))
            batch = []
    if batch:
        yield from zip(batch, _label_batch(spec, backend, batch, model_id, meta))


def _flush(out: Path, labels: list[dict], bad: list[dict], run_id: str, shards: int, counts: dict) -> int:
    if labels:
        _commit(out, "labels", pa.Table.from_pylist(labels, schema=LABEL_SCHEMA), run_id, shards)
        counts["labeled"] += len(labels)
    if bad:
        _commit(out, "quarantine", pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA), run_id, shards)
        counts["quarantined"] += len(bad)
    return shards + 1 if labels or bad else shards


def _label_batch(spec: TaskSpec, backend, batch: list[pdf.Extracted], model_id: str, meta: dict) -> list[dict]:
    answers, probs = score_answers(spec, backend, [r.text for r in batch], student=True)
    return [{"sha256": r.sha256, "path": r.path, "label": a.top if a.value is None else json.dumps(a.value),
             "ranked": json.dumps(a.ranked),
             "confidence": max(p), "probs": json.dumps(p), "model": model_id, **meta}
            for r, a, p in zip(batch, answers, probs)]


def _progress(enabled: bool, total: int | None = None, engine: str = "local"):
    """docs/s always; an ETA when the total is known (local sources up to COUNT_LIMIT files)."""
    from tqdm import tqdm

    return tqdm(desc=f"bulk ({engine})", unit="doc", total=total, disable=not enabled, mininterval=2.0,
                smoothing=0.1)
