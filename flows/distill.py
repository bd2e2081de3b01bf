"""The distill flow: five stages, top to bottom. Costs are for the demo profile on a 2-core CPU.

    python -m flows.distill data/demo/clinical.yaml --profile demo [--until teacher]
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger

from distillery.spec import load_spec
from tasks.stages import run_bulk, run_stage

STAGES = ("ingest", "seed", "teacher", "label", "student", "bulk")


@flow(name="distill")
def distill(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", until: str = "bulk") -> dict:
    spec = load_spec(spec_path, profile)
    stop = STAGES.index(until)
    done = {}
    done["ingest"] = run_stage("ingest", spec, [])                                      # ~5 s: PDFs -> text
    done["seed"] = run_stage("seed", spec, [done["ingest"]])                           # <1 s: expert labels
    if stop >= 2:
        done["teacher"] = run_stage("teacher", spec, [done["seed"], done["ingest"]])   # ~8 min: SFT + GRPO
    if stop >= 3:
        done["label"] = run_stage("label", spec, [done["teacher"], done["ingest"], done["seed"]])  # ~3 min
    if stop >= 4:
        done["student"] = run_stage("student", spec, [done["label"], done["seed"], done["ingest"]])  # ~3 min
    if stop >= 5:
        done["bulk"] = run_bulk(spec, done["student"])                                 # ~4 min: every PDF
    log = get_run_logger()
    for result in done.values():
        log.info("%s", result)
    return {name: r.outputs for name, r in done.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the distill pipeline on a task spec.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--until", default="bulk", choices=STAGES)
    args = ap.parse_args()
    distill(args.spec, args.profile or None, args.until)


if __name__ == "__main__":
    main()
