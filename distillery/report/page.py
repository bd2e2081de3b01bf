"""The report page: its sections in order, each rendered on its own, written as one `index.html`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distillery import lake
from distillery.report.accuracy import section_accuracy
from distillery.report.artifacts import section_lineage
from distillery.report.calibration import section_calibration
from distillery.report.confusion import section_confusion
from distillery.report.kit import Raw, error, page, section
from distillery.report.lineage import Run, catalog_run, recorded_inputs, report_dir, run_name
from distillery.report.reward import section_reward_curve
from distillery.report.summary import section_summary
from distillery.report.throughput import section_throughput
from distillery.spec import TaskSpec

SECTIONS = ("summary", "accuracy", "reward-curve", "confusion", "calibration", "throughput", "lineage")
TITLES = {"summary": "Summary", "accuracy": "Accuracy on the expert held-out split",
          "reward-curve": "Teacher reward (GRPO)", "confusion": "Confusion", "calibration": "Calibration of confidence",
          "throughput": "Throughput", "lineage": "Lineage"}


def _render(build: Callable[[], Raw]) -> Raw:
    try:
        return build()
    except Exception as err:  # noqa: BLE001 - one unreadable input must not cost the whole report
        return error(err)


def build_html(spec: TaskSpec, results: Mapping[str, Any], *, profile: str | None = None,
               inputs: Mapping[str, Mapping] | None = None, states: Mapping[str, str] | None = None,
               name: str | None = None) -> str:
    """The report page as a string (see `write_report`)."""
    run = Run(results)
    states = dict(states or {})
    inputs = dict(inputs) if inputs is not None else recorded_inputs(spec.name, run.results)
    name = name or run_name(spec, results)
    builders = {
        "summary": lambda: section_summary(spec, run, name=name, profile=profile, states=states),
        "accuracy": lambda: section_accuracy(spec, run),
        "reward-curve": lambda: section_reward_curve(spec, run),
        "confusion": lambda: section_confusion(spec, run),
        "calibration": lambda: section_calibration(spec, run),
        "throughput": lambda: section_throughput(spec, run, states),
        "lineage": lambda: section_lineage(spec, run, inputs),
    }
    body = [section(sid, TITLES[sid], _render(builders[sid])) for sid in SECTIONS]
    nav = [(sid, TITLES[sid].split(" on ")[0]) for sid in SECTIONS]
    return page(f"Distillery report: {spec.name} ({name})", f"Distillery report: {spec.name}", nav, body)


def write_report(spec: TaskSpec, results: Mapping[str, Any], out_dir: str | Path | None = None, *,
                 profile: str | None = None, inputs: Mapping[str, Mapping] | None = None,
                 states: Mapping[str, str] | None = None) -> Path:
    """Write `out_dir/index.html` (default `<home>/reports/<run>/`) and return its path.

    `results` maps stage name to that stage's `StageResult` (or its asdict() form, or just its
    outputs dict); a stage left out or None is "not run". `inputs` (stage -> recorded inputs: upstream
    keys and outside hashes) defaults to the catalog's record; `states` (stage -> Completed/Cached)
    and `profile` are shown when given.
    """
    out = Path(out_dir) if out_dir is not None else report_dir(spec, results)
    html = build_html(spec, results, profile=profile, inputs=inputs, states=states)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from distillery.errors import DistilleryError
    from distillery.spec import load_spec

    ap = argparse.ArgumentParser(prog="python -m distillery.report",
                                 description="Build the HTML report of a task's latest run from the catalog.")
    ap.add_argument("spec")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--out", default=None, help="report folder (default: <home>/reports/<run>)")
    ap.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.profile)
        results, inputs = catalog_run(spec.name, args.home)
    except DistilleryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not results:
        print(f"error: no completed runs of task {spec.name!r} in the catalog under {lake.home(args.home)}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else report_dir(spec, results, args.home)
    path = write_report(spec, results, out, profile=args.profile, inputs=inputs)
    print(path)
    return 0
