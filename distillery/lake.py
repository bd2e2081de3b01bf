"""The lake: Parquet artifacts under one root, registered in a DuckDB catalog.

Layout: `<home>/lake/<task>/<stage>/<key>/*.parquet`, where `key` is the stage's cache key
(config + input hashes), so a stage's output path is known before it runs and a finished stage is
recognised by its `_SUCCESS` manifest. Files are written to a temporary name and renamed (atomic
on POSIX). The catalog (`<home>/catalog.duckdb`) holds a `runs` table, an `artifacts` table and one
view per artifact name (`documents`, `quarantine`, ...) over the current files of every task, and
`bulk_runs`: one summary row per bulk run.
Catalog writes take a file lock: DuckDB allows one writing process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

STAGES = ("ingest", "seed", "teacher", "label", "student", "bulk")  # the pipeline, in order
VIEWS = ("documents", "quarantine", "seed_labels", "teacher_eval", "teacher_metrics", "machine_labels", "label_eval",
         "student_eval", "bulk_labels")

# Views that keep one row per key: ingestion and bulk may both quarantine a file; a new student
# relabels a file (older labels stay in their shards, as history). Bulk labels are keyed by path,
# not hash, so a byte-identical copy keeps its own row (its `duplicate_of` names the twin).
LATEST = {"quarantine": ("task", "path"), "bulk_labels": ("task", "path")}

# Numbered schema migrations, applied once each, in order (like simonw/llm's migrations.py).
MIGRATIONS = [
    """CREATE TABLE runs (run_id VARCHAR, task VARCHAR, stage VARCHAR, cache_key VARCHAR, config_hash VARCHAR,
        inputs JSON, output_path VARCHAR, metrics JSON, counts JSON, status VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ)""",
    """CREATE TABLE artifacts (task VARCHAR, name VARCHAR, stage VARCHAR, cache_key VARCHAR, files JSON,
        rows BIGINT, created_at TIMESTAMPTZ, PRIMARY KEY (task, name, stage))""",
    """CREATE TABLE models (task VARCHAR, role VARCHAR, path VARCHAR, cache_key VARCHAR, metrics JSON,
        promoted BOOLEAN, created_at TIMESTAMPTZ)""",
    # One row per bulk run: its summary, out of `runs` (counts and metrics are JSON there).
    """CREATE VIEW bulk_runs AS SELECT run_id, task, cache_key, status, started_at, finished_at,
        CAST(metrics->>'$.seconds' AS DOUBLE) AS seconds, metrics->>'$.engine' AS engine,
        CAST(counts->>'$.seen' AS BIGINT) AS seen, CAST(counts->>'$.skipped' AS BIGINT) AS skipped,
        CAST(counts->>'$.labeled' AS BIGINT) AS labeled, CAST(counts->>'$.quarantined' AS BIGINT) AS quarantined,
        metrics->'$.quarantine_by_reason' AS quarantine_by_reason,
        CAST(metrics->>'$.docs_per_s' AS DOUBLE) AS docs_per_s,
        CAST(metrics->>'$.labeled_per_s' AS DOUBLE) AS labeled_per_s,
        metrics->>'$.source' AS source, metrics->>'$.model' AS model
        FROM runs WHERE stage = 'bulk'""",
]


def home(path: str | Path | None = None) -> Path:
    """The artifact root: argument, else $DISTILLERY_HOME, else ./data."""
    return Path(path or os.environ.get("DISTILLERY_HOME") or "data").resolve()


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(stage: str) -> str:
    return f"{stage}-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_files(paths: Iterable[str | Path]) -> str:
    """Content hash of a set of files (order-independent by name)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def hash_model(path: str | Path) -> str:
    """A model's identity: its config and the names and sizes of its weight files (or its HF id)."""
    p = Path(path)
    if not p.exists():
        return hash_json(str(path))
    parts = [(f.name, f.stat().st_size) for f in sorted(p.glob("*.safetensors"))]
    config = (p / "config.json").read_text() if (p / "config.json").exists() else ""
    return hash_json([config, parts])


@dataclass(frozen=True)
class StageResult:
    """What a stage produced: one line when printed."""

    stage: str
    run_id: str
    outputs: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""  # the cache key of the run that made it (set by the orchestration layer)

    def __str__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        shown = []
        for k, v in self.metrics.items():
            for name, x in (v.items() if isinstance(v, dict) else [("", v)]):
                if isinstance(x, float):
                    shown.append(f"{k}.{name}={x:.3f}" if name else f"{k}={x:.3f}")
                elif isinstance(x, (int, str)) and not name:
                    shown.append(f"{k}={x}")
        return f"{self.stage}: {counts}; {' '.join(shown)} ({self.seconds:.1f}s)"

    def path(self, name: str) -> Path:
        return Path(self.outputs[name])


def stage_dir(root: Path, task: str, stage: str, key: str) -> Path:
    return root / "lake" / task / stage / key


def write_parquet(table: pa.Table | Any, path: str | Path) -> Path:
    """Write a table (pyarrow or pandas) atomically: temporary name in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def mark_done(out_dir: Path, result: StageResult) -> None:
    """The `_SUCCESS` manifest: written last, so its presence means the stage finished."""
    write_json(asdict(result), out_dir / "_SUCCESS")


def is_done(out_dir: Path) -> bool:
    return (out_dir / "_SUCCESS").exists()


def read_done(out_dir: Path) -> StageResult:
    data = json.loads((out_dir / "_SUCCESS").read_text())
    return StageResult(**data)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "catalog.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _migrate(con) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] or 0
    for number, sql in enumerate(MIGRATIONS, 1):
        if number > current:
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?)", [number])


@contextmanager
def catalog(root: Path | None = None, *, read_only: bool = False):
    """A DuckDB connection to the catalog; writers hold the lock for the connection's life."""
    import duckdb

    root = home(root)
    path = root / "catalog.duckdb"
    if read_only:
        con = duckdb.connect(str(path), read_only=True)
        try:
            yield con
        finally:
            con.close()
        return
    with locked(root):
        con = duckdb.connect(str(path))
        try:
            _migrate(con)
            yield con
        finally:
            con.close()


def _refresh_view(con, name: str) -> None:
    rows = con.execute("SELECT files FROM artifacts WHERE name = ? ORDER BY task", [name]).fetchall()
    files = [f for (js,) in rows for f in json.loads(js) if Path(f).exists()]
    if not files:
        con.execute(f"DROP VIEW IF EXISTS {name}")
        return
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    scan = f"read_parquet([{listed}], union_by_name = true)"
    if name in LATEST:  # one row per file or document: the latest run's (run ids sort by time)
        key = ", ".join(LATEST[name])
        scan = f"(SELECT DISTINCT ON ({key}) * FROM {scan} ORDER BY {key}, run_id DESC)"
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {scan}")


def register(root: Path, task: str, result: StageResult, *, cache_key: str, config_hash: str,
             inputs: dict[str, str], started_at: datetime, views: dict[str, list[str]]) -> None:
    """Record a finished stage in `runs` and point each named view at its files."""
    with catalog(root) as con:
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'completed', ?, ?)",
            [result.run_id, task, result.stage, cache_key, config_hash, json.dumps(inputs),
             json.dumps(result.outputs), json.dumps(result.metrics, default=str), json.dumps(result.counts),
             started_at, now()],
        )
        for name, files in views.items():
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            con.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [task, name, result.stage, cache_key, json.dumps([str(f) for f in files]), rows, now()])
            _refresh_view(con, name)


def record_model(root: Path, task: str, role: str, path: str, cache_key: str, metrics: dict, promoted: bool) -> None:
    with catalog(root) as con:
        con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [task, role, path, cache_key, json.dumps(metrics, default=str), promoted, now()])


def read_table(paths: str | Path | list) -> pa.Table:
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        paths = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def promoted_model(root: Path, task: str, role: str = "student") -> tuple[str, str] | None:
    """(path, cache key) of the latest promoted model of a role for a task (None when there is none)."""
    if not (home(root) / "catalog.duckdb").exists():
        return None
    with catalog(root, read_only=True) as con:
        row = con.execute("SELECT path, cache_key FROM models WHERE task = ? AND role = ? AND promoted "
                          "ORDER BY created_at DESC LIMIT 1", [task, role]).fetchone()
    return (row[0], row[1]) if row else None


def current_model(root: Path, task: str, role: str = "student") -> str | None:
    """The latest promoted model's path (None when there is none)."""
    found = promoted_model(root, task, role)
    return found[0] if found else None


def latest_outputs(root: Path, task: str, stage: str) -> dict[str, str] | None:
    """The outputs of the latest completed run of a stage whose files still exist (None if none)."""
    if not (home(root) / "catalog.duckdb").exists():
        return None
    with catalog(root, read_only=True) as con:
        rows = con.execute("SELECT output_path FROM runs WHERE task = ? AND stage = ? AND status = 'completed' "
                           "ORDER BY finished_at DESC", [task, stage]).fetchall()
    for (outputs,) in rows:
        outputs = json.loads(outputs)
        if all(Path(p).exists() for p in outputs.values()):
            return outputs
    return None
