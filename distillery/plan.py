"""`distillery plan`: what a run of a spec will cost, before it runs.

It measures what it can first: it lists the corpus, extracts a sample of ~20 PDFs (seconds per
document with the spec's workers) and renders the spec's prompt on them with the base tokenizer
(tokens per prompt); it counts the seed file's rows, so the documents left to label are the valid
documents minus the seeds, capped by `label.limit`. Then it times the base model on the sample,
here: scoring a batch of its prompts as the labeling stage does (documents per second), and one SFT
step (forward, backward, optimizer) on a batch of them at the spec's batch size. Prompt length,
the share of the prompt computed once, padding and the machine's speed are all in those two times,
which a token count alone misses: on the TeX Live manuals (561-token prompts against the demo's
176) labeling ran 2.6x slower than tokens-scaled benchmark rates predicted.

Each stage's work is then divided by a rate: the task's own latest runs in the catalog first (same
prompts), else the times measured here (labeling, SFT; the student's and GRPO's scaled from them by
the benchmarks' ratios), else the benchmarks (`data/bench/*.json` shipped with the code, or newer
ones under `<home>/bench`) scaled by tokens per prompt. Every rate says where it came from. On
another device `--speedup` scales every rate (an assumption the plan prints).

Each plan is kept (`<home>/plans/<task>.json`); the next plan compares it with the stages that ran
after it (the catalog's `runs`), so a plan says how far off the last one was.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from distillery import lake
from distillery.probe import Sample, count_documents, source_of
from distillery.spec import TaskSpec

SHIPPED_BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
# The encoder student's head, fitted on cached embeddings: `make demo`, 2026-12-06, 2 cores (train.seconds).
ENCODER_HEAD_LABELS_PER_S = 900 / 0.366
BENCHES = ("label", "student", "bulk", "grpo_step", "rft")


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


def _bench(root: Path, name: str) -> tuple[dict, str]:
    """A benchmark's JSON: `<home>/bench` when newer than the one shipped with the code."""
    found = [p for p in (lake.Layout(root).bench / f"{name}.json", SHIPPED_BENCH / f"{name}.json") if p.exists()]
    if not found:
        return {}, ""
    path = max(found, key=lambda p: p.stat().st_mtime)
    return json.loads(path.read_text()), (f"data/bench/{name}.json" if path.parent == SHIPPED_BENCH else str(path))


def _runs(root: Path, task: str) -> dict[str, dict]:
    """The latest completed run of each stage: metrics, counts and seconds."""
    rows = lake.query(root, "SELECT DISTINCT ON (stage) stage, metrics, counts, epoch(finished_at) - epoch(started_at) "
                            "FROM runs WHERE task = ? AND status = 'completed' ORDER BY stage, finished_at DESC", [task])
    return {stage: {"metrics": json.loads(m), "counts": json.loads(c), "seconds": s} for stage, m, c, s in rows}


def _seed_split(spec: TaskSpec) -> dict[str, int]:
    """Seeds per split as the seed stage will split the seed file (an unreadable file: none)."""
    from distillery.errors import SeedError
    from distillery.seed import read_seed_file, split_seeds

    try:
        rows = read_seed_file(spec.path(spec.seeds.path))
    except SeedError:
        return {}
    if "answer" not in rows.columns or rows.empty:
        return {}
    split = split_seeds(rows, spec)
    return {name: split.count(name) for name in ("train", "validation", "heldout")}


def _student_cost(spec: TaskSpec, student_bench: dict) -> tuple[float, str]:
    """Student / base time per document, from the student benchmark's measured inference speeds.

    Time per document is taken as fixed + per-layer cost; the benchmark's two models (the base and
    a shallow student) give both, so a student of any depth is priced from measurements."""
    base, small = student_bench.get("base", {}), student_bench.get("student", {})
    layers = spec.student.layers
    if layers is None or not base.get("docs_per_s") or not small.get("docs_per_s") \
            or base.get("layers") == small.get("layers"):
        return 1.0, "a student as deep as the base"
    t_base, t_small = 1 / base["docs_per_s"], 1 / small["docs_per_s"]
    per_layer = (t_base - t_small) / (base["layers"] - small["layers"])
    t = t_small + per_layer * (min(layers, base["layers"]) - small["layers"])
    return t / t_base, f"{layers}-layer student {t_base / t:.0f}x faster than the base (student.json)"


def _lm_student_line(spec: TaskSpec, label_docs: int, trained, train: dict, b: dict, cfg, timed: bool,
                     per_example, where: dict, scaled: str, bench_batch, rate_from) -> "Line":
    """The LM student's SFT steps, priced by its latest run, else the SFT step measured or benchmarked."""
    s = spec.student.sft
    steps = s.max_steps if s.max_steps > 0 else math.ceil(s.epochs * math.ceil(label_docs / s.batch_size))
    cost, cost_note = _student_cost(spec, b["student"])
    basis = (f"the SFT step measured here x batch {cfg.sft.batch_size}/{s.batch_size}" if timed
             else f"{where['rft']} (SFT{scaled} x batch {bench_batch}/{s.batch_size})")
    rate, source = rate_from(
        (train["steps"] / train["seconds"] if train.get("steps") and train.get("seconds") else None,
         f"latest student run ({trained} labels)" if trained else "latest student run"),
        (1 / (per_example * s.batch_size * cost) if per_example else None, f"{basis}; {cost_note}"))
    return Line("student: SFT", steps, "steps", rate, source)


def plan(spec: TaskSpec, *, bulk_docs: int | None = None, speedup: float = 1.0, root: Path | None = None,
         sample: Sample | None = None) -> dict:
    """Predict each stage's time. `sample`: what `measure` found (None: nothing measured)."""
    root = lake.home(root)
    runs = _runs(root, spec.name)
    bench = {n: _bench(root, n) for n in BENCHES}
    b = {n: v[0] for n, v in bench.items()}
    where = {n: v[1] for n, v in bench.items()}
    lines: list[Line] = []

    def rate_from(*candidates: tuple[float | None, str]) -> tuple[float | None, str]:
        for value, source in candidates:
            if value:
                return value * speedup, source
        return None, "no measurement yet: run the stage or its benchmark once"

    # Tokens per prompt here against the benchmarks' (the demo's prompt): time scales with them.
    bench_tokens = b["grpo_step"].get("prompt_tokens")
    ratio = sample.tokens / bench_tokens if sample and sample.tokens and bench_tokens else 1.0
    scaled = f" x {bench_tokens:g}/{sample.tokens:.0f} tokens" if ratio != 1.0 else ""
    # Measured here: scoring cost against the label benchmark's (prompt, prefix sharing, machine in it).
    bench_label = b["label"].get("ours_docs_per_s")
    infer_ratio, infer_note = ratio, scaled
    if sample and sample.score_docs_per_s and bench_label:
        infer_ratio = bench_label / sample.score_docs_per_s
        infer_note = f" x {infer_ratio:.2g} (scoring time measured here)"

    # Documents: the latest ingest run's count, else the files listed x the sample's valid share.
    ingest_run = runs.get("ingest", {}).get("counts", {})
    files = sample.files if sample else None
    valid = ingest_run.get("documents")
    if valid is None and sample and sample.extracted:
        valid = round(files * sample.ok / sample.extracted)
    seeds = runs.get("seed", {}).get("counts") or _seed_split(spec)
    held, n_val, n_train = (seeds.get(k, 0) for k in ("heldout", "validation", "train"))
    n_seeds = held + n_val + n_train

    if files is not None:
        own = runs.get("ingest", {})
        listed = sum(own.get("counts", {}).get(k, 0) for k in ("documents", "quarantined", "duplicates"))
        rate, source = rate_from((listed / own["seconds"] if listed and own.get("seconds") else None, "latest ingest run"),
                                 (sample.docs_per_s, f"measured: {sample.extracted} sample PDFs extracted here "
                                                     f"({spec.ingest.workers} workers)"),
                                 (b["bulk"].get("extraction_only_docs_per_s"), where["bulk"]))
        lines.append(Line("ingest", files, "docs", rate, source))

    cfg = spec.teacher
    n_sft = n_train - (min(n_train - 1, max(1, round(cfg.grpo.heldout_from_sft * n_train)))
                       if cfg.grpo.heldout_from_sft > 0 and n_train >= 2 else 0)
    sft_steps = cfg.sft.max_steps if cfg.sft.max_steps > 0 else math.ceil(cfg.sft.epochs * math.ceil(n_sft / cfg.sft.batch_size))
    own = runs.get("teacher", {}).get("metrics", {}).get("sft", {})
    rft = b["rft"].get("rft", {})
    bench_batch = b["rft"].get("sft", {}).get("batch_size") or cfg.sft.batch_size
    # Seconds per example of an SFT step on this spec's prompts (a step's time grows with its batch):
    # the step measured here, else the benchmark's scaled by tokens per prompt.
    bench_step = rft["sft_seconds"] / rft["sft_steps"] if rft.get("sft_seconds") and rft.get("sft_steps") else None
    bench_per_example = bench_step / bench_batch if bench_step else None
    timed = sample.sft_step_s if sample else None
    per_example = timed / cfg.sft.batch_size if timed else bench_per_example * ratio if bench_per_example else None
    train_ratio = per_example / bench_per_example if timed and bench_per_example else None
    sft_rate, source = rate_from(
        (own.get("steps", 0) / own["seconds"] if own.get("seconds") else None, "latest teacher run (SFT warm start)"),
        (1 / (per_example * cfg.sft.batch_size) if per_example else None,
         f"measured here: one SFT step on {cfg.sft.batch_size} sample examples" if timed
         else f"{where['rft']} (SFT warm start{scaled} x batch {bench_batch}/{cfg.sft.batch_size})"))
    lines.append(Line("teacher: SFT warm start", sft_steps, "steps", sft_rate, source))

    g = cfg.grpo
    # A GRPO step: each prompt once, then G completions of C tokens. Measured here, a prompt costs
    # what the SFT step says (the benchmark's prompt tokens x the training cost ratio).
    prompt_tokens = (bench_tokens * train_ratio if train_ratio and bench_tokens
                     else sample.tokens if sample and sample.tokens else bench_tokens or 0)
    step_tokens = g.prompts_per_step * (prompt_tokens + g.num_generations * g.max_completion_length)
    bench_step_tokens = b["grpo_step"].get("tokens_per_step", {}).get("ours")
    grpo_scale = bench_step_tokens / step_tokens if bench_step_tokens and step_tokens else 1.0
    grpo_note = f" x {bench_step_tokens:g}/{step_tokens:.0f} tokens per step" if grpo_scale != 1.0 else ""
    if train_ratio:
        grpo_note += ", prompts priced by the SFT step measured here"
    own = runs.get("teacher", {}).get("metrics", {}).get("grpo", {})
    rate, source = rate_from(
        (own["steps"] / own["seconds"] if own.get("steps") and own.get("seconds") else None,
         "latest teacher run (GRPO steps, validation included)"),
        (1 / b["rft"]["seconds_per_step"] * grpo_scale if b["rft"].get("seconds_per_step") else None,
         f"{where['rft']} (whole steps: generation, loss, validation{grpo_note})"),
        (1 / b["grpo_step"]["ours_s_per_step"] * grpo_scale if b["grpo_step"].get("ours_s_per_step") else None,
         f"{where['grpo_step']} (forward+backward only: a lower bound{grpo_note})"))
    lines.append(Line("teacher: GRPO", g.steps, "steps", rate, source))

    label_rate, label_source = rate_from(
        (runs.get("label", {}).get("metrics", {}).get("docs_per_s"), "latest label run"),
        (sample.score_docs_per_s if sample else None,
         f"measured here: the base model scoring {sample.scored if sample else 0} sample prompts"),
        (bench_label / ratio if bench_label else None, f"{where['label']}{scaled}"))
    evals = min(held, cfg.eval_max_items) * 2 + (g.steps // g.eval_interval + 1 if g.steps else 0) * \
        min(n_val or n_train, cfg.eval_max_items)
    lines.append(Line("teacher: evaluations", evals, "docs", label_rate, f"label rate ({label_source}): base and "
                      "teacher on the held-out seeds, GRPO's validation passes"))

    left = max(0, valid - n_seeds) if valid is not None else None
    label_docs = min(spec.label.limit, left) if left is not None else spec.label.limit
    lines.append(Line("label", label_docs + held, "docs", label_rate, label_source))

    own = runs.get("student", {})
    trained = own.get("counts", {}).get("trained_on")
    train = own.get("metrics", {}).get("train", {})
    kinds, _ = spec.student_kinds
    if "lm" not in kinds:  # heads on features labeling cached or a lookup computes: seconds, whatever the corpus
        rate, source = rate_from((train["examples"] / train["seconds"] if train.get("examples") and train.get("seconds")
                                  else None, "latest student run"),
                                 (ENCODER_HEAD_LABELS_PER_S, "the demo's encoder student (900 labels in 0.37 s)"))
        lines.append(Line(f"student: {' + '.join(kinds)} heads", label_docs, "labels", rate, source))
    else:
        lines.append(_lm_student_line(spec, label_docs, trained, train, b, cfg, timed, per_example, where,
                                      scaled, bench_batch, rate_from))

    if bulk_docs is not None or not spec.bulk:
        docs = bulk_docs or 0
    else:
        docs = sample.files if sample and source_of(spec, None) == source_of(spec, spec.source) else count_documents(spec, None)
    lines.append(Line("bulk", docs, "docs", *_bulk_rate(runs, b["bulk"], where["bulk"], infer_ratio, infer_note,
                                                        sample, spec, rate_from)))

    known = [ln.seconds for ln in lines if ln.seconds is not None]
    return {
        "task": spec.name, "speedup": speedup,
        "lines": [{"stage": ln.stage, "work": ln.work, "unit": ln.unit, "rate_per_s": ln.rate,
                   "seconds": ln.seconds, "source": ln.source} for ln in lines],
        "total_seconds": sum(known), "unknown": [ln.stage for ln in lines if ln.seconds is None],
        "measured": _measured(sample, bench_tokens, valid, n_seeds, left, label_docs, spec),
        "assumptions": [
            "rates were measured on the machine and model of the benchmark or run they come from",
            f"every rate is multiplied by --speedup {speedup:g} (1 = this machine)",
            "a benchmark's time per document or step grows in proportion to tokens per prompt, or, when the base "
            "model was timed here, to the time measured here",
            "step time does not depend on the number of steps; documents cost the same on average as measured",
            f"bulk documents: {docs} ({'given' if bulk_docs is not None else 'counted in ' + str(spec.bulk.source) if spec.bulk else 'no bulk section'})",
        ],
    }


def _bulk_rate(runs, bulk: dict, where: str, ratio: float, scaled: str, sample: Sample | None, spec: TaskSpec,
               rate_from) -> tuple[float | None, str]:
    """Bulk: the slower of extraction (sampled here) and the student's inference (scaled by tokens),
    times the overlap the bulk benchmark lost between the two."""
    own = runs.get("bulk", {}).get("metrics", {}).get("docs_per_s")
    estimate = None
    if bulk.get("inference_only_docs_per_s") and bulk.get("end_to_end_docs_per_s"):
        bench_extract = 1 / bulk.get("extraction_only_docs_per_s", math.inf)
        overhead = (1 / bulk["end_to_end_docs_per_s"]) / max(1 / bulk["inference_only_docs_per_s"], bench_extract)
        infer = ratio / bulk["inference_only_docs_per_s"]
        extract = 1 / sample.docs_per_s if sample and sample.docs_per_s else bench_extract
        estimate = 1 / (max(infer, extract) * overhead)
    return rate_from((own, "latest bulk run"),
                     (estimate, f"{where}: slower of inference{scaled} and extraction"
                                f"{' (sampled here)' if sample and sample.docs_per_s else ''}, x the overlap lost there"))


def _measured(sample: Sample | None, bench_tokens, valid, n_seeds, left, label_docs, spec: TaskSpec) -> list[str]:
    if sample is None:
        return ["nothing measured (--no-measure): rates are the benchmarks' as they are"]
    out = [f"source: {sample.files} PDFs; a sample of {sample.extracted} extracted in {sample.seconds:.1f} s, "
           f"{sample.ok} with text"]
    if sample.tokens:
        out.append(f"tokens per prompt: {sample.tokens:.0f} (the benchmarks': {bench_tokens or '?'})")
    if sample.score_docs_per_s:
        out.append(f"base model here: scores {sample.score_docs_per_s:.3g} docs/s ({sample.scored} sample prompts), "
                   f"one SFT step of {spec.teacher.sft.batch_size} takes {sample.sft_step_s:.1f} s")
    if sample.note:
        out.append(f"not measured: {sample.note}")
    if valid is not None:
        out.append(f"documents to label: {valid} valid - {n_seeds} seeds = {left}, "
                   f"capped by label.limit {spec.label.limit}: {label_docs}")
    return out


def _plan_file(root: Path, task: str) -> Path:
    return root / "plans" / f"{task}.json"


def compare_last(root: Path | None, task: str) -> dict | None:
    """The last plan of this task against the stages that ran after it, stage by stage."""
    root = lake.home(root)
    path = _plan_file(root, task)
    if not path.exists():
        return None
    last = json.loads(path.read_text())
    rows = lake.query(root, "SELECT DISTINCT ON (stage) stage, epoch(finished_at) - epoch(started_at) FROM runs "
                            "WHERE task = ? AND status = 'completed' AND started_at >= ? ORDER BY stage, started_at",
                      [task, datetime.fromisoformat(last["at"])])
    actual = {stage: seconds for stage, seconds in rows}
    stages = [s for s in last["stages"] if s in actual]
    predicted = sum(last["stages"][s] for s in stages)
    return {"at": last["at"], "stages": {s: (last["stages"][s], actual[s]) for s in stages},
            "predicted": predicted, "actual": sum(actual[s] for s in stages)}


def remember(result: dict, root: Path | None) -> None:
    """Keep this plan's prediction per catalog stage, for the next plan to check against the run."""
    stages: dict[str, float] = {}
    for ln in result["lines"]:
        if ln["seconds"] is not None:
            stage = ln["stage"].split(":")[0]
            stages[stage] = stages.get(stage, 0.0) + ln["seconds"]
    lake.write_json({"at": lake.now().isoformat(), "stages": stages}, _plan_file(lake.home(root), result["task"]))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _last(last: dict | None) -> list[str]:
    if last is None:
        return ["last plan: none for this task yet (this one is kept, for the next plan to check)"]
    when = last["at"][:16].replace("T", " ")
    if not last["stages"]:
        return [f"last plan ({when} UTC): no stage has run since"]
    off = last["actual"] / last["predicted"] if last["predicted"] else math.inf
    per = ", ".join(f"{s} {_duration(p)} vs {_duration(a)}" for s, (p, a) in last["stages"].items())
    return [f"last plan ({when} UTC) predicted {_duration(last['predicted'])} for {', '.join(last['stages'])}; "
            f"they took {_duration(last['actual'])} ({off:.2g}x the prediction): {per}"]


def render(result: dict, *, gpu: bool = False, last: dict | None = None) -> str:
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
    out += ["", "measured:", *[f"  - {m}" for m in result.get("measured", [])]]
    out += ["", *_last(last)]
    out += ["", "assumptions:", *[f"  - {a}" for a in result["assumptions"]]]
    return "\n".join(out)
