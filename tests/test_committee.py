"""The committee and its members: out-of-fold honesty, weights that follow worth, one shared contract."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from distillery import committee, encoder, lake, members, synth
from distillery.models import tiny_model
from distillery.spec import TaskSpec


def case_items(n: int, offset: int = 0) -> list[dict]:
    """Case reports as seed items (text, answer), without PDFs."""
    out = []
    for i in range(offset, offset + n):
        case = synth.make_case(i)
        text = " ".join(synth._case_paragraphs(case, random.Random(i)))
        out.append({"sha256": f"{i:064x}", "text": text, "answer": case.label})
    return out


@pytest.fixture
def spec(clinical_spec, tiny_encoder_dir) -> TaskSpec:
    return clinical_spec.model_copy(update={"models": clinical_spec.models.model_copy(
        update={"encoder": str(tiny_encoder_dir)})})


class Spy:
    """A member that records what it was fitted on and asked about; answers a fixed row."""

    name = "spy"
    log: list[tuple[str, list[str]]] = []

    def __init__(self, n_labels: int):
        self.n_labels = n_labels

    def fit(self, items):
        Spy.log.append(("fit", [it["text"] for it in items]))
        return self

    def probabilities(self, texts):
        Spy.log.append(("predict", list(texts)))
        return np.full((len(texts), self.n_labels), 1 / self.n_labels)


def test_no_member_scores_a_seed_it_was_fitted_on_out_of_fold(spec):
    items = case_items(50)  # 5 per label: 5 stratified folds
    labels = list(spec.output.labels)
    folds = committee.assign_folds(committee.gold_indices(items, labels), 5)
    Spy.log = []
    probs = committee.out_of_fold(lambda: Spy(len(labels)), items, folds, len(labels))
    calls = list(zip(Spy.log[::2], Spy.log[1::2]))
    assert len(calls) == 5 and np.isfinite(probs).all()
    predicted = []
    for (fit, seen), (predict, asked) in calls:
        assert fit == "fit" and predict == "predict" and not set(seen) & set(asked)
        predicted += asked
    assert sorted(predicted) == sorted(it["text"] for it in items), "every seed is predicted exactly once"


class Memorizer:
    """Perfect on what it was fitted on, uniform elsewhere: worth nothing out of fold."""

    name = "memorizer"

    def __init__(self, labels):
        self.labels, self.seen = labels, {}

    def fit(self, items):
        self.seen = {it["text"]: self.labels.index(it["answer"]) for it in items}
        return self

    def probabilities(self, texts):
        out = np.full((len(texts), len(self.labels)), 1 / len(self.labels))
        for i, t in enumerate(texts):
            if t in self.seen:
                out[i] = np.eye(len(self.labels))[self.seen[t]]
        return out


class Noisy:
    """Right 60% of the time out of fold, whatever it was fitted on (a stand-in for a real member)."""

    name = "noisy"

    def __init__(self, labels, truth):
        self.labels, self.truth = labels, truth

    def fit(self, items):
        return self

    def probabilities(self, texts):
        out = np.full((len(texts), len(self.labels)), 0.02)
        for i, t in enumerate(texts):
            right = self.labels.index(self.truth[t])
            pick = right if random.Random(t).random() < 0.6 else (right + 1) % len(self.labels)
            out[i, pick] = 1.0
        return out / out.sum(axis=1, keepdims=True)


def _oof(items, labels, makers):
    gold = committee.gold_indices(items, labels)
    folds = committee.assign_folds(gold, 5)
    return {m: committee.out_of_fold(make, items, folds, len(labels)) for m, make in makers.items()}, gold, folds


def test_the_weights_see_only_out_of_fold_rows(spec):
    """A member that memorises its seeds would win every in-sample comparison; out of fold it is
    worthless, and the weights fitted on out-of-fold rows give it nothing."""
    items, labels = case_items(60), list(spec.output.labels)
    truth = {it["text"]: it["answer"] for it in items}
    probs, gold, folds = _oof(items, labels, {"memorizer": lambda: Memorizer(labels),
                                              "noisy": lambda: Noisy(labels, truth)})
    weights, _ = committee.fit_combination(probs, gold)
    assert weights["memorizer"] == 0 and weights["noisy"] == 1
    nested = committee.nested_out_of_fold(probs, gold, folds)
    assert committee.accuracy(nested, gold)["top1"] == pytest.approx(committee.accuracy(probs["noisy"], gold)["top1"])


def test_the_committee_of_a_strong_and_a_useless_member_weights_the_strong_one(spec):
    items, labels = case_items(80), list(spec.output.labels)

    class Useless:
        name = "useless"

        def fit(self, items):
            return self

        def probabilities(self, texts):
            return np.random.default_rng(len(texts)).dirichlet(np.ones(len(labels)), len(texts))

    probs, gold, folds = _oof(items, labels, {"tfidf": lambda: members.make_member("tfidf", spec),
                                              "useless": Useless})
    weights, _ = committee.fit_combination(probs, gold)
    assert weights["tfidf"] >= 0.9 > weights["useless"]
    metrics = committee.seed_metrics(probs, committee.nested_out_of_fold(probs, gold, folds), gold, weights,
                                     {"tfidf": 1.0, "useless": 1.0}, folds)
    assert metrics["committee"]["top1"] >= metrics["members"]["useless"]["top1"]
    assert metrics["committee"]["ci95"][0] <= metrics["committee"]["top1"] <= metrics["committee"]["ci95"][1]
    assert "no LLM member" in metrics["llm_added"]


def test_a_member_at_weight_zero_is_never_run(spec):
    labels = list(spec.output.labels)

    class Refuses:
        name = "refuses"

        def probabilities(self, texts):
            raise AssertionError("a member at weight 0 must not be asked")

    tfidf = members.make_member("tfidf", spec).fit(case_items(40))
    board = committee.Committee(labels, {"tfidf": tfidf, "refuses": Refuses()}, {"tfidf": 1.0, "refuses": 0.0},
                                {"tfidf": 1.0, "refuses": 1.0})
    rows = board.probabilities([it["text"] for it in case_items(5, offset=100)])
    assert rows.shape == (5, len(labels)) and np.allclose(rows.sum(axis=1), 1)


# ---- one contract for every member and student kind (scikit-learn's check_estimator, in small) ----

@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("llm") / "m", REPO / "models" / "base")


def _fresh(name: str, spec: TaskSpec, tiny_llm) -> members.Member:
    if name == "llm":
        quick = spec.model_copy(update={"models": spec.models.model_copy(update={"base": str(tiny_llm)}),
                                        "teacher": spec.teacher.model_copy(update={
                                            "sft": spec.teacher.sft.model_copy(update={"max_steps": 1})})})
        return members.make_member(name, quick)
    return members.make_member(name, spec)


UNPICKLE = """
import pickle, sys, json
model = pickle.loads(open(sys.argv[1], "rb").read())
print(json.dumps(model.probabilities(json.loads(sys.argv[2])).tolist()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(members.MEMBERS))
def test_every_member_keeps_the_contract(name, spec, tiny_llm, tmp_path):
    labels = list(spec.output.labels)
    two = [it for it in case_items(40) if it["answer"] in labels[:2]]  # two of the ten labels seen
    texts = [it["text"] for it in case_items(6, offset=200)]
    member = _fresh(name, spec, tiny_llm)
    assert member.fit(two) is member
    rows = member.probabilities(texts)
    assert rows.shape == (len(texts), len(labels)) and np.allclose(rows.sum(axis=1), 1) and (rows >= 0).all()
    if name != "llm":  # a classifier never puts mass on a label it never saw, in the spec's label order
        assert np.allclose(rows[:, 2:], 0) and rows[:, :2].sum() > 0
    assert member.probabilities([]).shape == (0, len(labels))
    folder = members.save(member, tmp_path / "saved")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", UNPICKLE, str(folder / members.LABELER_FILE), json.dumps(texts)],
                         capture_output=True, text=True, env=env, check=True)
    assert np.allclose(json.loads(out.stdout.strip().splitlines()[-1]), rows, atol=1e-5), \
        "a saved member answers the same in another process"


def test_members_by_task(spec, invoice_spec):
    assert members.applicable(spec) == ["tfidf", "encoder", "llm"]
    assert members.applicable(spec, ["encoder"]) == ["encoder"]
    assert members.applicable(invoice_spec, ["encoder", "tfidf"]) == ["llm"], "extraction keeps the LLM alone"


# ---- the encoder ---------------------------------------------------------------------------------

NO_NETWORK = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from distillery.encoder import Encoder
rows = Encoder("embedded", cache=sys.argv[1]).embed(["PSTricks draws with PostScript", "LuaTeX callbacks"])
print(rows.shape, round(float((rows ** 2).sum(axis=1).mean()), 4))
"""


@pytest.mark.slow
def test_the_embedded_encoder_loads_with_no_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", NO_NETWORK, str(tmp_path / "cache")], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "(2, 384) 1.0", "all-MiniLM-L6-v2: 384 dimensions, normalised"


def test_an_embedding_is_computed_once_and_then_read_from_the_cache(tiny_encoder_dir, tmp_path):
    texts = ["one manual", "another manual", "one manual"]
    first = encoder.Encoder(str(tiny_encoder_dir), cache=tmp_path)
    rows = first.embed(texts)
    assert first.computed == 2 and np.allclose(rows[0], rows[2])
    again = encoder.Encoder(str(tiny_encoder_dir), cache=tmp_path)  # another stage, another process
    assert np.allclose(again.embed(texts[::-1]), rows[::-1]) and again.computed == 0
    assert again._model is None, "a stage whose texts are all cached never loads the model"


def test_with_chunks_the_encoder_sees_the_first_window_beside_the_mean_of_all(spec):
    spec = spec.model_copy(update={"encoder": spec.encoder.model_copy(update={"chunks": 3})})
    member = members.make_member("encoder", spec)
    long = "alpha " * 200  # 1,200 characters: windows of 320, 320, 320
    short = "beta gamma"
    windows = members.document_windows(long, spec, 3)
    assert [len(w) for w in windows] == [320, 320, 320] and members.document_windows(short, spec, 3) == [short]
    rows = member.features([long, short])
    one = member.encoder.embed(windows)
    assert rows.shape == (2, 2 * one.shape[1])
    assert np.allclose(rows[0, :one.shape[1]], one[0], atol=1e-6)
    mean = one.mean(axis=0)
    assert np.allclose(rows[0, one.shape[1]:], mean / np.linalg.norm(mean), atol=1e-5)
    assert np.allclose(rows[1, :one.shape[1]], rows[1, one.shape[1]:], atol=1e-5), "one window: its own mean"


def test_the_spec_reads_enough_text_for_the_encoders_windows(clinical_raw):
    from distillery.spec import parse_spec

    raw = {**clinical_raw, "encoder": {"chunks": 4}}
    assert parse_spec(raw, root=REPO / "data" / "demo").ingest.read.chars == 4 * raw["prompts"]["max_doc_chars"]
    assert parse_spec(clinical_raw, root=REPO / "data" / "demo").ingest.read.chars == raw["prompts"]["max_doc_chars"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_documents_embedding_is_computed_once_across_teacher_label_and_student(spec, tmp_path, monkeypatch):
    """The encoder member's k folds and refit, the committee labeling the corpus, and the encoder
    student trained on those labels and scored on the held-out seeds: each window encoded once."""
    from sentence_transformers import SentenceTransformer

    from distillery import ingest, label, seed, student, teacher

    truth = synth.generate_clinical(tmp_path / "pdfs", 60, bad_every=0)
    synth.write_csv(synth.pick_seeds(truth, 3), tmp_path / "seeds.csv")
    spec = spec.model_copy(update={
        "source": str(tmp_path / "pdfs"), "seeds": spec.seeds.model_copy(update={"path": str(tmp_path / "seeds.csv")}),
        "ingest": spec.ingest.model_copy(update={"workers": 1}),
        "teacher": spec.teacher.model_copy(update={"members": ["encoder", "tfidf"]}),
        "student": spec.student.model_copy(update={"kind": "encoder"})})
    encoded: list[str] = []
    timing: list[bool] = []  # inside the student's speed measurement, which reads fresh text on purpose
    original, fresh_speed = SentenceTransformer.encode, student.fresh_speed

    def spy(self, sentences, *args, **kwargs):
        if not timing:
            encoded.extend(sentences)
        return original(self, sentences, *args, **kwargs)

    def timed(*args, **kwargs):
        timing.append(True)
        try:
            return fresh_speed(*args, **kwargs)
        finally:
            timing.pop()

    monkeypatch.setattr(SentenceTransformer, "encode", spy)
    monkeypatch.setattr(student, "fresh_speed", timed)
    docs = ingest.ingest(spec, out=tmp_path / "ingest").path("documents")
    seeds = seed.import_seeds(spec, docs, out=tmp_path / "seed").path("seed_labels")
    taught = teacher.train_teacher(spec, seeds, docs, out=tmp_path / "teacher")
    assert taught.path("model").name == "committee" and set(taught.metrics["committee"]["members"]) == {"encoder", "tfidf"}
    labeled = label.machine_label(spec, taught.path("model"), docs, seeds, out=tmp_path / "label")
    trained = student.train_student(spec, labeled.path("machine_labels"), seeds, docs, out=tmp_path / "student",
                                    teacher_top1=taught.metrics["teacher"]["top1"])
    assert trained.metrics["kind"] == "encoder" and members.is_labeler(trained.path("model"))
    assert len(encoded) == len(set(encoded)), "no window is encoded twice"
    assert len(set(encoded)) == len(lake.read_table(docs)), "every document's window once: seeds and labeled ones"


def test_an_llm_out_of_fold_on_some_seeds_is_weighed_there_and_the_figure_still_covers_every_seed(spec):
    """The LLM predicts only the seeds outside its train split: its weight is judged on those, the
    others' weights are renormalised elsewhere, and the committee's figure covers every seed."""
    items, labels = case_items(60), list(spec.output.labels)
    probs, gold, folds = _oof(items, labels, {"tfidf": lambda: members.make_member("tfidf", spec)})
    oracle = np.full(probs["tfidf"].shape, np.nan)
    oracle[40:] = 0.9 * np.eye(len(labels))[gold[40:]] + 0.01  # right on the 20 seeds it never trained on
    probs["llm"] = oracle / np.nansum(oracle, axis=1, keepdims=True)
    weights, temps = committee.fit_combination(probs, gold)
    assert weights["llm"] >= 0.5
    mixed = committee.combine(probs, weights, temps)
    assert np.isfinite(mixed).all() and np.allclose(mixed.sum(axis=1), 1)
    alone = committee.combine({"tfidf": probs["tfidf"]}, {"tfidf": 1.0}, temps)
    assert np.allclose(mixed[:40], alone[:40]), "where the LLM has no honest row, the committee is the others"
    nested = committee.nested_out_of_fold(probs, gold, folds)
    metrics = committee.seed_metrics(probs, nested, gold, weights, temps, folds)
    assert metrics["committee"]["n"] == 60 and metrics["members"]["llm"]["n"] == 20
    assert "the LLM added +" in metrics["llm_added"]


def test_a_committee_is_warned_against_the_baseline_out_of_fold_on_every_seed(spec):
    from distillery.teacher import teacher_warnings

    board = {"folds": 5, "members": {"tfidf": {"top1": 0.80, "n": 80}, "encoder": {"top1": 0.70, "n": 80}},
             "committee": {"top1": 0.75, "n": 80}}
    heldout = {"teacher": {"top1": 0.9, "n": 16}, "baseline": {"top1": 0.5, "n": 16}}
    warned = teacher_warnings(spec, {**heldout, "committee": board})
    assert len(warned) == 1 and "0.75 is below the TF-IDF baseline 0.80 on the same 80 seeds, out of fold" in warned[0]
    board["committee"]["top1"] = 0.85
    assert teacher_warnings(spec, {**heldout, "committee": board}) == []
    assert teacher_warnings(spec, heldout) == [], "without a committee: the held-out seeds decide"


class FixedLLM:
    """An `llm` member already trained: answers from a table of rows by text (uniform elsewhere)."""

    name = "llm"

    def __init__(self, rows: dict[str, np.ndarray], n_labels: int):
        self.rows, self.n_labels = rows, n_labels

    def probabilities(self, texts):
        return np.stack([self.rows.get(t, np.full(self.n_labels, 1 / self.n_labels)) for t in texts])


def test_the_llm_keeps_a_weight_only_if_the_nested_committee_is_better_with_it(spec):
    """The costly member earns its place out of fold: one that adds nothing is dropped (weight 0, so
    labeling never runs it) and the others reweighted; one that knows the answers keeps its weight."""
    labels = list(spec.output.labels)
    items = [{**it, "split": "train" if i < 40 else "heldout"} for i, it in enumerate(case_items(60))]
    useless = FixedLLM({}, len(labels))
    board, metrics = committee.build(spec, items, ["tfidf", "llm"], llm=useless)
    assert board.weights == {"tfidf": 1.0, "llm": 0.0}
    assert "the LLM added nothing on the 20 seeds" in metrics["llm_added"] and "never runs it" in metrics["llm_added"]
    knows = FixedLLM({it["text"]: 0.9 * np.eye(len(labels))[labels.index(it["answer"])] + 0.01 for it in items},
                     len(labels))
    board, metrics = committee.build(spec, items, ["tfidf", "llm"], llm=knows)
    assert board.weights["llm"] > 0 and "the LLM added +" in metrics["llm_added"]
