"""The five stages end to end on a tiny random model: core functions, then the Prefect flow's caching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
import yaml

from distillery import lake, synth
from distillery.models import tiny_model
from distillery.report import SECTIONS
from distillery.spec import load_spec

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "teacher": {"sft": {"max_steps": 2, "batch_size": 4}, "eval_max_items": 6,
                "grpo": {"steps": 2, "num_generations": 2, "max_completion_length": 6, "eval_interval": 1, "patience": 5}},
    "label": {"limit": 12, "batch_size": 4, "max_new_tokens": 6, "shard_size": 5},
    "student": {"sft": {"max_steps": 2, "batch_size": 4}, "batch_size": 4, "gate": 0.0, "layers": 1},
    "ingest": {"workers": 1},
}


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    """A 40-PDF corpus (4 planted bad files), 20 seeds and a tiny llama: a spec file under a temp folder."""
    root = tmp_path_factory.mktemp("task")
    truth = synth.generate_clinical(root / "pdfs", 40, bad_every=10)
    synth.write_csv(synth.pick_seeds(truth, 2), root / "seeds.csv")
    tiny_model(root / "tiny", REPO / "models" / "base")
    raw = yaml.safe_load((REPO / "data" / "demo" / "clinical.yaml").read_text())
    raw.pop("profiles")
    raw.update(source=str(root / "pdfs"), models={"base": str(root / "tiny"), "student": str(root / "tiny")},
               bulk={"source": str(root / "pdfs"), "batch_size": 8, "shard_size": 16})
    raw["seeds"]["path"] = str(root / "seeds.csv")
    raw["prompts"]["max_doc_chars"] = 200
    for section, values in TINY.items():
        raw[section] = {**raw.get(section, {}), **values}
    (root / "tiny.yaml").write_text(yaml.safe_dump(raw))
    (root / "truth.json").write_text(json.dumps(truth))
    return root


def _count(con, sql: str) -> int:
    return con.execute(sql).fetchone()[0]


def test_distill_flow_runs_all_stages_then_reuses_them(tiny_task, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.distill import distill

    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    spec_path = str(tiny_task / "tiny.yaml")
    truth = json.loads((tiny_task / "truth.json").read_text())
    valid = sum(t["verdict"] == "ok" for t in truth)
    with prefect_test_harness():
        first = distill(spec_path, None)
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            assert _count(con, "select count(*) from bulk_labels") == valid
            assert _count(con, "select count(distinct sha256) from bulk_labels") == valid
            planted = {t["file"]: t["verdict"] for t in truth if t["verdict"] != "ok"}
            rows = con.execute("select path, reason from quarantine").fetchall()
            assert {Path(p).name: r for p, r in rows} == planted
            for view in lake.VIEWS:
                assert _count(con, f"select count(*) from {view}") > 0, view
            runs_after_first = _count(con, "select count(*) from runs")
            labels = con.execute("select label from bulk_labels").fetchall()
        spec = load_spec(spec_path)
        assert all(label in spec.output.labels for (label,) in labels)
        page = Path(first["report"]).read_text()
        assert Path(first["report"]).parent.parent == tmp_path / "reports"
        assert all(f'id="{section}"' in page for section in SECTIONS) and "not run" not in page

        second = distill(spec_path, None)
        assert second["outputs"] == first["outputs"]
        assert set(second["states"].values()) == {"Cached"}, second["states"]
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            stages = [s for (s,) in con.execute("select stage from runs order by started_at").fetchall()]
        assert stages[runs_after_first:] == []  # every stage, bulk included, came from the cache

        raw = yaml.safe_load(Path(spec_path).read_text())
        raw["student"]["sft"]["learning_rate"] = 1e-4
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump(raw))
        third = distill(str(changed), None)
        assert third["states"] == {"ingest": "Cached", "seed": "Cached", "teacher": "Cached", "label": "Cached",
                                   "student": "Completed", "bulk": "Completed"}
        assert third["outputs"]["student"] != first["outputs"]["student"]
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            stages = [s for (s,) in con.execute("select stage from runs order by started_at").fetchall()]
        assert stages[runs_after_first:] == ["student", "bulk"]
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            assert _count(con, "select count(*) from bulk_labels") == valid  # relabeled, not doubled
            models = con.execute("select distinct model from bulk_labels").fetchall()
        assert len(models) == 1 and third["outputs"]["student"]["model"] in models[0][0]

        raw["student"]["sft"]["learning_rate"] = 2e-4
        strict = tmp_path / "strict.yaml"
        strict.write_text(yaml.safe_dump(raw))
        from tasks import stages

        with pytest.MonkeyPatch.context() as mp:  # this student fails the promotion gate
            mp.setattr(stages.sft, "promotion", lambda spec, s, t: {"promoted": False, "reason": "below the gate"})
            fourth = distill(str(strict), None)
        assert fourth["states"]["student"] == "Completed" and fourth["states"]["bulk"] == "Cached"
        assert fourth["outputs"]["bulk"] == third["outputs"]["bulk"]  # still the promoted student's labels
        assert lake.current_model(tmp_path, "clinical") == third["outputs"]["student"]["model"]

        from flows.bulk import bulk

        inbox = tmp_path / "inbox"
        inbox.mkdir()
        for i in range(100, 103):
            (inbox / f"new-{i}.pdf").write_bytes(synth.case_pdf(synth.make_case(i), i))
        scheduled = bulk(str(changed), None, str(inbox))
        assert scheduled["counts"] == {"seen": 3, "skipped": 0, "labeled": 3, "quarantined": 0, "duplicates": 0}
        assert bulk(str(changed), None, str(inbox))["counts"]["skipped"] == 3
        with duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True) as con:
            assert _count(con, "select count(*) from bulk_labels") == valid + 3


def test_deleted_stage_output_is_rebuilt_not_reported_cached(tiny_task, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.distill import distill

    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    spec_path = str(tiny_task / "tiny.yaml")
    with prefect_test_harness():
        first = distill(spec_path, None, "seed")
        seed_file = Path(first["outputs"]["seed"]["seed_labels"])
        os.remove(seed_file)
        os.remove(seed_file.parent / "_SUCCESS")
        second = distill(spec_path, None, "seed")
    assert Path(second["outputs"]["seed"]["seed_labels"]).exists()
    assert second["states"] == {"ingest": "Cached", "seed": "Completed"}
