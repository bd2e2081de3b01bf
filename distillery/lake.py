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


def home(path: str | Path | Layout | None = None) -> Path:
    """The artifact root: argument, else $DISTILLERY_HOME, else ./data."""
    if isinstance(path, Layout):
        return path.root
    return Path(path or os.environ.get("DISTILLERY_HOME") or "data").resolve()


@dataclass(frozen=True)
class Layout:
    """Where every artifact lives, under one root resolved once (`Layout.at()`) and passed down."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "Layout":
        """The layout under `root`, else $DISTILLERY_HOME, else ./data."""
        return cls(home(root))

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def stage_dir(self, task: str, stage: str, key: str) -> Path:
        """A stage's output folder: its cache key names it, so it is known before the stage runs."""
        return self.lake / task / stage / key

    def bulk_dir(self, task: str) -> Path:
        """Bulk labels accumulate in one folder per task (shards committed through a manifest)."""
        return self.lake / task / "bulk"


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
    pickled = sorted(p.glob("*.pkl"))  # a saved probability model (members.save): small, hashed whole
    if pickled:
        parts.append(hash_files(pickled))
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
def catalog(root: Path | Layout | None = None, *, read_only: bool = False):
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


def ensure_view(root: Path | Layout | None, name: str, schema: pa.Schema) -> None:
    """An empty view `name` with the columns of `schema`, unless the catalog already has one: a query
    written for a stage's output answers "no rows" before that stage has written any."""
    import duckdb

    columns = ", ".join(f"CAST(NULL AS {_SQL_TYPES.get(str(f.type), 'VARCHAR')}) AS {f.name}" for f in schema)
    with catalog(root) as con:
        if con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0]:
            return
        try:
            con.execute(f"CREATE VIEW {name} AS SELECT {columns} LIMIT 0")
        except duckdb.CatalogException:  # a table of that name: it exists, which is all a reader needs
            pass


_SQL_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "int64": "BIGINT", "int32": "INTEGER", "bool": "BOOLEAN"}


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
        paths = files(paths)
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def query(root: Path | Layout | None, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a read-only catalog query; no rows when there is no catalog yet."""
    path = home(root) / "catalog.duckdb"
    if not path.exists():
        return []
    with catalog(root, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def latest_model(root: Path | Layout | None, task: str, role: str = "student", *,
                 promoted: bool = True) -> dict | None:
    """The latest model of a role for a task (only promoted ones unless `promoted=False`): path, cache
    key, metrics and whether it was promoted; None when there is none."""
    rows = query(root, "SELECT path, cache_key, metrics, promoted FROM models WHERE task = ? AND role = ? "
                       f"{'AND promoted ' if promoted else ''}ORDER BY created_at DESC LIMIT 1", [task, role])
    if not rows:
        return None
    path, key, metrics, was_promoted = rows[0]
    return {"path": path, "key": key, "metrics": json.loads(metrics or "{}"), "promoted": bool(was_promoted)}


def promoted_model(root: Path | Layout | None, task: str, role: str = "student") -> tuple[str, str] | None:
    """(path, cache key) of the latest promoted model of a role for a task (None when there is none)."""
    found = latest_model(root, task, role)
    return (found["path"], found["key"]) if found else None


def current_model(root: Path | Layout | None, task: str, role: str = "student") -> str | None:
    """The latest promoted model's path (None when there is none)."""
    found = promoted_model(root, task, role)
    return found[0] if found else None


def latest(root: Path | Layout | None, task: str, stage: str) -> StageResult | None:
    """The latest completed run of a stage whose output files still exist (None if none): how a stage,
    the report, the benchmarks and the CLI find an earlier stage's outputs by name."""
    rows = query(root, "SELECT run_id, output_path, counts, metrics, cache_key FROM runs WHERE task = ? AND stage = ? "
                       "AND status = 'completed' ORDER BY finished_at DESC", [task, stage])
    for run_id, outputs, counts, metrics, key in rows:
        outputs = json.loads(outputs)
        if all(Path(p).exists() for p in outputs.values()):
            return StageResult(stage, run_id, outputs, json.loads(counts or "{}"), json.loads(metrics or "{}"), key=key)
    return None


def latest_outputs(root: Path | Layout | None, task: str, stage: str) -> dict[str, str] | None:
    """The outputs of `latest` (None if none)."""
    found = latest(root, task, stage)
    return found.outputs if found else None


def files(path: str | Path) -> list[Path]:
    """An output's Parquet files: the file itself, or a folder's `*.parquet` in name order."""
    p = Path(path)
    return sorted(p.glob("*.parquet")) if p.is_dir() else [p]
