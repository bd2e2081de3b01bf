"""Export to CSV / JSONL / Label Studio, the Label Studio round trip, `plan` and `status` on a real catalog."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pytest

from distillery import lake
from distillery.cli import main
from distillery.errors import DistilleryError
from distillery.export import export, from_label_studio, label_studio_config, load_labels, seeds_from_label_studio
from distillery.plan import plan, render

from conftest import CLINICAL_YAML

LABELS = ["Pneumonia", "Migraine", "Lyme disease"]


def _register(home, task: str, stage: str, name: str, rows: list[dict], **result) -> None:
    path = lake.write_parquet(pa.Table.from_pylist(rows), home / "lake" / task / stage / f"{name}.parquet")
    res = lake.StageResult(stage, lake.new_run_id(stage), {name: str(path)}, **result)
    lake.register(home, task, res, cache_key=stage, config_hash="c", inputs={}, started_at=lake.now(),
                  views={name: [str(path)]})


@pytest.fixture
def catalog(distillery_home, clinical_spec):
    """A catalog with documents and bulk labels of the clinical task (one with a quote in its text)."""
    docs = [{"sha256": f"h{i}", "path": f"in/doc-{i}.pdf", "name": f"doc-{i}.pdf", "text": f'case {i} "fever" <b>',
             "task": "clinical", "run_id": "r"} for i in range(3)]
    _register(distillery_home, "clinical", "ingest", "documents", docs)
    labels = [{"sha256": f"h{i}", "path": f"in/doc-{i}.pdf", "label": LABELS[i],
               "ranked": json.dumps([LABELS[i], *[x for x in LABELS if x != LABELS[i]]]),
               "confidence": 0.5 + i / 10, "probs": "[]", "model": "student@abc", "task": "clinical",
               "run_id": "bulk-1", "stage": "bulk"} for i in range(3)]
    _register(distillery_home, "clinical", "bulk", "bulk_labels", labels, seconds=3.0,
              metrics={"docs_per_s": 2.0})
    return distillery_home


def test_load_labels_joins_text_and_keeps_the_ranked_answer(catalog, clinical_spec):
    df = load_labels(clinical_spec, "bulk_labels")
    assert list(df["sha256"]) == ["h0", "h1", "h2"]
    assert df.loc[1, "answer"] == ["Migraine", "Pneumonia", "Lyme disease"]
    assert df.loc[2, "text"].startswith("case 2")


def test_csv_and_jsonl_hold_every_label(catalog, clinical_spec, tmp_path):
    path, n = export(clinical_spec, "csv", tmp_path / "out.csv")
    rows = list(csv.DictReader(open(path)))
    assert n == 3 and [r["label"] for r in rows] == LABELS
    assert json.loads(rows[0]["answer"])[0] == "Pneumonia"
    path, n = export(clinical_spec, "jsonl", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in open(path)]
    assert [ln["answer"][0] for ln in lines] == LABELS and lines[2]["confidence"] == pytest.approx(0.7)


def test_label_studio_round_trip_keeps_every_label(catalog, clinical_spec, tmp_path):
    path, n = export(clinical_spec, "label-studio", tmp_path / "tasks.json")
    tasks = json.loads(path.read_text())
    assert n == len(tasks) == 3
    assert tasks[0]["data"]["text"] == 'case 0 "fever" <b>'
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["Pneumonia"]}
    back = from_label_studio(path, clinical_spec)
    assert list(back["answer"]) == LABELS and set(back["source"]) == {"prediction"}
    assert list(back["sha256"]) == ["h0", "h1", "h2"]
    config = path.with_suffix(".config.xml").read_text()
    assert config == label_studio_config(clinical_spec) and config.count("<Choice ") == 10


def test_label_studio_config_shows_each_labels_description(clinical_spec):
    import xml.etree.ElementTree as ET

    out = clinical_spec.output.model_copy(update={"label_descriptions": {"Migraine": 'headaches "with aura" & <nausea>'}})
    view = ET.fromstring(label_studio_config(clinical_spec.model_copy(update={"output": out})))
    choices = {c.get("value"): c.get("hint") for c in view.iter("Choice")}
    assert choices["Migraine"] == 'headaches "with aura" & <nausea>' and choices["Pneumonia"] is None
    assert [h.get("value") for h in view.iter("Header")] == ['Migraine: headaches "with aura" & <nausea>']
    assert len(choices) == 10


def test_a_reviewers_annotation_wins_and_becomes_a_seed(catalog, clinical_spec, tmp_path):
    path, _ = export(clinical_spec, "label-studio", tmp_path / "tasks.json")
    tasks = json.loads(path.read_text())
    fixed = {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["Lyme disease"]}}
    tasks[0]["annotations"] = [{"result": [fixed], "was_cancelled": False}]
    tasks[1]["annotations"] = [{"result": [fixed], "was_cancelled": True}]  # skipped by the reviewer
    path.write_text(json.dumps(tasks))
    back = from_label_studio(path, clinical_spec)
    assert list(back["answer"]) == ["Lyme disease", "Migraine", "Lyme disease"]
    assert list(back["source"]) == ["annotation", "prediction", "prediction"]
    n = seeds_from_label_studio(path, clinical_spec, tmp_path / "seeds.csv")
    assert n == 1 and list(csv.DictReader(open(tmp_path / "seeds.csv"))) == [{"document": "doc-0.pdf",
                                                                             "answer": "Lyme disease"}]


def test_extraction_answers_round_trip_field_by_field(distillery_home, invoice_spec, tmp_path):
    answer = {"vendor": "Acme", "number": "INV-1", "date": "2026-01-02", "total": 12.5, "currency": "EUR"}
    _register(distillery_home, "invoices", "bulk", "bulk_labels",
              [{"sha256": "x", "path": "a.pdf", "label": None, "ranked": json.dumps(answer), "confidence": 0.9,
                "model": "m", "task": "invoices", "run_id": "r", "stage": "bulk"}])
    path, _ = export(invoice_spec, "label-studio", tmp_path / "inv.json")
    assert from_label_studio(path, invoice_spec).loc[0, "answer"] == answer
    path, _ = export(invoice_spec, "csv", tmp_path / "inv.csv")
    row = next(csv.DictReader(open(path)))
    assert row["total"] == "12.5" and row["vendor"] == "Acme"


def test_bad_inputs_are_clear_errors(catalog, clinical_spec, tmp_path):
    with pytest.raises(DistilleryError, match="no 'machine_labels'"):
        export(clinical_spec, "csv", tmp_path / "x.csv", table="machine_labels")
    with pytest.raises(DistilleryError, match="unknown export format"):
        export(clinical_spec, "xml", tmp_path / "x.xml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DistilleryError, match="not a Label Studio JSON export"):
        from_label_studio(tmp_path / "bad.json", clinical_spec)


def test_plan_divides_the_specs_work_by_measured_rates(catalog, clinical_spec):
    label = lake.write_json({"ours_docs_per_s": 4.0}, catalog / "bench" / "label.json")  # newer than the shipped one
    result = plan(clinical_spec, bulk_docs=1000)
    lines = {ln["stage"]: ln for ln in result["lines"]}
    assert lines["label"]["work"] > clinical_spec.label.limit  # + the held-out seeds the stage also labels
    assert lines["label"]["seconds"] == pytest.approx(lines["label"]["work"] / 4.0)
    assert lines["label"]["source"] == str(label)
    assert lines["bulk"]["seconds"] == pytest.approx(1000 / 2.0) and lines["bulk"]["source"] == "latest bulk run"
    assert result["unknown"] == []  # the shipped benchmarks price every stage
    faster = plan(clinical_spec, bulk_docs=1000, speedup=10.0)
    assert faster["total_seconds"] == pytest.approx(result["total_seconds"] / 10)
    text = render(faster, gpu=True)
    assert "GPU-hours" in text and "--speedup 10" in text


def test_cli_help_and_subcommands(catalog, clinical_spec, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "status", "plan", "export", "import-label-studio", "query", "grade"):
        assert command in out
    spec = str(CLINICAL_YAML)
    assert main(["export", spec, "--format", "jsonl", "--out", str(tmp_path / "l.jsonl")]) == 0
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 3
    assert main(["plan", spec, "--docs", "10", "--no-measure"]) == 0
    assert "bulk" in capsys.readouterr().out
    assert main(["query", "SELECT count(*) AS n FROM bulk_labels"]) == 0
    assert "3" in capsys.readouterr().out
    assert main(["status", spec]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "stale" in out and "never run" in out
