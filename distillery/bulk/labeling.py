"""What every bulk engine computes the same way: the extraction settings and a batch's label fields."""

from __future__ import annotations

import json

from distillery.answer import score_answers
from distillery.scope import FLAGS as SCOPE_FLAGS
from distillery.spec import TaskSpec


def extract_options(spec: TaskSpec) -> dict:
    """`pdf.extract_in` keyword arguments from the spec's ingest settings: limits and the window read."""
    ing = spec.ingest
    return {"timeout_s": ing.timeout_s, "max_bytes": int(ing.max_file_mb * 2**20), "min_chars": ing.min_chars,
            "read": ing.read}


FIELDS = ("label", "ranked", "confidence", "probs", *SCOPE_FLAGS)


def label_fields(spec: TaskSpec, backend, texts: list[str], scope=None, hashes: list[str] | None = None) -> list[dict]:
    """The student's answer per text: label, ranked labels, confidence and the probabilities (JSON);
    with the student's `scope` (`scope.load`), its in-scope share and flags (`hashes`: the documents'
    content hashes, so a document the scope was fitted on is compared with the others)."""
    answers, probs = score_answers(spec, backend, texts, student=True)
    rows = [{"label": a.top if a.value is None else json.dumps(a.value), "ranked": json.dumps(a.ranked),
             "confidence": max(p), "probs": json.dumps(p)}
            for a, p in zip(answers, probs)]
    return scope.mark(rows, texts, hashes) if scope is not None and texts else rows
