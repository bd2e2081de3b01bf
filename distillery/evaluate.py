"""Evaluation against expert labels: one row per item, and the metrics every stage reports.

`mean_reward` is the task's grader averaged over items; `top1` is the share whose first answer is
right (for extraction: whose grade is 1.0); `parse_rate` the share that parsed.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pandas as pd

from distillery import lake
from distillery.graders import build_grader
from distillery.prompts import Answer
from distillery.spec import ClassificationOutput, TaskSpec

COVERAGES = (0.5, 0.8, 1.0)  # shares of items, most confident first, for accuracy at coverage


def seed_items(spec: TaskSpec, seeds, documents, split: str | tuple[str, ...], limit: int | None = None) -> list[dict]:
    """Seed rows of a split (or of several, split after split) joined with their document text."""
    s = lake.read_table(seeds).to_pandas()
    d = lake.read_table(documents).to_pandas()[["sha256", "text"]]
    splits = (split,) if isinstance(split, str) else split
    rows = pd.concat([s[s["split"] == x] for x in splits]).merge(d, on="sha256", sort=False)
    items = [{"sha256": r.sha256, "document": r.document, "text": r.text, "answer": json.loads(r.answer)}
             for r in rows.itertuples()]
    return items[:limit] if limit else items


def gold_label(answer: Any) -> Any:
    """The label a classification answer stands for: the answer, or the first of a ranked list."""
    return answer[0] if isinstance(answer, list) and answer else answer


def stable_slice(items: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(rest, slice): the `n` items first by content hash, kept apart; the same whatever the input order."""
    held = {it["sha256"] for it in sorted(items, key=lambda it: it["sha256"])[:n]}
    return [it for it in items if it["sha256"] not in held], [it for it in items if it["sha256"] in held]


def is_top1(answer: Answer, gold, score: float | None) -> bool:
    if isinstance(gold, str):
        return answer.top == gold
    return score == 1.0


def grade_items(spec: TaskSpec, items: list[dict], answers: list[Answer], extra: list[dict] | None = None) -> pd.DataFrame:
    """Per-item rows: parse status, answer, score, reason, top1 (plus any extra columns)."""
    grader = build_grader(spec.grader, spec)
    columns = ["sha256", "document", "gold", "parse_status", "answer", "score", "reason", "top1", *(extra[0] if extra else {})]
    rows = []
    for n, (item, answer) in enumerate(zip(items, answers)):
        grade = grader(answer, item["answer"])
        rows.append({
            "sha256": item["sha256"], "document": item.get("document", ""),
            "gold": json.dumps(item["answer"]), "parse_status": answer.status,
            "answer": json.dumps(answer.ranked if isinstance(spec.output, ClassificationOutput) else answer.value),
            "score": grade.score, "reason": grade.reason, "top1": is_top1(answer, item["answer"], grade.score),
            **(extra[n] if extra else {}),
        })
    return pd.DataFrame(rows, columns=columns)


def summarize(rows: pd.DataFrame) -> dict:
    if rows.empty:
        return {"n": 0, "mean_reward": 0.0, "top1": 0.0, "parse_rate": 0.0}
    return {"n": int(len(rows)), "mean_reward": float(rows["score"].fillna(0).mean()),
            "top1": float(rows["top1"].mean()), "parse_rate": float((rows["parse_status"] != "failed").mean())}


def paired_difference(a: Iterable[float], b: Iterable[float], *, resamples: int = 2000, seed: int = 0) -> dict:
    """mean(a) - mean(b) over the same items, with a 95% paired bootstrap interval.

    Items are resampled with replacement, both arms together (they were scored on the same items),
    so the interval reflects how much the difference moves with the sample of items, not the
    spread of each arm alone. `significant`: the interval excludes 0.
    """
    import numpy as np

    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired scores need the same items: {x.size} vs {y.size}")
    d = x - y
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "significant": bool(lo > 0 or hi < 0),
            "n": int(d.size)}


def calibration(confidence: Iterable[float], correct: Iterable[Any], bins: int = 10) -> dict:
    """Expected calibration error over `bins` equal-width bins, and accuracy at coverage.

    Bin b holds confidences in [b/bins, (b+1)/bins), the last bin also 1.0; ECE = sum over bins of
    (items in bin / items) * |accuracy - mean confidence|. Accuracy at coverage c is the accuracy of
    the ceil(c * n) items with the highest confidence (ties keep input order). Confidences are
    clipped to [0, 1]; a missing (NaN) confidence counts as 0. Returns `n`, `ece` (None when there
    are no items), `acc_at_coverage` {"0.5", "0.8", "1.0"} and `bins`: the non-empty bins, each
    {lo, hi, n, accuracy, confidence}.
    """
    conf = [min(1.0, max(0.0, float(c))) if c is not None and not math.isnan(float(c)) else 0.0 for c in confidence]
    hit = [bool(x) and not (isinstance(x, float) and math.isnan(x)) for x in correct]
    if len(conf) != len(hit):
        raise ValueError(f"calibration: {len(conf)} confidences but {len(hit)} correctness values")
    n = len(conf)
    if n == 0:
        return {"n": 0, "ece": None, "acc_at_coverage": {str(c): None for c in COVERAGES}, "bins": []}
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(conf):
        members[min(int(c * bins), bins - 1)].append(i)
    table, ece = [], 0.0
    for b, idx in enumerate(members):
        if not idx:
            continue
        acc = sum(hit[i] for i in idx) / len(idx)
        mean_conf = sum(conf[i] for i in idx) / len(idx)
        ece += len(idx) / n * abs(acc - mean_conf)
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "n": len(idx), "accuracy": acc, "confidence": mean_conf})
    ranked = sorted(range(n), key=lambda i: -conf[i])
    coverage = {}
    for share in COVERAGES:
        top = ranked[: max(1, math.ceil(share * n - 1e-9))]
        coverage[str(share)] = sum(hit[i] for i in top) / len(top)
    return {"n": n, "ece": ece, "acc_at_coverage": coverage, "bins": table}


def kept_checkpoint(history: list[dict], grpo_steps: int) -> dict:
    """Which checkpoint the teacher kept and why, from its validation history (step 0: the SFT warm
    start, evaluated first). The first strict maximum wins, as the run's selection keeps it, so GRPO
    must beat the warm start to replace it."""
    if grpo_steps <= 0 or not history:
        return {"step": 0, "kind": "sft", "validation_reward": None, "sft_validation_reward": None,
                "evaluations": 0, "why": "GRPO is off (teacher.grpo.steps = 0): the SFT checkpoint is the teacher"}
    kept = max(history, key=lambda h: h["mean_reward"])  # max keeps the first of equal rewards
    sft = history[0]
    n = sft.get("n", 0)
    if kept["step"] == sft["step"]:
        grpo = max(history[1:], key=lambda h: h["mean_reward"], default=None)
        tried = f"best GRPO {grpo['mean_reward']:.3f} at step {grpo['step']}" if grpo else "no GRPO evaluation"
        why = (f"GRPO did not beat the SFT warm start on validation ({tried} vs {sft['mean_reward']:.3f} at step 0, "
               f"{n} items): kept the SFT checkpoint")
    else:
        why = (f"GRPO beat the SFT warm start on validation ({kept['mean_reward']:.3f} at step {kept['step']} vs "
               f"{sft['mean_reward']:.3f} at step 0, {n} items): kept the GRPO checkpoint of step {kept['step']}")
    return {"step": int(kept["step"]), "kind": "sft" if kept["step"] == sft["step"] else "grpo",
            "validation_reward": float(kept["mean_reward"]), "sft_validation_reward": float(sft["mean_reward"]),
            "evaluations": len(history), "why": why}
