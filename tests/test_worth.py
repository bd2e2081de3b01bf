"""`bench.worth` on tiny models: the baseline fitted on the seed stage's train split only, every arm
scored on the same documents, held-out documents ingest lost counted, corpora merged into one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import worth
from distillery import committee, ingest, lake, members, seed, synth
from distillery.errors import StageInputMissing
from distillery.evaluate import seed_items
from distillery.models import tiny_model
from distillery.spec import load_spec

from conftest import CLINICAL_YAML, REPO

ARM_KEYS = {"top1", "mean_reward", "n", "docs_per_s"}


def _register(home: Path, task: str, result: lake.StageResult) -> None:
    lake.register(home, task, result, cache_key=result.stage, config_hash="c", inputs={}, started_at=lake.now(),
                  views={})


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_encoder_dir) -> dict:
    """30 case reports (3 planted bad ones), 20 seeds, ingest and seed stages run in a data root; a
    committee of a tiny LLM, a tiny encoder and TF-IDF registered as the task's teacher and a tiny LM as
    its student (the benchmark never trains)."""
    tmp = tmp_path_factory.mktemp("worth")
    truth = synth.generate_clinical(tmp / "pdfs", 30, bad_every=10)
    synth.write_csv(synth.pick_seeds(truth, 4), tmp / "seeds.csv")
    teacher = tiny_model(tmp / "teacher", REPO / "models" / "base")
    student = tiny_model(tmp / "student", REPO / "models" / "base", layers=1, seed=1)
    raw = yaml.safe_load(CLINICAL_YAML.read_text())
    raw.pop("profiles")
    raw.update(source=str(tmp / "pdfs"), models={"base": str(teacher), "student": str(student),
                                                 "encoder": str(tiny_encoder_dir)})
    raw["seeds"]["path"] = str(tmp / "seeds.csv")
    raw["prompts"]["max_doc_chars"] = 200
    raw["ingest"] = {**raw.get("ingest", {}), "workers": 1}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp / "tiny.yaml")
    home = tmp / "home"
    ingested = ingest.ingest(spec, out=tmp / "ingest")
    seeded = seed.import_seeds(spec, ingested.path("documents"), out=tmp / "seed")
    every = [{**it, "split": split} for split in ("train", "validation", "heldout")
             for it in seed_items(spec, seeded.path("seed_labels"), ingested.path("documents"), split)]
    board, _ = committee.build(spec, every, ["tfidf", "encoder", "llm"], llm=members.LLMMember(spec, teacher))
    board.weights = {"tfidf": 0.5, "encoder": 0.25, "llm": 0.25}  # every member answers, whatever the seeds said
    folder = members.save(board, tmp / "committee")
    for result in (ingested, seeded, lake.StageResult("teacher", "t1", {"model": str(folder)}),
                   lake.StageResult("student", "s1", {"model": str(student)})):
        _register(home, spec.name, result)
    return {"tmp": tmp, "truth": truth, "spec": spec, "home": home, "documents": ingested.path("documents"),
            "seeds": seeded.path("seed_labels"), "committee": folder, "seeded": len(every)}


@pytest.fixture
def tiny_corpora(task, monkeypatch):
    """Both corpora read the tiny task's spec."""
    for cfg in worth.CORPORA.values():
        monkeypatch.setitem(cfg, "spec", str(task["tmp"] / "tiny.yaml"))


def test_every_arm_is_scored_on_the_same_documents_and_the_benchmark_never_trains(task, tiny_corpora, tmp_path,
                                                                                    monkeypatch):
    from sklearn.pipeline import Pipeline

    fitted: list[list[str]] = []
    original = Pipeline.fit

    def spy(self, X, y=None, **kw):
        fitted.append(list(X))
        return original(self, X, y, **kw)

    monkeypatch.setattr(Pipeline, "fit", spy)
    ok = [r["file"] for r in task["truth"] if r["verdict"] == "ok"]
    bad = next(r for r in task["truth"] if r["verdict"] != "ok")
    heldout = tmp_path / "heldout.csv"
    named = [(f, next(r["label"] for r in task["truth"] if r["file"] == f)) for f in ok[-4:]]
    named += [(bad["file"], task["spec"].output.labels[0]), ("never-built.pdf", task["spec"].output.labels[0])]
    heldout.write_text("document,answer\n" + "".join(f"{d},{a}\n" for d, a in named))
    out = tmp_path / "bench"
    out.mkdir()
    (out / "worth.json").write_text(json.dumps({"earlier": {"kept": True}}))

    worth.main(["--corpus", "all", "--home", str(task["home"]), "--limit", "6", "--heldout", str(heldout),
                "--out", str(out)])

    assert fitted == [], "every arm is a model the pipeline fitted: the baseline is the committee's TF-IDF member"
    result = json.loads((out / "worth.json").read_text())
    assert set(result) == {"earlier", "demo", "texlive_dev"} and result["earlier"] == {"kept": True}
    for corpus, docs in (("demo", 6), ("texlive_dev", 4)):
        run = result[corpus]
        assert run["docs"] == docs and run["seconds"] > 0
        for arm in worth.ARMS:
            assert ARM_KEYS <= set(run[arm]) and run[arm]["n"] == docs, (corpus, arm)
        assert run["baseline"]["trained_on"] == task["seeded"], "fitted on the seeds the committee was fitted on"
        assert run["committee"]["model"] == str(task["committee"]) and run["committee"]["weights"]["tfidf"] == 0.5
        assert run["student"]["model"] == str(task["tmp"] / "student")
        assert run["best_member"] in ("baseline", "encoder", "llm")
        assert set(run["gains_ci95"]) == {*worth.GAINS, "committee_minus_best_member", "llm_minus_base"}
        for gain in run["gains_ci95"].values():
            assert gain["top1"]["n"] == docs and gain["mean_reward"]["n"] == docs
            lo, hi = gain["top1"]["ci95"]
            assert lo <= gain["top1"]["diff"] <= hi
        diff = run["gains_ci95"]["committee_minus_baseline"]["top1"]["diff"]
        assert diff == pytest.approx(run["committee"]["top1"] - run["baseline"]["top1"])
    lost = result["texlive_dev"]["missing"]
    assert lost["n"] == 2 and lost["documents"] == [bad["file"], "never-built.pdf"]
    assert lost["reasons"] == {bad["verdict"]: 1, "not in the ingested source": 1}
    assert result["demo"]["missing"]["n"] == 0
    tex = result["texlive_dev"]
    assert set(tex["targets"]) == {"committee>=baseline+0.12", "committee>=best_member-0.01",
                                   "student>=0.95*committee", "committee>=0.76"}
    assert tex["targets"]["committee>=0.76"] == (tex["committee"]["top1"] >= 0.76)
    assert tex["targets"]["committee>=baseline+0.12"] == (tex["committee"]["top1"] >= tex["baseline"]["top1"] + 0.12)
    assert set(result["demo"]["targets"]) == {"committee>=baseline", "committee>=best_member-0.01",
                                              "student>=0.95*committee"}


def test_a_task_without_a_trained_teacher_names_the_command_that_trains_it(task, tiny_corpora, tmp_path):
    home = tmp_path / "half"
    for stage in ("ingest", "seed"):
        _register(home, task["spec"].name, lake.latest(task["home"], task["spec"].name, stage))
    with pytest.raises(StageInputMissing, match="finished teacher stage.*make run SPEC=data/texlive/texlive_dev.yaml"):
        worth.worth("texlive_dev", lake.Layout.at(home))
    with pytest.raises(StageInputMissing, match="finished ingest stage.*make demo"):
        worth.worth("demo", lake.Layout.at(tmp_path / "empty"))


def test_missing_held_out_labels_say_which_option_to_pass(task, tiny_corpora, tmp_path):
    from distillery.errors import DistilleryError

    with pytest.raises(DistilleryError, match="pass --heldout"):
        worth.worth("texlive_dev", lake.Layout.at(task["home"]), heldout=tmp_path / "none.csv")


def test_spec_scores_another_task_on_the_corpus(task, tmp_path, capsys):
    """`--spec`: the task a user wrote with `distillery init` for the same corpus, not the bundled one."""
    ok = [r for r in task["truth"] if r["verdict"] == "ok"][-3:]
    heldout = tmp_path / "heldout.csv"
    heldout.write_text("document,answer\n" + "".join(f"{r['file']},{r['label']}\n" for r in ok))
    spec = str(task["tmp"] / "tiny.yaml")
    with pytest.raises(SystemExit):
        worth.main(["--corpus", "all", "--spec", spec, "--home", str(task["home"])])
    assert "give --corpus too" in capsys.readouterr().err
    worth.main(["--corpus", "texlive_dev", "--spec", spec, "--home", str(task["home"]),
                "--heldout", str(heldout), "--out", str(tmp_path)])
    run = json.loads((tmp_path / "worth.json").read_text())["texlive_dev"]
    assert run["spec"] == spec and run["task"] == task["spec"].name and run["docs"] == 3
    assert run["committee"]["model"] == str(task["committee"])
