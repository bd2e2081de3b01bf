"""The throughput section: each stage's wall time, its units of work and their rate."""

from __future__ import annotations

from collections.abc import Mapping

from distillery import lake
from distillery.report.kit import Raw, note, table
from distillery.report.lineage import Run
from distillery.spec import TaskSpec


def _units(stage: str, r: lake.StageResult) -> tuple[str, int | None]:
    """The units of work of a stage: (label, count) from its counts."""
    c = r.counts
    if stage == "ingest":
        return "files", c.get("documents", 0) + c.get("quarantined", 0) + c.get("duplicates", 0)
    if stage == "seed":
        return "seed rows", sum(v for v in c.values() if isinstance(v, int))
    if stage == "teacher":
        return "train items", c.get("train")
    if stage == "label":
        return "documents labeled", c.get("labeled", 0) - c.get("resumed_from", 0)
    if stage == "student":
        return "training examples", c.get("trained_on")
    if stage == "bulk":
        return "files seen", c.get("seen")
    return "", None


def _detail(stage: str, r: lake.StageResult) -> str:
    detail = []
    for part in ("sft", "train"):
        if isinstance(r.metrics.get(part), dict) and r.metrics[part].get("seconds"):
            detail.append(f"SFT {r.metrics[part]['seconds']:.1f} s, {r.metrics[part].get('steps')} steps")
    if stage == "teacher" and r.counts.get("grpo_steps") is not None:
        detail.append(f"GRPO {r.counts['grpo_steps']} steps")
    if isinstance(r.metrics.get("docs_per_s"), (int, float)):
        detail.append(f"stage's own rate {r.metrics['docs_per_s']:.2f} docs/s"
                      + (" (labeling only, model load excluded)" if stage == "label" else ""))
    return "; ".join(detail)


def section_throughput(spec: TaskSpec, run: Run, states: Mapping[str, str]) -> Raw:
    rows, total = [], 0.0
    for stage in lake.STAGES:
        r = run.get(stage)
        if r is None:
            rows.append([stage, "not run", None, "", None, None, ""])
            continue
        unit, n = _units(stage, r)
        total += r.seconds or 0.0
        rate = n / r.seconds if n and r.seconds else None
        rows.append([stage, states.get(stage, ""), r.seconds, f"{n} {unit}" if n is not None else "", rate,
                     r.counts.get("quarantined"), _detail(stage, r)])
    rows.append(["total", "", total, "", None, None, ""])
    return Raw(table(["stage", "state", "seconds", "work", "per second", "quarantined", "detail"], rows)
               + note("Seconds are each stage's own wall time; a Cached stage shows the time of the run that made it."))
