"""The bar every model must clear: TF-IDF + logistic regression trained on the train seeds alone.

A user with 80 labels first asks whether an LLM beats a plain classifier on those labels, so every
evaluation scores this one beside base, teacher and student: word 1-2 grams with sublinear term
frequency, logistic regression with C=10 (what the measured issue used), fitted on the seed train
split only (never validation or held-out rows) and reading exactly the characters the models read
(`prompts.document_text`). It answers like a model, a ranked top-k list and a probability row over
the label set, so `evaluate.grade_items` grades it like the others. Classification only: an
extraction task has no label set to rank, and its metrics say the baseline was skipped.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from distillery.evaluate import gold_label, grade_items, summarize
from distillery.prompts import Answer, document_text
from distillery.spec import ClassificationOutput, TaskSpec

NAME = "baseline"
MARGIN = 1e-9  # a model tied with the baseline is not below it


def skipped(spec: TaskSpec, train: list[dict]) -> str | None:
    """Why the baseline cannot run for this task (None when it can)."""
    if not isinstance(spec.output, ClassificationOutput):
        return "extraction task: the TF-IDF baseline ranks a label set, so it scores classification only"
    if not train:
        return "no train seeds to fit it on"
    return None


class Baseline:
    """TF-IDF + logistic regression over the spec's label set; the committee's `tfidf` member."""

    name = "tfidf"

    def __init__(self, spec: TaskSpec):
        self.spec, self.labels = spec, list(spec.output.labels)
        self.model, self.only = None, None

    def fit(self, train: list[dict]) -> "Baseline":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        texts = [document_text(it["text"], self.spec) for it in train]
        answers = [gold_label(it["answer"]) for it in train]
        self.only = answers[0] if len(set(answers)) == 1 else None  # one class: logistic regression cannot fit
        self.model = None
        if self.only is None:
            self.model = Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                                   ("lr", LogisticRegression(C=10, max_iter=2000))])
            self.model.fit(texts, answers, lr__sample_weight=weights(train))
        return self

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """P(label | document window), one row per text, columns in the spec's label order (0 for a
        label no train seed had)."""
        return label_probabilities(self.labels, self.model, self.only, [document_text(t, self.spec) for t in texts])

    def answer(self, texts: list[str]) -> tuple[list[Answer], list[list[float]]]:
        """A ranked top-k answer and a probability row per text (ties keep the label order)."""
        from distillery.answer import ranked_answers

        probs = self.probabilities(texts)
        return ranked_answers(self.spec, probs), probs.tolist()


class LinearHead:
    """A logistic regression on `self.features(texts)` (C = `self.C`), answering with rows in the
    spec's label order (`self.labels`); trained on one label alone, that label at 1 (a logistic
    regression cannot fit one class). The encoder member and the static student kind are this head
    over their own features."""

    head, only = None, None

    def fit(self, items: list[dict]):
        from sklearn.linear_model import LogisticRegression

        answers = [gold_label(it["answer"]) for it in items]
        self.only = answers[0] if len(set(answers)) == 1 else None
        self.head = None
        if self.only is None:
            self.head = LogisticRegression(C=self.C, max_iter=5000).fit(self.features([it["text"] for it in items]),
                                                                         answers, sample_weight=weights(items))
        return self

    def probabilities(self, texts: list[str]) -> np.ndarray:
        features = self.features(texts) if texts and self.head is not None else texts
        return label_probabilities(self.labels, self.head, self.only, features)


def weights(items: list[dict]) -> list[float]:
    """Each training item's weight: its `weight` (a machine label's share of the teacher's belief) or 1."""
    return [float(it.get("weight", 1.0)) for it in items]


def label_probabilities(labels: list[str], classifier, only: str | None, inputs) -> np.ndarray:
    """A fitted classifier's `predict_proba` on `inputs`, its columns (`classes_`) placed in the spec's
    label order (0 for a label it never saw); with `only` (one class in training), that label at 1."""
    probs = np.zeros((len(inputs), len(labels)))
    if not len(inputs):
        return probs
    if classifier is None:
        probs[:, labels.index(only)] = 1.0
        return probs
    seen = classifier.predict_proba(inputs)
    for j, label in enumerate(classifier.classes_):
        probs[:, labels.index(label)] = seen[:, j]
    return probs


def fit(spec: TaskSpec, train: list[dict]) -> Baseline:
    """The baseline fitted on `train` (seed items with `text` and `answer`): the train split only."""
    return Baseline(spec).fit(train)


def evaluate(spec: TaskSpec, train: list[dict], items: list[dict]) -> tuple[pd.DataFrame, dict]:
    """Graded rows (model="baseline", with probs and confidence) and metrics of the baseline fitted on
    `train` and scored on `items`; for a task it cannot score, no rows and metrics saying why."""
    why = skipped(spec, train)
    if why:
        return pd.DataFrame(), {"skipped": why}
    answers, probs = fit(spec, train).answer([it["text"] for it in items])
    rows = grade_items(spec, items, answers, [{"probs": json.dumps(p), "confidence": max(p)} for p in probs])
    return rows.assign(model=NAME), {**summarize(rows), "trained_on": len(train)}


def teacher_tips(spec: TaskSpec) -> list[str]:
    """What to try when the teacher does not clear the baseline, with the spec's current values."""
    tips = [f"read more of each document (prompts.max_doc_chars, now {spec.prompts.max_doc_chars})"]
    if isinstance(spec.output, ClassificationOutput) and not spec.output.label_descriptions:
        tips.append("describe each label in the spec (output.labels as {name, description})")
    tips += [f"train longer on the seeds (teacher.sft.epochs, now {spec.teacher.sft.epochs:g})",
             f"start from a larger base model (models.base, now {spec.models.base})"]
    return tips


def student_tips(spec: TaskSpec) -> list[str]:
    """What to try when the student does not clear the baseline, with the spec's current values."""
    layers = spec.student.layers or "all"
    return ["get a teacher above the baseline first (the student learns from the teacher's labels)",
            f"label more documents for it (label.limit, now {spec.label.limit})",
            f"keep more of the model's layers (student.layers, now {layers})",
            f"train longer (student.sft.epochs, now {spec.student.sft.epochs:g})",
            f"read more of each document (prompts.max_doc_chars, now {spec.prompts.max_doc_chars})"]


def below_baseline(model: str, metrics: dict, baseline: dict, tips: list[str], *,
                   where: str = "held-out seeds") -> list[str]:
    """A warning when `model`'s top-1 is below the baseline's on the same items, else none."""
    if baseline.get("top1") is None or not metrics.get("n") or metrics["top1"] >= baseline["top1"] - MARGIN:
        return []
    return [f"{model} top-1 {metrics['top1']:.2f} is below the TF-IDF baseline {baseline['top1']:.2f} on the same "
            f"{metrics['n']} {where}: try to " + "; ".join(tips)]
