"""The distill flow: the whole pipeline, each stage a cached Prefect task.

    python -m flows.distill data/demo/clinical.yaml --profile demo [--until teacher]

Costs are the demo profile's on a 2-core CPU, first run in a fresh clone (README, "Results");
a rerun with nothing changed takes seconds (every stage Cached).
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from distillery.lake import STAGES, Layout
from distillery.spec import load_spec
from flows import lifetime
from tasks.stages import INGEST, LABEL, SEED, STUDENT, TEACHER, Run


@flow(name="distill")
def distill(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", until: str = "bulk") -> dict:
    """Run the pipeline up to `until`; returns each stage's outputs and final state (Completed/Cached)."""
    spec = load_spec(spec_path, profile)
    run = Run(spec, Layout.at(), until)
    run.stage(INGEST)   # 0.5 min: text of 1,300 PDFs, the broken ones quarantined
    run.stage(SEED)     # <1 s: 80 expert labels checked, split 50 train / 10 validation / 20 held-out
    run.stage(TEACHER)  # 5.2 min: the LLM (SFT 2.0, 16 GRPO steps 2.8), encoder and TF-IDF, the committee
    run.stage(LABEL)    # 2.4 min: the committee labels 1,000 documents, with a calibrated confidence each
    run.stage(STUDENT)  # <1 s: the encoder + a head trained on 900 of them, gated against the teacher
    run.bulk()          # 0.1 min: the promoted student labels all 1,300 PDFs (~190 docs/s)
    return run.finish(profile)  # the run's HTML report under data/reports/


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the distill pipeline on a task spec.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--until", default="bulk", choices=STAGES)
    args = ap.parse_args()
    lifetime.watch()  # before the flow starts Prefect's temporary server: it must die with this process
    state = distill(args.spec, args.profile or None, args.until, return_state=True)
    if not state.is_completed():  # e.g. no student passed its gate: the message says what to do
        print(f"error: {state.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
