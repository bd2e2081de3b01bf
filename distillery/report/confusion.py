"""The confusion section: gold vs predicted top label per model, with per-label recall; for an
extraction task, the share of held-out items with each field right instead."""

from __future__ import annotations

import json
from typing import Any

from distillery.report.kit import Raw, figure, not_run, note, plain, png, table
from distillery.report.lineage import Run, eval_sets
from distillery.spec import ExtractionOutput, TaskSpec


def _top(answer_json: Any) -> str | None:
    try:
        value = json.loads(answer_json) if isinstance(answer_json, str) else answer_json
    except (TypeError, ValueError):
        return None
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


def _gold(gold_json: Any) -> Any:
    try:
        return json.loads(gold_json)
    except (TypeError, ValueError):
        return gold_json


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


def _draw_matrix(ax, title: str, cols: list[str], counts: list[list[int]], labels: list[str]) -> None:
    import numpy as np

    m = np.array(counts, dtype=float)
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()))
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(cols)), [plain(c, 18) for c in cols], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), [plain(c, 22) for c in labels], fontsize=7)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("expert label")
    ax.set_title(plain(f"{title}: {int(np.trace(m[:, :len(labels)]))}/{int(m.sum())} right"), fontsize=9)


def _confusion_figure(panels: list[tuple[str, list[str], list[list[int]]]], labels: list[str]):
    size = 2.2 + 0.42 * len(labels)
    fig = figure(size * len(panels) + 0.6, 0.8 * size + 1.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, cols, counts) in zip(axes, panels):
        _draw_matrix(ax, title, cols, counts, labels)
    return fig


def _recall_rows(panels: list[tuple[str, list[str], list[list[int]]]], labels: list[str],
                 described=str) -> list[list]:
    recall = []
    for i, label in enumerate(labels):
        support = sum(panels[0][2][i])
        recall.append([described(label), support, *[(p[2][i][i] / sum(p[2][i])) if sum(p[2][i]) else None for p in panels]])
    return recall


def section_confusion(spec: TaskSpec, run: Run) -> Raw:
    if isinstance(spec.output, ExtractionOutput):
        return _field_accuracy(spec, run)
    sets = [(m, r) for m, r in eval_sets(run) if m in ("teacher", "student")]
    labels = list(spec.output.labels)
    if sets:  # the bar they are read against: the TF-IDF baseline's panel first
        sets = [(m, r) for m, r in eval_sets(run) if m == "baseline"] + sets
    if not sets:
        return not_run("teacher and student evaluations")
    panels = [(m, *_confusion_counts(r, labels)) for m, r in sets]
    parts = [png(_confusion_figure(panels, labels), "confusion matrices: " + ", ".join(m for m, _ in sets)),
             table(["expert label", "items", *[f"{m} recall" for m, *_ in panels]], _recall_rows(panels, labels, spec.output.described))]
    for stage in ("teacher", "student"):
        if not any(m == stage for m, _ in sets):
            parts.append(not_run(f"{stage} (no held-out evaluation)"))
    return Raw("".join(parts))


def _field_hits(rows, name: str, field) -> float | None:
    from distillery.graders import field_matches

    hits = []
    for gold, answer in zip(rows["gold"], rows["answer"]):
        g, a = _gold(gold), _gold(answer)
        hits.append(isinstance(a, dict) and isinstance(g, dict) and field_matches(a.get(name), g.get(name), field))
    return sum(hits) / len(hits) if hits else None


def _field_accuracy(spec: TaskSpec, run: Run) -> Raw:
    sets = [(m, r) for m, r in eval_sets(run) if m != "teacher labels (label path)"]
    if not sets:
        return not_run("teacher and student evaluations")
    rows = [[name, fs.type, *[_field_hits(r, name, fs) for _, r in sets]] for name, fs in spec.output.fields.items()]
    parts = [note("Extraction task: share of held-out items with each field right (typed comparison, as graded)."),
             table(["field", "type", *[f"{m} accuracy" for m, _ in sets]], rows)]
    if not run.get("student"):
        parts.append(not_run("student stage"))
    return Raw("".join(parts))
