"""A self-contained HTML report of one distill run: `<home>/reports/<run>/index.html`.

One file, no external CSS or JS, plots inlined as base64 PNG data URIs, every text escaped. It reads
only what the stages wrote: each stage's `StageResult` (outputs, counts, metrics, seconds, key) and
the Parquet files it points to (teacher_eval, teacher_metrics, machine_labels, label_eval when the
label stage wrote one, student_eval, seed_labels, bulk labels). Sections, each an element with a
stable id: `summary`, `accuracy`, `reward-curve`, `confusion`, `calibration`, `throughput`,
`lineage`. A stage that did not run (or whose files are gone) makes its sections say "not run".

    write_report(spec, {"teacher": result, ...}, out_dir)     # from the flow's stage results
    python -m distillery.report data/demo/clinical.yaml --profile demo [--out DIR]   # from the catalog
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import sys
import textwrap
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from distillery import lake
from distillery.evaluate import COVERAGES, calibration
from distillery.graders import component_names
from distillery.spec import ClassificationOutput, ExtractionOutput, TaskSpec

SECTIONS = ("summary", "accuracy", "reward-curve", "confusion", "calibration", "throughput", "lineage")
TITLES = {"summary": "Summary", "accuracy": "Accuracy on the expert held-out split",
          "reward-curve": "Teacher reward (GRPO)", "confusion": "Confusion", "calibration": "Calibration of confidence",
          "throughput": "Throughput", "lineage": "Lineage"}

COLORS = ("#d62728", "#1f77b4", "#2ca02c")  # one per calibrated source, in the plot and its histogram
_RESULT_FIELDS = {f.name for f in fields(lake.StageResult)}


# ---- inputs --------------------------------------------------------------------------------------

def as_result(stage: str, value: Any) -> lake.StageResult | None:
    """A StageResult from what a caller holds: a StageResult, its asdict() form, or just its outputs."""
    if value is None or isinstance(value, lake.StageResult):
        return value
    if isinstance(value, Mapping):
        if "outputs" in value:
            known = {k: v for k, v in value.items() if k in _RESULT_FIELDS}
            return lake.StageResult(**{"stage": stage, "run_id": "", **known})
        return lake.StageResult(stage, "", {k: str(v) for k, v in value.items()})
    raise TypeError(f"stage {stage!r}: expected a StageResult, a dict or None, got {type(value).__name__}")


def _paths(value: str) -> list[Path]:
    """An output value as files: a file, a folder of Parquet files, or a JSON list (bulk labels)."""
    if value.startswith("["):
        return [Path(p) for p in json.loads(value)]
    p = Path(value)
    return sorted(p.glob("*.parquet")) if p.is_dir() else [p]


class _Run:
    """The stage results of one run and lazy, cached reads of their tables."""

    def __init__(self, results: Mapping[str, Any]):
        self.results = {s: r for s, v in results.items() if (r := as_result(s, v)) is not None}
        self._tables: dict[tuple[str, str], Any] = {}
        self.missing: list[str] = []

    def get(self, stage: str) -> lake.StageResult | None:
        return self.results.get(stage)

    def table(self, stage: str, name: str):
        """The output `name` of `stage` as a DataFrame, or None (stage not run, output absent, files gone)."""
        key = (stage, name)
        if key not in self._tables:
            result, frame = self.results.get(stage), None
            value = result.outputs.get(name) if result else None
            if value:
                files = _paths(value)
                gone = [str(f) for f in files if not f.exists()]
                if gone or not files:
                    self.missing.append(f"{stage}.{name}: {', '.join(gone) or value}")
                else:
                    frame = lake.read_table(files).to_pandas()
            self._tables[key] = frame
        return self._tables[key]


def catalog_run(task: str, root: str | Path | None = None) -> tuple[dict[str, lake.StageResult], dict[str, dict]]:
    """The latest run of a task in the catalog: consistent stage results and their recorded inputs.

    `artifacts` holds the latest registered artifact per (task, name, stage); the stage registered
    last (bulk aside) anchors the run. Upstream, the run takes the stages whose cache keys the
    recorded `inputs` name; downstream, the latest run of each later stage built on those keys. So a
    flow stopped at the teacher reports its new teacher with no student, and an older student is
    never shown beside a newer teacher. Bulk is the latest bulk run of the chosen student. Each
    result comes from its stage folder's `_SUCCESS` manifest when there (exact seconds), else from
    its `runs` row.
    """
    root = lake.home(root)
    if not (root / "catalog.duckdb").exists():
        return {}, {}
    with lake.catalog(root, read_only=True) as con:
        runs = con.execute("SELECT run_id, stage, cache_key, inputs, output_path, metrics, counts, started_at, "
                           "finished_at FROM runs WHERE task = ? AND status = 'completed' ORDER BY finished_at",
                           [task]).fetchall()
        anchor = con.execute("SELECT stage, cache_key FROM artifacts WHERE task = ? AND stage != 'bulk' "
                             "ORDER BY created_at DESC LIMIT 1", [task]).fetchone()
    rows = [dict(zip(("run_id", "stage", "cache_key", "inputs", "outputs", "metrics", "counts", "started_at",
                      "finished_at"), r)) for r in runs]
    for r in rows:
        r["inputs"] = json.loads(r["inputs"] or "{}")

    chosen: dict[str, dict] = {}
    todo = [tuple(anchor)] if anchor else []
    while todo:  # upstream: what the anchor was built from
        stage, key = todo.pop()
        hits = [r for r in rows if r["stage"] == stage and r["cache_key"] == key]
        if hits and stage not in chosen:
            chosen[stage] = hits[-1]
            todo += [(s, k) for s, k in hits[-1]["inputs"].items() if s in lake.STAGES]
    for stage in lake.STAGES:  # downstream: the latest later stage built on the chosen ones
        if stage in chosen or stage == "bulk" or not chosen:
            continue
        built_on = []
        for r in rows:
            ups = [(s, k) for s, k in r["inputs"].items() if s in lake.STAGES]
            if r["stage"] == stage and ups and all(s in chosen and chosen[s]["cache_key"] == k for s, k in ups):
                built_on.append(r)
        if built_on:
            chosen[stage] = built_on[-1]
    if "student" in chosen:
        student = chosen["student"]
        ids = (student["cache_key"], json.loads(student["outputs"]).get("model"))
        bulk = [r for r in rows if r["stage"] == "bulk" and r["inputs"].get("student") in ids]
        by_key = [r for r in bulk if r["inputs"].get("student") == ids[0]]  # the flow's, before inbox runs
        if bulk:
            chosen["bulk"] = (by_key or bulk)[-1]
    results, inputs = {}, {}
    for stage in lake.STAGES:
        row = chosen.get(stage)
        if row is None:
            continue
        folder = lake.stage_dir(root, task, stage, row["cache_key"])
        if stage != "bulk" and lake.is_done(folder):
            results[stage] = lake.read_done(folder)
        else:
            seconds = (row["finished_at"] - row["started_at"]).total_seconds() if row["started_at"] else 0.0
            results[stage] = lake.StageResult(stage, row["run_id"], json.loads(row["outputs"]),
                                              json.loads(row["counts"] or "{}"), json.loads(row["metrics"] or "{}"),
                                              seconds, row["cache_key"])
        inputs[stage] = row["inputs"]
    return results, inputs


def _recorded_inputs(task: str, results: Mapping[str, lake.StageResult]) -> dict[str, dict]:
    """Each stage's recorded inputs (upstream keys, outside hashes) from the catalog, where it has them."""
    import duckdb

    root = lake.home()
    if not (root / "catalog.duckdb").exists():
        return {}
    try:
        with lake.catalog(root, read_only=True) as con:
            found = {}
            for stage, r in results.items():
                row = con.execute("SELECT inputs FROM runs WHERE task = ? AND stage = ? AND cache_key = ? "
                                  "ORDER BY finished_at DESC LIMIT 1", [task, stage, r.key]).fetchone()
                if row and row[0]:
                    found[stage] = json.loads(row[0])
            return found
    except duckdb.Error:  # a catalog held by a writer: lineage just shows less
        return {}


def run_name(spec: TaskSpec, results: Mapping[str, Any]) -> str:
    """`<task>-<run id of the most downstream stage>`: stable while the artifacts are the same."""
    run = _Run(results)
    last = next((run.get(s) for s in reversed(lake.STAGES) if run.get(s)), None)
    ident = (last.run_id or last.key) if last else "empty"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{spec.name}-{ident}")


def report_dir(spec: TaskSpec, results: Mapping[str, Any], root: str | Path | None = None) -> Path:
    return lake.home(root) / "reports" / run_name(spec, results)


# ---- HTML helpers --------------------------------------------------------------------------------

class Raw(str):
    """An HTML fragment built here (already escaped): passed through as is."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape("" if value is None else str(value), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    if _missing(x):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> Raw:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c if isinstance(c, Raw) else fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return Raw(f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def code(x: Any) -> Raw:
    return Raw(f"<code>{esc(x)}</code>")


def not_run(what: str) -> Raw:
    return Raw(f'<p class="not-run">not run: {esc(what)}</p>')


def note(text: str) -> Raw:
    return Raw(f'<p class="note">{esc(text)}</p>')


def png(fig, alt: str) -> Raw:
    """A matplotlib Figure as an inline <img> (data URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Raw(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def _figure(w: float, h: float, **kw):
    from matplotlib.figure import Figure  # renders with Agg, no pyplot state, no backend switch

    return Figure(figsize=(w, h), layout="constrained", **kw)


def _plain(text: str, width: int = 0) -> str:
    """Text for matplotlib: no mathtext ($), optionally wrapped."""
    text = str(text).replace("$", r"\$")
    return "\n".join(textwrap.wrap(text, width)) if width else text


def _stamp(run_id: str) -> str:
    m = re.search(r"(\d{8})T(\d{6})", run_id or "")
    if not m:
        return ""
    return datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S").strftime("%Y-%m-%d %H:%M:%S UTC")


def _top(answer_json: Any) -> str | None:
    try:
        value = json.loads(answer_json) if isinstance(answer_json, str) else answer_json
    except (TypeError, ValueError):
        return None
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _gold(gold_json: Any) -> Any:
    try:
        return json.loads(gold_json)
    except (TypeError, ValueError):
        return gold_json


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


# ---- sections ------------------------------------------------------------------------------------

def _eval_sets(run: _Run) -> list[tuple[str, Any]]:
    """(model, per-item rows) of every evaluation on the held-out split, in pipeline order."""
    out = []
    te = run.table("teacher", "teacher_eval")
    if te is not None and "model" in te:
        for model in ("base", "teacher"):
            rows = te[te["model"] == model]
            if len(rows):
                out.append((model, rows))
    le = run.table("label", "label_eval")
    if le is not None and len(le):
        out.append(("teacher labels (label path)", le))
    se = run.table("student", "student_eval")
    if se is not None and len(se):
        out.append(("student", se))
    return out


def section_summary(spec: TaskSpec, run: _Run, *, name: str, profile: str | None, states: Mapping[str, str]) -> Raw:
    spec_hash = lake.hash_json(spec.model_dump(mode="json", exclude={"root"}))
    stamps = [s for r in run.results.values() if (s := _stamp(r.run_id))]
    out = spec.output
    if isinstance(out, ClassificationOutput):
        kind = f"classification: {len(out.labels)} labels, ranked top {out.top_k}"
    else:
        kind = f"extraction: fields {', '.join(out.fields)}"
    ran = [f"{s} ({states[s]})" if s in states else s for s in lake.STAGES if run.get(s)]
    rows = [["task", spec.name], ["run", name], ["output", kind], ["grader", spec.grader.type],
            ["profile", profile or "(base spec, no profile)"], ["spec hash", code(spec_hash)],
            ["stages", ", ".join(ran) or "none"],
            ["stages ran", f"{min(stamps)} to {max(stamps)}" if stamps else "–"],
            ["report generated", lake.now().strftime("%Y-%m-%d %H:%M:%S UTC")]]
    body = [table(["", ""], rows, "kv")]
    evals = {m: r for m, r in _eval_sets(run)}
    headline = [f"{m}: top-1 {r['top1'].mean():.1%} on {len(r)} held-out items"
                for m, r in evals.items() if m in ("base", "teacher", "student")]
    if headline:
        body.append(note("; ".join(headline) + "."))
    return Raw("".join(body))


def section_accuracy(spec: TaskSpec, run: _Run) -> Raw:
    sets = _eval_sets(run)
    rows = []
    for model, r in sets:
        k, n = int(r["top1"].sum()), len(r)
        lo, hi = wilson(k, n)
        parsed = float((r["parse_status"] != "failed").mean()) if "parse_status" in r else None
        rows.append([model, n, r["top1"].mean(), f"{lo:.2f}–{hi:.2f}", r["score"].fillna(0).mean(), parsed])
    parts = []
    if rows:
        parts.append(table(["model", "items", "top-1", "top-1 95% CI", "mean reward", "parse rate"], rows))
    seed = run.get("seed")
    if seed and seed.counts:
        parts.append(note("Expert seed split: " + ", ".join(f"{k} {v}" for k, v in sorted(seed.counts.items()))
                          + ". Only the held-out split is reported; validation picked the teacher checkpoint."))
    item_sets = {m: frozenset(r["sha256"]) for m, r in sets if "sha256" in r}
    if len(set(item_sets.values())) > 1:
        parts.append(note("The models were scored on different held-out items (the teacher's evaluation is capped "
                          f"at teacher.eval_max_items = {spec.teacher.eval_max_items}): compare with care."))
    student = run.get("student")
    if student and "trained_on" in student.metrics:
        parts.append(note(f"Student trained on {student.metrics['trained_on']} machine labels "
                          f"({student.metrics.get('filtered_out', 0)} filtered out below confidence "
                          f"{spec.student.min_confidence})."))
    for stage in ("teacher", "student"):
        if not run.get(stage):
            parts.append(not_run(f"{stage} stage"))
        elif not any(m == stage for m, _ in sets):
            parts.append(not_run(f"{stage} evaluation (its per-item rows are missing)"))
    return Raw("".join(parts))


def _component_columns(train, spec: TaskSpec) -> list[str]:
    """The step-metric columns of a multi grader's components (`rewards/<name>/mean`), in order."""
    columns = [f"rewards/{name}/mean" for name in component_names(spec.grader)]
    return [c for c in columns if c in train and train[c].notna().any()]


def section_reward_curve(spec: TaskSpec, run: _Run) -> Raw:
    from matplotlib.ticker import MaxNLocator

    if not run.get("teacher"):
        return not_run("teacher stage")
    steps = run.table("teacher", "teacher_metrics")
    if steps is None or steps.empty or "split" not in steps:
        return not_run(f"GRPO (teacher.grpo.steps = {spec.teacher.grpo.steps}; no step metrics recorded)")
    train = steps[steps["split"] == "train"].sort_values("step")
    val = steps[steps["split"] == "validation"].sort_values("step")
    fig = _figure(7, 3.6)
    ax = fig.add_subplot()
    if "reward" in train and train["reward"].notna().any():
        ax.plot(train["step"], train["reward"], color="#1f77b4", label="train reward (group mean)")
        if "reward_std" in train:
            ax.fill_between(train["step"], (train["reward"] - train["reward_std"]).clip(0, 1),
                            (train["reward"] + train["reward_std"]).clip(0, 1), color="#1f77b4", alpha=0.15,
                            label="± group std")
    for column in _component_columns(train, spec):  # a multi grader: each component's reward, logged only
        ax.plot(train["step"], train[column], "--", lw=1, label=column.split("/")[1] + " (component)")
    rows, best = [], None
    if "mean_reward" in val and val["mean_reward"].notna().any():
        ax.plot(val["step"], val["mean_reward"], "o-", color="#d62728", label="validation mean reward")
        best = val.loc[val["mean_reward"].idxmax()]  # the first maximum: the checkpoint the teacher kept
        ax.axvline(best["step"], color="#888", ls=":", label=f"kept checkpoint (step {int(best['step'])})")
        rows = [[int(r["step"]), r.get("mean_reward"), r.get("top1"), None if _missing(r.get("n")) else int(r["n"])]
                for _, r in val.iterrows()]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    parts = [png(fig, "teacher GRPO reward per step")]
    if rows:
        parts.append(table(["step", "validation mean reward", "validation top-1", "items"], rows))
    if best is not None:
        parts.append(note(f"The teacher is the checkpoint of step {int(best['step'])} "
                          f"(validation reward {best['mean_reward']:.3f}); step 0 is the SFT warm start."))
    return Raw("".join(parts))


def _confusion_counts(rows, labels: list[str]) -> tuple[list[str], list[list[int]]]:
    """Rows: gold label; columns: predicted top label, plus `(other)` for none or out of set."""
    index = {label: i for i, label in enumerate(labels)}
    cols = labels + ["(other)"]
    counts = [[0] * len(cols) for _ in labels]
    for gold, answer in zip(rows["gold"], rows["answer"]):
        g = _gold(gold)
        if g not in index:
            continue
        counts[index[g]][index.get(_top(answer), len(labels))] += 1
    if not any(row[-1] for row in counts):
        cols, counts = labels, [row[:-1] for row in counts]
    return cols, counts


def _confusion_figure(panels: list[tuple[str, list[str], list[list[int]]]], labels: list[str]):
    import numpy as np

    size = 2.2 + 0.42 * len(labels)
    fig = _figure(size * len(panels) + 0.6, 0.8 * size + 1.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, cols, counts) in zip(axes, panels):
        m = np.array(counts, dtype=float)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()))
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xticks(range(len(cols)), [_plain(c, 18) for c in cols], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), [_plain(c, 22) for c in labels], fontsize=7)
        ax.set_xlabel("predicted (top-1)")
        ax.set_ylabel("expert label")
        ax.set_title(_plain(f"{title}: {int(np.trace(m[:, :len(labels)]))}/{int(m.sum())} right"), fontsize=9)
    return fig


def section_confusion(spec: TaskSpec, run: _Run) -> Raw:
    if isinstance(spec.output, ExtractionOutput):
        return _field_accuracy(spec, run)
    sets = [(m, r) for m, r in _eval_sets(run) if m in ("teacher", "student")]
    labels = list(spec.output.labels)
    if not sets:
        return not_run("teacher and student evaluations")
    panels = [(m, *_confusion_counts(r, labels)) for m, r in sets]
    parts = [png(_confusion_figure(panels, labels), "confusion matrices: " + ", ".join(m for m, _ in sets))]
    recall = []
    for i, label in enumerate(labels):
        support = sum(panels[0][2][i])
        recall.append([spec.output.described(label), support, *[(p[2][i][i] / sum(p[2][i])) if sum(p[2][i]) else None for p in panels]])
    parts.append(table(["expert label", "items", *[f"{m} recall" for m, *_ in panels]], recall))
    for stage in ("teacher", "student"):
        if not any(m == stage for m, _ in sets):
            parts.append(not_run(f"{stage} (no held-out evaluation)"))
    return Raw("".join(parts))


def _field_accuracy(spec: TaskSpec, run: _Run) -> Raw:
    from distillery.graders import field_matches

    sets = [(m, r) for m, r in _eval_sets(run) if m != "teacher labels (label path)"]
    if not sets:
        return not_run("teacher and student evaluations")
    fields_ = spec.output.fields
    rows = []
    for name, fs in fields_.items():
        row = [name, fs.type]
        for _, r in sets:
            hits = []
            for gold, answer in zip(r["gold"], r["answer"]):
                g, a = _gold(gold), _gold(answer)
                hits.append(isinstance(a, dict) and isinstance(g, dict) and field_matches(a.get(name), g.get(name), fs))
            row.append(sum(hits) / len(hits) if hits else None)
        rows.append(row)
    parts = [note("Extraction task: share of held-out items with each field right (typed comparison, as graded)."),
             table(["field", "type", *[f"{m} accuracy" for m, _ in sets]], rows)]
    if not run.get("student"):
        parts.append(not_run("student stage"))
    return Raw("".join(parts))


def _calibration_sets(spec: TaskSpec, run: _Run) -> list[tuple[str, list[float], list[bool], str]]:
    """(name, confidence, correct, what the confidence is) for every held-out evaluation that has one."""
    out = []
    le = run.table("label", "label_eval")
    if le is not None and len(le) and "confidence" in le:
        out.append(("machine labels (teacher, label path)", list(le["confidence"]), list(le["top1"]),
                    "the confidence the machine labels carry, on the expert held-out items"))
    te = run.table("teacher", "teacher_eval")
    if te is not None and "confidence" in te:
        t = te[te["model"] == "teacher"]
        if len(t):
            out.append(("teacher (held-out eval)", list(t["confidence"]), list(t["top1"]),
                        "the teacher stage's own held-out evaluation, answering as the labeling stage does"))
    se = run.table("student", "student_eval")
    if se is not None and len(se) and "probs" in se:
        conf = [max(json.loads(p)) if isinstance(p, str) and p.startswith("[") else 0.0 for p in se["probs"]]
        out.append(("student", conf, list(se["top1"]), "probability of the top label over the label set "
                    "(what bulk labels carry)"))
    return out


def section_calibration(spec: TaskSpec, run: _Run) -> Raw:
    sets = _calibration_sets(spec, run)
    labels = run.table("label", "machine_labels")
    if not sets:
        return not_run("teacher and student evaluations (no confidence on expert-labeled items)")
    cals = [(name, calibration(c, k), what) for name, c, k, what in sets]
    fig = _figure(7, 5.4)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1.3], sharex=True)
    top.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="perfect calibration")
    for (name, cal, _), color in zip(cals, COLORS):
        xs = [b["confidence"] for b in cal["bins"]]
        ys = [b["accuracy"] for b in cal["bins"]]
        sizes = [20 + 180 * b["n"] / cal["n"] for b in cal["bins"]]
        top.plot(xs, ys, color=color, lw=1, alpha=0.7)
        top.scatter(xs, ys, s=sizes, color=color, alpha=0.8,
                    label=_plain(f"{name}: ECE {cal['ece']:.3f} (n={cal['n']})"))
    top.set_ylabel("accuracy (top-1)")
    top.set_ylim(-0.03, 1.03)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("reliability: mean confidence vs accuracy per bin (marker area ∝ items)", fontsize=9)
    edges = [i / 10 for i in range(11)]
    hist = [(name, c) for name, c, _, _ in sets]
    if labels is not None and "confidence" in labels and len(labels):
        hist.append((f"machine labels (n={len(labels)}, no expert label)", list(labels["confidence"].fillna(0))))
    for (name, c), color in zip(hist, [*COLORS[:len(sets)], "#7f7f7f"]):
        bottom.hist(c, bins=edges, histtype="step", density=True, lw=1.5, color=color, label=_plain(name))
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("density")
    bottom.set_xlim(0, 1)
    bottom.legend(fontsize=7, loc="upper left")
    primary = cals[0]
    parts = [Raw(f'<p class="headline">ECE ({esc(primary[0])}, 10 equal-width bins): '
                 f'<b>{esc(fmt(primary[1]["ece"]))}</b> on {primary[1]["n"]} expert held-out items.</p>'),
             png(fig, "reliability diagram"),
             table(["scored by", "items", "ECE", "acc @ 50% coverage", "acc @ 80%", "acc @ 100%", "mean confidence",
                    "confidence is"],
                   [[name, cal["n"], cal["ece"], *[cal["acc_at_coverage"][str(c)] for c in COVERAGES],
                     sum(b["confidence"] * b["n"] for b in cal["bins"]) / cal["n"], what] for name, cal, what in cals])]
    parts.append(note("Accuracy at coverage c: top-1 accuracy over the c share of items with the highest confidence; "
                      "a useful confidence makes it fall as coverage grows."))
    constrained = isinstance(spec.output, ClassificationOutput) and not spec.teacher.reasoning
    if run.get("label") and (run.table("label", "label_eval") is None) and constrained:
        parts.append(note("The machine labels' confidence is the top label's probability over the label set; the "
                          "runs older than the label_eval output carry another confidence, so their ECE is a proxy. "
                          "A label stage that writes label_eval measures the labels' own confidence."))
    if labels is None:
        parts.append(not_run("label stage (no machine labels)"))
    else:
        status = ", ".join(f"{k} {int(v)}" for k, v in labels["parse_status"].value_counts().items())
        parts.append(note(f"Machine labels: {len(labels)}, mean confidence {labels['confidence'].mean():.3f}, "
                          f"parse status {status}."))
    return Raw("".join(parts))


# units of work per stage: (label, count) from its counts
def _units(stage: str, r: lake.StageResult) -> tuple[str, int | None]:
    c = r.counts
    if stage == "ingest":
        return "files", c.get("documents", 0) + c.get("quarantined", 0) + c.get("duplicates", 0)
    if stage == "seed":
        return "seed rows", sum(v for v in c.values() if isinstance(v, int))
    if stage == "teacher":
        return "train items", c.get("train")
    if stage == "label":
        return "documents labeled", c.get("labeled", 0) - c.get("resumed_from", 0)
    if stage == "student":
        return "training examples", c.get("trained_on")
    if stage == "bulk":
        return "files seen", c.get("seen")
    return "", None


def section_throughput(spec: TaskSpec, run: _Run, states: Mapping[str, str]) -> Raw:
    rows, total = [], 0.0
    for stage in lake.STAGES:
        r = run.get(stage)
        if r is None:
            rows.append([stage, "not run", None, "", None, None, ""])
            continue
        unit, n = _units(stage, r)
        total += r.seconds or 0.0
        detail = []
        for part in ("sft", "train"):
            if isinstance(r.metrics.get(part), dict) and r.metrics[part].get("seconds"):
                detail.append(f"SFT {r.metrics[part]['seconds']:.1f} s, {r.metrics[part].get('steps')} steps")
        if stage == "teacher" and r.counts.get("grpo_steps") is not None:
            detail.append(f"GRPO {r.counts['grpo_steps']} steps")
        if isinstance(r.metrics.get("docs_per_s"), (int, float)):
            detail.append(f"stage's own rate {r.metrics['docs_per_s']:.2f} docs/s"
                          + (" (labeling only, model load excluded)" if stage == "label" else ""))
        rate = n / r.seconds if n and r.seconds else None
        rows.append([stage, states.get(stage, ""), r.seconds, f"{n} {unit}" if n is not None else "", rate,
                     r.counts.get("quarantined"), "; ".join(detail)])
    rows.append(["total", "", total, "", None, None, ""])
    return Raw(table(["stage", "state", "seconds", "work", "per second", "quarantined", "detail"], rows)
               + note("Seconds are each stage's own wall time; a Cached stage shows the time of the run that made it."))


def section_lineage(spec: TaskSpec, run: _Run, inputs: Mapping[str, Mapping]) -> Raw:
    rows = []

    def recorded(stage: str, name: str, now: str | None) -> Raw | str:
        was = (inputs.get(stage) or {}).get(name)
        if was and now and was != now:
            return Raw(f"{code(was)} <span class=\"warn\">(now {esc(now)}: changed since the run)</span>")
        if was:
            return code(was)
        return Raw(f"{code(now)} (hashed now)") if now else "–"

    seed_path = spec.path(spec.seeds.path)
    seed_now = lake.hash_files([seed_path]) if seed_path.exists() else None
    seed = run.get("seed")
    splits = ", ".join(f"{k} {v}" for k, v in sorted(seed.counts.items())) if seed else ""
    rows.append(["seed file", code(spec.seeds.path), recorded("seed", "seed_file", seed_now),
                 f"expert labels: {splits}" if splits else "expert labels"])
    if seed:
        rows.append(["seed labels", code(seed.outputs.get("seed_labels")), code(seed.key), "seed file, split "
                     f"(seed {spec.seeds.split_seed}, held-out {spec.seeds.heldout_fraction})"])
    for role, value, stage, field_ in (("base model", spec.models.base, "teacher", "base_model"),
                                       ("student start model", spec.models.student, "student", "student_model")):
        p = spec.path(value)
        rows.append([role, code(value), recorded(stage, field_, lake.hash_model(p) if p.exists() else None), ""])
    teacher = run.get("teacher")
    if teacher:
        rows.append(["teacher checkpoint", code(teacher.outputs.get("model")), code(teacher.key),
                     f"base model + seed labels (train {teacher.counts.get('train')}, validation "
                     f"{teacher.counts.get('validation')}); SFT then {teacher.counts.get('grpo_steps', 0)} GRPO steps"])
    else:
        rows.append(["teacher checkpoint", "not run", "", ""])
    label = run.get("label")
    if label:
        labels = run.table("label", "machine_labels")
        models = sorted(set(labels["model"])) if labels is not None and "model" in labels else []
        rows.append(["machine labels", code(label.outputs.get("machine_labels")), code(label.key),
                     Raw(f"{esc(label.counts.get('labeled'))} documents labeled by "
                         + (", ".join(str(code(m)) for m in models) or "the teacher checkpoint"))])
    else:
        rows.append(["machine labels", "not run", "", ""])
    student = run.get("student")
    if student:
        trained_on = student.metrics.get("trained_on", student.counts.get("trained_on"))
        rows.append(["student checkpoint", code(student.outputs.get("model")), code(student.key),
                     f"student start model trained on {trained_on} machine labels "
                     f"(confidence ≥ {spec.student.min_confidence})"])
    else:
        rows.append(["student checkpoint", "not run", "", ""])
    bulk = run.get("bulk")
    if bulk:
        files = _paths(bulk.outputs["bulk_labels"]) if bulk.outputs.get("bulk_labels") else []
        rows.append(["bulk labels", code(bulk.outputs.get("folder", "")), code(bulk.key),
                     Raw(f"{esc(bulk.counts.get('labeled'))} documents labeled this run by "
                         f"{code(bulk.metrics.get('model', 'the student'))}; the folder holds {len(files)} committed "
                         "label shard(s), of every bulk run")])
    else:
        rows.append(["bulk labels", "not run", "", ""])
    keys = []
    for stage in lake.STAGES:
        r = run.get(stage)
        if r:
            ins = inputs.get(stage)
            keys.append([stage, code(r.run_id), code(r.key),
                         Raw(", ".join(f"{esc(k)}={code(v)}" for k, v in sorted(ins.items()))) if ins else "–"])
    parts = [table(["artifact", "path / id", "identity (hash or cache key)", "made from"], rows),
             Raw("<h3>Stage cache keys</h3>"), table(["stage", "run id", "cache key", "inputs"], keys)]
    if run.missing:
        parts.append(note("Outputs registered but missing on disk: " + "; ".join(run.missing)))
    return Raw("".join(parts))


# ---- the page ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;max-width:1100px;
margin:24px auto;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
table.kv td:first-child{font-weight:600;background:#fafafa}
code{font:12px ui-monospace,Menlo,monospace;word-break:break-all}
img{max-width:100%;border:1px solid #eee}.not-run{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px}
.note{color:#555;font-size:13px}.warn{color:#a94442}.headline{font-size:15px}.error{color:#a94442}
"""


def build_html(spec: TaskSpec, results: Mapping[str, Any], *, profile: str | None = None,
               inputs: Mapping[str, Mapping] | None = None, states: Mapping[str, str] | None = None,
               name: str | None = None) -> str:
    """The report page as a string (see `write_report`)."""
    run = _Run(results)
    states = dict(states or {})
    inputs = dict(inputs) if inputs is not None else _recorded_inputs(spec.name, run.results)
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
    body = []
    for sid in SECTIONS:
        try:
            content = builders[sid]()
        except Exception as err:  # noqa: BLE001 - one unreadable input must not cost the whole report
            content = Raw(f'<p class="error">could not render this section: {esc(type(err).__name__)}: {esc(err)}</p>')
        body.append(f'<section id="{sid}"><h2>{esc(TITLES[sid])}</h2>{content}</section>')
    nav = " ".join(f'<a href="#{sid}">{esc(TITLES[sid].split(" on ")[0])}</a>' for sid in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(f'Distillery report: {spec.name} ({name})')}</title><style>{CSS}</style></head>"
            f"<body><h1>Distillery report: {esc(spec.name)}</h1><nav>{nav}</nav>{''.join(body)}</body></html>\n")


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
    page = build_html(spec, results, profile=profile, inputs=inputs, states=states)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(page, encoding="utf-8")
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


if __name__ == "__main__":
    sys.exit(main())
