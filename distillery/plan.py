"""`distillery plan`: what a run of a spec will cost, before it runs.

Each stage's work is counted from the spec (seeds, SFT epochs, GRPO steps, documents to label)
and divided by a rate measured on this machine: the benchmark files in `data/bench/` first, then
the latest completed runs in the catalog. Every rate says where it came from. On another device,
`--speedup` scales every measured rate (an assumption the plan prints; measure it with the
benchmarks on that device instead when you can).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from distillery import lake
from distillery.spec import TaskSpec


@dataclass
class Line:
    stage: str
    work: float
    unit: str
    rate: float | None  # units per second
    source: str

    @property
    def seconds(self) -> float | None:
        return self.work / self.rate if self.rate else None


def _bench(root: Path, name: str) -> dict:
    path = root / "bench" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _runs(root: Path, task: str) -> dict[str, dict]:
    """The latest completed run of each stage: metrics, counts and seconds."""
    if not (root / "catalog.duckdb").exists():
        return {}
    with lake.catalog(root, read_only=True) as con:
        rows = con.execute(
            "SELECT DISTINCT ON (stage) stage, metrics, counts, epoch(finished_at) - epoch(started_at) FROM runs "
            "WHERE task = ? AND status = 'completed' ORDER BY stage, finished_at DESC", [task]).fetchall()
    return {stage: {"metrics": json.loads(m), "counts": json.loads(c), "seconds": s} for stage, m, c, s in rows}


def count_documents(spec: TaskSpec, source: str | None) -> int:
    from distillery.sources import list_pdfs

    return sum(1 for _ in list_pdfs(spec.path(source or spec.bulk.source)))


def plan(spec: TaskSpec, *, bulk_docs: int | None = None, speedup: float = 1.0, root: Path | None = None) -> dict:
    root = lake.home(root)
    runs, bench = _runs(root, spec.name), {n: _bench(root, n) for n in ("label", "student", "bulk", "grpo_step", "rft")}
    seeds = runs.get("seed", {}).get("counts", {})
    n_train = seeds.get("train") or 0
    lines: list[Line] = []

    def rate_from(*candidates: tuple[float | None, str]) -> tuple[float | None, str]:
        for value, source in candidates:
            if value:
                return value * speedup, source
        return None, "no measurement yet: run the stage or its benchmark once"

    teacher = runs.get("teacher", {}).get("metrics", {})
    sft = teacher.get("sft", {})
    sft_steps = spec.teacher.sft.max_steps if spec.teacher.sft.max_steps > 0 else \
        spec.teacher.sft.epochs * math.ceil(n_train / spec.teacher.sft.batch_size)
    rate, source = rate_from((sft.get("steps", 0) / sft["seconds"] if sft.get("seconds") else None,
                              "latest teacher run (SFT warm start)"))
    lines.append(Line("teacher: SFT warm start", sft_steps, "steps", rate, source))
    grpo = bench["grpo_step"]
    rate, source = rate_from((1 / bench["rft"]["seconds_per_step"] if bench["rft"].get("seconds_per_step") else None,
                              "data/bench/rft.json (whole steps: generation, loss, validation)"),
                             (1 / grpo["ours_s_per_step"] if grpo.get("ours_s_per_step") else None,
                              "data/bench/grpo_step.json (forward+backward only: a lower bound)"))
    lines.append(Line("teacher: GRPO", spec.teacher.grpo.steps, "steps", rate, source))

    label_docs = spec.label.limit
    rate, source = rate_from((bench["label"].get("ours_docs_per_s"), "data/bench/label.json"),
                             (runs.get("label", {}).get("metrics", {}).get("docs_per_s"), "latest label run"))
    lines.append(Line("label", label_docs, "docs", rate, source))

    student = runs.get("student", {}).get("metrics", {}).get("train", {})
    trained = runs.get("student", {}).get("counts", {}).get("trained_on")
    per_step = student.get("seconds") / student["steps"] if student.get("steps") else None
    student_steps = spec.student.sft.max_steps if spec.student.sft.max_steps > 0 else \
        spec.student.sft.epochs * math.ceil(label_docs / spec.student.sft.batch_size)
    rate, source = rate_from((1 / per_step if per_step else None,
                              f"latest student run ({trained} labels)" if trained else "latest student run"))
    lines.append(Line("student: SFT", student_steps, "steps", rate, source))

    docs = bulk_docs if bulk_docs is not None else count_documents(spec, None)
    rate, source = rate_from((bench["bulk"].get("end_to_end_docs_per_s"), "data/bench/bulk.json"),
                             (runs.get("bulk", {}).get("metrics", {}).get("docs_per_s"), "latest bulk run"))
    lines.append(Line("bulk", docs, "docs", rate, source))

    known = [ln.seconds for ln in lines if ln.seconds is not None]
    return {
        "task": spec.name, "speedup": speedup,
        "lines": [{"stage": ln.stage, "work": ln.work, "unit": ln.unit, "rate_per_s": ln.rate,
                   "seconds": ln.seconds, "source": ln.source} for ln in lines],
        "total_seconds": sum(known), "unknown": [ln.stage for ln in lines if ln.seconds is None],
        "assumptions": [
            "rates were measured on the machine and model of the benchmark or run they come from",
            f"every rate is multiplied by --speedup {speedup:g} (1 = this machine)",
            "step time does not depend on the number of steps; documents cost the same on average as measured",
            "evaluation passes inside the teacher stage (base, validation, held-out) are not counted",
            f"bulk documents: {docs} ({'given' if bulk_docs is not None else 'counted in ' + str(spec.bulk.source)})",
        ],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(result: dict, *, gpu: bool = False) -> str:
    out = [f"plan for task {result['task']!r}", "",
           f"{'stage':<26}{'work':>12}  {'rate':>12}  {'time':>10}  source"]
    for ln in result["lines"]:
        rate = f"{ln['rate_per_s']:.3g}/s" if ln["rate_per_s"] else "?"
        out.append(f"{ln['stage']:<26}{ln['work']:>8g} {ln['unit']:<4} {rate:>12}  {_duration(ln['seconds']):>10}  "
                   f"{ln['source']}")
    total = _duration(result["total_seconds"])
    out += ["", f"total: {total}" + (f" (+ unknown: {', '.join(result['unknown'])})" if result["unknown"] else "")]
    if gpu:
        out.append(f"GPU-hours: {result['total_seconds'] / 3600:.2f}")
    out += ["", "assumptions:", *[f"  - {a}" for a in result["assumptions"]]]
    return "\n".join(out)
