"""The accuracy section: top-1 with its 95% interval, mean reward and parse rate per evaluated model."""

from __future__ import annotations

import math

from distillery.report.kit import Raw, not_run, note, table
from distillery.report.lineage import Run, eval_sets
from distillery.spec import TaskSpec


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _accuracy_row(model: str, r) -> list:
    k, n = int(r["top1"].sum()), len(r)
    lo, hi = wilson(k, n)
    parsed = float((r["parse_status"] != "failed").mean()) if "parse_status" in r else None
    return [model, n, r["top1"].mean(), f"{lo:.2f}–{hi:.2f}", r["score"].fillna(0).mean(), parsed]


def committee_table(board: dict) -> str:
    """The teacher's committee on the seeds: each member's out-of-fold top-1 and its weight, then the
    committee's own (nested) figure, and what the LLM added, in one sentence."""
    def ci(a: dict) -> str:
        return f"{a['ci95'][0]:.2f}–{a['ci95'][1]:.2f}" if a.get("ci95") else ""

    names = {"tfidf": "tfidf (the baseline, fitted on the same seeds)", "encoder": "encoder", "llm": "llm (RFT)"}
    rows = [[names.get(m, m), a["n"], a["top1"], ci(a), a["weight"], a["temperature"]]
            for m, a in board["members"].items()]
    c = board["committee"]
    rows.append(["committee", c["n"], c["top1"], ci(c), 1.0, ""])
    return (note(f"The teacher is a committee, weighted on out-of-fold predictions over all {board['seeds']} seeds "
                 f"({board['folds']} folds; the LLM on the seeds outside its train split). Top-1 out of fold:")
            + table(["member", "seeds", "top-1", "top-1 95% CI", "weight", "temperature"], rows)
            + note(board["llm_added"][0].upper() + board["llm_added"][1:] + "."))


def candidates_table(metrics: dict) -> str:
    """The student candidates: each one's held-out top-1, agreement with the teacher on labels kept out
    of its training, fresh docs/s, whether it passes the gate, and why the promoted one was chosen."""
    def fmt(x, spec=".3f"):
        return "" if x is None else format(x, spec)

    rows = [[c["kind"], fmt(c.get("top1")), fmt(c.get("teacher_agreement")), fmt(c.get("docs_per_s"), ",.0f"),
             fmt(c.get("train_seconds"), ".1f"), "yes" if c.get("passes") else "no"]
            for c in metrics["candidates"]]
    promoted = metrics.get("promotion", {})
    return (note("Student candidates, fastest first (speed on fresh text, no embedding cache):")
            + table(["kind", "held-out top-1", "agreement with teacher", "docs/s", "train s", "passes"], rows)
            + note(("Promoted: " if promoted.get("promoted") else "Not promoted: ") + promoted.get("reason", "") + "."))


def section_accuracy(spec: TaskSpec, run: Run) -> Raw:
    sets = eval_sets(run)
    rows = [_accuracy_row(model, r) for model, r in sets]
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
    if student and student.metrics.get("candidates"):
        parts.append(candidates_table(student.metrics))
    teacher = run.get("teacher")
    if teacher and teacher.metrics.get("committee"):
        parts.append(committee_table(teacher.metrics["committee"]))
    for stage in ("teacher", "student"):
        if not run.get(stage):
            parts.append(not_run(f"{stage} stage"))
        elif not any(m == stage for m, _ in sets):
            parts.append(not_run(f"{stage} evaluation (its per-item rows are missing)"))
    return Raw("".join(parts))
