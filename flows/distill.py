"""The distill flow: ingest, seed, teacher, label, student, bulk, each a cached Prefect task.

Costs of the demo profile on a 2-core CPU: ingest ~5 s, seed <1 s, teacher ~5 min (SFT warm start
and GRPO), label ~2 min, student ~5 min, bulk ~3 min; a rerun with nothing changed takes seconds.

    python -m flows.distill data/demo/clinical.yaml --profile demo [--until teacher]
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger

from distillery.lake import STAGES
from distillery.spec import load_spec
from flows import lifetime
from tasks.stages import UPSTREAM, promoted_student, report_task, run_bulk, run_stage


@flow(name="distill")
def distill(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", until: str = "bulk") -> dict:
    """Run the pipeline up to `until`; returns each stage's outputs and final state (Completed/Cached)."""
    spec = load_spec(spec_path, profile)
    wanted = STAGES[: STAGES.index(until) + 1]
    states = {}

    def done(name: str):
        return states[name].result()

    for stage in wanted:
        if stage == "bulk":
            student = promoted_student(spec, done("student"))
            if student is None:
                get_run_logger().warning("bulk skipped: no student has passed the promotion gate yet")
                continue
            states[stage] = run_bulk(spec, student, return_state=True)
        else:
            states[stage] = run_stage(stage, spec, [done(u) for u in UPSTREAM[stage]], return_state=True)
    log = get_run_logger()
    for name in states:
        log.info("%-8s %-9s %s", name, states[name].name, done(name))
    names = {name: state.name for name, state in states.items()}
    report = report_task(spec, {name: done(name) for name in states}, names, profile)
    return {"outputs": {name: done(name).outputs for name in states}, "states": names, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the distill pipeline on a task spec.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--until", default="bulk", choices=STAGES)
    args = ap.parse_args()
    lifetime.watch()  # before the flow starts Prefect's temporary server: it must die with this process
    distill(args.spec, args.profile or None, args.until)


if __name__ == "__main__":
    main()
