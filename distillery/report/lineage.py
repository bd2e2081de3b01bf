"""What the report reads: a run's stage results (from the caller or the catalog) and their tables.

Only what the stages wrote: each stage's `StageResult` (outputs, counts, metrics, seconds, key), the
Parquet files its outputs point to, and the `runs` rows of the catalog with their recorded inputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from distillery import lake
from distillery.spec import TaskSpec

_RESULT_FIELDS = {f.name for f in fields(lake.StageResult)}
_RUN_COLUMNS = ("run_id", "stage", "cache_key", "inputs", "outputs", "metrics", "counts", "started_at",
                "finished_at")


def as_result(stage: str, value: Any) -> lake.StageResult | None:
    """A StageResult from what a caller holds: a StageResult, its asdict() form, or just its outputs."""
    if value is None or isinstance(value, lake.StageResult):
        return value
    if isinstance(value, Mapping):
        if "outputs" in value:
            known = {k: v for k, v in value.items() if k in _RESULT_FIELDS}
            return lake.StageResult(**{"stage": stage, "run_id": "", **known})
        return lake.StageResult(stage, "", {k: str(v) for k, v in value.items()})
    raise TypeError(f"stage {stage!r}: expected a StageResult, a dict or None, got {type(value).__name__}")


def output_files(value: str) -> list[Path]:
    """An output value as files: a file, a folder of Parquet files, or a JSON list (bulk labels)."""
    if value.startswith("["):
        return [Path(p) for p in json.loads(value)]
    return lake.files(value)


class Run:
    """The stage results of one run and lazy, cached reads of their tables."""

    def __init__(self, results: Mapping[str, Any]):
        self.results = {s: r for s, v in results.items() if (r := as_result(s, v)) is not None}
        self._tables: dict[tuple[str, str], Any] = {}
        self.missing: list[str] = []

    def get(self, stage: str) -> lake.StageResult | None:
        return self.results.get(stage)

    def table(self, stage: str, name: str):
        """The output `name` of `stage` as a DataFrame, or None (stage not run, output absent, files gone)."""
        key = (stage, name)
        if key not in self._tables:
            result, frame = self.results.get(stage), None
            value = result.outputs.get(name) if result else None
            if value:
                files = output_files(value)
                gone = [str(f) for f in files if not f.exists()]
                if gone or not files:
                    self.missing.append(f"{stage}.{name}: {', '.join(gone) or value}")
                else:
                    frame = lake.read_table(files).to_pandas()
            self._tables[key] = frame
        return self._tables[key]


def eval_sets(run: Run) -> list[tuple[str, Any]]:
    """(model, per-item rows) of every evaluation on the held-out split, in pipeline order.

    The TF-IDF baseline is the teacher stage's; the student stage's baseline rows show too when they
    cover other items (the teacher's evaluation is capped), as `baseline (student's items)`."""
    out = []
    te = run.table("teacher", "teacher_eval")
    if te is not None and "model" in te:
        for model in ("base", "baseline", "llm", "teacher"):  # llm: the committee's RFT member alone
            rows = te[te["model"] == model]
            if len(rows):
                out.append((model, rows))
    le = run.table("label", "label_eval")
    if le is not None and len(le):
        out.append(("teacher labels (label path)", le))
    se = run.table("student", "student_eval")
    if se is not None and len(se):
        models = se["model"] if "model" in se else None  # runs before the baseline wrote student rows only
        out.append(("student", se if models is None else se[models == "student"]))
        theirs = se[models == "baseline"] if models is not None else se.iloc[:0]
        ours = dict(out).get("baseline")
        if len(theirs) and (ours is None or set(theirs["sha256"]) != set(ours["sha256"])):
            out.append(("baseline (student's items)", theirs))
    return out


# ---- the catalog ---------------------------------------------------------------------------------

def catalog_run(task: str, root: str | Path | None = None) -> tuple[dict[str, lake.StageResult], dict[str, dict]]:
    """The latest run of a task in the catalog: consistent stage results and their recorded inputs.

    `artifacts` holds the latest registered artifact per (task, name, stage); the stage registered
    last (bulk aside) anchors the run. Upstream, the run takes the stages whose cache keys the
    recorded `inputs` name; downstream, the latest run of each later stage built on those keys. So a
    flow stopped at the teacher reports its new teacher with no student, and an older student is
    never shown beside a newer teacher. Bulk is the latest bulk run of the chosen student. Each
    result comes from its stage folder's `_SUCCESS` manifest when there (exact seconds), else from
    its `runs` row.
    """
    root = lake.home(root)
    if not lake.Layout(root).catalog.exists():
        return {}, {}
    rows, anchor = _completed_runs(root, task)
    chosen = _with_bulk(rows, _downstream(rows, _upstream(rows, anchor)))
    results, inputs = {}, {}
    for stage in lake.STAGES:
        if stage in chosen:
            results[stage] = _result(root, task, stage, chosen[stage])
            inputs[stage] = chosen[stage]["inputs"]
    return results, inputs


def _completed_runs(root: Path, task: str) -> tuple[list[dict], tuple | None]:
    """The task's completed `runs` rows, oldest first (inputs parsed), and the (stage, key) anchoring the run."""
    with lake.catalog(root, read_only=True) as con:
        runs = con.execute("SELECT run_id, stage, cache_key, inputs, output_path, metrics, counts, started_at, "
                           "finished_at FROM runs WHERE task = ? AND status = 'completed' ORDER BY finished_at",
                           [task]).fetchall()
        anchor = con.execute("SELECT stage, cache_key FROM artifacts WHERE task = ? AND stage != 'bulk' "
                             "ORDER BY created_at DESC LIMIT 1", [task]).fetchone()
    rows = [dict(zip(_RUN_COLUMNS, r)) for r in runs]
    for r in rows:
        r["inputs"] = json.loads(r["inputs"] or "{}")
    return rows, anchor


def _upstream(rows: list[dict], anchor: tuple | None) -> dict[str, dict]:
    """The anchor's run row and, transitively, the rows of the stages it was built from."""
    chosen: dict[str, dict] = {}
    todo = [tuple(anchor)] if anchor else []
    while todo:
        stage, key = todo.pop()
        hits = [r for r in rows if r["stage"] == stage and r["cache_key"] == key]
        if hits and stage not in chosen:
            chosen[stage] = hits[-1]
            todo += [(s, k) for s, k in hits[-1]["inputs"].items() if s in lake.STAGES]
    return chosen


def _downstream(rows: list[dict], chosen: dict[str, dict]) -> dict[str, dict]:
    """`chosen` plus, per later stage (bulk aside), its latest run built on exactly the chosen keys."""
    chosen = dict(chosen)
    for stage in lake.STAGES:
        if stage in chosen or stage == "bulk" or not chosen:
            continue
        built_on = []
        for r in rows:
            ups = [(s, k) for s, k in r["inputs"].items() if s in lake.STAGES]
            if r["stage"] == stage and ups and all(s in chosen and chosen[s]["cache_key"] == k for s, k in ups):
                built_on.append(r)
        if built_on:
            chosen[stage] = built_on[-1]
    return chosen


def _with_bulk(rows: list[dict], chosen: dict[str, dict]) -> dict[str, dict]:
    """`chosen` plus the latest bulk run of the chosen student (by cache key, else by model path)."""
    if "student" not in chosen:
        return chosen
    student = chosen["student"]
    ids = (student["cache_key"], json.loads(student["outputs"]).get("model"))
    bulk = [r for r in rows if r["stage"] == "bulk" and r["inputs"].get("student") in ids]
    by_key = [r for r in bulk if r["inputs"].get("student") == ids[0]]  # the flow's, before inbox runs
    return {**chosen, "bulk": (by_key or bulk)[-1]} if bulk else chosen


def _result(root: Path, task: str, stage: str, row: dict) -> lake.StageResult:
    folder = lake.Layout(root).stage_dir(task, stage, row["cache_key"])
    if stage != "bulk" and lake.is_done(folder):
        return lake.read_done(folder)
    seconds = (row["finished_at"] - row["started_at"]).total_seconds() if row["started_at"] else 0.0
    return lake.StageResult(stage, row["run_id"], json.loads(row["outputs"]), json.loads(row["counts"] or "{}"),
                            json.loads(row["metrics"] or "{}"), seconds, row["cache_key"])


def recorded_inputs(task: str, results: Mapping[str, lake.StageResult]) -> dict[str, dict]:
    """Each stage's recorded inputs (upstream keys, outside hashes) from the catalog, where it has them."""
    import duckdb

    found = {}
    try:
        for stage, r in results.items():
            rows = lake.query(None, "SELECT inputs FROM runs WHERE task = ? AND stage = ? AND cache_key = ? "
                                    "ORDER BY finished_at DESC LIMIT 1", [task, stage, r.key])
            if rows and rows[0][0]:
                found[stage] = json.loads(rows[0][0])
    except duckdb.Error:  # a catalog held by a writer: lineage just shows less
        return {}
    return found


def run_name(spec: TaskSpec, results: Mapping[str, Any]) -> str:
    """`<task>-<run id of the most downstream stage>`: stable while the artifacts are the same."""
    run = Run(results)
    last = next((run.get(s) for s in reversed(lake.STAGES) if run.get(s)), None)
    ident = (last.run_id or last.key) if last else "empty"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec.name}-{ident}")


def report_dir(spec: TaskSpec, results: Mapping[str, Any], root: str | Path | None = None) -> Path:
    return lake.Layout.at(root).reports / run_name(spec, results)
