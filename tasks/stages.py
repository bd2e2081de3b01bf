"""One thin Prefect task per stage: cache key, artifact path, catalog registration, Prefect artifact.

A stage is a `Stage` record: the module whose `run(spec, inputs, out)` does the work, the code
version and spec sections its cache key covers, and the catalog views it registers. What it reads
is its module's `Inputs` (named stages, found by name among the results so far). The cache key is
the hash of its spec sections, its version, the keys of the stages it reads (so a change flows
downstream, Merkle-style) and the content hashes of its outside inputs (PDFs, seed file, base
model). Its output folder is `lake/<task>/<stage>/<key>`: when that folder lost its `_SUCCESS`
manifest the task runs with `refresh_cache`, so deleted outputs are rebuilt rather than reported Cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.states import Failed
from prefect.tasks import exponential_backoff

from distillery import bulk, encoder, ingest, label, lake, report, seed, sources, student, teacher
from distillery.errors import NotPromoted, StageInputMissing, TransientError
from distillery.lake import Layout, StageResult
from distillery.spec import ClassificationOutput, TaskSpec


@dataclass(frozen=True)
class Stage:
    """How the pipeline runs one stage, and what its cache key covers."""

    name: str
    module: ModuleType  # its `run(spec, inputs, out)` and `Inputs`
    version: int  # bump when the stage's code changes what it produces
    sections: tuple[str, ...]  # the spec sections its output depends on
    views: tuple[str, ...] = ()  # catalog views over its outputs
    outside: Callable[[TaskSpec], dict[str, str]] = field(default=lambda spec: {})  # content hashes of files it reads

    @property
    def reads(self) -> tuple[str, ...]:
        return self.module.Inputs.reads


def _encoder(spec: TaskSpec) -> dict[str, str]:
    """The sentence encoder's identity, for the stages that may use it (classification)."""
    if not isinstance(spec.output, ClassificationOutput):
        return {}
    return {"encoder": lake.hash_model(encoder.resolve(spec.models.encoder, spec.root))}


INGEST = Stage("ingest", ingest, 1, ("source", "ingest"), ("documents", "quarantine"),
               lambda spec: {"pdfs": sources.source_hash(spec.path(spec.source))})
SEED = Stage("seed", seed, 1, ("seeds", "output"), ("seed_labels",),
             lambda spec: {"seed_file": lake.hash_files([spec.path(spec.seeds.path)])})
TEACHER = Stage("teacher", teacher, 8, ("output", "prompts", "grader", "models", "teacher", "seed", "encoder"),
                ("teacher_eval", "teacher_metrics"),
                lambda spec: {"base_model": lake.hash_model(spec.path(spec.models.base)), **_encoder(spec)})
LABEL = Stage("label", label, 5, ("output", "prompts", "label", "teacher", "scope", "encoder"),
              ("machine_labels", "label_eval"))
STUDENT = Stage("student", student, 6, ("output", "prompts", "models", "student", "seed", "encoder"),
                ("student_eval",),
                lambda spec: {"student_model": lake.hash_model(spec.path(spec.models.student)), **_encoder(spec)})
STAGES = {s.name: s for s in (INGEST, SEED, TEACHER, LABEL, STUDENT)}
BULK_VERSION, BULK_SECTIONS = 3, ("bulk", "ingest", "prompts", "output")


def stage_key(stage: Stage, spec: TaskSpec, results: Mapping[str, StageResult]) -> tuple[str, dict]:
    inputs = {**stage.outside(spec), **{name: results[name].key for name in stage.reads}}
    key = lake.hash_json([stage.name, stage.version, spec.section_hash(*stage.sections), inputs])
    return key, inputs


def _transient(task, task_run, state) -> bool:
    """Retry (with backoff) only failures that another attempt can fix: not a bad spec or seed file."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (TransientError, ConnectionError, TimeoutError, MemoryError))


RETRY = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=10), "retry_condition_fn": _transient}


def _cache_key(context, parameters) -> str:
    return f"{parameters['spec'].name}-{parameters['stage']}-{parameters['key']}"


def run_stage(stage: Stage, spec: TaskSpec, layout: Layout, results: Mapping[str, StageResult], **call):
    """Run a stage task; a cached result whose output folder is gone is recomputed, not reused.

    The key is computed once here (hashing the inputs can mean reading every PDF) and passed on.
    """
    key, inputs = stage_key(stage, spec, results)
    missing = not lake.is_done(layout.stage_dir(spec.name, stage.name, key))
    upstream = {name: results[name] for name in stage.reads}
    return stage_task.with_options(refresh_cache=missing)(stage.name, spec, layout, upstream, key, inputs, **call)


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


@task(cache_key_fn=_cache_key, persist_result=True, cache_expiration=timedelta(days=365),
      task_run_name="{stage}", **RETRY)
def stage_task(stage: str, spec: TaskSpec, layout: Layout, upstream: dict[str, StageResult], key: str,
               inputs: dict) -> StageResult:
    """Run one pipeline stage (or reuse its finished output) and register it in the catalog."""
    log = get_run_logger()
    record = STAGES[stage]
    out = layout.stage_dir(spec.name, stage, key)
    if lake.is_done(out):
        log.info("%s: output %s already complete", stage, out)
        return warn(lake.read_done(out))
    started = lake.now()
    hooks = {"on_progress": progress_artifact(spec, stage)} if stage == "label" else {}
    result = replace(record.module.run(spec, record.module.Inputs.of(upstream), out, **hooks), key=key)
    views = {v: [str(f) for f in lake.files(result.outputs[v])] for v in record.views}
    lake.register(layout.root, spec.name, result, cache_key=key, config_hash=spec.section_hash(*record.sections),
                  inputs=inputs, started_at=started, views=views)
    if stage == "student":
        gate = result.metrics["promotion"]
        lake.record_model(layout.root, spec.name, "student", result.outputs["model"], key, result.metrics,
                          gate["promoted"])
        (log.info if gate["promoted"] else log.warning)("student %s: %s", "promoted" if gate["promoted"] else
                                                        "NOT promoted (bulk uses the last promoted student, if any)", gate["reason"])
    lake.mark_done(out, result)
    log.info("%s", result)
    publish(spec, result)
    return warn(result)


def warn(result: StageResult) -> StageResult:
    """Log each warning the stage measured (a model below the TF-IDF baseline, with what to try)."""
    for message in result.metrics.get("warnings", []):
        get_run_logger().warning("%s: %s", result.stage, message)
    return result


def _bulk_key(spec: TaskSpec, student: StageResult) -> str:
    """Student + bulk settings + the source's listing (names, sizes, mtimes: cheap on millions of files)."""
    listing = sources.source_listing_hash(sources.resolve_source(spec, spec.bulk.source))
    return lake.hash_json(["bulk", BULK_VERSION, spec.section_hash(*BULK_SECTIONS), student.key, listing])


def _bulk_marker(spec: TaskSpec, layout: Layout, key: str) -> Path:
    return layout.bulk_dir(spec.name) / "done" / key


def _bulk_cache_key(context, parameters) -> str:
    return f"{parameters['spec'].name}-bulk-{parameters['key']}"


def promoted_student(spec: TaskSpec, layout: Layout, latest: StageResult) -> StageResult | None:
    """The student bulk labeling uses: the latest if it passed the gate, else the last one that did."""
    if latest.metrics.get("promotion", {}).get("promoted", True):
        return latest
    found = lake.promoted_model(layout, spec.name)
    return StageResult("student", "", {"model": found[0]}, key=found[1]) if found else None


def pick_student(spec: TaskSpec, layout: Layout, choice: str = "promoted") -> tuple[str, str]:
    """(model path, why it was chosen) for a bulk run: `promoted` (the latest student that passed its
    gate), `latest` (the latest student, promoted or not: an explicit override) or a model folder."""
    if choice not in ("promoted", "latest"):
        return str(Path(choice).resolve()), "given"
    found = lake.latest_model(layout, spec.name, promoted=choice == "promoted")
    if found is None and choice == "latest":
        raise StageInputMissing("bulk", f"a trained student for task {spec.name!r}", "make student")
    if found is None:
        failed = lake.latest_model(layout, spec.name, promoted=False)
        if failed is None:
            raise StageInputMissing("bulk", f"a promoted student for task {spec.name!r}", "make student")
        raise NotPromoted(spec.name, failed["metrics"].get("promotion", {}).get("reason", "below the gate"))
    if found["promoted"]:
        return found["path"], "promoted"
    return found["path"], f"latest, not promoted: {found['metrics'].get('promotion', {}).get('reason', '')}"


def run_bulk(spec: TaskSpec, layout: Layout, student: StageResult, relabel: bool = False, **call):
    """Bulk-label the source; reused only while the source listing and the student are unchanged."""
    key = _bulk_key(spec, student)
    missing = relabel or not _bulk_marker(spec, layout, key).exists()
    return bulk_task.with_options(refresh_cache=missing)(spec, layout, student, key, relabel, **call)


@task(cache_key_fn=_bulk_cache_key, persist_result=True, cache_expiration=timedelta(days=365),
      task_run_name="bulk", **RETRY)
def bulk_task(spec: TaskSpec, layout: Layout, student: StageResult, key: str, relabel: bool = False) -> StageResult:
    """Label the PDFs of the bulk source the student has not labeled yet (all of them with relabel)."""
    out = layout.bulk_dir(spec.name)
    started = lake.now()
    result = replace(bulk.bulk_label(spec, Path(student.outputs["model"]), out=out, relabel=relabel), key=key)
    _register_bulk(spec, layout, result, key, {"student": student.key}, started)
    lake.write_json({"run_id": result.run_id}, _bulk_marker(spec, layout, key))
    return result


@task(task_run_name="bulk-inbox", **RETRY)
def label_inbox(spec: TaskSpec, layout: Layout, student: str, source: str | None = None, relabel: bool = False,
                engine: str | None = None, chosen: str = "promoted") -> StageResult:
    """The scheduled bulk run: never cached, since skipping what is done is bulk labeling's own job.
    `chosen` says why this student (promoted, or an override) and lands in the run's recorded inputs."""
    out = layout.bulk_dir(spec.name)
    started = lake.now()
    result = bulk.bulk_label(spec, Path(student), out=out, source=source, relabel=relabel, engine=engine)
    inputs = {"student": student, "source": source or "", "student_choice": chosen}
    _register_bulk(spec, layout, result, result.metrics["model"], inputs, started)
    return result


def _register_bulk(spec: TaskSpec, layout: Layout, result: StageResult, key: str, inputs: dict, started) -> None:
    out = layout.bulk_dir(spec.name)
    quarantine = [str(f) for f in bulk.committed(out, "quarantine")]
    views = {"bulk_labels": [str(f) for f in bulk.committed(out, "labels")]}
    if quarantine:
        views["quarantine"] = quarantine
    lake.register(layout.root, spec.name, result, cache_key=key, config_hash=spec.section_hash(*BULK_SECTIONS),
                  inputs=inputs, started_at=started, views=views)
    get_run_logger().info("%s", result)
    publish(spec, result)


@task(task_run_name="report")
def report_task(spec: TaskSpec, results: dict[str, StageResult], states: dict[str, str], profile: str | None) -> str:
    """The run's HTML report (data/reports/<run>/index.html), linked from a Prefect artifact."""
    path = report.write_report(spec, results, profile=profile, states=states)
    create_markdown_artifact(f"# {spec.name}: run report\n\n[{path}](file://{path.resolve()})\n\n"
                             "Accuracy per stage, reward curve, confusion, calibration, throughput and lineage.",
                             key=f"{spec.name}-report".lower().replace("_", "-"), description="HTML run report")
    get_run_logger().info("report: %s", path)
    return str(path)


def status(spec: TaskSpec, layout: Layout | None = None) -> list[dict]:
    """Each stage's cache key for the spec as it is now, whether its output is complete, and if not why.

    "why" compares the key's ingredients with the stage's latest completed run in the catalog.
    """
    layout = layout or Layout.at()
    keys: dict[str, StageResult] = {}
    rows = []
    for stage in (*STAGES.values(), None):
        if stage is None:
            name, key, inputs = "bulk", _bulk_key(spec, keys["student"]), {"student": keys["student"].key}
            done = _bulk_marker(spec, layout, key).exists()
        else:
            name, (key, inputs) = stage.name, stage_key(stage, spec, keys)
            done = lake.is_done(layout.stage_dir(spec.name, name, key))
        keys[name] = StageResult(name, "", {}, key=key)
        rows.append({"stage": name, "key": key, "state": "cached" if done else "stale",
                     "why": "" if done else _why_stale(spec, layout, stage, key, inputs)})
    return rows


def _why_stale(spec: TaskSpec, layout: Layout, stage: Stage | None, key: str, inputs: dict) -> str:
    rows = lake.query(layout, "SELECT config_hash, inputs, cache_key FROM runs WHERE task = ? AND stage = ? "
                              "AND status = 'completed' ORDER BY finished_at DESC LIMIT 1",
                      [spec.name, stage.name if stage else "bulk"])
    if not rows:
        return "never run"
    config_hash, before, cache_key = rows[0]
    if cache_key == key:
        return "output deleted"
    if stage is None:
        return "new student or source files changed since the last run"
    reasons = []
    if config_hash != spec.section_hash(*stage.sections):
        reasons.append(f"spec changed ({', '.join(stage.sections)})")
    before = json.loads(before)
    reasons += [f"{name} changed" for name in inputs if before.get(name) != inputs[name]]
    return "; ".join(reasons) or "stage code version changed"


def publish(spec: TaskSpec, result: StageResult) -> None:
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


class Run:
    """One flow run, stage by stage: each stage's Prefect state and result, for the next stage to read.

    Stages past `until` are not run, so `flows/distill.py` reads as the whole pipeline either way.
    """

    def __init__(self, spec: TaskSpec, layout: Layout, until: str = "bulk"):
        self.spec, self.layout = spec, layout
        self.wanted = lake.STAGES[: lake.STAGES.index(until) + 1]
        self.states: dict = {}
        self.results: dict[str, StageResult] = {}
        self.blocked: NotPromoted | None = None  # bulk had no student to use

    def stage(self, stage: Stage) -> None:
        if stage.name in self.wanted:
            self._keep(stage.name, run_stage(stage, self.spec, self.layout, self.results, return_state=True))

    def bulk(self) -> None:
        """Bulk-label the spec's source with the promoted student (the latest one that passed its gate)."""
        if "bulk" not in self.wanted:
            return
        student = promoted_student(self.spec, self.layout, self.results["student"])
        if student is None:
            gate = self.results["student"].metrics["promotion"]
            self.blocked = NotPromoted(self.spec.name, gate["reason"])
            get_run_logger().error("bulk skipped: %s", self.blocked)
            lake.ensure_view(self.layout, "bulk_labels", bulk.LABEL_SCHEMA)
            return
        self._keep("bulk", run_bulk(self.spec, self.layout, student, return_state=True))

    def _keep(self, name: str, state) -> None:
        self.states[name] = state
        self.results[name] = state.result()

    def finish(self, profile: str | None) -> dict:
        """Log each stage's state and result, write the run's report; the flow's return value."""
        log = get_run_logger()
        for name, state in self.states.items():
            log.info("%-8s %-9s %s", name, state.name, self.results[name])
        names = {name: state.name for name, state in self.states.items()}
        path = report_task(self.spec, self.results, names, profile)
        outcome = {"outputs": {name: r.outputs for name, r in self.results.items()}, "states": names, "report": path}
        if self.blocked:  # every stage ran, but nothing was bulk-labeled: the run must not look Completed
            return Failed(message=f"{self.blocked} Report: {path}", data=outcome)
        return outcome
