"""The answering layer: prompt -> scored or decoded answer -> label row.

One path used by every stage that makes a model answer: the teacher's evaluation (selection on
validation, held-out accuracy), machine labeling, the student's evaluation and bulk labeling, so
that what is measured is what is used. Without reasoning the answer is decoded under the schema,
as vLLM's structured `choice` would: classification scores the label set after the `Answer:`
prefill in one pass (by each label's first token when they differ, else by every label's token
sequence) and ranks the labels by probability; extraction forces the JSON skeleton and types each
value (`constrained.decode`). With reasoning (or a backend without the constrained path) the model
generates, and its output goes through the one parser; unparsable output is kept and marked
`failed`, never dropped.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from distillery import scope
from distillery.constrained import in_schema
from distillery.evaluate import grade_items, summarize
from distillery.prompts import Answer, format_answer, parse_answer, prompt_hash, render_prompt
from distillery.spec import ClassificationOutput, ExtractionOutput, TaskSpec

LABEL_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("raw_output", pa.string()), ("reasoning", pa.string()), ("answer", pa.string()),
    ("parse_status", pa.string()), ("parse_error", pa.string()), ("confidence", pa.float64()),
    ("probs", pa.string()), ("model", pa.string()), ("prompt_hash", pa.string()), ("task", pa.string()),
    ("run_id", pa.string()), ("stage", pa.string()), *scope.COLUMNS,
])


def answer_examples(spec: TaskSpec, items: list[dict], tokenizer) -> list[dict]:
    """SFT examples: the answer-only prompt and the gold answer as completion (an extraction answer
    with the spec's fields in the spec's order: what schema-constrained decoding writes)."""
    def target(answer):
        if isinstance(answer, str):
            return [answer]
        return in_schema(spec.output, answer) if isinstance(spec.output, ExtractionOutput) else answer

    return [{"prompt": render_prompt(it["text"], spec, tokenizer), "completion": format_answer(target(it["answer"]))}
            for it in items]


def first_token_scoring(spec: TaskSpec, tokenizer, *, student: bool) -> bool:
    """Whether the student (or the teacher) scores labels by their first token alone.

    Under a schema that allows exactly the label set (vLLM's structured `choice`), once a label's
    first token is chosen its remaining tokens are forced, so P(label) under constrained decoding is
    the first token's probability renormalized over the labels' first tokens: one forward pass per
    document. It needs labels whose first tokens differ; otherwise every label's full sequence is scored.
    """
    enabled = spec.student.first_token if student else spec.teacher.first_token
    if not (isinstance(spec.output, ClassificationOutput) and enabled):
        return False
    firsts = [tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in spec.output.labels]
    return len(set(firsts)) == len(firsts)


def score_answers(spec: TaskSpec, backend, texts: list[str], *,
                  student: bool = False) -> tuple[list[Answer], list[list[float]]]:
    """Answers under the schema, and a probability row per document.

    Classification: every label scored in one pass, ranked by probability; each label by its first
    token when the spec allows it for this model (`teacher.first_token`, or `student.first_token` with
    `student=True`) and the labels' first tokens differ, otherwise by its whole token sequence.
    Extraction: the JSON skeleton forced and each field's value decoded over the tokens its type
    allows (`constrained.decode`); the row holds one number, the decoding's confidence.
    """
    if is_probability_model(backend):  # a committee or a probability-model student: no prompt to render
        probs = np.asarray(backend.probabilities(texts), dtype=float).reshape(len(texts), len(spec.output.labels))
        return ranked_answers(spec, probs), probs.tolist()
    prompts = [render_prompt(t, spec, backend.tokenizer) for t in texts]
    if not isinstance(spec.output, ClassificationOutput):  # extraction: the JSON skeleton forced, values typed
        decoded = backend.extract(prompts, spec.output)
        return [Answer("ok", value=value) for value, _ in decoded], [[confidence] for _, confidence in decoded]
    labels = list(spec.output.labels)
    probs = backend.score_labels(prompts, labels, first_token=first_token_scoring(spec, backend.tokenizer, student=student))
    rows = probs.tolist()
    return ranked_answers(spec, np.asarray(rows)), rows


def is_probability_model(model) -> bool:
    """A model behind the members' contract (`probabilities(texts)`), rather than a causal LM backend."""
    return hasattr(model, "probabilities")


def ranked_answers(spec: TaskSpec, probs: np.ndarray) -> list[Answer]:
    """The top-k labels of each probability row, most probable first (ties keep the label order)."""
    labels = list(spec.output.labels)
    return [Answer("ok", ranked=[labels[i] for i in np.argsort(-row, kind="stable")[: spec.output.top_k]])
            for row in probs]


def constrained(spec: TaskSpec) -> bool:
    """Without reasoning the teacher's answer is decoded under the schema."""
    return not spec.teacher.reasoning


def label_rows(spec: TaskSpec, backend, docs: list[dict], *, model_id: str, run_id: str) -> list[dict]:
    """The teacher's label row per document (LABEL_SCHEMA): raw output, parsed answer, confidence."""
    method = "score_labels" if isinstance(spec.output, ClassificationOutput) else "extract"
    if is_probability_model(backend) or (constrained(spec) and hasattr(backend, method)):
        return _scored_rows(spec, backend, docs, model_id=model_id, run_id=run_id)
    reasoning = spec.teacher.reasoning
    prompts = [render_prompt(d["text"], spec, backend.tokenizer, reasoning=reasoning) for d in docs]
    gens = backend.generate(prompts, max_new_tokens=spec.label.max_new_tokens, seed=spec.seed)
    phash = prompt_hash(spec, reasoning)
    rows = []
    for doc, g in zip(docs, gens):
        a = parse_answer(g[0].text, spec, prefilled=not reasoning)
        value = a.ranked if isinstance(spec.output, ClassificationOutput) else a.value
        rows.append({"sha256": doc["sha256"], "raw_output": g[0].text, "reasoning": a.reasoning,
                     "answer": json.dumps(value) if a.ok else None, "parse_status": a.status, "parse_error": a.error,
                     "confidence": g[0].confidence if a.ok else 0.0, "probs": None, "model": model_id,
                     "prompt_hash": phash, "task": spec.name, "run_id": run_id, "stage": "label"})
    return rows


def _scored_rows(spec: TaskSpec, backend, docs: list[dict], *, model_id: str, run_id: str) -> list[dict]:
    """The teacher's answer under the schema: the label set ordered by P(label | prompt, `Answer:`),
    with that probability row kept (`probs`, JSON; the class prior is estimated from it), or the JSON
    object decoded under the schema."""
    answers, probs = score_answers(spec, backend, [d["text"] for d in docs])
    return answer_rows(spec, docs, answers, probs, model_id=model_id, run_id=run_id)


def answer_rows(spec: TaskSpec, docs: list[dict], answers: list[Answer], probs: list[list[float]], *,
                model_id: str, run_id: str) -> list[dict]:
    """Label rows (LABEL_SCHEMA) of answers under the schema and their probability rows."""
    phash = prompt_hash(spec, False)
    values = [a.ranked if a.value is None else a.value for a in answers]
    classify = isinstance(spec.output, ClassificationOutput)
    return [{"sha256": d["sha256"], "raw_output": format_answer(v), "reasoning": "", "answer": json.dumps(v),
             "parse_status": "ok", "parse_error": "", "confidence": max(p),
             "probs": json.dumps(p) if classify else None, "model": model_id, "prompt_hash": phash,
             "task": spec.name, "run_id": run_id, "stage": "label"}
            for d, v, p in zip(docs, values, probs)]


def evaluate_labels(spec: TaskSpec, backend, items: list[dict], *, model_id: str) -> pd.DataFrame:
    """Label expert-labeled items exactly as machine labels are made, and grade them (one row each)."""
    rows = label_rows(spec, backend, items, model_id=model_id, run_id="") if items else []
    return grade_label_rows(spec, items, rows)


def grade_label_rows(spec: TaskSpec, items: list[dict], rows: list[dict]) -> pd.DataFrame:
    """Grade label rows made for expert-labeled items (one row each, in the items' order)."""
    prefilled = not spec.teacher.reasoning  # constrained labels are formatted as a prefilled answer too
    answers = [parse_answer(r["raw_output"], spec, prefilled=prefilled) for r in rows]
    return grade_items(spec, items, answers, [{"confidence": r["confidence"]} for r in rows])


def evaluate_labeling(spec: TaskSpec, backend, items: list[dict]) -> tuple[pd.DataFrame, dict]:
    """Graded rows and metrics of a model answering as the labeling stage makes it answer, so that
    selection, the reported accuracy and the student's promotion gate all measure the teacher as it is used."""
    rows = evaluate_labels(spec, backend, items, model_id="")
    return rows, summarize(rows)
