"""The corpus's class prior: EM estimate from a model's probabilities, the corrected posteriors,
and accuracy under a class mix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from distillery import prior
from distillery.prompts import format_answer

LABELS = ["a", "b", "c"]


def skewed_corpus(n: int = 3000, mix=(0.7, 0.2, 0.1), seed: int = 0):
    """A corpus whose true mix is `mix`, scored by a model that learned a uniform prior: each class
    draws x ~ N(1.5 * class, 1), and the model's posterior is the likelihood under a uniform prior."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(mix), size=n, p=mix)
    x = rng.normal(1.5 * y, 1.0)
    likelihood = np.exp(-0.5 * (x[:, None] - 1.5 * np.arange(len(mix))[None, :]) ** 2)
    return likelihood / likelihood.sum(axis=1, keepdims=True), y


def test_em_moves_a_uniform_prior_teacher_to_the_true_class_mix_and_corrected_labels_are_more_accurate():
    probs, y = skewed_corpus()
    uniform = [1 / 3] * 3
    fit = prior.estimate_prior(probs, uniform)
    assert fit["converged"]
    assert fit["prior"] == pytest.approx([0.7, 0.2, 0.1], abs=0.04)
    assert abs(probs.mean(axis=0)[0] - 0.7) > 0.1, "the uncorrected mean posterior is far from the true mix"
    before = (probs.argmax(axis=1) == y).mean()
    after = (prior.correct(probs, fit["prior"], uniform).argmax(axis=1) == y).mean()
    assert after > before + 0.03


def test_em_keeps_the_training_prior_when_the_corpus_has_the_same_mix():
    probs, _ = skewed_corpus(mix=(1 / 3, 1 / 3, 1 / 3))
    assert prior.estimate_prior(probs, [1 / 3] * 3)["prior"] == pytest.approx([1 / 3] * 3, abs=0.04)


def test_correct_under_the_training_prior_changes_nothing_and_rows_stay_distributions():
    probs, _ = skewed_corpus(n=50)
    assert prior.correct(probs, [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(probs)
    shifted = prior.correct(probs, [0.7, 0.2, 0.1], [1 / 3] * 3)
    assert shifted.sum(axis=1) == pytest.approx(np.ones(50))
    assert (shifted[:, 0] >= probs[:, 0] - 1e-12).all()


def test_a_fitted_temperature_undoes_overconfidence_and_then_em_finds_the_true_mix():
    probs, y = skewed_corpus()
    overconfident = prior.temperature(probs, 0.3)
    t = prior.fit_temperature(overconfident[:500], y[:500])
    assert t == pytest.approx(1 / 0.3, rel=0.25)
    assert prior.temperature(overconfident, t) == pytest.approx(probs, abs=0.05)
    fit = prior.estimate_prior(prior.temperature(overconfident, t), [1 / 3] * 3)
    assert fit["prior"] == pytest.approx([0.7, 0.2, 0.1], abs=0.05)
    assert prior.fit_temperature(probs, []) == 1.0


def test_seed_prior_counts_answers_and_gives_an_absent_label_half_a_seed():
    assert prior.seed_prior(LABELS, ["a", "a", "b", "c"]) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    mix = prior.seed_prior(LABELS, ["a", "b"])
    assert mix == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})


def test_rerank_rows_follows_the_corrected_posteriors():
    rows = [{"sha256": "1", "answer": json.dumps(["b", "a"]), "raw_output": "b; a", "confidence": 0.45,
             "probs": json.dumps([0.35, 0.45, 0.2])},
            {"sha256": "2", "answer": None, "raw_output": "???", "confidence": 0.0, "probs": None}]
    out = prior.rerank_rows(rows, LABELS, 2, [0.7, 0.2, 0.1], [1 / 3] * 3)
    assert json.loads(out[0]["answer"]) == ["a", "b"] and out[0]["raw_output"] == format_answer(["a", "b"])
    p = json.loads(out[0]["probs"])
    assert out[0]["confidence"] == pytest.approx(max(p)) and sum(p) == pytest.approx(1.0)
    assert out[1] == rows[1], "a row without probabilities is kept as it is"
    flat = prior.rerank_rows(rows[:1], LABELS, 2, [1 / 3] * 3, [1 / 3] * 3, t=1e6)
    assert flat[0]["confidence"] == pytest.approx(1 / 3), "a very high temperature flattens the posteriors"


def graded(per_class: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """Graded rows: per class (items, right)."""
    rows = [{"gold": json.dumps(c), "top1": k < right} for c, (n, right) in per_class.items() for k in range(n)]
    return pd.DataFrame(rows)


def test_class_mix_accuracy_is_plain_accuracy_under_the_items_own_mix_and_weights_recalls_otherwise():
    rows = graded({"a": (4, 4), "b": (4, 2), "c": (2, 0)})
    own = {"a": 0.4, "b": 0.4, "c": 0.2}
    assert prior.class_mix_accuracy(rows, own)["top1"] == pytest.approx(rows["top1"].mean())
    assert prior.class_mix_accuracy(rows, {"a": 0.5, "b": 0.5, "c": 0.0})["top1"] == pytest.approx(0.75)
    skewed = prior.class_mix_accuracy(rows, {"a": 0.1, "b": 0.1, "c": 0.8})
    assert skewed["top1"] == pytest.approx(0.1 * 1 + 0.1 * 0.5)
    lo, hi = prior.class_mix_accuracy(rows, own)["ci95"]
    assert 0 <= lo < rows["top1"].mean() < hi <= 1


def test_class_mix_accuracy_renormalizes_over_classes_the_items_cover():
    rows = graded({"a": (2, 2), "b": (2, 0)})
    result = prior.class_mix_accuracy(rows, {"a": 0.3, "b": 0.3, "c": 0.4})
    assert result["top1"] == pytest.approx(0.5) and result["covered"] == pytest.approx(0.6)
    assert result["ci95"] == pytest.approx([0.5, 0.5]), "recalls of 0 and 1 do not move under resampling"
    assert prior.class_mix_accuracy(rows, {"c": 1.0})["top1"] is None
