"""The one answer format, shared by training, evaluation, labeling and grading.

A model's turn is optional reasoning followed by a line `Answer: ...`:
- classification: `Answer: label; label; label`, most likely first;
- extraction: `Answer: {"field": value, ...}`.
Without reasoning (the CPU profile) the prompt ends with the `Answer:` prefill, so a completion is
just the answer. `parse_answer` is the only parser; every stage goes through it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from distillery import excerpt
from distillery.spec import ClassificationOutput, ExtractionOutput, TaskSpec

PREFILL = "Answer:"
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")


@dataclass(frozen=True)
class Answer:
    """A parsed answer: `status` is ok, partial (some pieces unparsed) or failed."""

    status: str
    ranked: list[str] = field(default_factory=list)
    value: dict[str, Any] | None = None
    reasoning: str = ""
    error: str = ""
    text: str = ""  # the completion as the model wrote it

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def top(self) -> str | None:
        return self.ranked[0] if self.ranked else None


def document_text(text: str, spec: TaskSpec, chars: int | None = None) -> str:
    """The part of a document the model sees: whitespace collapsed, cut to max_doc_chars (or `chars`).

    Ingestion keeps the text the spec's window chose; a document kept whole (`ingest.read.chars:
    null`, pages separated by form feeds) gets the window's strategy applied here.
    """
    chars = chars or spec.prompts.max_doc_chars
    if excerpt.PAGE_BREAK in text:
        return excerpt.choose_from_pages(text.split(excerpt.PAGE_BREAK), spec.ingest.read.strategy, chars)
    # Runs of whitespace become one space, a trailing one kept: a window cut just after a space then
    # shows the same text as a longer window of the same document.
    return _WHITESPACE.sub(" ", text.lstrip())[:chars]


def document_windows(text: str, spec: TaskSpec, n: int) -> list[str]:
    """Up to `n` consecutive windows of max_doc_chars: the first is `document_text`, the others follow
    it (what the encoder reads of a longer document); never an empty one, except a first."""
    size = spec.prompts.max_doc_chars
    whole = document_text(text, spec, size * n)
    return [whole[:size]] + [w for w in (whole[i * size:(i + 1) * size] for i in range(1, n)) if w.strip()]


def label_lines(out: ClassificationOutput) -> str:
    """The `{label_descriptions}` placeholder: one `- name: description` line per label."""
    return "\n".join(f"- {label}: {out.label_descriptions[label]}" if label in out.label_descriptions
                     else f"- {label}" for label in out.labels)


def user_message(text: str, spec: TaskSpec) -> str:
    out = spec.output
    fmt: dict[str, Any] = {"document": document_text(text, spec)}
    if isinstance(out, ClassificationOutput):
        fmt.update(labels="; ".join(out.labels), top_k=out.top_k, label_descriptions=label_lines(out))
        if out.label_descriptions and "{label_descriptions}" not in spec.prompts.instruction:
            fmt["labels"] = "; ".join(out.described(label) for label in out.labels)  # the models see them somewhere
    else:
        fmt["fields"] = ", ".join(f"{k} ({f.type})" for k, f in out.fields.items())
    return spec.prompts.instruction.format(**fmt)


def render_prompt(text: str, spec: TaskSpec, tokenizer, *, reasoning: bool = False) -> str:
    """The full prompt string, chat template applied; ends with the `Answer:` prefill unless reasoning."""
    messages = [
        {"role": "system", "content": spec.prompts.system},
        {"role": "user", "content": user_message(text, spec)},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt if reasoning else prompt + PREFILL


def prompt_hash(spec: TaskSpec, reasoning: bool) -> str:
    data = json.dumps([spec.prompts.model_dump(), spec.output.model_dump(), reasoning], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def format_answer(answer: list[str] | dict[str, Any], *, prefilled: bool = True) -> str:
    """The training target for a gold answer (the completion after the prefill)."""
    body = "; ".join(answer) if isinstance(answer, list) else json.dumps(answer, ensure_ascii=False)
    return f" {body}" if prefilled else f"{PREFILL} {body}"


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def match_label(piece: str, labels: list[str]) -> str | None:
    """The label a piece of answer names: exact after normalization, else the one label it contains."""
    p = _norm(_NUMBERING.sub("", piece))
    if not p:
        return None
    by_norm = {_norm(label): label for label in labels}
    if p in by_norm:
        return by_norm[p]
    contained = [label for n, label in by_norm.items() if n and re.search(rf"\b{re.escape(n)}\b", p)]
    return contained[0] if len(contained) == 1 else None


def _split_reasoning(text: str, prefilled: bool) -> tuple[str, str | None]:
    matches = list(_ANSWER.finditer(text))
    if matches:
        last = matches[-1]
        return text[: last.start()].strip(), text[last.end():]
    return ("", text) if prefilled else (text.strip(), None)


def _parse_ranked(body: str, out: ClassificationOutput) -> tuple[list[str], int]:
    body = body.strip().split("\n\n")[0]
    pieces = [p for p in re.split(r"[;\n>|]", body) if p.strip()]
    if len(pieces) == 1 and "," in body:
        pieces = [p for p in body.split(",") if p.strip()]
    ranked: list[str] = []
    unparsed = 0
    for piece in pieces:
        label = match_label(piece, out.labels)
        if label is None:
            unparsed += 1
        elif label not in ranked:
            ranked.append(label)
    return ranked[: out.top_k], unparsed


def _parse_json(body: str) -> tuple[dict | None, str]:
    start = body.find("{")
    if start < 0:
        return None, "no JSON object after Answer:"
    try:
        value, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg}"
    except (ValueError, RecursionError) as err:  # a 5000-digit integer, nesting past the recursion limit
        return None, f"invalid JSON: {type(err).__name__}"
    return (value, "") if isinstance(value, dict) else (None, "answer is not a JSON object")


def parse_answer(text: str, spec: TaskSpec, *, prefilled: bool = True) -> Answer:
    """Parse a completion. `prefilled`: the prompt already ended with `Answer:`. Never raises."""
    answer = _parse(text, spec, prefilled)
    return replace(answer, text=text) if isinstance(text, str) else answer


def _parse(text: str, spec: TaskSpec, prefilled: bool) -> Answer:
    if not isinstance(text, str):
        return Answer("failed", error=f"not text: {type(text).__name__}")
    reasoning, body = _split_reasoning(text, prefilled)
    if body is None or not body.strip():
        return Answer("failed", reasoning=reasoning, error="no answer after Answer:")
    out = spec.output
    if isinstance(out, ExtractionOutput):
        value, error = _parse_json(body)
        if value is None:
            return Answer("failed", reasoning=reasoning, error=error)
        return Answer("ok", value=value, reasoning=reasoning)
    ranked, unparsed = _parse_ranked(body, out)
    if not ranked:
        return Answer("failed", reasoning=reasoning, error=f"no label from the label set in {body.strip()[:80]!r}")
    return Answer("partial" if unparsed else "ok", ranked=ranked, reasoning=reasoning)
