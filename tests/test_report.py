"""The HTML run report: sections, inlined plots, escaping, missing stages, calibration, catalog rebuild."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from distillery import lake, report
from distillery.lake import StageResult
from distillery.evaluate import calibration
from distillery.report import SECTIONS, write_report

EVIL = "<script>alert('x')</script>"
CLINICAL_YAML = str(Path(__file__).resolve().parents[1] / "data" / "demo" / "clinical.yaml")
STARTED = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(clinical_spec, evil: bool = False):
    labels = list(clinical_spec.output.labels)
    if evil:
        labels[0] = EVIL
    return clinical_spec.model_copy(update={"output": clinical_spec.output.model_copy(update={"labels": labels})})


def _eval_rows(labels: list[str], model: str, right: list[bool], conf: list[float], *,
               probs: bool = False) -> pd.DataFrame:
    """Per-item rows as evaluate.grade_items writes them (plus the stage's own columns)."""
    rows = []
    for i, (ok, c) in enumerate(zip(right, conf)):
        gold = labels[i % len(labels)]
        top = gold if ok else labels[(i + 1) % len(labels)]
        row = {"sha256": f"h{i:03d}", "document": f"case-{i}.pdf", "gold": json.dumps(gold), "parse_status": "ok",
               "answer": json.dumps([top, labels[(i + 2) % len(labels)]]), "score": 1.0 if ok else 0.0,
               "reason": "", "top1": ok, "task": "clinical", "run_id": f"{model}-20260101T000000-abc", "stage": model,
               "model": model}
        if probs:
            p = [(1 - c) / (len(labels) - 1)] * len(labels)
            p[labels.index(top)] = c
            row["probs"] = json.dumps(p)
        else:
            row["raw_output"], row["confidence"] = top, c
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def run_results(tmp_path):
    """Stage results of a finished run over synthetic Parquet files in the real stages' schemas."""

    def make(spec, stages=("ingest", "seed", "teacher", "label", "student", "bulk")) -> dict[str, StageResult]:
        labels = list(spec.output.labels)
        out, results = tmp_path / "lake", {}
        right = [True, True, False, True, False, True, True, True, False, True]
        conf = [0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.55, 0.4, 0.3, 0.2]
        results["ingest"] = StageResult("ingest", "ingest-20260101T000000-aaa", {}, {"documents": 30, "quarantined": 2},
                                        {}, 1.5, "kingest")
        seeds = pd.DataFrame({"document": [f"case-{i}.pdf" for i in range(10)],
                              "sha256": [f"h{i:03d}" for i in range(10)],
                              "answer": [json.dumps(labels[i % len(labels)]) for i in range(10)],
                              "split": ["heldout"] * 10, "task": "clinical", "run_id": "seed-1", "stage": "seed"})
        results["seed"] = StageResult("seed", "seed-20260101T000001-bbb",
                                      {"seed_labels": str(lake.write_parquet(seeds, out / "seed_labels.parquet"))},
                                      {"heldout": 10}, {}, 0.1, "kseed")
        te = pd.concat([_eval_rows(labels, "base", [False] * 10, [0.1] * 10),
                        _eval_rows(labels, "teacher", right, conf)], ignore_index=True)
        steps = pd.DataFrame([{"step": s, "split": "train", "reward": 0.5 + 0.1 * s, "reward_std": 0.2,
                               "mean_reward": None, "top1": None, "n": None} for s in (1, 2, 3, 4)]
                             + [{"step": s, "split": "validation", "reward": None, "reward_std": None,
                                 "mean_reward": m, "top1": m, "n": 10.0} for s, m in ((0, 0.5), (2, 0.7), (4, 0.6))])
        steps["task"], steps["run_id"], steps["stage"] = "clinical", "teacher-1", "teacher"
        results["teacher"] = StageResult(
            "teacher", "teacher-20260101T000002-ccc",
            {"teacher_eval": str(lake.write_parquet(te, out / "teacher_eval.parquet")),
             "teacher_metrics": str(lake.write_parquet(steps, out / "teacher_metrics.parquet")),
             "model": str(out / "best")},
            {"train": 40, "validation": 10, "heldout": 10, "grpo_steps": 4},
            {"base": {"top1": 0.0}, "sft": {"steps": 10, "seconds": 30.0}, "teacher": {"top1": 0.7}}, 120.0, "kteacher")
        ml = pd.DataFrame({"sha256": [f"m{i}" for i in range(20)], "raw_output": labels[1], "reasoning": "",
                           "answer": json.dumps([labels[1]]), "parse_status": "ok", "parse_error": "",
                           "confidence": [i / 20 for i in range(20)], "model": f"{out / 'best'}@abc",
                           "prompt_hash": "p", "task": "clinical", "run_id": "label-1", "stage": "label"})
        lake.write_parquet(ml.iloc[:12], out / "shards" / "shard-00000.parquet")
        lake.write_parquet(ml.iloc[12:], out / "shards" / "shard-00001.parquet")
        results["label"] = StageResult("label", "label-20260101T000003-ddd", {"machine_labels": str(out / "shards")},
                                       {"labeled": 20, "ok": 20, "partial": 0, "failed": 0, "resumed_from": 0},
                                       {"docs_per_s": 4.0, "mean_confidence": 0.475}, 6.0, "klabel")
        se = _eval_rows(labels, "student", right[::-1], conf, probs=True)
        results["student"] = StageResult(
            "student", "student-20260101T000004-eee",
            {"student_eval": str(lake.write_parquet(se, out / "student_eval.parquet")), "model": str(out / "model")},
            {"trained_on": 20, "heldout": 10},
            {"n": 10, "top1": 0.7, "train": {"steps": 5, "seconds": 50.0}, "trained_on": 20, "filtered_out": 0,
             "kind": "static", "promotion": {"promoted": True, "reason": "static: the fastest that passes (2,900 docs/s)"},
             "candidates": [{"kind": "static", "top1": 0.7, "teacher_agreement": 0.9, "docs_per_s": 2900.0,
                             "train_seconds": 1.5, "passes": True},
                            {"kind": "encoder", "top1": 0.75, "teacher_agreement": 0.95, "docs_per_s": 15.0,
                             "train_seconds": 0.4, "passes": True}]},
            60.0, "kstudent")
        results["bulk"] = StageResult("bulk", "bulk-20260101T000005-fff",
                                      {"bulk_labels": json.dumps([]), "folder": str(out / "bulk")},
                                      {"seen": 32, "skipped": 0, "labeled": 30, "quarantined": 2},
                                      {"docs_per_s": 2.0, "model": "student@abc"}, 16.0, "kbulk")
        return {s: results[s] for s in stages}

    return make


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def test_every_section_is_present_with_plots_inlined(clinical_spec, run_results, tmp_path):
    path = write_report(clinical_spec, run_results(clinical_spec), tmp_path / "rep", profile="demo")
    assert path == tmp_path / "rep" / "index.html"
    page = path.read_text()
    for sid in SECTIONS:
        assert "not run" not in _section(page, sid), sid
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3  # reward curve, confusion matrices, reliability diagram
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page and "http" not in page
    assert "could not render" not in page
    accuracy = _section(page, "accuracy")
    assert "0.700" in accuracy and "0.000" in accuracy  # teacher and base top-1 from the per-item rows
    assert "2,900" in accuracy and "Promoted: static: the fastest that passes" in accuracy  # every student candidate
    cal = _section(page, "calibration")
    expected = calibration([0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.55, 0.4, 0.3, 0.2],
                           [True, True, False, True, False, True, True, True, False, True])
    assert f"{expected['ece']:.3f}" in cal
    assert "step 2" in _section(page, "reward-curve")  # the best validation reward picks the checkpoint
    assert "kteacher" in _section(page, "lineage") and "klabel" in _section(page, "lineage")


def test_the_baseline_sits_beside_the_models_and_its_warning_tops_the_report(clinical_spec, run_results, tmp_path):
    results = run_results(clinical_spec)
    labels = list(clinical_spec.output.labels)
    bow = _eval_rows(labels, "baseline", [True] * 9 + [False], [0.8] * 10, probs=True)
    for stage, name in (("teacher", "teacher_eval"), ("student", "student_eval")):
        path = results[stage].outputs[name]
        lake.write_parquet(pd.concat([pd.read_parquet(path), bow], ignore_index=True), path)
    warning = "teacher top-1 0.70 is below the TF-IDF baseline 0.90 on the same 10 held-out seeds: try more"
    why = "GRPO beat the SFT warm start on validation (0.700 at step 2 vs 0.500 at step 0, 10 items)"
    metrics = {**results["teacher"].metrics, "baseline": {"top1": 0.9}, "warnings": [warning],
               "kept": {"step": 2, "kind": "grpo", "why": why}}
    results["teacher"] = dataclasses.replace(results["teacher"], metrics=metrics)
    page = write_report(clinical_spec, results, tmp_path / "rep").read_text()
    summary = _section(page, "summary")
    assert summary.index(html.escape(warning)) < summary.index("<table"), "the warning comes first"
    assert "baseline: top-1 90.0% on 10 held-out items" in summary
    accuracy = _section(page, "accuracy")
    assert "<td>baseline</td>" in accuracy and "0.900" in accuracy
    assert "student&#x27;s items" not in accuracy, "the same items: one baseline row"
    assert "baseline recall" in _section(page, "confusion")
    cal = _section(page, "calibration")
    student_ece = calibration([0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.55, 0.4, 0.3, 0.2],
                              [True, True, False, True, False, True, True, True, False, True][::-1])["ece"]
    assert re.search(rf"<td>student</td><td>10</td><td>{student_ece:.3f}</td>", cal), "the student's own rows only"
    assert html.escape(why) in _section(page, "reward-curve")


def test_the_calibration_section_shows_the_seeds_and_the_estimated_corpus_class_mix(clinical_spec, run_results,
                                                                                    tmp_path):
    results = run_results(clinical_spec)
    labels = list(clinical_spec.output.labels)
    corpus = {c: (0.55 if c == labels[0] else 0.45 / (len(labels) - 1)) for c in labels}
    metrics = {**results["label"].metrics, "heldout": {"top1_seed_mix": 0.61, "top1_corpus_mix": 0.83},
               "prior": {"seeds": {c: 1 / len(labels) for c in labels}, "corpus": corpus, "documents": 20,
                         "applied": False}}
    results["label"] = dataclasses.replace(results["label"], metrics=metrics)
    cal = _section(write_report(clinical_spec, results, tmp_path / "rep").read_text(), "calibration")
    assert "EM estimate over 20 labeled documents" in cal
    assert "0.550" in cal and "0.830" in cal and "0.610" in cal and "prior_correction: false" in cal


def test_text_is_escaped(clinical_spec, run_results, tmp_path):
    spec = _spec(clinical_spec, evil=True)
    results = run_results(spec)
    results["student"] = dataclasses.replace(results["student"], run_id=EVIL)
    page = write_report(spec, results, tmp_path / "rep", profile=EVIL).read_text()
    assert "<script" not in page
    escaped = html.escape(EVIL, quote=True)
    assert escaped in _section(page, "summary")  # the profile
    assert escaped in _section(page, "confusion")  # the label, in the per-class table
    assert escaped in _section(page, "lineage")  # the run id


def test_a_run_that_stopped_at_the_teacher_says_not_run(clinical_spec, run_results, tmp_path):
    results = run_results(clinical_spec, stages=("ingest", "seed", "teacher"))
    page = write_report(clinical_spec, results, tmp_path / "rep").read_text()
    for sid in SECTIONS:
        _section(page, sid)
    assert "not run: student" in _section(page, "accuracy")
    assert "not run" in _section(page, "throughput") and "not run" in _section(page, "lineage")
    assert "not run: label" in _section(page, "calibration")
    assert "data:image/png;base64," in _section(page, "confusion")  # the teacher's matrix is still drawn
    assert "could not render" not in page


def test_nothing_but_ingest_renders_every_section(clinical_spec, run_results, tmp_path):
    page = write_report(clinical_spec, {"ingest": run_results(clinical_spec)["ingest"], "teacher": None},
                        tmp_path / "rep").read_text()
    for sid in ("accuracy", "reward-curve", "confusion", "calibration"):
        assert "not run" in _section(page, sid), sid
    assert "could not render" not in page


def test_deleted_outputs_count_as_not_run(clinical_spec, run_results, tmp_path):
    results = run_results(clinical_spec)
    Path(results["student"].outputs["student_eval"]).unlink()
    page = write_report(clinical_spec, results, tmp_path / "rep").read_text()
    assert "not run: student evaluation" in _section(page, "accuracy")
    assert "missing on disk" in _section(page, "lineage")


def test_results_may_be_outputs_only_or_dicts(clinical_spec, run_results, tmp_path):
    results = run_results(clinical_spec)
    mixed = {"teacher": results["teacher"].outputs, "student": dataclasses.asdict(results["student"])}
    page = write_report(clinical_spec, mixed, tmp_path / "rep").read_text()
    assert "0.700" in _section(page, "accuracy")


def test_grpo_disabled_says_not_run(clinical_spec, run_results, tmp_path):
    results = run_results(clinical_spec)
    empty = pd.DataFrame({"step": pd.Series([], dtype="int64"), "split": pd.Series([], dtype="str")})
    path = lake.write_parquet(empty, tmp_path / "empty_metrics.parquet")
    results["teacher"] = dataclasses.replace(results["teacher"],
                                             outputs={**results["teacher"].outputs, "teacher_metrics": str(path)})
    page = write_report(clinical_spec, results, tmp_path / "rep").read_text()
    assert "not run: GRPO" in _section(page, "reward-curve")


def test_extraction_gets_a_per_field_table(invoice_spec, tmp_path):
    gold = {"vendor": "Acme", "number": "7", "date": "2026-01-02", "total": 10.0, "currency": "EUR"}
    rows = pd.DataFrame([
        {"sha256": "a", "document": "a.pdf", "gold": json.dumps(gold), "parse_status": "ok",
         "answer": json.dumps({**gold, "total": "10.004"}), "score": 1.0, "reason": "", "top1": True,
         "raw_output": "", "confidence": 0.9, "model": "teacher"},
        {"sha256": "b", "document": "b.pdf", "gold": json.dumps(gold), "parse_status": "ok",
         "answer": json.dumps({**gold, "vendor": "Other"}), "score": 0.8, "reason": "", "top1": False,
         "raw_output": "", "confidence": 0.6, "model": "teacher"},
        {"sha256": "b", "document": "b.pdf", "gold": json.dumps(gold), "parse_status": "failed",
         "answer": "null", "score": 0.0, "reason": "", "top1": False, "raw_output": "", "confidence": 0.0,
         "model": "base"},
    ])
    teacher = StageResult("teacher", "teacher-1",
                          {"teacher_eval": str(lake.write_parquet(rows, tmp_path / "te.parquet"))})
    page = write_report(invoice_spec, {"teacher": teacher}, tmp_path / "rep").read_text()
    confusion = _section(page, "confusion")
    assert "data:image" not in confusion
    cells = re.findall(r"<tr><td>(\w+)</td><td>\w+</td><td>([^<]*)</td><td>([^<]*)</td></tr>", confusion)
    assert dict((f, (b, t)) for f, b, t in cells) == {
        "vendor": ("0.000", "0.500"), "number": ("0.000", "1.000"), "date": ("0.000", "1.000"),
        "total": ("0.000", "1.000"), "currency": ("0.000", "1.000")}
    assert "not run: student" in confusion


def test_default_folder_is_under_home_reports(clinical_spec, run_results, distillery_home):
    results = run_results(clinical_spec)
    path = write_report(clinical_spec, results)
    assert path == distillery_home.resolve() / "reports" / "clinical-bulk-20260101T000005-fff" / "index.html"


# ---- calibration ---------------------------------------------------------------------------------

def test_ece_on_a_hand_computed_example():
    # bin 9: conf .9 .9, 1 of 2 right -> |0.5 - 0.9| * 2/5; bin 6: conf .6 .6, both right -> |1 - 0.6| * 2/5;
    # bin 2: conf .2, wrong -> |0 - 0.2| * 1/5.  ECE = 0.16 + 0.16 + 0.04 = 0.36
    cal = calibration([0.9, 0.9, 0.6, 0.6, 0.2], [1, 0, 1, 1, 0])
    assert cal["n"] == 5
    assert cal["ece"] == pytest.approx(0.36)
    assert [(b["lo"], b["n"]) for b in cal["bins"]] == [(0.2, 1), (0.6, 2), (0.9, 2)]
    # most confident first: 3 items (ceil of 2.5) -> 2/3; 4 -> 3/4; all 5 -> 3/5
    assert cal["acc_at_coverage"] == pytest.approx({"0.5": 2 / 3, "0.8": 3 / 4, "1.0": 3 / 5})


def test_ece_edges_and_perfect_calibration():
    assert calibration([1.0, 1.0], [True, True])["ece"] == pytest.approx(0.0)  # 1.0 falls in the last bin
    assert calibration([0.0, 0.0], [False, False])["ece"] == pytest.approx(0.0)
    assert calibration([0.75] * 4, [1, 1, 1, 0])["ece"] == pytest.approx(0.0)
    assert calibration([0.5, float("nan")], [True, False])["bins"][0]["n"] == 1  # NaN confidence counts as 0
    empty = calibration([], [])
    assert empty["ece"] is None and set(empty["acc_at_coverage"]) == {"0.5", "0.8", "1.0"}
    with pytest.raises(ValueError):
        calibration([0.5], [True, False])


def test_accuracy_falls_as_coverage_grows_when_confidence_ranks_well():
    conf = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    right = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    acc = calibration(conf, right)["acc_at_coverage"]
    assert acc["0.5"] >= acc["0.8"] >= acc["1.0"]
    assert acc == pytest.approx({"0.5": 1.0, "0.8": 7 / 8, "1.0": 0.7})
    assert math.isclose(calibration(conf[::-1], right)["acc_at_coverage"]["0.5"], 0.4)


# ---- rebuilding from the catalog -----------------------------------------------------------------

def _register(result: StageResult, inputs: dict, views: dict[str, list[str]]) -> None:
    lake.register(lake.home(), "clinical", result, cache_key=result.key, config_hash="c", inputs=inputs,
                  started_at=STARTED, views=views)


def test_cli_rebuilds_the_latest_run_from_the_catalog(clinical_spec, run_results, tmp_path, capsys):
    r = run_results(clinical_spec)
    docs = lake.write_parquet(pd.DataFrame({"sha256": ["h"], "text": ["t"]}), tmp_path / "documents.parquet")
    _register(r["ingest"], {"pdfs": "p1"}, {"documents": [str(docs)]})
    _register(r["seed"], {"seed_file": "s1", "ingest": "kingest"}, {"seed_labels": [r["seed"].outputs["seed_labels"]]})
    _register(r["teacher"], {"base_model": "b1", "seed": "kseed", "ingest": "kingest"},
              {"teacher_eval": [r["teacher"].outputs["teacher_eval"]]})
    shards = sorted(Path(r["label"].outputs["machine_labels"]).glob("*.parquet"))
    _register(r["label"], {"teacher": "kteacher", "ingest": "kingest", "seed": "kseed"},
              {"machine_labels": [str(p) for p in shards]})
    _register(r["student"], {"student_model": "b1", "label": "klabel", "seed": "kseed", "ingest": "kingest"},
              {"student_eval": [r["student"].outputs["student_eval"]]})
    _register(r["bulk"], {"student": "kstudent"}, {})
    out = tmp_path / "cli"
    assert report.main([CLINICAL_YAML, "--profile", "demo", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    for key in ("kteacher", "klabel", "kstudent", "kbulk", "seed_file=", "s1"):
        assert key in _section(page, "lineage"), key
    assert "0.700" in _section(page, "accuracy")

    # a newer teacher (a flow stopped at the teacher) becomes the run: no older student beside it
    newer = dataclasses.replace(r["teacher"], key="kteacher2", run_id="teacher-20260102T000000-ggg")
    _register(newer, {"base_model": "b1", "seed": "kseed", "ingest": "kingest"},
              {"teacher_eval": [r["teacher"].outputs["teacher_eval"]]})
    results, inputs = report.catalog_run("clinical")
    assert results["teacher"].key == "kteacher2" and inputs["teacher"]["base_model"] == "b1"
    assert set(results) == {"ingest", "seed", "teacher"}


def test_cli_without_a_catalog_fails_cleanly(capsys):
    assert report.main([CLINICAL_YAML]) == 2
    assert "no completed runs" in capsys.readouterr().err


def test_a_multi_graders_components_are_found_in_the_step_metrics(clinical_spec):
    import pandas as pd

    from distillery.report import _component_columns
    from distillery.spec import GraderSpec

    train = pd.DataFrame({"reward": [0.5], "rewards/grader_multi/mean": [0.5], "rewards/grader_0_ranked/mean": [0.4],
                          "rewards/grader_1_python/mean": [0.8], "rewards/grader_1_python/std": [0.1]})
    multi = clinical_spec.model_copy(update={"grader": GraderSpec(type="multi", components=[
        {"grader": {"type": "ranked"}}, {"grader": {"type": "python", "path": "x.py"}}])})
    assert _component_columns(train, multi) == ["rewards/grader_0_ranked/mean", "rewards/grader_1_python/mean"]
    assert _component_columns(train, clinical_spec) == []
