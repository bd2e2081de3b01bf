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


# ---- distillery init / run ---------------------------------------------------------------------

def _folder_of_pdfs(root):
    """Nine case reports in two subfolders (two sharing a name) and a seed sheet elsewhere."""
    from distillery import synth

    truth = []
    for i in range(9):
        case = synth.make_case(i)
        where = root / "pdfs" / ("a" if i < 5 else "b") / (case.name if i not in (0, 5) else "example.pdf")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(synth.case_pdf(case, i))
        truth.append((where.relative_to(root / "pdfs").as_posix(), case.label))
    (root / "sheets").mkdir()
    (root / "sheets" / "seeds.csv").write_text(
        "document,answer\n" + "".join(f"{doc},{label}\n" for doc, label in truth[:6]))
    return sorted({label for _, label in truth[:6]})


def test_init_writes_a_spec_that_loads_from_anywhere_and_finds_every_seed(tmp_path, monkeypatch, capsys):
    from distillery import ingest, seed
    from distillery.spec import load_spec

    labels = _folder_of_pdfs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["init", "task", "--pdfs", str(tmp_path / "pdfs"),
                 "--seeds", str(tmp_path / "sheets" / "seeds.csv"), "--name", "cases"]) == 0
    out = capsys.readouterr().out
    assert "9 PDFs, 6 seed rows" in out and "warning" not in out
    path = tmp_path / "task" / "cases.yaml"
    text = path.read_text()
    assert "source: ../pdfs" in text and "path: ../sheets/seeds.csv" in text  # relative to the spec
    assert "#   distillery run task/cases.yaml " in text  # its header's commands work where init ran
    monkeypatch.chdir(tmp_path / "sheets")
    spec = load_spec(path, profile="demo")
    assert spec.name == "cases" and spec.output.labels == labels
    assert spec.path(spec.source) == tmp_path / "pdfs"
    assert spec.path(spec.models.base) == REPO / "models" / "base"
    assert spec.label.limit == 9 - 6
    docs = ingest.ingest(spec.model_copy(update={"ingest": spec.ingest.model_copy(update={"workers": 1})}),
                         out=tmp_path / "ingest")
    rows = seed.import_seeds(spec, docs.path("documents"), out=tmp_path / "seed")
    assert sum(rows.counts.values()) == 6


def test_init_explains_what_is_wrong_with_its_inputs(tmp_path, capsys):
    _folder_of_pdfs(tmp_path)
    seeds = str(tmp_path / "sheets" / "seeds.csv")
    assert main(["init", str(tmp_path / "t"), "--pdfs", str(tmp_path / "nope"), "--seeds", seeds]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "one.csv").write_text("document,answer\na/example.pdf,Migraine\n")
    assert main(["init", str(tmp_path / "t"), "--pdfs", str(tmp_path / "pdfs"), "--seeds", str(tmp_path / "one.csv")]) == 2
    assert "at least 2 labels" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "t"), "--pdfs", str(tmp_path / "pdfs"), "--seeds", seeds]) == 0
    assert main(["init", str(tmp_path / "t"), "--pdfs", str(tmp_path / "pdfs"), "--seeds", seeds]) == 2
    assert "--force" in capsys.readouterr().err


def test_run_takes_a_spec_without_profiles_through_the_flow(tmp_path, monkeypatch, capsys):
    from prefect.testing.utilities import prefect_test_harness

    _folder_of_pdfs(tmp_path)
    assert main(["init", str(tmp_path / "task"), "--pdfs", str(tmp_path / "pdfs"),
                 "--seeds", str(tmp_path / "sheets" / "seeds.csv"), "--name", "cases"]) == 0
    path = tmp_path / "task" / "cases.yaml"
    raw = yaml.safe_load(path.read_text())
    raw.pop("profiles")
    raw["ingest"] = {"workers": 1}
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with prefect_test_harness(server_startup_timeout=120):
        assert main(["run", "task/cases.yaml", "--until", "seed"]) == 0
    out = capsys.readouterr().out
    assert "ingest   Completed" in out and "seed     Completed" in out and "report:" in out
