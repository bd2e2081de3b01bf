"""The lineage section: every artifact of the run, its identity and what it was made from, and each
stage's cache key and recorded inputs."""

from __future__ import annotations

from collections.abc import Mapping

from distillery import lake
from distillery.report.kit import Raw, code, esc, note, table
from distillery.report.lineage import Run, output_files
from distillery.spec import TaskSpec

NOT_RUN = ["not run", "", ""]


def _recorded(inputs: Mapping[str, Mapping], stage: str, name: str, now: str | None) -> Raw | str:
    """The hash a stage recorded for an outside input, flagged when the input has changed since."""
    was = (inputs.get(stage) or {}).get(name)
    if was and now and was != now:
        return Raw(f"{code(was)} <span class=\"warn\">(now {esc(now)}: changed since the run)</span>")
    if was:
        return code(was)
    return Raw(f"{code(now)} (hashed now)") if now else "–"


def _source_rows(spec: TaskSpec, run: Run, inputs: Mapping[str, Mapping]) -> list[list]:
    """The outside inputs: the seed file and its split, the base and student start models."""
    seed_path = spec.path(spec.seeds.path)
    seed_now = lake.hash_files([seed_path]) if seed_path.exists() else None
    seed = run.get("seed")
    splits = ", ".join(f"{k} {v}" for k, v in sorted(seed.counts.items())) if seed else ""
    rows = [["seed file", code(spec.seeds.path), _recorded(inputs, "seed", "seed_file", seed_now),
             f"expert labels: {splits}" if splits else "expert labels"]]
    if seed:
        rows.append(["seed labels", code(seed.outputs.get("seed_labels")), code(seed.key),
                     f"seed file, split (seed {spec.seeds.split_seed}, held-out {spec.seeds.heldout_fraction})"])
    for role, value, stage, field_ in (("base model", spec.models.base, "teacher", "base_model"),
                                       ("student start model", spec.models.student, "student", "student_model")):
        p = spec.path(value)
        rows.append([role, code(value), _recorded(inputs, stage, field_, lake.hash_model(p) if p.exists() else None),
                     ""])
    return rows


def _teacher_row(run: Run) -> list:
    teacher = run.get("teacher")
    if not teacher:
        return ["teacher checkpoint", *NOT_RUN]
    return ["teacher checkpoint", code(teacher.outputs.get("model")), code(teacher.key),
            (f"base model + seed labels (train {teacher.counts.get('train')}, validation "
             f"{teacher.counts.get('validation')}); SFT then {teacher.counts.get('grpo_steps', 0)} GRPO steps")]


def _label_row(run: Run) -> list:
    label = run.get("label")
    if not label:
        return ["machine labels", *NOT_RUN]
    labels = run.table("label", "machine_labels")
    models = sorted(set(labels["model"])) if labels is not None and "model" in labels else []
    return ["machine labels", code(label.outputs.get("machine_labels")), code(label.key),
            Raw(f"{esc(label.counts.get('labeled'))} documents labeled by "
                + (", ".join(str(code(m)) for m in models) or "the teacher checkpoint"))]


def _student_row(spec: TaskSpec, run: Run) -> list:
    student = run.get("student")
    if not student:
        return ["student checkpoint", *NOT_RUN]
    trained_on = student.metrics.get("trained_on", student.counts.get("trained_on"))
    return ["student checkpoint", code(student.outputs.get("model")), code(student.key),
            f"student start model trained on {trained_on} machine labels (confidence ≥ {spec.student.min_confidence})"]


def _bulk_row(run: Run) -> list:
    bulk = run.get("bulk")
    if not bulk:
        return ["bulk labels", *NOT_RUN]
    files = output_files(bulk.outputs["bulk_labels"]) if bulk.outputs.get("bulk_labels") else []
    return ["bulk labels", code(bulk.outputs.get("folder", "")), code(bulk.key),
            Raw(f"{esc(bulk.counts.get('labeled'))} documents labeled this run by "
                f"{code(bulk.metrics.get('model', 'the student'))}; the folder holds {len(files)} committed "
                "label shard(s), of every bulk run")]


def _key_rows(run: Run, inputs: Mapping[str, Mapping]) -> list[list]:
    keys = []
    for stage in lake.STAGES:
        r = run.get(stage)
        if r:
            ins = inputs.get(stage)
            keys.append([stage, code(r.run_id), code(r.key),
                         Raw(", ".join(f"{esc(k)}={code(v)}" for k, v in sorted(ins.items()))) if ins else "–"])
    return keys


def section_lineage(spec: TaskSpec, run: Run, inputs: Mapping[str, Mapping]) -> Raw:
    rows = [*_source_rows(spec, run, inputs), _teacher_row(run), _label_row(run), _student_row(spec, run),
            _bulk_row(run)]
    parts = [table(["artifact", "path / id", "identity (hash or cache key)", "made from"], rows),
             Raw("<h3>Stage cache keys</h3>"),
             table(["stage", "run id", "cache key", "inputs"], _key_rows(run, inputs))]
    if run.missing:
        parts.append(note("Outputs registered but missing on disk: " + "; ".join(run.missing)))
    return Raw("".join(parts))
