"""The summary section: what ran, from which spec and profile, and the headline top-1 of each model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from distillery import lake
from distillery.report.kit import Raw, code, note, table
from distillery.report.lineage import Run, eval_sets
from distillery.spec import ClassificationOutput, TaskSpec


def _stamp(run_id: str) -> str:
    m = re.search(r"(\d{8})T(\d{6})", run_id or "")
    if not m:
        return ""
    return datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S").strftime("%Y-%m-%d %H:%M:%S UTC")


def _output_kind(spec: TaskSpec) -> str:
    out = spec.output
    if isinstance(out, ClassificationOutput):
        return f"classification: {len(out.labels)} labels, ranked top {out.top_k}"
    return f"extraction: fields {', '.join(out.fields)}"


def section_summary(spec: TaskSpec, run: Run, *, name: str, profile: str | None, states: Mapping[str, str]) -> Raw:
    spec_hash = lake.hash_json(spec.model_dump(mode="json", exclude={"root"}))
    stamps = [s for r in run.results.values() if (s := _stamp(r.run_id))]
    ran = [f"{s} ({states[s]})" if s in states else s for s in lake.STAGES if run.get(s)]
    rows = [["task", spec.name], ["run", name], ["output", _output_kind(spec)], ["grader", spec.grader.type],
            ["profile", profile or "(base spec, no profile)"], ["spec hash", code(spec_hash)],
            ["stages", ", ".join(ran) or "none"],
            ["stages ran", f"{min(stamps)} to {max(stamps)}" if stamps else "–"],
            ["report generated", lake.now().strftime("%Y-%m-%d %H:%M:%S UTC")]]
    body = [table(["", ""], rows, "kv")]
    for stage in ("student", "teacher"):  # the teacher's first, on top
        warnings = run.get(stage).metrics.get("warnings", []) if run.get(stage) else []
        body[:0] = [note(f"Warning: {w}.") for w in warnings]
    student = run.get("student")
    gate = student.metrics.get("promotion", {}) if student else {}
    if not gate.get("promoted", True):  # above every warning: it decides what bulk labeled
        where = ("bulk labels come from an earlier promoted student" if run.get("bulk") else
                 "nothing was bulk-labeled: `make inbox STUDENT=latest` labels with this student anyway")
        body.insert(0, note(f"Student not promoted: {gate.get('reason', 'below the gate')}. The {where}."))
    evals = {m: r for m, r in eval_sets(run)}
    headline = [f"{m}: top-1 {r['top1'].mean():.1%} on {len(r)} held-out items"
                for m, r in evals.items() if m in ("base", "baseline", "teacher", "student")]
    if headline:
        body.append(note("; ".join(headline) + "."))
    skipped = (run.get("teacher").metrics.get("baseline") or {}).get("skipped") if run.get("teacher") else None
    if skipped:
        body.append(note(f"No TF-IDF baseline: {skipped}."))
    return Raw("".join(body))
