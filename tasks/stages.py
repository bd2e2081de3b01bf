"""One thin Prefect task per stage: cache key, artifact path, catalog registration, Prefect artifact.

A stage's cache key is the hash of its spec sections, its code version, the keys of the stages it
reads (so a change flows downstream, Merkle-style) and the content hashes of its outside inputs
(PDFs, seed file, base model). Its output folder is `lake/<task>/<stage>/<key>`: when that folder
lost its `_SUCCESS` manifest the task runs with `refresh_cache`, so deleted outputs are rebuilt
rather than reported Cached.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from distillery import bulk, ingest, label, lake, report, rft, seed, sft
from distillery.errors import TransientError
from distillery.spec import TaskSpec

# Bump a stage's version when its code changes what it produces.
VERSIONS = {"ingest": 1, "seed": 1, "teacher": 3, "label": 3, "student": 2, "bulk": 3}
SECTIONS = {"ingest": ("source", "ingest"), "seed": ("seeds", "output"),
            "teacher": ("output", "prompts", "grader", "models", "teacher", "seed"),
            "label": ("output", "prompts", "label", "teacher"), "student": ("output", "prompts", "models", "student", "seed"),
            "bulk": ("bulk", "ingest", "prompts", "output")}


# What each stage reads, in the order its runner takes them.
UPSTREAM = {"ingest": (), "seed": ("ingest",), "teacher": ("seed", "ingest"), "label": ("teacher", "ingest", "seed"),
            "student": ("label", "seed", "ingest", "teacher")}


def outside_inputs(stage: str, spec: TaskSpec) -> dict[str, str]:
    if stage == "ingest":
        return {"pdfs": ingest.source_hash(spec.path(spec.source))}
    if stage == "seed":
        return {"seed_file": lake.hash_files([spec.path(spec.seeds.path)])}
    if stage == "teacher":
        return {"base_model": lake.hash_model(spec.path(spec.models.base))}
    if stage == "student":
        return {"student_model": lake.hash_model(spec.path(spec.models.student))}
    return {}


def stage_key(stage: str, spec: TaskSpec, upstream: list[lake.StageResult]) -> tuple[str, dict]:
    inputs = {**outside_inputs(stage, spec), **{u.stage: u.key for u in upstream}}
    key = lake.hash_json([stage, VERSIONS[stage], spec.section_hash(*SECTIONS[stage]), inputs])
    return key, inputs


def _out_dir(stage: str, spec: TaskSpec, key: str) -> Path:
    return lake.stage_dir(lake.home(), spec.name, stage, key)


def _transient(task, task_run, state) -> bool:
    """Retry (with backoff) only failures that another attempt can fix: not a bad spec or seed file."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (TransientError, ConnectionError, TimeoutError, MemoryError))


RETRY = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=10), "retry_condition_fn": _transient}


def _cache_key(context, parameters) -> str:
    return f"{parameters['spec'].name}-{parameters['stage']}-{parameters['key']}"


def run_stage(stage: str, spec: TaskSpec, upstream: list[lake.StageResult], **call):
    """Run a stage task; a cached result whose output folder is gone is recomputed, not reused.

    The key is computed once here (hashing the inputs can mean reading every PDF) and passed on.
    """
    key, inputs = stage_key(stage, spec, upstream)
    missing = not lake.is_done(_out_dir(stage, spec, key))
    return stage_task.with_options(refresh_cache=missing)(stage, spec, upstream, key, inputs, **call)


def progress_artifact(spec: TaskSpec, stage: str) -> Callable[[int, int], None]:
    """A Prefect progress artifact for a long stage, updated as its shards land."""
    artifact_id = None

    def update(done: int, total: int) -> None:
        nonlocal artifact_id
        percent = 100.0 * done / total if total else 100.0
        if artifact_id is None:
            artifact_id = create_progress_artifact(percent, key=f"{spec.name}-{stage}-progress".lower().replace("_", "-"),
                                                   description=f"{stage}: documents done of {total}")
        else:
            update_progress_artifact(artifact_id, percent)

    return update


RUNNERS: dict[str, Callable[..., lake.StageResult]] = {
    "ingest": lambda spec, up, out: ingest.ingest(spec, out=out),
    "seed": lambda spec, up, out: seed.import_seeds(spec, up[0].path("documents"), out=out),
    "teacher": lambda spec, up, out: rft.train_teacher(spec, up[0].path("seed_labels"), up[1].path("documents"), out=out),
    "label": lambda spec, up, out: label.machine_label(spec, up[0].path("model"), up[1].path("documents"),
                                                       up[2].path("seed_labels"), out=out,
                                                       on_progress=progress_artifact(spec, "label")),
    "student": lambda spec, up, out: sft.train_student(spec, up[0].path("machine_labels"), up[1].path("seed_labels"),
                                                       up[2].path("documents"), out=out,
                                                       teacher_top1=up[3].metrics["teacher"]["top1"]),
}
VIEWS = {"ingest": ("documents", "quarantine"), "seed": ("seed_labels",), "teacher": ("teacher_eval", "teacher_metrics"),
         "label": ("machine_labels", "label_eval"), "student": ("student_eval",)}


def _files(path: str) -> list[str]:
    p = Path(path)
    return [str(f) for f in sorted(p.glob("*.parquet"))] if p.is_dir() else [str(p)]


@task(cache_key_fn=_cache_key, persist_result=True, cache_expiration=timedelta(days=365),
      task_run_name="{stage}", **RETRY)
def stage_task(stage: str, spec: TaskSpec, upstream: list[lake.StageResult], key: str, inputs: dict) -> lake.StageResult:
    """Run one pipeline stage (or reuse its finished output) and register it in the catalog."""
    log = get_run_logger()
    out = _out_dir(stage, spec, key)
    if lake.is_done(out):
        log.info("%s: output %s already complete", stage, out)
        return lake.read_done(out)
    started = lake.now()
    result = replace(RUNNERS[stage](spec, upstream, out), key=key)
    views = {v: _files(result.outputs[v]) for v in VIEWS[stage]}
    lake.register(lake.home(), spec.name, result, cache_key=key, config_hash=spec.section_hash(*SECTIONS[stage]),
                  inputs=inputs, started_at=started, views=views)
    if stage == "student":
        gate = result.metrics["promotion"]
        lake.record_model(lake.home(), spec.name, "student", result.outputs["model"], key, result.metrics,
                          gate["promoted"])
        (log.info if gate["promoted"] else log.warning)("student %s: %s", "promoted" if gate["promoted"] else
                                                        "NOT promoted (bulk keeps the previous student)", gate["reason"])
    lake.mark_done(out, result)
    log.info("%s", result)
    publish(spec, result)
    return result


def _bulk_key(spec: TaskSpec, student: lake.StageResult) -> str:
    """Student + bulk settings + the source's listing (names, sizes, mtimes: cheap on millions of files)."""
    listing = ingest.source_listing_hash(ingest.resolve_source(spec, spec.bulk.source))
    return lake.hash_json(["bulk", VERSIONS["bulk"], spec.section_hash(*SECTIONS["bulk"]), student.key, listing])


def _bulk_marker(spec: TaskSpec, key: str) -> Path:
    return lake.home() / "lake" / spec.name / "bulk" / "done" / key


def _bulk_cache_key(context, parameters) -> str:
    return f"{parameters['spec'].name}-bulk-{parameters['key']}"


def promoted_student(spec: TaskSpec, latest: lake.StageResult) -> lake.StageResult | None:
    """The student bulk labeling uses: the latest if it passed the gate, else the last one that did."""
    if latest.metrics.get("promotion", {}).get("promoted", True):
        return latest
    found = lake.promoted_model(lake.home(), spec.name)
    return lake.StageResult("student", "", {"model": found[0]}, key=found[1]) if found else None


def run_bulk(spec: TaskSpec, student: lake.StageResult, relabel: bool = False, **call):
    """Bulk-label the source; reused only while the source listing and the student are unchanged."""
    key = _bulk_key(spec, student)
    missing = relabel or not _bulk_marker(spec, key).exists()
    return bulk_task.with_options(refresh_cache=missing)(spec, student, key, relabel, **call)


@task(cache_key_fn=_bulk_cache_key, persist_result=True, cache_expiration=timedelta(days=365),
      task_run_name="bulk", **RETRY)
def bulk_task(spec: TaskSpec, student: lake.StageResult, key: str, relabel: bool = False) -> lake.StageResult:
    """Label the PDFs of the bulk source the student has not labeled yet (all of them with relabel)."""
    out = lake.home() / "lake" / spec.name / "bulk"
    started = lake.now()
    result = replace(bulk.bulk_label(spec, Path(student.outputs["model"]), out=out, relabel=relabel), key=key)
    _register_bulk(spec, result, out, key, {"student": student.key}, started)
    lake.write_json({"run_id": result.run_id}, _bulk_marker(spec, key))
    return result


@task(task_run_name="bulk-inbox", **RETRY)
def label_inbox(spec: TaskSpec, student: str, source: str | None = None, relabel: bool = False,
                engine: str | None = None) -> lake.StageResult:
    """The scheduled bulk run: never cached, since skipping what is done is bulk labeling's own job."""
    out = lake.home() / "lake" / spec.name / "bulk"
    started = lake.now()
    result = bulk.bulk_label(spec, Path(student), out=out, source=source, relabel=relabel, engine=engine)
    _register_bulk(spec, result, out, result.metrics["model"], {"student": student, "source": source or ""}, started)
    return result


def _register_bulk(spec: TaskSpec, result: lake.StageResult, out: Path, key: str, inputs: dict, started) -> None:
    quarantine = [str(f) for f in bulk.committed(out, "quarantine")]
    views = {"bulk_labels": [str(f) for f in bulk.committed(out, "labels")]}
    if quarantine:
        views["quarantine"] = quarantine
    lake.register(lake.home(), spec.name, result, cache_key=key, config_hash=spec.section_hash(*SECTIONS["bulk"]),
                  inputs=inputs, started_at=started, views=views)
    get_run_logger().info("%s", result)
    publish(spec, result)


@task(task_run_name="report")
def report_task(spec: TaskSpec, results: dict[str, lake.StageResult], states: dict[str, str], profile: str | None) -> str:
    """The run's HTML report (data/reports/<run>/index.html), linked from a Prefect artifact."""
    path = report.write_report(spec, results, profile=profile, states=states)
    create_markdown_artifact(f"# {spec.name}: run report\n\n[{path}](file://{path.resolve()})\n\n"
                             "Accuracy per stage, reward curve, confusion, calibration, throughput and lineage.",
                             key=f"{spec.name}-report".lower().replace("_", "-"), description="HTML run report")
    get_run_logger().info("report: %s", path)
    return str(path)


def status(spec: TaskSpec) -> list[dict]:
    """Each stage's cache key for the spec as it is now, whether its output is complete, and if not why.

    "why" compares the key's ingredients with the stage's latest completed run in the catalog.
    """
    keys: dict[str, lake.StageResult] = {}
    rows = []
    for stage in (*UPSTREAM, "bulk"):
        if stage == "bulk":
            key, inputs = _bulk_key(spec, keys["student"]), {"student": keys["student"].key}
            done = _bulk_marker(spec, key).exists()
        else:
            key, inputs = stage_key(stage, spec, [keys[u] for u in UPSTREAM[stage]])
            done = lake.is_done(_out_dir(stage, spec, key))
        keys[stage] = lake.StageResult(stage, "", {}, key=key)
        rows.append({"stage": stage, "key": key, "state": "cached" if done else "stale",
                     "why": "" if done else _why_stale(spec, stage, key, inputs)})
    return rows


def _why_stale(spec: TaskSpec, stage: str, key: str, inputs: dict) -> str:
    root = lake.home()
    if not (root / "catalog.duckdb").exists():
        return "never run"
    with lake.catalog(root, read_only=True) as con:
        row = con.execute("SELECT config_hash, inputs, cache_key FROM runs WHERE task = ? AND stage = ? AND status = 'completed' "
                          "ORDER BY finished_at DESC LIMIT 1", [spec.name, stage]).fetchone()
    if row is None:
        return "never run"
    if row[2] == key:
        return "output deleted"
    if stage == "bulk":
        return "new student or source files changed since the last run"
    reasons = []
    if row[0] != spec.section_hash(*SECTIONS[stage]):
        reasons.append(f"spec changed ({', '.join(SECTIONS[stage])})")
    before = json.loads(row[1])
    reasons += [f"{name} changed" for name in inputs if before.get(name) != inputs[name]]
    return "; ".join(reasons) or "stage code version changed"


def publish(spec: TaskSpec, result: lake.StageResult) -> None:
    """A markdown artifact with the stage's counts and headline metrics."""
    lines = [f"# {spec.name}: {result.stage}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.counts.items()]
    for k, v in result.metrics.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()
                          if isinstance(b, (int, float, str)))
        lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines.append(f"| seconds | {result.seconds:.1f} |")
    create_markdown_artifact("\n".join(lines), key=f"{spec.name}-{result.stage}".lower().replace("_", "-"),
                             description=f"{result.stage} stage of {spec.name}")
