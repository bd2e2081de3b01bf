"""The `distillery` command: run the pipeline, see what is cached, plan, query, export, validate a grader."""

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


def _status(args) -> int:
    from distillery.spec import load_spec
    from tasks.stages import status

    spec = load_spec(args.spec, args.profile)
    print(f"{'stage':<9}{'state':<8}{'key':<18}why")
    for row in status(spec):
        print(f"{row['stage']:<9}{row['state']:<8}{row['key']:<18}{row['why']}")
    return 0


def _export(args) -> int:
    from pathlib import Path

    from distillery.export import export
    from distillery.spec import load_spec

    spec = load_spec(args.spec, args.profile)
    suffix = {"csv": ".csv", "jsonl": ".jsonl", "label-studio": ".label-studio.json"}[args.format]
    out = Path(args.out or f"data/exports/{spec.name}-{args.table}{suffix}")
    path, n = export(spec, args.format, out, args.table, args.home)
    print(f"{n} labels -> {path}" + (f" (labeling config: {path.with_suffix('.config.xml')})"
                                     if args.format == "label-studio" else ""))
    return 0


def _import_label_studio(args) -> int:
    from pathlib import Path

    from distillery.export import seeds_from_label_studio
    from distillery.review import append_seeds
    from distillery.spec import load_spec

    spec = load_spec(args.spec, args.profile)
    if args.out:
        n = seeds_from_label_studio(Path(args.file), spec, Path(args.out), annotated_only=not args.predictions)
        print(f"{n} labeled documents -> {args.out} (use it as `seeds.path` in the spec)")
        return 0
    added, skipped = append_seeds(spec, Path(args.file), args.home)
    print(f"{added} reviewed documents appended to {spec.path(spec.seeds.path)}"
          + (f" ({skipped} already seeds, skipped)" if skipped else "")
          + ("; next: `distillery run` reruns the seed stage and the stages after it" if added else ""))
    return 0


def _review(args) -> int:
    from pathlib import Path

    from distillery.review import review
    from distillery.spec import load_spec

    spec = load_spec(args.spec, args.profile)
    out = Path(args.out or f"data/review/{spec.name}-review.label-studio.json")
    path, chosen = review(spec, args.n, out, args.home)
    print(f"{len(chosen)} documents to review -> {path} (labeling config: {path.with_suffix('.config.xml')})")
    for row in chosen.head(10).itertuples():
        print(f"  {Path(row.path).name:<40} {row.why}")
    print(f"next: label them in Label Studio, export JSON, then `distillery import-label-studio {args.spec} FILE`")
    return 0


def _plan(args) -> int:
    from distillery.plan import compare_last, plan, remember, render
    from distillery.probe import measure
    from distillery.spec import load_spec

    spec = load_spec(args.spec, args.profile)
    sample = None
    if not args.no_measure:
        print(f"measuring: {args.sample} PDFs extracted and their prompts tokenized"
              + ("" if args.no_time else ", the base model timed on them (about a minute for 600-token prompts on 2 CPU cores; --no-time skips)"),
              file=sys.stderr)
        sample = measure(spec, args.sample, time_model=not args.no_time)
    result = plan(spec, bulk_docs=args.docs, speedup=args.speedup, root=args.home, sample=sample)
    print(render(result, gpu=args.speedup != 1.0, last=compare_last(args.home, spec.name)))
    remember(result, args.home)
    return 0


def _init(args) -> int:
    from pathlib import Path

    from distillery.scaffold import init_task

    path, found = init_task(Path(args.dir), Path(args.pdfs), Path(args.seeds), name=args.name, force=args.force)
    print(f"wrote {path}: {len(found['labels'])} labels ({', '.join(found['labels'])}), "
          f"{found['documents']} PDFs, {found['seeds']} seed rows")
    if found["unmatched"]:
        shown = ", ".join(found["unmatched"][:5]) + (" ..." if len(found["unmatched"]) > 5 else "")
        print(f"warning: {len(found['unmatched'])} seed document(s) match no PDF of the folder: {shown}")
    print(f"next: describe each label in one line in {path}, then `distillery plan {path}` and `distillery run {path}`")
    return 0


def _run(args) -> int:
    from distillery.spec import load_spec

    load_spec(args.spec, args.profile)  # a bad spec is an error message here, not a failed flow run
    from flows import lifetime
    from flows.distill import distill

    lifetime.watch()  # before the flow starts Prefect's temporary server: it must die with this process
    state = distill(args.spec, args.profile, args.until, return_state=True)
    result = state.result(raise_on_failure=False)  # a Failed run still carries what ran
    if isinstance(result, dict):
        for stage, name in result["states"].items():
            print(f"{stage:<9}{name}")
        if result.get("report"):
            print(f"report: {result['report']}")
    if not state.is_completed():  # e.g. no student passed its gate: the message says what to do
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from distillery.errors import DistilleryError
    from distillery.lake import STAGES
    from distillery.spec import DEFAULT_PROFILE

    ap = argparse.ArgumentParser(prog="distillery", description="Expert labels -> RFT teacher -> student -> bulk labels.")
    sub = ap.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="write a commented spec for a folder of PDFs and a seed file")
    init.add_argument("dir", help="folder the spec is written to (<dir>/<name>.yaml)")
    init.add_argument("--pdfs", required=True, help="folder of the task's PDFs")
    init.add_argument("--seeds", required=True, help="seed file (CSV, JSONL or Parquet: document, answer)")
    init.add_argument("--name", default=None, help="task name (default: the folder's name)")
    init.add_argument("--force", action="store_true", help="write over an existing spec")
    init.set_defaults(fn=_init)
    run = sub.add_parser("run", help="run the distill flow (all stages, or up to --until)")
    run.add_argument("spec")
    run.add_argument("--profile", default=DEFAULT_PROFILE)
    run.add_argument("--until", default="bulk", choices=STAGES)
    run.set_defaults(fn=_run)
    grade = sub.add_parser("grade", help="grader tools")
    grade_sub = grade.add_subparsers(dest="grade_command", required=True)
    validate = grade_sub.add_parser("validate", help="gold answers must score 1.0, corrupted ones less")
    validate.add_argument("spec")
    validate.add_argument("--profile", default=None)
    validate.set_defaults(fn=_grade_validate)
    stat = sub.add_parser("status", help="each stage: cached or stale, and why")
    stat.add_argument("spec")
    stat.add_argument("--profile", default=DEFAULT_PROFILE)
    stat.set_defaults(fn=_status)
    plan = sub.add_parser("plan", help="estimated time of each stage at the spec's sizes, from measured rates")
    plan.add_argument("spec")
    plan.add_argument("--profile", default=DEFAULT_PROFILE)
    plan.add_argument("--docs", type=int, default=None, help="documents to bulk-label (default: count the source)")
    plan.add_argument("--speedup", type=float, default=1.0,
                      help="target device throughput / this machine's (an assumption; the plan prints it)")
    plan.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    plan.add_argument("--sample", type=int, default=20, help="PDFs extracted to measure prompt tokens and extraction")
    plan.add_argument("--no-measure", action="store_true", help="skip the sample: the benchmarks' rates as they are")
    plan.add_argument("--no-time", action="store_true",
                      help="measure the sample but do not time the base model on it (rates: benchmarks x tokens)")
    plan.set_defaults(fn=_plan)
    exp = sub.add_parser("export", help="labels to CSV, JSONL or Label Studio JSON")
    exp.add_argument("spec")
    exp.add_argument("--profile", default=DEFAULT_PROFILE)
    exp.add_argument("--format", choices=["csv", "jsonl", "label-studio"], default="csv")
    exp.add_argument("--table", choices=["bulk_labels", "machine_labels"], default="bulk_labels")
    exp.add_argument("--out", default=None, help="output file (default data/exports/<task>-<table>.<ext>)")
    exp.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    exp.set_defaults(fn=_export)
    rev = sub.add_parser("review", help="the documents whose expert label would help most, as Label Studio tasks")
    rev.add_argument("spec")
    rev.add_argument("--n", type=int, default=40, help="documents in the queue")
    rev.add_argument("--out", default=None, help="task file (default data/review/<task>-review.label-studio.json)")
    rev.add_argument("--profile", default=DEFAULT_PROFILE)
    rev.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    rev.set_defaults(fn=_review)
    imp = sub.add_parser("import-label-studio", help="reviewed Label Studio rows appended to the seed file "
                         "(or, with --out, a new seed file)")
    imp.add_argument("spec")
    imp.add_argument("file")
    imp.add_argument("--out", default=None, help="write a new seed CSV (document, answer) instead of appending")
    imp.add_argument("--profile", default=DEFAULT_PROFILE)
    imp.add_argument("--predictions", action="store_true", help="with --out: also take unreviewed predictions")
    imp.add_argument("--home", default=None, help="artifact root (default $DISTILLERY_HOME or ./data)")
    imp.set_defaults(fn=_import_label_studio)
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
