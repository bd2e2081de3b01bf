"""The `distillery` command: run the pipeline, validate a grader, query the catalog."""

from __future__ import annotations

import argparse
import sys


def _grade_validate(args) -> int:
    from distillery.graders import validate_grader
    from distillery.seed import read_seed_file
    from distillery.spec import load_spec

    spec = load_spec(args.spec, args.profile)
    seeds = read_seed_file(spec.path(spec.seeds.path))
    table, ok = validate_grader(spec, list(seeds["answer"]))
    print(f"grader {spec.grader.type!r} on {len(seeds)} seed answers of {spec.name!r}")
    print(f"{'answer':<16}{'n':>5}{'mean':>8}{'max':>8}")
    for row in table:
        print(f"{row['answer']:<16}{row['n']:>5}{row['mean']:>8.3f}{row['max']:>8.3f}")
    print("ok: gold scores 1.0 and every corruption scores less" if ok else
          "FAIL: the grader cannot tell gold answers from corrupted ones")
    return 0 if ok else 1


def _query(args) -> int:
    from distillery import lake

    with lake.catalog(args.home, read_only=True) as con:
        print(con.sql(args.sql))
    return 0


def _run(args) -> int:
    from flows.distill import distill

    distill(args.spec, args.profile, args.until)
    return 0


def main(argv: list[str] | None = None) -> int:
    from distillery.errors import DistilleryError
    from distillery.lake import STAGES

    ap = argparse.ArgumentParser(prog="distillery", description="Expert labels -> RFT teacher -> student -> bulk labels.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the distill flow (all stages, or up to --until)")
    run.add_argument("spec")
    run.add_argument("--profile", default="demo")
    run.add_argument("--until", default="bulk", choices=STAGES)
    run.set_defaults(fn=_run)
    grade = sub.add_parser("grade", help="grader tools")
    grade_sub = grade.add_subparsers(dest="grade_command", required=True)
    validate = grade_sub.add_parser("validate", help="gold answers must score 1.0, corrupted ones less")
    validate.add_argument("spec")
    validate.add_argument("--profile", default=None)
    validate.set_defaults(fn=_grade_validate)
    query = sub.add_parser("query", help="SQL against the DuckDB catalog")
    query.add_argument("sql")
    query.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    query.set_defaults(fn=_query)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except DistilleryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
