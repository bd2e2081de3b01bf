from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery import lake
from distillery.lake import StageResult

STARTED = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _result(stage="ingest", run_id="ingest-1", **kwargs) -> StageResult:
    return StageResult(stage, run_id, kwargs.pop("outputs", {}), **kwargs)


def _register(root, task, name, files, *, stage="ingest", run_id="ingest-1"):
    lake.register(root, task, _result(stage, run_id, outputs={name: str(files[0])}), cache_key="k1",
                  config_hash="c1", inputs={"source": "abc"}, started_at=STARTED, views={name: files})


def _parquet(path: Path, **columns) -> Path:
    return lake.write_parquet(pa.table(columns), path)


# ---- home and layout ---------------------------------------------------------------------------

def test_home_is_distillery_home_from_the_environment(distillery_home):
    assert lake.home() == distillery_home.resolve()


def test_home_argument_wins_over_the_environment(tmp_path):
    assert lake.home(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()


def test_home_defaults_to_data_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_HOME")
    monkeypatch.chdir(tmp_path)
    assert lake.home() == (tmp_path / "data").resolve()


def test_stage_dir_is_task_stage_and_cache_key_under_the_lake(tmp_path):
    assert lake.Layout(tmp_path).stage_dir("clinical", "ingest", "abc") == tmp_path / "lake" / "clinical" / "ingest" / "abc"


def test_run_ids_name_their_stage_and_are_unique():
    ids = {lake.new_run_id("label") for _ in range(20)}
    assert len(ids) == 20
    assert all(i.startswith("label-") for i in ids)


# ---- hashing -----------------------------------------------------------------------------------

def test_hash_json_ignores_key_order():
    assert lake.hash_json({"a": 1, "b": [1, 2]}) == lake.hash_json({"b": [1, 2], "a": 1})
    assert lake.hash_json({"a": 1}) != lake.hash_json({"a": 2})


def test_hash_files_ignores_the_order_files_are_listed_in(tmp_path):
    a, b = tmp_path / "a.pdf", tmp_path / "b.pdf"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert lake.hash_files([a, b]) == lake.hash_files([b, a])


def test_hash_files_changes_with_content_and_names(tmp_path):
    a = tmp_path / "a.pdf"
    a.write_bytes(b"one")
    before = lake.hash_files([a])
    a.write_bytes(b"one!")
    assert lake.hash_files([a]) != before
    renamed = a.rename(tmp_path / "z.pdf")
    a.write_bytes(b"one!")
    assert lake.hash_files([renamed]) != lake.hash_files([a])


def test_hash_model_of_a_hub_id_is_stable():
    assert lake.hash_model("Qwen/Qwen3-0.6B") == lake.hash_model("Qwen/Qwen3-0.6B") != lake.hash_model("Qwen/Qwen3-1.7B")


def test_hash_model_of_a_folder_follows_its_config_and_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden": 8}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    before = lake.hash_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)
    after_weights = lake.hash_model(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden": 16}')
    assert len({before, after_weights, lake.hash_model(tmp_path)}) == 3


# ---- writing files -----------------------------------------------------------------------------

def test_write_parquet_round_trips_a_pyarrow_table(tmp_path):
    table = pa.table({"x": [1, 2, 3], "s": ["a", "b", None]})
    path = lake.write_parquet(table, tmp_path / "deep" / "er" / "t.parquet")
    assert path == tmp_path / "deep" / "er" / "t.parquet"
    assert pq.read_table(path).equals(table)


def test_write_parquet_accepts_a_dataframe_without_its_index(tmp_path):
    df = pd.DataFrame({"x": [1, 2]}, index=[10, 20])
    path = lake.write_parquet(df, tmp_path / "t.parquet")
    assert pq.read_table(path).column_names == ["x"]


def test_write_parquet_leaves_no_temporary_files(tmp_path):
    lake.write_parquet(pa.table({"x": [1]}), tmp_path / "t.parquet")
    lake.write_parquet(pa.table({"x": [2]}), tmp_path / "t.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    assert pq.read_table(tmp_path / "t.parquet")["x"].to_pylist() == [2]


def test_interrupted_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = lake.write_parquet(pa.table({"x": [1]}), tmp_path / "t.parquet")

    def dies_halfway(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(lake.pq, "write_table", dies_halfway)
    with pytest.raises(OSError):
        lake.write_parquet(pa.table({"x": [2]}), path)
    assert pq.read_table(path)["x"].to_pylist() == [1]


def test_write_json_round_trips(tmp_path):
    path = lake.write_json({"b": 1, "when": STARTED}, tmp_path / "x" / "m.json")
    assert json.loads(path.read_text()) == {"b": 1, "when": str(STARTED)}


def test_read_table_of_a_folder_concatenates_its_parquet_files(tmp_path):
    _parquet(tmp_path / "a.parquet", x=[1, 2])
    _parquet(tmp_path / "b.parquet", x=[3], y=["new column"])
    table = lake.read_table(tmp_path)
    assert sorted(table["x"].to_pylist()) == [1, 2, 3]
    assert table["y"].to_pylist().count("new column") == 1


def test_read_table_of_one_file(tmp_path):
    path = _parquet(tmp_path / "a.parquet", x=[1, 2])
    assert lake.read_table(path).num_rows == 2
    assert lake.read_table(str(path)).num_rows == 2


# ---- stage results and the _SUCCESS manifest ---------------------------------------------------

def test_stage_result_prints_as_one_line_with_counts_and_metrics():
    result = StageResult("ingest", "r1", {}, {"documents": 294, "quarantined": 6},
                         {"accuracy": 0.87654, "by_reason": {"corrupt": 2}}, seconds=12.34)
    line = str(result)
    assert "\n" not in line
    assert line.startswith("ingest:")
    assert "documents=294" in line and "quarantined=6" in line
    assert "0.877" in line
    assert "12.3s" in line
    assert "by_reason" not in line


def test_stage_result_path_is_the_named_output(tmp_path):
    assert StageResult("x", "r", {"documents": str(tmp_path / "d.parquet")}).path("documents") == tmp_path / "d.parquet"


def test_stage_is_done_only_once_its_manifest_is_written(tmp_path):
    result = StageResult("ingest", "r1", {"documents": "/d.parquet"}, {"documents": 3}, {"m": 0.5}, 1.5)
    assert not lake.is_done(tmp_path)
    lake.mark_done(tmp_path, result)
    assert lake.is_done(tmp_path)
    assert lake.read_done(tmp_path) == result


# ---- the catalog -------------------------------------------------------------------------------

def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def test_new_catalog_gets_every_migration_once(tmp_path):
    with lake.catalog(tmp_path) as con:
        assert {"runs", "artifacts", "models", "schema_version"} <= _tables(con)
    with lake.catalog(tmp_path) as con:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()]
    assert versions == list(range(1, len(lake.MIGRATIONS) + 1))
    assert (tmp_path / "catalog.duckdb").exists()


def test_catalog_defaults_to_distillery_home(distillery_home):
    with lake.catalog() as con:
        con.execute("SELECT 1").fetchall()
    assert (distillery_home / "catalog.duckdb").exists()


def test_old_catalog_is_migrated_forward_keeping_its_data(tmp_path):
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    con.execute(lake.MIGRATIONS[0])
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute("INSERT INTO runs (run_id, task) VALUES ('old-run', 'clinical')")
    con.close()
    with lake.catalog(tmp_path) as con:
        assert {"artifacts", "models"} <= _tables(con)
        assert con.execute("SELECT run_id FROM runs").fetchall() == [("old-run",)]
        assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(lake.MIGRATIONS)


def test_register_records_the_run(tmp_path):
    files = [_parquet(tmp_path / "d.parquet", x=[1, 2, 3])]
    _register(tmp_path, "clinical", "documents", files, run_id="ingest-42")
    with lake.catalog(tmp_path, read_only=True) as con:
        run = con.execute("SELECT run_id, task, stage, cache_key, status, inputs FROM runs").fetchall()
        artifact = con.execute("SELECT task, name, rows, files FROM artifacts").fetchall()
    assert run == [("ingest-42", "clinical", "ingest", "k1", "completed", '{"source": "abc"}')]
    assert artifact[0][:3] == ("clinical", "documents", 3)
    assert json.loads(artifact[0][3]) == [str(files[0])]


def test_register_creates_a_view_over_the_artifact(tmp_path):
    _register(tmp_path, "clinical", "documents", [_parquet(tmp_path / "d.parquet", x=[1, 2, 3])])
    with lake.catalog(tmp_path, read_only=True) as con:
        assert con.execute("SELECT sum(x) FROM documents").fetchone()[0] == 6


def test_view_spans_every_task(tmp_path):
    _register(tmp_path, "clinical", "documents", [_parquet(tmp_path / "a.parquet", x=[1], task=["clinical"])])
    _register(tmp_path, "invoices", "documents", [_parquet(tmp_path / "b.parquet", x=[2], task=["invoices"], extra=["e"])])
    with lake.catalog(tmp_path, read_only=True) as con:
        rows = con.execute("SELECT task, x FROM documents ORDER BY task").fetchall()
    assert rows == [("clinical", 1), ("invoices", 2)]


def test_registering_a_task_again_replaces_its_files_in_the_view(tmp_path):
    _register(tmp_path, "clinical", "documents", [_parquet(tmp_path / "old.parquet", x=[1, 1])])
    _register(tmp_path, "clinical", "documents", [_parquet(tmp_path / "new.parquet", x=[5])], run_id="ingest-2")
    with lake.catalog(tmp_path, read_only=True) as con:
        assert con.execute("SELECT x FROM documents").fetchall() == [(5,)]
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def test_view_covers_several_files_of_one_artifact(tmp_path):
    files = [_parquet(tmp_path / "s0.parquet", x=[1, 2]), _parquet(tmp_path / "s1.parquet", x=[3])]
    _register(tmp_path, "clinical", "machine_labels", files, stage="label")
    with lake.catalog(tmp_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM machine_labels").fetchone()[0] == 3
        assert con.execute("SELECT rows FROM artifacts").fetchone()[0] == 3


def test_view_leaves_out_files_that_no_longer_exist(tmp_path):
    gone = _parquet(tmp_path / "a.parquet", x=[1])
    _register(tmp_path, "clinical", "documents", [gone])
    gone.unlink()
    _register(tmp_path, "invoices", "documents", [_parquet(tmp_path / "b.parquet", x=[2])])
    with lake.catalog(tmp_path, read_only=True) as con:
        assert con.execute("SELECT x FROM documents").fetchall() == [(2,)]


def test_path_with_a_quote_is_registered_safely(tmp_path):
    _register(tmp_path, "clinical", "documents", [_parquet(tmp_path / "o'brien" / "d.parquet", x=[7])])
    with lake.catalog(tmp_path, read_only=True) as con:
        assert con.execute("SELECT x FROM documents").fetchall() == [(7,)]


def test_record_model_adds_a_row(tmp_path):
    lake.record_model(tmp_path, "clinical", "teacher", "/models/t", "k9", {"accuracy": 0.9}, True)
    with lake.catalog(tmp_path, read_only=True) as con:
        row = con.execute("SELECT task, role, path, promoted, metrics FROM models").fetchone()
    assert row[:4] == ("clinical", "teacher", "/models/t", True)
    assert json.loads(row[4]) == {"accuracy": 0.9}
