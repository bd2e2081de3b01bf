"""The bulk run's books on the driver: the folder lock, the manifest, the shards, the done set.

Only this process writes; the engines only compute. A shard counts once `manifest.json` names it,
so a crash between shard and manifest loses nothing and duplicates nothing.

Every listed path ends with a row under its own name: a byte-identical copy of a file labeled or
quarantined before (this run or an earlier one) is not scored again but gets its twin's row, with
`duplicate_of` naming the twin's path, so a lookup by path never comes back empty.
"""

from __future__ import annotations

import fcntl
import itertools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillery import lake, pdf, scope
from distillery.errors import DistilleryError

LABEL_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("path", pa.string()), ("label", pa.string()), ("ranked", pa.string()),
    ("confidence", pa.float64()), ("probs", pa.string()), ("model", pa.string()), ("task", pa.string()),
    ("run_id", pa.string()), ("stage", pa.string()), ("duplicate_of", pa.string()), *scope.COLUMNS,
])
QUARANTINE_SCHEMA = pa.schema([
    ("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()), ("reason", pa.string()),
    ("detail", pa.string()), ("task", pa.string()), ("run_id", pa.string()), ("stage", pa.string()),
    ("duplicate_of", pa.string()),
])
SCHEMAS = {"labels": LABEL_SCHEMA, "quarantine": QUARANTINE_SCHEMA}


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


def _rows(out: Path, kind: str, columns: list[str], hashes: set[str] | None = None) -> Iterator[dict]:
    """The committed rows of one kind (only these columns; only these hashes when given)."""
    for f in committed(out, kind):
        schema = pq.read_schema(f)
        t = pq.read_table(f, columns=[c for c in columns if c in schema.names])
        if hashes is not None:
            t = t.filter(pc.is_in(t.column("sha256"), pa.array(sorted(hashes), pa.string())))
        yield from t.to_pylist()


def done(out: Path, model_id: str, relabel: bool) -> tuple[dict[str, str], set[str]]:
    """(hash -> the path whose row holds it, paths that have a row): labeled by this very student or
    quarantined, unless relabeling (then nothing is done)."""
    twins: dict[str, str] = {}
    paths: set[str] = set()
    if relabel:
        return twins, paths
    cols = ["sha256", "path", "duplicate_of"]
    labeled = (r for r in _rows(out, "labels", [*cols, "model"]) if r["model"] == model_id)
    for r in itertools.chain(labeled, _rows(out, "quarantine", cols)):
        paths.add(r["path"])
        if r["sha256"]:  # a file that could not be read has no hash and no twin
            twins.setdefault(r["sha256"], r.get("duplicate_of") or r["path"])
    return twins, paths


class Run:
    """One run's bookkeeping: what is done, counts, and the shards it commits."""

    def __init__(self, out: Path, run_id: str, shard_size: int, done: tuple[dict[str, str], set[str]],
                 model_id: str, meta: dict, bar):
        self.out, self.run_id, self.shard_size, self.bar = out, run_id, shard_size, bar
        self.twins, self.paths = done
        self.model_id, self.meta = model_id, meta
        self.counts = {"seen": 0, "skipped": 0, "labeled": 0, "quarantined": 0, "duplicates": 0}
        self.by_reason: dict[str, int] = {}
        self.nodes: dict[str, dict[str, int]] = {}  # step -> node id -> files (engines that spread over nodes)
        self.labels: list[dict] = []
        self.bad: list[dict] = []
        self.copies: list[dict] = []  # byte-identical copies, written once their twins are committed
        self.shards = 0

    @property
    def seen(self) -> frozenset[str]:
        """Hashes the extraction workers skip without extracting."""
        return frozenset(self.twins)

    def ran_on(self, step: str, node: str | None) -> None:
        """Count a file a node worked on (`step`: extract, label); None: the step did not run for it."""
        if node:
            counts = self.nodes.setdefault(step, {})
            counts[node] = counts.get(node, 0) + 1

    def listed(self, items):
        for item in items:
            self.counts["seen"] += 1
            yield item

    def fresh(self, r: pdf.Extracted) -> bool:
        """False for a file done before (skipped) or a byte-identical copy of one (a row to copy)."""
        if r.sha256 in self.twins:
            if r.path in self.paths:
                self.counts["skipped"] += 1
            else:
                self.paths.add(r.path)
                self.copies.append({"path": r.path, "sha256": r.sha256, "duplicate_of": self.twins[r.sha256]})
            self.bar.update(1)
            return False
        if r.sha256:
            self.twins[r.sha256] = r.path
        self.paths.add(r.path)
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
        self.counts["labeled"] += self._commit("labels", self.labels)
        self.counts["quarantined"] += self._commit("quarantine", self.bad)
        self.labels, self.bad = [], []

    def finish(self) -> None:
        """Commit what is left, then the copies: each gets its twin's row under its own path."""
        self.flush()
        if not self.copies:
            return
        twins = {h: self.twins[h] for h in {c["sha256"] for c in self.copies}}
        found = {kind: self._twin_rows(kind, twins) for kind in SCHEMAS}
        rows: dict[str, list[dict]] = {kind: [] for kind in SCHEMAS}
        for copy in self.copies:
            kind = "labels" if copy["sha256"] in found["labels"] else "quarantine"
            rows[kind].append({**found[kind][copy["sha256"]], **copy, **self.meta})
        for kind, chunk in rows.items():
            for start in range(0, len(chunk), self.shard_size):
                self.counts["duplicates"] += self._commit(kind, chunk[start:start + self.shard_size])
        self.copies = []

    def _twin_rows(self, kind: str, twins: dict[str, str]) -> dict[str, dict]:
        """hash -> the committed row of its twin (this student's label, else the quarantine record)."""
        found: dict[str, dict] = {}
        for r in _rows(self.out, kind, SCHEMAS[kind].names, set(twins)):
            if kind == "labels" and r["model"] != self.model_id:
                continue
            if r["sha256"] not in found or r["path"] == twins[r["sha256"]]:
                found[r["sha256"]] = r
        return found

    def _commit(self, kind: str, rows: list[dict]) -> int:
        if not rows:
            return 0
        commit(self.out, kind, pa.Table.from_pylist(rows, schema=SCHEMAS[kind]), self.run_id, self.shards)
        self.shards += 1
        return len(rows)
