"""What `distillery plan` measures before it predicts: the corpus (a sample of its PDFs extracted,
their prompts tokenized) and the base model timed on that sample, here.

The two times (a scoring batch as the labeling stage runs it; one SFT step as TRL's SFT trains)
hold what a token count misses: the share of the prompt computed once, padding, the machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from distillery.spec import TaskSpec


@dataclass
class Sample:
    """What plan measured on the corpus before predicting."""

    files: int  # PDFs listed in the source
    extracted: int = 0
    ok: int = 0
    seconds: float = 0.0  # wall time to extract the sample with the spec's workers
    tokens: float | None = None  # mean tokens per rendered prompt
    note: str = ""
    steady_docs_per_s: float | None = None  # between the first and the last file done
    score_docs_per_s: float | None = None  # the base model scoring sample prompts as labeling does
    scored: int = 0  # sample prompts in that timed batch
    sft_step_s: float | None = None  # one SFT step of the base model on teacher.sft.batch_size sample examples

    @property
    def docs_per_s(self) -> float | None:
        return self.steady_docs_per_s or (self.extracted / self.seconds if self.seconds > 0 else None)


def source_of(spec: TaskSpec, source: str | None) -> str:
    """A source as a path or URL: `source`, else the spec's bulk source, resolved against the spec."""
    value = source or spec.bulk.source
    return value if "://" in value else str(spec.path(value))


def count_documents(spec: TaskSpec, source: str | None) -> int:
    from distillery.sources import list_pdfs

    return sum(1 for _ in list_pdfs(source_of(spec, source)))


def _base(spec: TaskSpec) -> str:
    """The base model as a folder (relative to the spec) when it is one, else as named (an HF id)."""
    base = spec.path(spec.models.base)
    return str(base) if base.exists() else spec.models.base


def _tokenizer(spec: TaskSpec):
    from distillery.models import load_tokenizer

    return load_tokenizer(_base(spec))


def measure(spec: TaskSpec, n: int = 20, *, time_model: bool = False) -> Sample:
    """List the corpus, extract `n` evenly spaced PDFs and count the tokens of their prompts;
    with `time_model`, also time the base model on them (`time_base_model`)."""
    from distillery import pdf
    from distillery.ingest import list_pdfs
    from distillery.prompts import render_prompt

    paths = list(list_pdfs(source_of(spec, spec.source)))
    sample = Sample(files=len(paths))
    k = min(n, len(paths))
    picked = [paths[i * len(paths) // k] for i in range(k)]  # evenly spaced over the sorted listing
    if not picked:
        sample.note = "the source holds no PDF"
        return sample
    cfg = spec.ingest
    started = time.perf_counter()
    rows, done = [], []
    for row in pdf.extract_many(picked, workers=cfg.workers, timeout_s=cfg.timeout_s, ordered=False,
                                max_bytes=int(cfg.max_file_mb * 2**20), min_chars=cfg.min_chars):
        rows.append(row)
        done.append(time.perf_counter())
    sample.extracted, sample.seconds = len(rows), done[-1] - started
    if len(done) >= 3:  # from the first file done to the last: the workers' start-up is not a per-file cost
        sample.steady_docs_per_s = (len(done) - 1) / max(done[-1] - done[0], 1e-9)
    texts = [r.text for r in rows if r.verdict == "ok"]
    sample.ok = len(texts)
    if not texts:
        sample.note = "no sampled PDF had text"
        return sample
    try:
        tokenizer = _tokenizer(spec)
    except (OSError, ValueError) as err:  # an HF id offline, a broken model folder
        sample.note = f"tokenizer of {spec.models.base} unavailable ({type(err).__name__})"
        return sample
    counts = [len(tokenizer(render_prompt(t, spec, tokenizer, reasoning=spec.teacher.reasoning),
                            add_special_tokens=False)["input_ids"]) for t in texts]
    sample.tokens = sum(counts) / len(counts)
    if time_model:
        time_base_model(spec, texts, sample)
    return sample


SCORED = 8  # sample prompts in the timed scoring batch (at most label.batch_size)


def time_base_model(spec: TaskSpec, texts: list[str], sample: Sample) -> None:
    """Time the base model here on the sample: one scoring batch as the labeling stage runs it (after
    a two-document warm-up), and one SFT step (gradient checkpointing, as TRL's SFT trains; after a
    short warm-up step) on `teacher.sft.batch_size` sample examples with a one-label answer."""
    import torch

    from distillery.answer import answer_examples, score_answers
    from distillery.inference import TransformersBackend
    from distillery.models import load_model

    name = _base(spec)
    try:
        model, tokenizer = load_model(name)
    except (OSError, ValueError) as err:
        sample.note = f"base model {spec.models.base} unavailable ({type(err).__name__}): rates not timed here"
        return
    docs = texts[:min(SCORED, spec.label.batch_size)]
    backend = TransformersBackend(name, batch_size=spec.label.batch_size, model=model, tokenizer=tokenizer)
    score_answers(spec, backend, docs[:2])
    started = time.perf_counter()
    score_answers(spec, backend, docs)
    sample.score_docs_per_s, sample.scored = len(docs) / (time.perf_counter() - started), len(docs)

    batch = spec.teacher.sft.batch_size
    answer = spec.output.labels[0] if hasattr(spec.output, "labels") else {f: "" for f in spec.output.fields}
    examples = answer_examples(spec, [{"text": texts[i % len(texts)], "answer": answer} for i in range(batch)],
                               tokenizer)
    tokenizer.padding_side = "left"  # the answers end every row
    enc = tokenizer([e["prompt"] + e["completion"] for e in examples], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    answer_tokens = max(len(tokenizer(e["completion"], add_special_tokens=False)["input_ids"]) for e in examples)
    model.train()
    model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

    def step(inputs) -> float:
        """Forward over every token, the LM head on the answer positions only (as `sft.answer_positions_only`
        makes TRL's loss), backward, AdamW."""
        started = time.perf_counter()
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state[:, -answer_tokens - 1:-1]
        logits = model.get_output_embeddings()(hidden)
        target = inputs["input_ids"][:, -answer_tokens:]
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    step({k: v[:1, -128:] for k, v in enc.items()})  # warm-up: first-call allocations, the optimizer's state
    sample.sft_step_s = step(enc)
    model.gradient_checkpointing_disable()
    model.eval()
