"""The TF-IDF baseline: fitted on the train seeds only, reading the prompt's window, scored and warned about
beside the models in the teacher and student stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery import baseline, ingest, label, lake, seed, student, synth, teacher
from distillery.evaluate import kept_checkpoint, seed_items
from distillery.models import load_tokenizer, tiny_model
from distillery.prompts import document_text, render_prompt

from conftest import REPO, quick_stages


def _items(texts_and_labels) -> list[dict]:
    return [{"sha256": f"h{i}", "text": t, "answer": a} for i, (t, a) in enumerate(texts_and_labels)]


def _window(spec, chars: int):
    return spec.model_copy(update={"prompts": spec.prompts.model_copy(update={"max_doc_chars": chars})})


def test_the_baseline_reads_only_the_window_the_prompt_shows(clinical_spec):
    labels = clinical_spec.output.labels
    filler = "patient seen in clinic today " * 10  # ~290 characters every document shares
    words = {labels[0]: "polyuria thirst", labels[1]: "flank haematuria"}
    train = _items([(f"{filler} {words[lab]} {k}", lab) for lab in words for k in range(4)])
    test = _items([(f"{filler} {words[lab]}", lab) for lab in words])
    short, long = _window(clinical_spec, 200), _window(clinical_spec, 1500)
    blind = baseline.fit(short, train).probabilities([it["text"] for it in test])
    assert (blind[0] == blind[1]).all(), "past the window the telling words must be invisible"
    rows, metrics = baseline.evaluate(long, train, test)
    assert metrics["top1"] == 1.0 and list(rows["model"].unique()) == ["baseline"]
    # the characters it reads are those the prompt shows
    tokenizer = load_tokenizer(str(REPO / "models" / "base"))
    for it in train:
        assert document_text(it["text"], short) in render_prompt(it["text"], short, tokenizer)
        assert words[it["answer"]] not in document_text(it["text"], short)


def test_the_baseline_answers_like_a_model(clinical_spec):
    labels = clinical_spec.output.labels
    train = _items([("sugar thirst polyuria", labels[0]), ("thirst sugar weight loss", labels[0]),
                    ("chest pain sweating", labels[2]), ("crushing chest pain", labels[2])])
    answers, probs = baseline.fit(clinical_spec, train).answer(["sugar and thirst", "chest pain"])
    assert [a.top for a in answers] == [labels[0], labels[2]]
    assert all(len(a.ranked) == clinical_spec.output.top_k and set(a.ranked) <= set(labels) for a in answers)
    assert all(len(row) == len(labels) and abs(sum(row) - 1) < 1e-9 for row in probs)
    assert all(row[1] == 0.0 for row in probs), "a label no train seed had gets no probability"
    one = baseline.fit(clinical_spec, train[:2]).answer(["anything"])[0][0]
    assert one.top == labels[0], "a single-class train split answers that class"


def test_an_extraction_task_skips_the_baseline_and_says_so(invoice_spec):
    rows, metrics = baseline.evaluate(invoice_spec, [{"sha256": "a", "text": "x", "answer": {}}], [])
    assert rows.empty and "classification only" in metrics["skipped"]


def test_the_warning_fires_below_the_baseline_and_not_above_or_level(clinical_spec):
    base = {"n": 16, "top1": 0.58}
    tips = baseline.teacher_tips(clinical_spec)
    below = baseline.below_baseline("teacher", {"n": 16, "top1": 0.21}, base, tips)
    assert len(below) == 1 and "teacher top-1 0.21 is below the TF-IDF baseline 0.58 on the same 16" in below[0]
    assert "prompts.max_doc_chars, now 320" in below[0] and "models.base" in below[0]
    assert baseline.below_baseline("teacher", {"n": 16, "top1": 0.63}, base, tips) == []
    assert baseline.below_baseline("teacher", {"n": 16, "top1": 0.58}, base, tips) == []
    assert baseline.below_baseline("student", {"n": 16, "top1": 0.1}, {"skipped": "extraction"}, tips) == []


def test_kept_says_whether_grpo_beat_the_sft_start():
    worse = [{"step": 0, "mean_reward": 0.64, "n": 8}, {"step": 2, "mean_reward": 0.62, "n": 8},
             {"step": 4, "mean_reward": 0.64, "n": 8}]
    kept = kept_checkpoint(worse, 4)
    assert kept["step"] == 0 and kept["kind"] == "sft" and kept["sft_validation_reward"] == 0.64
    assert kept["why"].startswith("GRPO did not beat the SFT warm start on validation (best GRPO 0.640 at step 4 "
                                  "vs 0.640 at step 0, 8 items)")
    better = worse[:2] + [{"step": 4, "mean_reward": 0.7, "n": 8}]
    kept = kept_checkpoint(better, 4)
    assert (kept["step"], kept["kind"], kept["validation_reward"]) == (4, "grpo", 0.7)
    assert "kept the GRPO checkpoint of step 4" in kept["why"]
    assert kept_checkpoint([], 0)["kind"] == "sft" and "GRPO is off" in kept_checkpoint([], 0)["why"]


# ---- the stages ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "m", REPO / "models" / "base")


@pytest.fixture(scope="module")
def taught(tmp_path_factory, tiny):
    """A teacher stage on 60 case reports, 50 seeds (30 train, 10 validation, 10 held-out), a random tiny
    base, SFT for 2 steps and no GRPO, the LLM its one member; every text the baseline was fitted on is recorded."""
    from sklearn.pipeline import Pipeline

    from conftest import CLINICAL_YAML
    from distillery.spec import load_spec

    tmp = tmp_path_factory.mktemp("taught")
    clinical = load_spec(CLINICAL_YAML)
    truth = synth.generate_clinical(tmp / "pdfs", 60, bad_every=0)
    synth.write_csv(synth.pick_seeds(truth, 5), tmp / "seeds.csv")
    spec = quick_stages(clinical, tiny, layers=1, limit=10, batch_size=4, shard_size=4).model_copy(update={
        "source": str(tmp / "pdfs"), "seeds": clinical.seeds.model_copy(update={"path": str(tmp / "seeds.csv")}),
        "models": clinical.models.model_copy(update={"base": str(tiny), "student": str(tiny)}),
        "teacher": clinical.teacher.model_copy(update={
            "sft": clinical.teacher.sft.model_copy(update={"max_steps": 2, "batch_size": 4}),
            "grpo": clinical.teacher.grpo.model_copy(update={"steps": 0}), "members": ["llm"]})})
    docs = ingest.ingest(spec, out=tmp / "ingest").path("documents")
    seeds = seed.import_seeds(spec, docs, out=tmp / "seed").path("seed_labels")
    fitted: list[list[str]] = []
    original = Pipeline.fit

    def spy(self, X, y=None, **kw):
        fitted.append(list(X))
        return original(self, X, y, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pipeline, "fit", spy)
        result = teacher.train_teacher(spec, seeds, docs, out=tmp / "teacher")
    return spec, docs, seeds, result, fitted


def test_the_teacher_stage_fits_the_baseline_on_the_train_seeds_only(taught):
    spec, docs, seeds, result, fitted = taught
    split = lake.read_table(seeds).to_pandas()["split"].value_counts().to_dict()
    assert split == {"train": 30, "validation": 10, "heldout": 10}
    train = seed_items(spec, seeds, docs, "train")
    assert fitted == [[document_text(it["text"], spec) for it in train]]
    assert result.metrics["baseline"]["trained_on"] == 30


def test_the_teacher_stage_scores_the_baseline_beside_base_and_teacher_in_the_catalog(taught):
    spec, _, _, result, _ = taught
    rows = lake.read_table(result.path("teacher_eval")).to_pandas()
    by_model = {m: set(r["sha256"]) for m, r in rows.groupby("model")}
    assert set(by_model) == {"base", "baseline", "llm", "teacher"} and by_model["baseline"] == by_model["teacher"]
    lake.register(lake.home(), spec.name, result, cache_key="k", config_hash="c", inputs={}, started_at=lake.now(),
                  views={"teacher_eval": [result.outputs["teacher_eval"]]})
    top1 = dict(lake.query(None, "SELECT model, avg(top1::INT) FROM teacher_eval GROUP BY model"))
    assert top1["baseline"] == pytest.approx(result.metrics["baseline"]["top1"])
    assert f"baseline.top1={result.metrics['baseline']['top1']:.3f}" in str(result)
    # a random tiny teacher is far below a bag of words on case reports, and is told so
    assert result.metrics["teacher"]["top1"] < result.metrics["baseline"]["top1"]
    assert len(result.metrics["warnings"]) == 1 and "below the TF-IDF baseline" in result.metrics["warnings"][0]
    assert result.metrics["kept"]["kind"] == "sft" and "GRPO is off" in result.metrics["kept"]["why"]


@pytest.mark.slow
def test_the_student_stage_scores_the_baseline_on_its_held_out_items(taught, tmp_path):
    spec, docs, seeds, result, _ = taught
    labels = label.machine_label(spec, result.path("model"), docs, seeds, out=tmp_path / "label")
    trained = student.train_student(spec, labels.path("machine_labels"), seeds, docs, out=tmp_path / "student",
                                    teacher_top1=0.0)
    rows = lake.read_table(trained.path("student_eval")).to_pandas()
    by_model = {m: sorted(r["sha256"]) for m, r in rows.groupby("model")}
    assert set(by_model) == {"student", "baseline"} and by_model["student"] == by_model["baseline"]
    assert all(abs(sum(json.loads(p)) - 1) < 1e-6 for p in rows["probs"])
    assert trained.metrics["baseline"]["top1"] == pytest.approx(rows.loc[rows["model"] == "baseline", "top1"].mean())
    expected = trained.metrics["top1"] < trained.metrics["baseline"]["top1"]
    assert bool(trained.metrics["warnings"]) == expected
    assert trained.metrics["n"] == len(by_model["student"]), "the student's own metrics count its rows only"
