"""Machine labeling: schema-valid or recorded failures, resumable after a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import ingest, lake, label, prior, scope, seed, synth
from distillery.errors import DistilleryError
from distillery.models import tiny_model

from conftest import REPO


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("teacher") / "m", REPO / "models" / "base")


@pytest.fixture
def corpus(clinical_spec, tmp_path):
    truth = synth.generate_clinical(tmp_path / "pdfs", 60, bad_every=0)
    synth.write_csv(synth.pick_seeds(truth, 2), tmp_path / "seeds.csv")  # 10 held out, 40 left to label
    spec = clinical_spec.model_copy(update={
        "source": str(tmp_path / "pdfs"),
        "seeds": clinical_spec.seeds.model_copy(update={"path": str(tmp_path / "seeds.csv")}),
        "label": clinical_spec.label.model_copy(update={"limit": 40, "batch_size": 4, "shard_size": 4,
                                                        "max_new_tokens": 4}),
        "ingest": clinical_spec.ingest.model_copy(update={"workers": 1}),
    })
    docs = ingest.ingest(spec, out=tmp_path / "ingest").path("documents")
    seeds = seed.import_seeds(spec, docs, out=tmp_path / "seed").path("seed_labels")
    return spec, docs, seeds


def _hashes(shards: Path) -> list[str]:
    return lake.read_table(shards).column("sha256").to_pylist()


def test_teacher_labels_are_in_the_schema_with_a_probability_as_confidence(corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    result = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label")
    rows = lake.read_table(result.path("machine_labels")).to_pylist()
    assert len(rows) == 40 == result.counts["ok"]
    seeded = set(lake.read_table(seeds).column("sha256").to_pylist())
    assert not seeded & {r["sha256"] for r in rows}, "experts' documents are not machine-labeled"
    for r in rows:
        assert 0 < r["confidence"] <= 1
        assert r["raw_output"].strip().split("; ")[0] in spec.output.labels


def test_unparsable_generations_are_kept_and_marked_failed(corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"reasoning": True})})
    result = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label")
    rows = lake.read_table(result.path("machine_labels")).to_pylist()
    assert len(rows) == 40
    failed = [r for r in rows if r["parse_status"] == "failed"]
    assert failed, "a random model should not produce a parsable answer"
    assert all(r["answer"] is None and r["parse_error"] and r["raw_output"] is not None for r in failed)


def _rows(path: Path) -> list[dict]:
    return sorted(lake.read_table(path).to_pylist(), key=lambda r: r["sha256"])


def _labels(rows: list[dict]) -> list[tuple]:
    return [(r["sha256"], r["answer"], r["raw_output"], round(r["confidence"], 6)) for r in rows]


def _with_validation(seeds: Path, path: Path) -> Path:
    """The seed table with every other train row moved to validation (the temperature is fitted there)."""
    table = lake.read_table(seeds).to_pandas()
    train = table.index[table["split"] == "train"]
    table.loc[train[::2], "split"] = "validation"
    return lake.write_parquet(table, path)


def test_prior_correction_off_keeps_the_teachers_labels_on_reranks_them_and_both_report_the_prior(
        corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    labels = list(spec.output.labels)
    seeds = _with_validation(seeds, tmp_path / "seed_labels.parquet")
    off = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "off")
    on_spec = spec.model_copy(update={"label": spec.label.model_copy(update={"prior_correction": True})})
    on = label.machine_label(on_spec, teacher, docs, seeds, out=tmp_path / "on")

    assert off.path("machine_labels") == tmp_path / "off" / "shards", "off: the student reads the teacher's labels"
    off_rows = _rows(off.path("machine_labels"))
    for r in off_rows:
        probs = json.loads(r["probs"])
        capped = min(max(probs), r["in_scope"]) if r["out_of_scope"] else max(probs)  # scope.py: out of scope, capped
        assert r["confidence"] == pytest.approx(capped)
        assert json.loads(r["answer"])[0] == labels[probs.index(max(probs))]
    seed_rows = lake.read_table(seeds).to_pandas()
    train = seed_rows.loc[seed_rows["split"] == "train", "answer"]
    seeds_mix = prior.seed_prior(labels, [json.loads(a) for a in train])
    for result in (off, on):
        p = result.metrics["prior"]
        assert p["documents"] == 40 and p["seeds"] == pytest.approx(seeds_mix)
        assert p["calibrated_on"] == 5 and p["temperature"] != 1.0
        assert sorted(p["corpus"]) == sorted(labels) and sum(p["corpus"].values()) == pytest.approx(1.0)
        assert 0 <= result.metrics["heldout"]["top1_corpus_mix"] <= 1
        assert p["uncorrected"]["top1_seed_mix"] is not None and p["corrected"]["top1_corpus_mix"] is not None
    assert on.metrics["prior"]["corpus"] == pytest.approx(off.metrics["prior"]["corpus"])
    assert on.metrics["prior"]["applied"] and not off.metrics["prior"]["applied"]

    on_shards = _rows(tmp_path / "on" / "shards")
    assert _labels(on_shards) == _labels(off_rows), "the shards keep the teacher's own answers"
    corpus_mix = on.metrics["prior"]["corpus"]
    expected = prior.rerank_rows(on_shards, labels, spec.output.top_k, [corpus_mix[c] for c in labels],
                                 [seeds_mix[c] for c in labels], on.metrics["prior"]["temperature"])
    expected = scope.marked(expected, [r["in_scope"] for r in expected], [r["out_of_scope"] for r in expected],
                            spec.scope.review_below)  # the re-ranked confidence capped again where out of scope
    assert on.path("machine_labels") == tmp_path / "on" / "machine_labels.parquet"
    assert _labels(_rows(on.path("machine_labels"))) == _labels(expected)


def test_prior_correction_after_a_crash_is_made_over_every_shard(corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    spec = spec.model_copy(update={"label": spec.label.model_copy(update={"prior_correction": True})})
    out = tmp_path / "label"
    first = label.machine_label(spec, teacher, docs, seeds, out=out)
    whole = _labels(_rows(first.path("machine_labels")))
    first.path("machine_labels").unlink()  # as if killed before the final pass, with the last shard unwritten
    sorted((out / "shards").glob("*.parquet"))[-1].unlink()
    again = label.machine_label(spec, teacher, docs, seeds, out=out)
    assert again.counts["resumed_from"] == 36 and again.metrics["prior"]["documents"] == 40
    assert _labels(_rows(again.path("machine_labels"))) == whole


def test_prior_correction_without_label_probabilities_names_the_fix(corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"reasoning": True}),
                                   "label": spec.label.model_copy(update={"prior_correction": True})})
    with pytest.raises(DistilleryError, match="prior_correction: false"):
        label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label")


KILLABLE = """
import sys
from pathlib import Path
from distillery import label
from distillery.spec import TaskSpec
spec = TaskSpec.model_validate_json(Path(sys.argv[1]).read_text())
label.machine_label(spec, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), out=Path(sys.argv[5]))
"""


def test_sigkill_mid_labeling_then_rerun_labels_each_document_exactly_once(corpus, teacher, tmp_path):
    spec, docs, seeds = corpus
    out = tmp_path / "label"
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    args = [str(tmp_path / "spec.json"), str(teacher), str(docs), str(seeds), str(out)]
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "shards").glob("*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_hashes(out / "shards"))
    assert 0 < partial < 40, "the kill should land mid-run"
    result = label.machine_label(spec, teacher, docs, seeds, out=out)
    assert result.counts["resumed_from"] == partial
    hashes = _hashes(out / "shards")
    assert len(hashes) == len(set(hashes)) == 40


STUDENT = """
import sys
from pathlib import Path
from distillery import student
from distillery.spec import TaskSpec
spec = TaskSpec.model_validate_json(Path(sys.argv[1]).read_text())
student.train_student(spec, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), out=Path(sys.argv[5]))
"""


def test_sigkill_during_student_training_then_rerun_gives_a_whole_student(corpus, teacher, tmp_path):
    from distillery import student

    spec, docs, seeds = corpus
    spec = spec.model_copy(update={"models": spec.models.model_copy(update={"student": str(teacher)}),
                                   "student": spec.student.model_copy(update={"kind": "lm",
                                       "sft": spec.student.sft.model_copy(update={"max_steps": 6, "batch_size": 4})})})
    labels = label.machine_label(spec, teacher, docs, seeds, out=tmp_path / "label").path("machine_labels")
    out = tmp_path / "student"
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    args = [str(tmp_path / "spec.json"), str(labels), str(seeds), str(docs), str(out)]
    proc = subprocess.Popen([sys.executable, "-c", STUDENT, *args], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and not out.exists():  # the stage has started
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model" / "model.safetensors").exists(), "the kill should land before the model is saved"
    result = student.train_student(spec, labels, seeds, docs, out=out)
    assert (out / "model" / "model.safetensors").exists() and not (out / "model.tmp").exists()
    rows = lake.read_table(result.path("student_eval")).to_pylist()
    evaluated = [r["sha256"] for r in rows if r["model"] == "student"]
    heldout = [r["sha256"] for r in lake.read_table(seeds).to_pylist() if r["split"] == "heldout"]
    assert sorted(evaluated) == sorted(heldout)
