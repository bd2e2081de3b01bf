"""The bulk run's books on the driver: the folder lock, the manifest, the shards, the done set.

Only this process writes; the engines only compute. A shard counts once `manifest.json` names it,
so a crash between shard and manifest loses nothing and duplicates nothing.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from distillery import lake, pdf
from distillery.errors import DistilleryError

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


def commit(out: Path, kind: str, table: pa.Table, run_id: str, n: int) -> None:
    name = f"{kind}/{run_id}-{n:05d}.parquet"
    lake.write_parquet(table, out / name)
    manifest = read_manifest(out)
    manifest[kind].append(name)
    lake.write_json(manifest, out / "manifest.json")


def done_hashes(out: Path, model_id: str, relabel: bool) -> set[str]:
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


class Run:
    """One run's bookkeeping: the done set, counts, and the shards it commits."""

    def __init__(self, out: Path, run_id: str, shard_size: int, seen: set[str], model_id: str, meta: dict, bar):
        self.out, self.run_id, self.shard_size, self.seen, self.bar = out, run_id, shard_size, seen, bar
        self.model_id, self.meta = model_id, meta
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

    def add(self, r: pdf.Extracted, fields: dict | None) -> None:
        """Record one fresh file: its label fields (from `labeling.label_fields`), or its verdict."""
        self.bar.update(1)
        if r.verdict != "ok":
            self.bad.append({"path": r.path, "sha256": r.sha256, "bytes": r.bytes, "reason": r.verdict,
                             "detail": r.reason, **self.meta})
            self.by_reason[r.verdict] = self.by_reason.get(r.verdict, 0) + 1
        else:
            self.labels.append({"sha256": r.sha256, "path": r.path, **fields, "model": self.model_id, **self.meta})
        if len(self.labels) >= self.shard_size or len(self.bad) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.labels:
            commit(self.out, "labels", pa.Table.from_pylist(self.labels, schema=LABEL_SCHEMA), self.run_id, self.shards)
            self.counts["labeled"] += len(self.labels)
        if self.bad:
            commit(self.out, "quarantine", pa.Table.from_pylist(self.bad, schema=QUARANTINE_SCHEMA), self.run_id,
                   self.shards)
            self.counts["quarantined"] += len(self.bad)
        if self.labels or self.bad:
            self.shards += 1
        self.labels, self.bad = [], []
