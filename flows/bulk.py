"""The bulk flow: label the new PDFs of an inbox with the promoted student (meant for a schedule).

    python -m flows.bulk data/demo/clinical.yaml [--source path/to/inbox | s3://bucket/inbox] [--relabel] [--engine ray]

Each run lists the source, skips every document the current student already labeled (content
hash + model id) and labels the rest; the catalog's `bulk_labels` view shows one row per file (a
byte-identical copy gets its twin's label, `duplicate_of` naming the twin).
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger

from distillery import lake
from distillery.errors import StageInputMissing
from distillery.spec import load_spec
from flows import lifetime
from tasks.stages import label_inbox


@flow(name="bulk")
def bulk(spec_path: str = "data/demo/clinical.yaml", profile: str | None = "demo", source: str | None = None,
         relabel: bool = False, engine: str | None = None) -> dict:
    spec = load_spec(spec_path, profile)
    student = lake.current_model(lake.home(), spec.name)
    if student is None:
        raise StageInputMissing("bulk", f"a promoted student for task {spec.name!r}", "make student")
    result = label_inbox(spec, student, source=source, relabel=relabel, engine=engine)
    get_run_logger().info("%s", result)
    return {"counts": result.counts, "outputs": result.outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description="Label the new PDFs of a source with the promoted student.")
    ap.add_argument("spec", nargs="?", default="data/demo/clinical.yaml")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--source", default=None, help="folder, glob or fsspec URL (default: the spec's bulk.source)")
    ap.add_argument("--engine", choices=["local", "ray"], default=None,
                    help="default: the spec's bulk.engine; ray uses RAY_ADDRESS, else a local Ray")
    ap.add_argument("--relabel", action="store_true", help="label everything again with the current student")
    args = ap.parse_args()
    lifetime.watch()  # before the flow starts Prefect's temporary server: it must die with this process
    bulk(args.spec, args.profile or None, args.source, args.relabel, args.engine)


if __name__ == "__main__":
    main()
