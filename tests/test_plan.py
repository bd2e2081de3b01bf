"""`distillery plan` measures the corpus and the prompt before it predicts, and checks its last prediction."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pytest

from distillery import lake, synth
from distillery.cli import main
from distillery.plan import compare_last, plan, remember, render
from distillery.probe import measure
from distillery.spec import parse_spec

from conftest import CLINICAL_YAML


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 case reports (one corrupt) and a 6-row seed sheet beside them."""
    root = tmp_path_factory.mktemp("plan")
    truth = synth.generate_clinical(root / "pdfs", 12, bad_every=12)
    synth.write_csv(synth.pick_seeds(truth, 1)[:6], root / "seeds.csv")
    return root


def _spec(clinical_raw, corpus, **prompts):
    raw = {k: v for k, v in clinical_raw.items() if k != "profiles"}
    raw.update(source="pdfs", seeds={"path": "seeds.csv"}, bulk={"source": "pdfs"}, ingest={"workers": 1},
               models={"base": str(CLINICAL_YAML.parent / "../../models/base")})
    raw["prompts"] = {**raw["prompts"], **prompts}
    raw["student"] = {**raw["student"], "kind": "lm"}  # an SFT student: priced by the SFT step
    return parse_spec(raw, root=corpus)


def _lines(result) -> dict:
    return {ln["stage"]: ln for ln in result["lines"]}


def test_plan_counts_the_documents_left_to_label_not_the_limit(clinical_raw, corpus):
    spec = _spec(clinical_raw, corpus)
    sample = measure(spec, 20)
    assert (sample.files, sample.extracted, sample.ok) == (12, 12, 11)
    result = plan(spec, sample=sample)
    # 11 valid documents - 6 seeds; one seed per label: none held out (a label needs two for that)
    assert _lines(result)["label"]["work"] == 5 < spec.label.limit
    assert any("11 valid - 6 seeds = 5" in m for m in result["measured"])


def test_longer_prompts_measure_more_tokens_and_predict_longer_stages(clinical_raw, corpus):
    short, long = _spec(clinical_raw, corpus, max_doc_chars=100), _spec(clinical_raw, corpus, max_doc_chars=1500)
    a, b = measure(short, 6), measure(long, 6)
    assert 0 < a.tokens < b.tokens
    pa_, pb = _lines(plan(short, sample=a, bulk_docs=100)), _lines(plan(long, sample=b, bulk_docs=100))
    for stage in ("teacher: SFT warm start", "student: SFT", "label"):  # time per step or document ~ tokens
        assert pa_[stage]["rate_per_s"] / pb[stage]["rate_per_s"] == pytest.approx(b.tokens / a.tokens)
    g = long.teacher.grpo  # a GRPO step: the prompt once, then G completions of C tokens
    completions = g.num_generations * g.max_completion_length
    assert pa_["teacher: GRPO"]["rate_per_s"] / pb["teacher: GRPO"]["rate_per_s"] == pytest.approx(
        (b.tokens + completions) / (a.tokens + completions))


def test_no_stage_is_left_unpriced_on_a_fresh_home(clinical_raw, corpus):
    spec = _spec(clinical_raw, corpus)
    result = plan(spec, sample=measure(spec, 4))
    assert result["unknown"] == []
    assert _lines(result)["teacher: SFT warm start"]["work"] > 0  # from the seed file, before the seed stage ran
    assert " ? " not in render(result) and "?/s" not in render(result)


def _run(home, task, stage, seconds, started):
    res = lake.StageResult(stage, lake.new_run_id(stage), {}, {}, {}, seconds)
    lake.register(home, task, res, cache_key=stage, config_hash="c", inputs={}, started_at=started, views={})
    with lake.catalog(home) as con:  # the run's duration is what the catalog says it was
        con.execute("UPDATE runs SET finished_at = started_at + to_seconds(?) WHERE run_id = ?",
                    [seconds, res.run_id])


def test_plan_says_how_far_its_last_prediction_was_from_the_run_after_it(clinical_raw, corpus, distillery_home):
    spec = _spec(clinical_raw, corpus)
    result = plan(spec, bulk_docs=10)
    assert compare_last(None, spec.name) is None
    remember(result, None)
    kept = json.loads((distillery_home / "plans" / f"{spec.name}.json").read_text())
    predicted = {ln["stage"]: ln["seconds"] for ln in result["lines"]}
    assert kept["stages"]["teacher"] == pytest.approx(sum(v for k, v in predicted.items() if k.startswith("teacher")))
    _run(distillery_home, spec.name, "label", 999.0, lake.now() - timedelta(days=1))  # before the plan: not its run
    _run(distillery_home, spec.name, "label", 3 * kept["stages"]["label"], lake.now())
    _run(distillery_home, spec.name, "teacher", kept["stages"]["teacher"], lake.now())
    last = compare_last(None, spec.name)
    assert set(last["stages"]) == {"label", "teacher"}
    assert last["actual"] == pytest.approx(3 * kept["stages"]["label"] + kept["stages"]["teacher"])
    assert last["predicted"] == pytest.approx(kept["stages"]["label"] + kept["stages"]["teacher"])
    assert "they took" in render(result, last=last)


def test_the_plan_command_measures_and_keeps_its_prediction(clinical_raw, corpus, distillery_home, tmp_path, capsys):
    import yaml

    spec = _spec(clinical_raw, corpus)
    raw = spec.model_dump(mode="json", exclude={"root"})
    raw.update(source=str(corpus / "pdfs"), seeds={"path": str(corpus / "seeds.csv")}, bulk={"source": str(corpus / "pdfs")})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["plan", str(path), "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert "tokens per prompt:" in out and "last plan: none" in out
    assert (distillery_home / "plans" / "clinical.json").exists()
    assert main(["plan", str(path), "--sample", "3"]) == 0
    assert "no stage has run since" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from distillery.models import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny") / "m", CLINICAL_YAML.parent / "../../models/base")


def test_the_base_model_is_timed_here_and_its_times_price_the_stages(clinical_raw, corpus, tiny_base):
    """Labeling and SFT are priced by what the base model took here on the sample, not by tokens:
    twice the measured time is half the rate of every stage priced from it."""
    from dataclasses import replace

    spec = _spec(clinical_raw, corpus)
    spec = spec.model_copy(update={"models": spec.models.model_copy(update={"base": str(tiny_base)})})
    sample = measure(spec, 4, time_model=True)
    assert sample.score_docs_per_s > 0 and sample.sft_step_s > 0
    assert sample.scored == min(sample.ok, 8, spec.label.batch_size) > 0
    assert measure(spec, 4).sft_step_s is None  # timing is asked for (the command does; --no-time does not)
    lines = _lines(plan(spec, sample=sample, bulk_docs=100))
    assert lines["label"]["rate_per_s"] == pytest.approx(sample.score_docs_per_s)
    assert "measured here" in lines["label"]["source"]
    assert lines["teacher: SFT warm start"]["rate_per_s"] == pytest.approx(1 / sample.sft_step_s)
    assert "measured here" in lines["student: SFT"]["source"]
    slow = _lines(plan(spec, sample=replace(sample, score_docs_per_s=sample.score_docs_per_s / 2,
                                            sft_step_s=2 * sample.sft_step_s), bulk_docs=100))
    for stage in ("label", "teacher: evaluations", "teacher: SFT warm start", "student: SFT"):
        assert slow[stage]["rate_per_s"] == pytest.approx(lines[stage]["rate_per_s"] / 2), stage
    assert slow["teacher: GRPO"]["rate_per_s"] < lines["teacher: GRPO"]["rate_per_s"]
    assert slow["bulk"]["rate_per_s"] <= lines["bulk"]["rate_per_s"]
    assert "base model here: scores" in "\n".join(plan(spec, sample=sample)["measured"])


def test_static_and_encoder_students_are_heads_on_features_not_sft_steps(clinical_raw, corpus):
    spec = parse_spec({**{k: v for k, v in clinical_raw.items() if k != "profiles"}, "source": "pdfs",
                       "seeds": {"path": "seeds.csv"}}, root=corpus)
    lines = _lines(plan(spec))
    assert spec.student_kinds == (["static", "encoder"], ["lm"]) and "student: SFT" not in lines
    assert lines["student: static + encoder heads"]["unit"] == "labels"
