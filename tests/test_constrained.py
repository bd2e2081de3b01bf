"""Schema-constrained JSON extraction: skeleton, validity whatever the model, batching, and the
extraction pipeline (teacher labels, student, bulk) on tiny models."""

from __future__ import annotations

import json

import pytest

from distillery import answer, bulk, constrained, ingest, label, lake, seed, student
from distillery.evaluate import grade_items
from distillery.inference import TransformersBackend
from distillery.models import tiny_model
from distillery.prompts import format_answer, parse_answer, render_prompt

from conftest import REPO, quick_stages

GOLD = {"vendor": "Maple Office Supply", "number": "INV-56125", "date": "2026-01-09", "total": 8689.87,
        "currency": "SEK"}
TEXTS = ["Invoice INV-1 from Acme, total 12.50 EUR, dated 2026-03-01", "x", "Blue River Foods " * 20]


def short_values(spec, tokens: int):
    """The spec with every field's value budget cut to `tokens` (random models never end a value)."""
    fields = {name: field.model_copy(update={"max_tokens": tokens}) for name, field in spec.output.fields.items()}
    return spec.model_copy(update={"output": spec.output.model_copy(update={"fields": fields})})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return TransformersBackend(str(tiny_model(tmp_path_factory.mktemp("tiny") / "m", REPO / "models" / "base")),
                               batch_size=3)


def test_skeleton_and_values_make_the_training_target(invoice_spec):
    pieces = constrained.skeleton(invoice_spec.output)
    fields = list(invoice_spec.output.fields)
    assert fields == ["vendor", "number", "date", "total", "currency"] and len(pieces) == len(fields) + 1
    raw = {"vendor": "Maple Office Supply", "number": "INV-56125", "date": "2026-01-09", "total": "8689.87",
           "currency": "SEK"}
    written = "".join(p + raw[f] for p, f in zip(pieces, fields)) + pieces[-1]
    assert written == format_answer(GOLD)


def test_training_targets_follow_the_spec_order(invoice_spec, tiny):
    shuffled = {"total": 8689.87, "currency": "SEK", "vendor": "Maple Office Supply", "extra": 1,
                "date": "2026-01-09", "number": "INV-56125"}
    (example,) = answer.answer_examples(invoice_spec, [{"text": "t", "answer": shuffled}], tiny.tokenizer)
    assert example["completion"] == format_answer(GOLD)


def test_any_model_output_parses_and_fits_the_schema(invoice_spec, tiny):
    """A random model wants to write anything; the decoder lets it write only typed values."""
    prompts = [render_prompt(t, invoice_spec, tiny.tokenizer) for t in TEXTS]
    decoded = tiny.extract(prompts, short_values(invoice_spec, 12).output)
    assert len(decoded) == len(TEXTS)
    for value, confidence in decoded:
        assert list(value) == list(invoice_spec.output.fields)
        assert all(isinstance(value[f], str) and '"' not in value[f] for f in ("vendor", "number", "currency"))
        assert value["total"] is None or isinstance(value["total"], float)
        assert all(c.isalnum() or c in "-/., " for c in value["date"])
        assert 0 < confidence <= 1
        parsed = parse_answer(format_answer(value), invoice_spec)
        assert parsed.ok and parsed.value == value


def test_batching_and_padding_change_nothing(invoice_spec, tiny):
    prompts = [render_prompt(t, invoice_spec, tiny.tokenizer) for t in TEXTS]
    output = short_values(invoice_spec, 8).output
    together = constrained.decode(tiny.model, tiny.tokenizer, prompts, output)
    alone = [constrained.decode(tiny.model, tiny.tokenizer, [p], output)[0] for p in prompts]
    assert [v for v, _ in together] == [v for v, _ in alone]
    assert [c for _, c in together] == pytest.approx([c for _, c in alone], abs=1e-4)


def test_a_number_is_a_number_prefix_at_every_step(tiny):
    vocab = constrained.Vocabulary(tiny.tokenizer)

    def allowed(text: str) -> set[str]:
        return {vocab.texts[i] for i in constrained._allowed(vocab, "number", text).nonzero().flatten().tolist()}

    after_dot = allowed("12.")
    assert "5" in after_dot and "." not in after_dot and "-" not in after_dot and "," not in after_dot
    assert "," in allowed("12.5") and "}" in allowed("12.5") and "," not in allowed("")
    assert "-" in allowed("") and "-" not in allowed("1")
    assert constrained._value("number", "12.") == 12.0 and constrained._value("number", "-") is None


class TargetLM:
    """A language model that has learned one answer perfectly: after the prompt it puts all its mass on
    the next token of the training target's tokenization (`format_answer`), and knows nothing after a
    token the target does not have. The decoder gets the answer back only if the skeleton it forces is
    tokenized as the training target is."""

    def __init__(self, tokenizer, target: str, config):
        import torch

        self.target = tokenizer(target, add_special_tokens=False)["input_ids"]
        self.vocab, self.config, self.device = len(tokenizer), config, torch.device("cpu")
        self.rows: list[list[int]] | None = None

    def __call__(self, input_ids, attention_mask, **_):
        import torch
        from types import SimpleNamespace

        new = attention_mask[:, -input_ids.size(1):]
        if self.rows is None:  # the prompt: the answer starts after it
            self.rows = [[] for _ in range(input_ids.size(0))]
        else:
            for row, (ids, real) in enumerate(zip(input_ids.tolist(), new.tolist())):
                self.rows[row] += [t for t, r in zip(ids, real) if r]
        logits = torch.zeros((input_ids.size(0), 1, self.vocab))
        for row, written in enumerate(self.rows):
            if written == self.target[: len(written)] and len(written) < len(self.target):
                logits[row, 0, self.target[len(written)]] = 50.0
        return SimpleNamespace(logits=logits)


def test_a_model_that_learned_the_training_target_decodes_it_exactly(invoice_spec, tiny):
    from transformers import LlamaConfig

    model = TargetLM(tiny.tokenizer, format_answer(GOLD), LlamaConfig(num_hidden_layers=1))
    prompt = render_prompt(TEXTS[0], invoice_spec, tiny.tokenizer)
    ((value, confidence),) = constrained.decode(model, tiny.tokenizer, [prompt], invoice_spec.output)
    assert value == GOLD and confidence == pytest.approx(1.0)


def test_extraction_pipeline_teacher_student_bulk(invoice_spec, tmp_path):
    """Teacher labels under the schema, the student trains on them and is gated, bulk writes JSON labels."""
    teacher = tiny_model(tmp_path / "teacher", REPO / "models" / "base", layers=2)
    spec = quick_stages(short_values(invoice_spec, 4), teacher, layers=1)
    docs = ingest.ingest(spec, out=tmp_path / "ingest").path("documents")
    seeds = seed.import_seeds(spec, docs, out=tmp_path / "seed").path("seed_labels")
    labeled = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label")
    rows = lake.read_table(labeled.path("machine_labels")).to_pylist()
    unseeded = lake.read_table(docs).num_rows - lake.read_table(seeds).num_rows  # 40 invoices, 30 seeds
    assert len(rows) == unseeded == 10 and all(r["parse_status"] == "ok" for r in rows)
    assert all(list(json.loads(r["answer"])) == list(spec.output.fields) for r in rows)

    trained = student.train_student(spec, labeled.path("machine_labels"), seeds, docs, out=tmp_path / "student",
                                teacher_top1=0.0)
    assert trained.metrics["promotion"]["promoted"] and trained.counts["trained_on"] == 9
    assert 0.0 <= trained.metrics["teacher_agreement"] <= 1.0 and trained.metrics["agreement_items"] == 1
    evaluated = lake.read_table(trained.path("student_eval")).to_pylist()
    assert evaluated and all(r["parse_status"] == "ok" and 0 <= r["score"] <= 1 for r in evaluated)

    result = bulk.bulk_label(spec, tmp_path / "student" / "model", out=tmp_path / "bulk", progress=False,
                             source=str(REPO / "data" / "demo" / "invoices"))
    labels = [r for f in bulk.committed(tmp_path / "bulk", "labels") for r in lake.read_table(f).to_pylist()]
    assert result.counts["labeled"] == len(labels) == 40
    assert all(list(json.loads(r["label"])) == list(spec.output.fields) for r in labels)
    graded = grade_items(spec, [{"sha256": "", "answer": GOLD}], [parse_answer(format_answer(GOLD), spec)])
    assert graded["score"].tolist() == [1.0]
