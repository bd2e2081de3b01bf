"""Evaluation against expert labels: one row per item, and the metrics every stage reports.

`mean_reward` is the task's grader averaged over items; `top1` is the share whose first answer is
right (for extraction: whose grade is 1.0); `parse_rate` the share that parsed.
"""

from __future__ import annotations

import json

import pandas as pd

from distillery import lake
from distillery.graders import build_grader
from distillery.prompts import Answer, parse_answer, render_prompt
from distillery.spec import ClassificationOutput, TaskSpec


def seed_items(spec: TaskSpec, seeds, documents, split: str, limit: int | None = None) -> list[dict]:
    """Seed rows of a split joined with their document text."""
    s = lake.read_table(seeds).to_pandas()
    d = lake.read_table(documents).to_pandas()[["sha256", "text"]]
    rows = s[s["split"] == split].merge(d, on="sha256")
    items = [{"sha256": r.sha256, "document": r.document, "text": r.text, "answer": json.loads(r.answer)}
             for r in rows.itertuples()]
    return items[:limit] if limit else items


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


def evaluate_generative(spec: TaskSpec, backend, items: list[dict], *, reasoning: bool, max_new_tokens: int) -> tuple[pd.DataFrame, dict]:
    """Greedy answers from a generating model, graded against the items' gold answers."""
    prompts = [render_prompt(it["text"], spec, backend.tokenizer, reasoning=reasoning) for it in items]
    gens = backend.generate(prompts, max_new_tokens=max_new_tokens)
    answers = [parse_answer(g[0].text, spec, prefilled=not reasoning) for g in gens]
    extra = [{"raw_output": g[0].text, "confidence": g[0].confidence} for g in gens]
    rows = grade_items(spec, items, answers, extra)
    return rows, summarize(rows)
