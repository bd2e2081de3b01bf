"""The student: shallow initialization, first-token label scoring, answer-only loss, promotion gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillery import answer, ingest, label, lake, seed, sft, student, synth
from distillery.inference import TransformersBackend
from distillery.models import load_model, shallow_copy, tiny_model
from distillery.prompts import render_prompt

from conftest import REPO, quick_stages


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("teacher") / "m", REPO / "models" / "base", layers=4)


def test_a_shallow_student_keeps_the_chosen_layers_weights(teacher, tmp_path):
    student = shallow_copy(teacher, tmp_path / "s", 2)
    big, _ = load_model(str(teacher))
    small, _ = load_model(str(student))
    assert small.config.num_hidden_layers == 2
    # first and last layers of four are kept, in order; embeddings and final norm as they were
    assert torch.equal(small.model.layers[0].mlp.up_proj.weight, big.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(small.model.layers[1].self_attn.q_proj.weight, big.model.layers[3].self_attn.q_proj.weight)
    assert torch.equal(small.model.embed_tokens.weight, big.model.embed_tokens.weight)
    assert torch.equal(small.model.norm.weight, big.model.norm.weight)
    assert load_model(str(shallow_copy(teacher, tmp_path / "t", 9)))[0].config.num_hidden_layers == 4  # all it has
    with pytest.raises(ValueError):
        shallow_copy(teacher, tmp_path / "u", 0)


def test_first_token_scores_equal_full_scores_on_the_first_token(teacher, clinical_spec):
    backend = TransformersBackend(str(teacher), batch_size=2)
    labels = clinical_spec.output.labels
    prompts = [render_prompt(t, clinical_spec, backend.tokenizer) for t in ["fever, cough", "headache", "x y z"]]
    fast = backend.score_labels(prompts, labels, first_token=True)
    assert fast.shape == (3, len(labels)) and torch.allclose(fast.sum(-1), torch.ones(3), atol=1e-5)
    # the same numbers by hand: the next-token distribution after the prompt, restricted to first tokens
    firsts = [backend.tokenizer(" " + lab, add_special_tokens=False)["input_ids"][0] for lab in labels]
    enc = backend.tokenizer(prompts[1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = backend.model(**enc).logits[0, -1]
    assert torch.allclose(fast[1], torch.softmax(logits[firsts], -1), atol=1e-5)
    with pytest.raises(ValueError, match="first tokens differ"):
        backend.score_labels(prompts, ["Hypothyroidism", "Hypothermia"], first_token=True)


def test_teacher_scoring_follows_the_spec_and_falls_back_when_first_tokens_collide(teacher, clinical_spec):
    backend = TransformersBackend(str(teacher), batch_size=2)
    texts = ["fever, cough", "headache", "x y z"]
    prompts = [render_prompt(t, clinical_spec, backend.tokenizer) for t in texts]
    labels = list(clinical_spec.output.labels)
    _, fast = answer.score_answers(clinical_spec, backend, texts)  # teacher.first_token defaults to true
    assert torch.allclose(torch.tensor(fast), backend.score_labels(prompts, labels, first_token=True), atol=1e-6)
    full_spec = clinical_spec.model_copy(update={"teacher": clinical_spec.teacher.model_copy(update={"first_token": False})})
    _, full = answer.score_answers(full_spec, backend, texts)
    assert torch.allclose(torch.tensor(full), backend.score_labels(prompts, labels), atol=1e-6)
    assert not torch.allclose(torch.tensor(full), torch.tensor(fast), atol=1e-3)
    # labels that share a first token cannot be told apart by it: every label's sequence is scored
    clash = ["Hypothyroidism", "Hypothermia", "Migraine"]
    clash_spec = clinical_spec.model_copy(update={"output": clinical_spec.output.model_copy(update={"labels": clash})})
    assert not answer.first_token_scoring(clash_spec, backend.tokenizer, student=False)
    answers, probs = answer.score_answers(clash_spec, backend, texts, student=True)
    clash_prompts = [render_prompt(t, clash_spec, backend.tokenizer) for t in texts]
    assert torch.allclose(torch.tensor(probs), backend.score_labels(clash_prompts, clash), atol=1e-6)
    assert all(set(a.ranked) <= set(clash) for a in answers)


def test_scoring_only_answer_positions_gives_trls_loss_and_gradients(teacher):
    from trl.trainer.utils import add_fused_lm_head

    model, _ = load_model(str(teacher))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    labels = ids.clone()
    labels[:, :15] = -100  # the prompt: no loss
    labels[1, 15:17] = -100  # rows with answers of different lengths

    def loss_and_grads():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads()
    with sft.answer_positions_only():
        compact, compact_grads = loss_and_grads()
    assert torch.allclose(full.loss, compact.loss, atol=1e-6)
    assert torch.allclose(full.entropy, compact.entropy, atol=1e-5) and torch.equal(full.is_top1, compact.is_top1)
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name in full_grads:
        assert torch.allclose(full_grads[name], compact_grads[name], atol=1e-5), name
    from trl.trainer import utils as trl_utils
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored on exit


def test_answer_positions_only_leaves_an_untested_trl_alone_and_warns(monkeypatch):
    from trl.trainer import utils as trl_utils

    from distillery import trl_internals

    original = trl_utils._use_triton
    with sft.answer_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))  # the patch, on the tested TRL
    monkeypatch.setattr(trl_internals, "trl_version", lambda: "1.17.0")
    with pytest.warns(UserWarning, match=r"answer_positions_only was written against TRL 1\.16 and TRL 1\.17\.0"):
        with sft.answer_positions_only():
            assert trl_utils._use_triton is original and not trl_utils._use_triton(torch.device("cpu"))


def test_training_examples_put_the_loss_on_the_answer_only(clinical_spec, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from distillery.models import load_tokenizer

    model = tiny_model(tmp_path / "m", REPO / "models" / "base")
    tok = load_tokenizer(str(model))
    tok.padding_side = "right"
    examples = answer.answer_examples(clinical_spec, [{"text": "fever", "answer": "Pneumonia"}], tok)
    args = SFTConfig(output_dir=str(tmp_path / "o"), completion_only_loss=True, report_to=[], use_cpu=True,
                     max_length=512)
    trainer = SFTTrainer(model=str(model), args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0]
    trained = tok.decode(labels[labels != -100])
    assert trained.strip().startswith("Pneumonia")
    assert "fever" not in trained and "Candidates" not in trained  # the prompt carries no loss
    assert (labels == -100).sum() >= len(tok(examples[0]["prompt"], add_special_tokens=False)["input_ids"]) - 1


def test_promotion_gate_both_ways(clinical_spec):
    spec = clinical_spec.model_copy(update={"student": clinical_spec.student.model_copy(update={"gate": 0.95})})
    passed = student.promotion(spec, student_top1=0.62, teacher_top1=0.65)
    assert passed["promoted"] and "reaches" in passed["reason"]
    failed = student.promotion(spec, student_top1=0.60, teacher_top1=0.65)
    assert not failed["promoted"] and "0.600 is below 0.95 x teacher 0.650" in failed["reason"]


@pytest.fixture
def labeled(clinical_spec, teacher, tmp_path):
    truth = synth.generate_clinical(tmp_path / "pdfs", 50, bad_every=0)
    synth.write_csv(synth.pick_seeds(truth, 2), tmp_path / "seeds.csv")
    spec = quick_stages(clinical_spec.model_copy(update={
        "source": str(tmp_path / "pdfs"),
        "seeds": clinical_spec.seeds.model_copy(update={"path": str(tmp_path / "seeds.csv")}),
    }), teacher, layers=2, limit=30)
    docs = ingest.ingest(spec, out=tmp_path / "ingest").path("documents")
    seeds = seed.import_seeds(spec, docs, out=tmp_path / "seed").path("seed_labels")
    labels = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label").path("machine_labels")
    return spec, docs, seeds, labels


@pytest.mark.slow
@pytest.mark.integration
def test_the_student_stage_trains_a_shallow_student_and_applies_the_gate(labeled, tmp_path):
    spec, docs, seeds, labels = labeled
    kept = student.train_student(spec, labels, seeds, docs, out=tmp_path / "a", teacher_top1=0.0)
    assert kept.metrics["layers"] == 2 and kept.metrics["promotion"]["promoted"]
    assert kept.metrics["agreement_items"] == 3 and kept.counts["trained_on"] == 27  # 10% kept for agreement
    assert kept.metrics["docs_per_s"] > 0
    # the random teacher puts one label first on every document, and the student trained on its labels
    # puts it first too (by a margin of ~0.09 in probability): full agreement, against 1 in 10 by chance
    firsts = {json.loads(a)[0] for a in lake.read_table(labels).column("answer").to_pylist()}
    assert len(firsts) == 1 and kept.metrics["teacher_agreement"] == 1.0
    rejected = student.train_student(spec, labels, seeds, docs, out=tmp_path / "b", teacher_top1=1.0)
    assert rejected.metrics["top1"] < 0.95 and not rejected.metrics["promotion"]["promoted"]
    assert "is below" in rejected.metrics["promotion"]["reason"]
    evaluated = lake.read_table(kept.path("student_eval")).to_pylist()
    assert all(0 < r["confidence"] <= 1 for r in evaluated)


# ---- student kinds: auto promotes the fastest that passes ----------------------------------------

def _candidate(kind: str, top1: float, speed: float, agreement: float | None, teacher: float, spec) -> dict:
    return {"kind": kind, "top1": top1, "docs_per_s": speed, "teacher_agreement": agreement,
            "promotion": student.promotion(spec, top1, teacher)}


def test_auto_promotes_the_fastest_candidate_above_the_gate_and_none_below(clinical_spec):
    spec = clinical_spec.model_copy(update={"student": clinical_spec.student.model_copy(update={"gate": 0.95})})
    fast_good = _candidate("static", 0.74, 3000, 0.90, 0.76, spec)
    slow_good = _candidate("encoder", 0.76, 15, 0.92, 0.76, spec)
    pick = student.choose([fast_good, slow_good], 0.95)
    assert pick["kind"] == "static" and pick["passes"] and "fastest that passes" in pick["why"]
    # the fastest below the gate is passed over for a slower one above it
    fast_bad = _candidate("static", 0.70, 3000, 0.90, 0.76, spec)
    pick = student.choose([fast_bad, slow_good], 0.95)
    assert pick["kind"] == "encoder" and not fast_bad["passes"]
    # above the gate on the seeds, but it keeps too little of the teacher on documents none trained on
    unfaithful = _candidate("static", 0.76, 3000, 0.80, 0.76, spec)
    pick = student.choose([unfaithful, slow_good], 0.95)
    assert pick["kind"] == "encoder" and "agreement 0.800 is below 0.95 x the best candidate's 0.920" in unfaithful["why"]
    # none passes: the most accurate is kept, not promoted
    pick = student.choose([fast_bad, _candidate("encoder", 0.71, 15, 0.9, 0.76, spec)], 0.95)
    assert pick["kind"] == "encoder" and not pick["passes"] and "none of the 2 candidates passes" in pick["why"]


def test_auto_trains_static_and_encoder_for_classification_and_lm_for_extraction(clinical_spec, invoice_spec):
    assert clinical_spec.model_copy(update={"student": clinical_spec.student.model_copy(
        update={"kind": "auto"})}).student_kinds == (["static", "encoder"], ["lm"])
    assert invoice_spec.student_kinds == (["lm"], [])
    with pytest.raises(ValueError, match="static ranks a label set"):
        type(invoice_spec).model_validate({**invoice_spec.model_dump(), "student": {"kind": "static"}})


@pytest.mark.slow
@pytest.mark.integration
def test_auto_measures_every_candidate_and_promotes_the_fastest_that_passes(labeled, tmp_path, monkeypatch):
    from distillery import members

    spec, docs, seeds, labels = labeled
    spec = spec.model_copy(update={"student": spec.student.model_copy(update={"kind": "auto"})})
    seen = []
    fit = student.fit_student
    monkeypatch.setattr(student, "fit_student", lambda spec, kind, base, items, out:
                        seen.append((kind, {it["sha256"] for it in items})) or fit(spec, kind, base, items, out))
    kept = student.train_student(spec, labels, seeds, docs, out=tmp_path / "a", teacher_top1=0.0)
    seeded = set(lake.read_table(seeds).column("sha256").to_pylist())
    assert [k for k, _ in seen] == ["static", "encoder"], "lm is trained only when neither passes"
    assert all(not (shas & seeded) for _, shas in seen), "a student never trains on a seed it is scored on"
    candidates = {c["kind"]: c for c in kept.metrics["candidates"]}
    assert set(candidates) == {"static", "encoder"} and all(c["passes"] and c["docs_per_s"] > 0 for c in candidates.values())
    fastest = max(candidates, key=lambda k: candidates[k]["docs_per_s"])
    assert kept.metrics["kind"] == fastest and kept.metrics["promotion"]["promoted"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == ["model"]
    model = members.load_labeler(tmp_path / "a" / "model")
    assert model.name == fastest and model.probabilities(["fever and cough"]).shape == (1, len(spec.output.labels))
    # none passes: the LM is trained as the last resort, and the most accurate is kept unpromoted
    seen.clear()
    rejected = student.train_student(spec, labels, seeds, docs, out=tmp_path / "b", teacher_top1=1.0)
    assert [k for k, _ in seen] == ["static", "encoder", "lm"]
    assert not rejected.metrics["promotion"]["promoted"]
    assert "none of the 3 candidates passes" in rejected.metrics["promotion"]["reason"]
