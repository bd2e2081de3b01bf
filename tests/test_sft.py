"""train_sft on a tiny random model: pinned fp32 losses on CPU, so a change in what is trained shows."""

from __future__ import annotations

import pytest

from distillery import sft
from distillery.models import tiny_model
from distillery.spec import SFTSpec

from conftest import REPO

EXAMPLES = [{"prompt": f"Case {i}: {findings}.\nAnswer:", "completion": f" {label}"} for i, (findings, label) in
            enumerate([("fever and productive cough", "Pneumonia"), ("throbbing headache and aura", "Migraine"),
                       ("bullseye rash after a hike", "Lyme disease"), ("flank pain in waves", "Kidney stones"),
                       ("wheezing at night", "Asthma"), ("burning on urination", "Urinary tract infection"),
                       ("fatigue and cold intolerance", "Hypothyroidism"), ("chest pain on exertion", "Angina")])]

# Obtained once by running this test's setup (tiny_model seed 0: 2 layers, hidden 64, the base tokenizer;
# 4 steps of 4 examples, learning rate 1e-3, seed 0) on CPU in fp32 with torch 2.13.0, transformers 5.24.0
# and trl 1.16.0 (constraints.txt), printing train_sft's result; two runs gave the same numbers to the
# last digit. A change in the examples, the loss mask, the data order or the optimizer moves them by far
# more than the tolerance.
# (Another data order, seed 1, gives 10.6275 / 10.4177; a period added to each answer 10.5535 / 10.2256.)
PINNED_TRAIN_LOSS = 10.635693  # mean loss of the 4 steps
PINNED_FINAL_LOSS = 10.387122  # loss of step 4


def test_train_sft_losses_on_a_tiny_model_are_pinned(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "device", lambda: "cpu")  # fp32 on CPU even where a GPU would train in bf16
    model = tiny_model(tmp_path / "tiny", REPO / "models" / "base", seed=0)
    cfg = SFTSpec(max_steps=4, batch_size=4, learning_rate=1e-3)
    out = sft.train_sft(str(model), EXAMPLES, cfg, tmp_path / "sft", seed=0)
    assert out["steps"] == 4
    assert out["train_loss"] == pytest.approx(PINNED_TRAIN_LOSS, abs=1e-4)
    assert out["final_loss"] == pytest.approx(PINNED_FINAL_LOSS, abs=1e-4)
    assert (tmp_path / "sft" / "model.safetensors").exists()
