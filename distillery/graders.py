"""Graders: score a parsed answer against the gold answer, in [0, 1], with a short reason.

`ranked` is RFT's partial-credit grader (OpenPipe's analysis of OpenAI RFT): 1.0 when the right
label is first, 0.5 when second, 0 otherwise (weights configurable). `fields` gives field-level
credit for JSON extraction with typed normalization. A grader returns score None for "cannot grade"
(no gold) and 0.0 for "wrong"; it never raises on a model's output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable

from distillery.prompts import Answer, format_answer, match_label, parse_answer
from distillery.spec import ExtractionOutput, FieldSpec, GraderSpec, TaskSpec


@dataclass(frozen=True)
class Grade:
    score: float | None
    reason: str


Grader = Callable[[Answer, Any], Grade]


def grade_ranked(answer: Answer, gold: str, weights: list[float]) -> Grade:
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    if gold in answer.ranked:
        pos = answer.ranked.index(gold)
        credit = weights[pos] if pos < len(weights) else 0.0
        return Grade(float(credit), f"right label at position {pos + 1}")
    return Grade(0.0, "right label not in the answer")


def _norm_text(s: Any) -> str:
    return " ".join(str(s).lower().split())


def grade_exact(answer: Answer, gold: Any) -> Grade:
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    got = answer.top if answer.value is None else answer.value
    if isinstance(gold, dict):
        same = got == gold
    else:
        same = _norm_text(got) == _norm_text(gold)
    return Grade(1.0 if same else 0.0, "exact match" if same else f"got {got!r}")


def _to_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v) if math.isfinite(v) else None
        except OverflowError:  # an int too large for a float
            return None
    cleaned = re.sub(r"[^\d.,-]", "", str(v))
    if cleaned.count(",") and cleaned.count("."):
        # the separator that comes last is the decimal one: 1,234.56 and 1.234,56
        if cleaned.rfind(",") > cleaned.rfind("."):
            cleaned = cleaned.replace(".", "").replace(",", ".")
        else:
            cleaned = cleaned.replace(",", "")
    elif cleaned.count(",") == 1 and len(cleaned.split(",")[1]) != 3:
        cleaned = cleaned.replace(",", ".")
    else:
        cleaned = cleaned.replace(",", "")
    try:
        x = float(cleaned)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y", "%Y/%m/%d")


def _to_date(v: Any) -> date | None:
    from datetime import datetime

    s = " ".join(str(v).split()).strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    return None


def field_matches(got: Any, gold: Any, fs: FieldSpec) -> bool:
    if got is None:
        return False
    if fs.type == "number":
        a, b = _to_number(got), _to_number(gold)
        return a is not None and b is not None and abs(a - b) <= fs.tolerance
    if fs.type == "date":
        a, b = _to_date(got), _to_date(gold)
        return a is not None and a == b
    return _norm_text(got) == _norm_text(gold)


def grade_fields(answer: Answer, gold: dict, fields: dict[str, FieldSpec]) -> Grade:
    """Mean per-field credit; keys outside the schema cost credit like a wrong field."""
    if not answer.ok or answer.value is None:
        return Grade(0.0, f"unparsable: {answer.error or 'no JSON'}")
    got = answer.value
    right = [name for name, fs in fields.items() if field_matches(got.get(name), gold.get(name), fs)]
    extra = [k for k in got if k not in fields]
    score = len(right) / (len(fields) + len(extra))
    wrong = [n for n in fields if n not in right]
    reason = f"{len(right)}/{len(fields)} fields right" + (f"; wrong: {', '.join(wrong)}" if wrong else "")
    return Grade(score, reason + (f"; extra keys: {', '.join(extra)}" if extra else ""))


def grade_format(answer: Answer, spec: TaskSpec) -> Grade:
    """1.0 when the answer parses and fits the schema, else 0."""
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    if isinstance(spec.output, ExtractionOutput):
        missing = [k for k in spec.output.fields if k not in (answer.value or {})]
        return Grade(0.0 if missing else 1.0, f"missing keys: {missing}" if missing else "fits the schema")
    return Grade(1.0 if answer.status == "ok" else 0.5, f"parse {answer.status}")


def build_grader(cfg: GraderSpec | dict, spec: TaskSpec) -> Grader:
    """A grader function `(answer, gold) -> Grade` from the spec's grader section (nestable)."""
    cfg = cfg if isinstance(cfg, GraderSpec) else GraderSpec.model_validate(cfg)
    if cfg.type == "ranked":
        return lambda a, g: grade_ranked(a, g, cfg.weights)
    if cfg.type == "exact":
        return grade_exact
    if cfg.type == "fields":
        if not isinstance(spec.output, ExtractionOutput):
            raise ValueError("grader 'fields' needs output.kind: extraction")
        return lambda a, g: grade_fields(a, g, spec.output.fields)
    if cfg.type == "format":
        return lambda a, g: grade_format(a, spec)
    parts = [(build_grader(c["grader"], spec), float(c.get("weight", 1.0))) for c in cfg.components]

    def multi(a: Answer, g: Any) -> Grade:
        grades = [(grader(a, g), w) for grader, w in parts]
        scored = [(gr.score, w) for gr, w in grades if gr.score is not None]
        if not scored:
            return Grade(None, "no component could grade")
        total = sum(w for _, w in scored) or 1.0  # a component that cannot grade is left out, not scored 0
        return Grade(sum(s * w for s, w in scored) / total, "; ".join(gr.reason for gr, _ in grades))

    return multi


def grade_gold(gold: Any, spec: TaskSpec) -> Any:
    """Normalise a gold answer from a seed row: a label for classification, a dict for extraction."""
    if isinstance(spec.output, ExtractionOutput):
        return gold
    return match_label(str(gold), spec.output.labels) or gold


def score_completions(completions: list[str], golds: list[Any], spec: TaskSpec, *, prefilled: bool = True) -> list[Grade]:
    grader = build_grader(spec.grader, spec)
    out = []
    for text, gold in zip(completions, golds):
        if gold is None:
            out.append(Grade(None, "no gold answer"))
            continue
        out.append(grader(parse_answer(text, spec, prefilled=prefilled), gold))
    return out


def _corruptions(gold: Any, spec: TaskSpec) -> dict[str, str]:
    """Answers a working grader must score below gold, as completions after the `Answer:` prefill."""
    bad = {"unparsable": " I am not sure about this one."}
    if isinstance(spec.output, ExtractionOutput):
        name = next(iter(spec.output.fields))
        changed = dict(gold, **{name: f"{gold.get(name)}-wrong"})
        bad["wrong_field"] = format_answer(changed)
        bad["missing_field"] = format_answer({k: v for k, v in gold.items() if k != name})
        return bad
    others = [label for label in spec.output.labels if label != gold]
    bad["wrong_label"] = format_answer(others[: spec.output.top_k])
    bad["shuffled_rank"] = format_answer([others[0], gold, *others[1: spec.output.top_k - 1]])
    return bad


def validate_grader(spec: TaskSpec, golds: list[Any]) -> tuple[list[dict], bool]:
    """Grade each gold answer and its corruptions. Ok when gold scores 1.0 and every corruption less."""
    golds = [grade_gold(g, spec) for g in golds]
    completions: dict[str, list[str]] = {"gold": [format_answer([g] if isinstance(g, str) else g) for g in golds]}
    for gold in golds:
        for kind, text in _corruptions(gold, spec).items():
            completions.setdefault(kind, []).append(text)
    scores = {kind: [g.score or 0.0 for g in score_completions(texts, golds, spec)] for kind, texts in completions.items()}
    table = [{"answer": kind, "n": len(v), "mean": sum(v) / len(v), "max": max(v)} for kind, v in scores.items()]
    gold_ok = all(s == 1.0 for s in scores["gold"])
    separated = all(row["max"] < 1.0 for row in table if row["answer"] != "gold")
    return table, gold_ok and separated
