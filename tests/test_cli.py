"""The `distillery` command line: grader validation and catalog queries."""

from __future__ import annotations

import yaml

from distillery.cli import main

from conftest import CLINICAL_YAML, REPO


def test_grade_validate_passes_on_the_shipped_specs(capsys):
    for spec in ("clinical.yaml", "invoices.yaml"):
        assert main(["grade", "validate", str(REPO / "data" / "demo" / spec)]) == 0
    out = capsys.readouterr().out
    assert "shuffled_rank" in out and "wrong_field" in out


def test_grade_validate_fails_when_the_grader_cannot_tell_a_shuffled_rank(tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load(CLINICAL_YAML.read_text())
    raw["grader"]["weights"] = [1.0, 1.0]  # second place earns full credit: shuffled ranks look gold
    spec = tmp_path / "flat.yaml"
    spec.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(REPO)
    assert main(["grade", "validate", str(spec)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_a_bad_spec_is_an_error_message_not_a_traceback(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: Bad Name\n")
    assert main(["grade", "validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "name" in err and "source" in err
