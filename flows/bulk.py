"""The bulk flow: label the new PDFs of an inbox with the promoted student (meant for a schedule).

    python -m flows.bulk data/demo/clinical.yaml [--source path/to/inbox | s3://bucket/inbox] [--relabel]
        [--engine ray] [--student promoted | latest | path/to/model]

Each run lists the source, skips every document the current student already labeled (content
hash + model id) and labels the rest; the catalog's `bulk_labels` view shows one row per file (a
byte-identical copy gets its twin's label, `duplicate_of` naming the twin).
By default only a student that passed its promotion gate labels; `--student latest` labels with the
latest student anyway, and the run's recorded inputs say so.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, get_run_logger

from distillery.errors import DistilleryError
from distillery.lake import Layout
from distillery.spec import load_spec
from flows import lifetime
from tasks.stages import label_inbox, pick_student


@flow(name="bulk")
def bulk(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", source: str | None = None,
         relabel: bool = False, engine: str | None = None, student: str = "promoted") -> dict:
    spec = load_spec(spec_path, profile)
    layout = Layout.at()
    model, chosen = pick_student(spec, layout, student)
    if chosen != "promoted":
        get_run_logger().warning("labeling with a student chosen by hand (%s): %s", chosen, model)
    result = label_inbox(spec, layout, model, source=source, relabel=relabel, engine=engine, chosen=chosen)
    get_run_logger().info("%s", result)
    return {"counts": result.counts, "outputs": result.outputs, "student": model, "student_choice": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description="Label the new PDFs of a source with the promoted student.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--source", default=None, help="folder, glob or fsspec URL (default: the spec's bulk.source)")
    ap.add_argument("--engine", choices=["local", "ray"], default=None,
                    help="default: the spec's bulk.engine; ray uses RAY_ADDRESS, else a local Ray")
    ap.add_argument("--relabel", action="store_true", help="label everything again with the current student")
    ap.add_argument("--student", default="promoted",
                    help="promoted (default: the latest student that passed its gate), latest (the latest student "
                         "even if it failed its gate; recorded in the run's lineage) or a model folder")
    args = ap.parse_args()
    lifetime.watch()  # before the flow starts Prefect's temporary server: it must die with this process
    try:
        # A student that cannot be used is a message before any flow (and its server) starts.
        pick_student(load_spec(args.spec, args.profile or None), Layout.at(), args.student)
        bulk(args.spec, args.profile or None, args.source, args.relabel, args.engine, args.student)
    except DistilleryError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
