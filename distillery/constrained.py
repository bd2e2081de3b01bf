"""Schema-constrained JSON decoding for extraction: the model writes the values, never the structure.

The JSON skeleton of an `ExtractionOutput` (keys in the spec's order, quotes, separators) is fed to
the model as forced tokens, exactly as the training target writes it (`prompts.format_answer`); the
model decodes only each field's value, greedily, over the tokens its type allows:

- string: any token without a double quote, backslash or control character; the value ends when the
  model picks a token that starts with a quote (`"`, `",`, `"}` ...), which the skeleton then writes,
  or after the field's `max_tokens`.
- date: a string of digits, letters, `-`, `/`, `.`, `,` and spaces (every common date format).
- number: digits, one `.`, a leading `-`, each step allowing only what keeps a valid number prefix;
  it ends on a token starting with `,` or `}` once the value is a complete number.

Whatever the document says, the result parses and holds exactly the spec's fields with the spec's
types (a number the budget cut before any digit is null). Every row of a batch decodes the same
field at the same time; a row whose value ended waits as a masked hole in the sequence (positions
count only real tokens), so batching changes nothing but speed. The confidence of a document is the
geometric mean of its chosen tokens' probabilities under the constrained distribution.
"""

from __future__ import annotations

import json
import math
import re

import torch

from distillery.spec import ExtractionOutput

_NUMBER_PREFIX = re.compile(r"-?\d*\.?\d*")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_DATE_CHARS = re.compile(r"[0-9A-Za-z\-/., ]+")
_BAD_STRING = re.compile(r'["\\\x00-\x1f\x7f]')


class Vocabulary:
    """Which tokens each value type may use, decoded once per tokenizer."""

    def __init__(self, tokenizer):
        size = len(tokenizer)
        texts = [tokenizer.decode([i]) for i in range(size)]
        special = set(tokenizer.all_special_ids)
        usable = torch.tensor([i not in special and t != "" for i, t in enumerate(texts)])
        self.texts = texts
        self.string_end = usable & torch.tensor([t.startswith('"') for t in texts])
        self.string = (usable & torch.tensor([not _BAD_STRING.search(t) for t in texts])) | self.string_end
        self.date = (usable & torch.tensor([bool(_DATE_CHARS.fullmatch(t)) for t in texts])) | self.string_end
        self.number_end = usable & torch.tensor([t.startswith((",", "}")) for t in texts])
        self.number_tokens = [i for i, t in enumerate(texts) if i not in special and re.fullmatch(r"[0-9.\-]+", t)]


def skeleton(output: ExtractionOutput) -> list[str]:
    """The forced text before each value, and the closing text last: len(fields) + 1 pieces whose
    concatenation with the values is `format_answer` of the answer (keys in the spec's order)."""
    pieces, close = [], ""
    for n, (name, field) in enumerate(output.fields.items()):
        quote = '"' if field.type != "number" else ""
        pieces.append(f"{close}{' {' if n == 0 else ', '}{json.dumps(name)}: {quote}")
        close = quote
    return pieces + [f"{close}}}"]


def in_schema(output: ExtractionOutput, value: dict) -> dict:
    """An answer's fields in the spec's order, only those (the form the student is trained on)."""
    return {name: value.get(name) for name in output.fields}


@torch.inference_mode()
def decode(model, tokenizer, prompts: list[str], output: ExtractionOutput, *,
           vocab: Vocabulary | None = None) -> list[tuple[dict, float]]:
    """(value, confidence) per prompt; each prompt already ends where the answer begins. A value
    takes at most its field's `max_tokens`."""
    from transformers import DynamicCache

    vocab = vocab or Vocabulary(tokenizer)
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rows, longest = len(ids), max(len(x) for x in ids)
    state = {"mask": torch.zeros((rows, 0), dtype=torch.long, device=device), "cache": DynamicCache(config=model.config)}

    def feed(tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Append tokens [rows, k] (real: 1, hole: 0); the next-token logits of each row's last column."""
        state["mask"] = torch.cat([state["mask"], real], dim=1)
        positions = (state["mask"].cumsum(-1) - 1).clamp(min=0)[:, -tokens.size(1):]
        out = model(input_ids=tokens, attention_mask=state["mask"], position_ids=positions, cache=state["cache"],
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    feed(torch.tensor([[pad] * (longest - len(x)) + x for x in ids], device=device),
         torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids], device=device))

    pieces = skeleton(output)
    values: list[dict] = [{} for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    for (name, field), piece in zip(output.fields.items(), pieces):
        forced = torch.tensor(tokenizer(piece, add_special_tokens=False)["input_ids"], device=device)
        logits = feed(forced.expand(rows, -1), torch.ones((rows, len(forced)), dtype=torch.long, device=device))
        text = [""] * rows
        done = [False] * rows
        for _ in range(field.max_tokens):
            allowed = torch.stack([_allowed(vocab, field.type, text[r]) for r in range(rows)]).to(device)
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            choice = probs.argmax(-1)
            step = torch.full((rows,), pad, dtype=torch.long, device=device)
            real = torch.zeros((rows,), dtype=torch.long, device=device)
            for r in range(rows):
                if done[r]:
                    continue
                token = int(choice[r])
                logps[r].append(math.log(max(float(probs[r, token]), 1e-12)))
                if _ends(vocab, field.type, token):
                    done[r] = True
                else:
                    text[r] += vocab.texts[token]
                    step[r], real[r] = token, 1
            if all(done):
                break
            logits = feed(step[:, None], real[:, None])
        for r in range(rows):
            values[r][name] = _value(field.type, text[r])
    return [(v, math.exp(sum(lp) / len(lp)) if lp else 0.0) for v, lp in zip(values, logps)]


def _allowed(vocab: Vocabulary, kind: str, text: str) -> torch.Tensor:
    if kind == "string":
        return vocab.string
    if kind == "date":
        return vocab.date
    allowed = torch.zeros_like(vocab.string)
    for token in vocab.number_tokens:
        if _NUMBER_PREFIX.fullmatch(text + vocab.texts[token]):
            allowed[token] = True
    if _NUMBER.fullmatch(text):
        allowed |= vocab.number_end
    return allowed


def _ends(vocab: Vocabulary, kind: str, token: int) -> bool:
    return bool(vocab.number_end[token] if kind == "number" else vocab.string_end[token])


def _value(kind: str, text: str):
    if kind != "number":
        return text.strip()
    text = text.rstrip(".")
    return float(text) if _NUMBER.fullmatch(text) else None
