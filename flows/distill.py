"""The distill flow: five stages, top to bottom. Costs are for the demo profile on a 2-core CPU.

    python -m flows.distill data/demo/clinical.yaml --profile demo [--until teacher]
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger

from distillery.lake import STAGES
from distillery.spec import load_spec
from tasks.stages import run_bulk, run_stage


@flow(name="distill")
def distill(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", until: str = "bulk") -> dict:
    """Run the pipeline up to `until`; returns each stage's outputs and final state (Completed/Cached)."""
    spec = load_spec(spec_path, profile)
    wanted = STAGES[: STAGES.index(until) + 1]
    states = {}

    def done(name: str):
        return states[name].result()

    states["ingest"] = run_stage("ingest", spec, [], return_state=True)                          # ~5 s: PDFs -> text
    states["seed"] = run_stage("seed", spec, [done("ingest")], return_state=True)                # <1 s: expert labels
    if "teacher" in wanted:                                                                      # ~6 min: SFT + GRPO
        states["teacher"] = run_stage("teacher", spec, [done("seed"), done("ingest")], return_state=True)
    if "label" in wanted:                                                                        # ~2 min: teacher labels
        states["label"] = run_stage("label", spec, [done("teacher"), done("ingest"), done("seed")], return_state=True)
    if "student" in wanted:                                                                      # ~5 min: SFT student
        states["student"] = run_stage("student", spec, [done("label"), done("seed"), done("ingest")], return_state=True)
    if "bulk" in wanted:                                                                         # ~3 min: every PDF
        states["bulk"] = run_bulk(spec, done("student"), return_state=True)
    log = get_run_logger()
    for name in states:
        log.info("%-8s %-9s %s", name, states[name].name, done(name))
    return {"outputs": {name: done(name).outputs for name in states},
            "states": {name: state.name for name, state in states.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the distill pipeline on a task spec.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--until", default="bulk", choices=STAGES)
    args = ap.parse_args()
    distill(args.spec, args.profile or None, args.until)


if __name__ == "__main__":
    main()
