"""Out-of-scope flags (`scope.py`) and the review queue's choice (`review.py`), on generated text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from distillery import review, scope, synth
from distillery.spec import ScopeSpec

OFF_TOPIC = [
    "The fancyhdr package lets you customise page headers and footers in LaTeX. Load it with usepackage and "
    "set the page style to fancy; the options headrulewidth and footrulewidth control the rules.",
    "INVOICE INV-20391 from Nordic Paper Supply AB. Item: A4 copier paper, 40 boxes. Total due 1,280.00 EUR "
    "within 30 days. Bank transfer to IBAN SE45 5000 0000 0583 9825 7466.",
    "Hello world. This PDF tests the rendering of embedded TrueType fonts and form fields in the viewer.",
]


def case_text(i: int) -> str:
    return " ".join(synth._case_paragraphs(synth.make_case(i), random.Random(i)))


@pytest.fixture
def fitted(clinical_spec):
    texts = [case_text(i) for i in range(80)]
    return scope.fit(clinical_spec, texts, [f"h{i}" for i in range(80)])


def test_documents_outside_the_task_are_flagged_and_inside_mostly_not(fitted):
    inside, out_inside = fitted.score([case_text(i) for i in range(1000, 1060)])
    share, out = fitted.score(OFF_TOPIC)
    assert out.all() and (share < 0.05).all()
    assert out_inside.mean() <= 0.15  # the threshold flags ~5% of in-scope documents, leave-one-out
    assert np.median(inside) > 0.2


def test_a_flagged_label_needs_review_and_never_keeps_a_high_confidence(fitted):
    rows = [{"confidence": 0.99}, {"confidence": 0.99}, {"confidence": 0.3}]
    marked = fitted.mark(rows, [OFF_TOPIC[0], case_text(2000), case_text(2001)])
    assert marked[0]["out_of_scope"] and marked[0]["needs_review"] and marked[0]["confidence"] < 0.05
    assert not marked[1]["out_of_scope"] and marked[1]["confidence"] == 0.99 and not marked[1]["needs_review"]
    assert marked[2]["needs_review"] and not marked[2]["out_of_scope"]  # under scope.review_below


def test_a_reference_document_is_compared_with_the_others_not_itself(fitted):
    text = case_text(5)
    itself = fitted.similarity([text], ["h5"])[0]
    assert itself < fitted.similarity([text], ["someone-else"])[0]  # without its own copy, it is less similar


def test_flag_share_zero_never_flags(clinical_spec):
    spec = clinical_spec.model_copy(update={"scope": ScopeSpec(flag_share=0.0)})
    fitted = scope.fit(spec, [case_text(i) for i in range(20)], [f"h{i}" for i in range(20)])
    assert not fitted.score(OFF_TOPIC)[1].any()


def test_too_few_documents_make_no_scope(clinical_spec):
    assert scope.fit(clinical_spec, ["one text", "one text"], ["h", "h"]) is None


def test_the_queue_takes_one_document_per_cluster_the_most_doubtful():
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3]
    vectors = np.repeat(centres, 5, axis=0) + rng.normal(0, 0.01, (15, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    priority = rng.uniform(0, 1, 15)
    chosen = review.pick(priority, vectors, 3)
    assert sorted(i // 5 for i in chosen) == [0, 1, 2]  # one from each tight group
    assert all(priority[i] == priority[(i // 5) * 5:(i // 5) * 5 + 5].max() for i in chosen)
    assert review.pick(priority, vectors, 0) == [] and sorted(review.pick(priority, vectors, 40)) == list(range(15))


def test_doubt_rises_with_a_thin_margin_and_member_disagreement():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.9, 0.1]])
    tops = np.array([[0, 0], [0, 0], [1, 1]])
    d = review.doubt(probs, tops)
    assert d[1] > d[0] and d[2] > d[0]


def test_the_queue_keeps_a_share_for_out_of_scope_documents_and_never_exceeds_n(clinical_spec, fitted):
    import json

    import pandas as pd

    texts = [case_text(i) for i in range(3000, 3030)] + OFF_TOPIC
    probs = [[0.5, 0.5] + [0.0] * (len(clinical_spec.output.labels) - 2)] * len(texts)
    in_scope, outside = fitted.score(texts)
    labels = pd.DataFrame({"sha256": [f"q{i}" for i in range(len(texts))], "text": texts,
                           "probs": [json.dumps(p) for p in probs], "in_scope": in_scope, "out_of_scope": outside})
    chosen = review.queue(clinical_spec, labels, None, fitted, 10)
    assert len(chosen) == 10 and chosen["sha256"].is_unique
    assert chosen["out_of_scope"].sum() == 1 and "out of scope" in " ".join(chosen["why"])
