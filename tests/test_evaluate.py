from __future__ import annotations

import random

import pytest

from distillery.evaluate import paired_difference


def test_identical_arms_differ_by_nothing():
    scores = [1.0, 0.5, 0.0, 1.0]
    got = paired_difference(scores, scores)
    assert got["diff"] == 0.0 and got["ci95"] == [0.0, 0.0] and not got["significant"]


def test_pairing_finds_a_constant_gain_under_large_item_variance():
    rng = random.Random(0)
    b = [rng.random() for _ in range(200)]
    a = [x + 0.02 for x in b]  # each item 0.02 better; items vary far more than that
    got = paired_difference(a, b)
    assert got["diff"] == pytest.approx(0.02)
    assert got["ci95"][0] == pytest.approx(0.02) and got["ci95"][1] == pytest.approx(0.02)
    assert got["significant"]


def test_a_one_item_difference_on_a_small_sample_is_not_significant():
    b = [1.0] * 10 + [0.0] * 10
    a = list(b)
    a[10] = 1.0  # one more item right out of 20
    got = paired_difference(a, b)
    assert got["diff"] == pytest.approx(0.05)
    assert got["ci95"][0] <= 0.0 <= got["ci95"][1]
    assert not got["significant"]


def test_a_loss_is_negative_and_its_interval_lies_below_zero():
    b = [1.0] * 100
    a = [0.0] * 30 + [1.0] * 70
    got = paired_difference(a, b)
    assert got["diff"] == pytest.approx(-0.3)
    assert got["ci95"][1] < 0 and got["significant"]


def test_arms_scored_on_different_items_are_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="same items"):
        paired_difference([], [])
