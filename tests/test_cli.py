"""The `distillery` command line: grader validation and catalog queries."""

from __future__ import annotations

import json

import yaml

from distillery.cli import main

from conftest import CLINICAL_YAML, REPO


def test_grade_validate_passes_on_the_shipped_specs(capsys):
    for spec in ("clinical.yaml", "invoices.yaml"):
        assert main(["grade", "validate", str(REPO / "data" / "demo" / spec)]) == 0
    out = capsys.readouterr().out
    assert "shuffled_rank" in out and "wrong_field" in out


def test_grade_validate_fails_when_the_grader_cannot_tell_a_shuffled_rank(tmp_path, capsys):
    raw = yaml.safe_load(CLINICAL_YAML.read_text())
    raw["grader"]["weights"] = [1.0, 1.0]  # second place earns full credit: shuffled ranks look gold
    raw["seeds"]["path"] = str(CLINICAL_YAML.parent / raw["seeds"]["path"])
    spec = tmp_path / "flat.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["grade", "validate", str(spec)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_bad_spec_is_an_error_message_not_a_traceback(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: Bad Name\n")
    assert main(["grade", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "name" in err and "source" in err


def test_the_invoice_extraction_spec_runs_through_seed_import_and_grading(tmp_path):
    from distillery import ingest, lake, seed, synth
    from distillery.graders import validate_grader
    from distillery.spec import load_spec

    synth.generate_invoices(tmp_path / "invoices", 40)
    spec = load_spec(REPO / "data" / "demo" / "invoices.yaml")
    spec = spec.model_copy(update={"source": str(tmp_path / "invoices")})
    docs = ingest.ingest(spec, out=tmp_path / "ingest")
    assert docs.counts["documents"] == 40 and docs.counts["quarantined"] == 0
    seeds = seed.import_seeds(spec, docs.path("documents"), out=tmp_path / "seed")
    assert sum(seeds.counts.values()) == 30
    answers = [json.loads(a) for a in lake.read_table(seeds.path("seed_labels")).column("answer").to_pylist()]
    table, ok = validate_grader(spec, answers)
    assert ok and table[0]["answer"] == "gold" and table[0]["mean"] == 1.0
