"""The five stages end to end on a tiny random model: core functions, then the Prefect flow's caching."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
import yaml

from distillery import lake, synth
from distillery.models import tiny_model
from distillery.report import SECTIONS
from distillery.spec import load_spec

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.integration]

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


# Its own data root, result store and Prefect server: it deletes a stage's output, which the flow runs
# below must not find in their result store.
def test_deleted_stage_output_is_rebuilt_not_reported_cached(tiny_task, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.distill import distill

    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    spec_path = str(tiny_task / "tiny.yaml")
    with prefect_test_harness(server_startup_timeout=120):
        first = distill(spec_path, None, "seed")
        seed_file = Path(first["outputs"]["seed"]["seed_labels"])
        os.remove(seed_file)
        os.remove(seed_file.parent / "_SUCCESS")
        second = distill(spec_path, None, "seed")
    assert Path(second["outputs"]["seed"]["seed_labels"]).exists()
    assert second["states"] == {"ingest": "Cached", "seed": "Completed"}


def _catalog(home: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def _stages_run(home: Path) -> list[str]:
    return [s for (s,) in _catalog(home, "select stage from runs order by started_at")]


def _with_spec(spec_path: Path, out: Path, **student_sft) -> str:
    """A copy of the spec with other student SFT settings (a changed cache key for student and bulk only)."""
    raw = yaml.safe_load(spec_path.read_text())
    raw["student"]["sft"].update(student_sft)
    out.write_text(yaml.safe_dump(raw))
    return str(out)


@pytest.fixture(scope="module")
def flow_home(tiny_task, tmp_path_factory):
    """One Prefect test server, data root and result store for the flow runs below, which build on each other."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_HOME", str(home))
        mp.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "results"))
        with prefect_test_harness(server_startup_timeout=120):
            yield home


@contextmanager
def _in(home: Path):
    """The module's data root, whatever a test's own DISTILLERY_HOME says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_HOME", str(home))
        yield


@pytest.fixture(scope="module")
def first_run(flow_home, tiny_task) -> dict:
    """The flow over every stage, from nothing."""
    from flows.distill import distill

    with _in(flow_home):
        result = distill(str(tiny_task / "tiny.yaml"), None)
    return {"result": result, "runs": len(_stages_run(flow_home)),
            "truth": json.loads((tiny_task / "truth.json").read_text())}


@pytest.fixture(scope="module")
def second_run(first_run, flow_home, tiny_task) -> dict:
    """The same flow again, nothing changed."""
    from flows.distill import distill

    with _in(flow_home):
        result = distill(str(tiny_task / "tiny.yaml"), None)
    return {"result": result, "new_runs": _stages_run(flow_home)[first_run["runs"]:]}


@pytest.fixture(scope="module")
def third_run(second_run, first_run, flow_home, tiny_task) -> dict:
    """The flow with another student learning rate."""
    from flows.distill import distill

    spec = _with_spec(tiny_task / "tiny.yaml", flow_home / "changed.yaml", learning_rate=1e-4)
    with _in(flow_home):
        result = distill(spec, None)
    return {"result": result, "spec": spec, "new_runs": _stages_run(flow_home)[first_run["runs"]:],
            "bulk_rows": _catalog(flow_home, "select count(*) from bulk_labels")[0][0],
            "bulk_models": _catalog(flow_home, "select distinct model from bulk_labels")}


@pytest.fixture(scope="module")
def fourth_run(third_run, flow_home, tiny_task) -> dict:
    """The flow with yet another student, one that fails the promotion gate."""
    from flows.distill import distill
    from tasks import stages

    spec = _with_spec(tiny_task / "tiny.yaml", flow_home / "strict.yaml", learning_rate=2e-4)
    with _in(flow_home), pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages.student, "promotion", lambda spec, s, t: {"promoted": False, "reason": "below the gate"})
        result = distill(spec, None)
    return {"result": result, "current_model": lake.current_model(flow_home, "clinical")}


@pytest.fixture(scope="module")
def inbox_runs(fourth_run, third_run, flow_home) -> dict:
    """The scheduled bulk flow on an inbox of three new PDFs, twice."""
    from flows.bulk import bulk

    inbox = flow_home / "inbox"
    inbox.mkdir()
    for i in range(100, 103):
        (inbox / f"new-{i}.pdf").write_bytes(synth.case_pdf(synth.make_case(i), i))
    with _in(flow_home):
        first = bulk(third_run["spec"], None, str(inbox))
        again = bulk(third_run["spec"], None, str(inbox))
    return {"first": first, "again": again, "bulk_rows": _catalog(flow_home, "select count(*) from bulk_labels")[0][0]}


def _valid(run: dict) -> int:
    return sum(t["verdict"] == "ok" for t in run["truth"])


def test_the_flow_bulk_labels_every_valid_pdf_exactly_once(first_run, flow_home):
    [(rows, distinct)] = _catalog(flow_home, "select count(*), count(distinct sha256) from bulk_labels")
    assert rows == distinct == _valid(first_run)


def test_the_flow_quarantines_each_planted_bad_pdf_with_its_reason(first_run, flow_home):
    planted = {t["file"]: t["verdict"] for t in first_run["truth"] if t["verdict"] != "ok"}
    assert {Path(p).name: r for p, r in _catalog(flow_home, "select path, reason from quarantine")} == planted


def test_every_catalog_view_has_rows_after_the_flow(first_run, flow_home):
    for view in lake.VIEWS:
        assert _catalog(flow_home, f"select count(*) from {view}")[0][0] > 0, view


def test_the_next_plan_prices_each_stage_by_the_run_it_made(first_run, flow_home, tiny_task):
    """After a run, `plan` reads each stage's rate from the task's own runs: GRPO's too (the teacher
    stage records its GRPO steps and their time, validation included)."""
    from distillery.plan import plan

    [(metrics,)] = _catalog(flow_home, "select metrics from runs where stage = 'teacher' order by finished_at desc limit 1")
    grpo = json.loads(metrics)["grpo"]
    assert grpo["steps"] == TINY["teacher"]["grpo"]["steps"] and grpo["seconds"] > 0
    lines = {ln["stage"]: ln for ln in plan(load_spec(tiny_task / "tiny.yaml"), root=flow_home, bulk_docs=10)["lines"]}
    assert lines["teacher: GRPO"]["rate_per_s"] == pytest.approx(grpo["steps"] / grpo["seconds"])
    for stage, source in (("teacher: GRPO", "latest teacher run"), ("teacher: SFT warm start", "latest teacher run"),
                          ("label", "latest label run"), ("student: static + encoder heads", "latest student run"),
                          ("bulk", "latest bulk run")):
        assert lines[stage]["source"].startswith(source), stage


def test_bulk_labels_are_labels_of_the_schema(first_run, flow_home, tiny_task):
    labels = load_spec(tiny_task / "tiny.yaml").output.labels
    assert all(label in labels for (label,) in _catalog(flow_home, "select label from bulk_labels"))


def test_the_flow_writes_a_report_with_every_section_under_the_data_root(first_run, flow_home):
    report = Path(first_run["result"]["report"])
    page = report.read_text()
    assert report.parent.parent == flow_home / "reports"
    assert all(f'id="{section}"' in page for section in SECTIONS) and "not run" not in page


def test_a_second_run_reuses_every_stage_from_the_cache(second_run, first_run):
    assert second_run["result"]["outputs"] == first_run["result"]["outputs"]
    assert set(second_run["result"]["states"].values()) == {"Cached"}, second_run["result"]["states"]
    assert second_run["new_runs"] == []  # every stage, bulk included, came from the cache


def test_a_changed_student_setting_reruns_only_student_and_bulk(third_run, first_run):
    assert third_run["result"]["states"] == {"ingest": "Cached", "seed": "Cached", "teacher": "Cached",
                                             "label": "Cached", "student": "Completed", "bulk": "Completed"}
    assert third_run["result"]["outputs"]["student"] != first_run["result"]["outputs"]["student"]
    assert third_run["new_runs"] == ["student", "bulk"]


def test_a_new_student_relabels_the_bulk_labels_instead_of_adding_to_them(third_run, first_run):
    assert third_run["bulk_rows"] == _valid(first_run)
    assert len(third_run["bulk_models"]) == 1
    assert third_run["result"]["outputs"]["student"]["model"] in third_run["bulk_models"][0][0]


def test_a_student_below_the_gate_keeps_the_promoted_students_bulk_labels(fourth_run, third_run):
    states, outputs = fourth_run["result"]["states"], fourth_run["result"]["outputs"]
    assert states["student"] == "Completed" and states["bulk"] == "Cached"
    assert outputs["bulk"] == third_run["result"]["outputs"]["bulk"]
    assert fourth_run["current_model"] == third_run["result"]["outputs"]["student"]["model"]


def test_the_bulk_flow_labels_the_new_pdfs_of_an_inbox(inbox_runs, first_run):
    assert inbox_runs["first"]["counts"] == {"seen": 3, "skipped": 0, "labeled": 3, "quarantined": 0, "duplicates": 0}
    assert inbox_runs["bulk_rows"] == _valid(first_run) + 3


def test_the_bulk_flow_skips_an_inbox_it_has_labeled(inbox_runs):
    assert inbox_runs["again"]["counts"]["skipped"] == 3


def test_labels_carry_the_scope_flags_from_labeling_to_bulk(first_run, flow_home):
    for table in ("machine_labels", "bulk_labels"):
        rows = _catalog(flow_home, f"select count(*), count(in_scope), count(needs_review) from {table}")[0]
        assert rows[0] > 0 and rows[0] == rows[1] == rows[2], table
    high = _catalog(flow_home, "select count(*) from bulk_labels where out_of_scope and confidence > in_scope")
    assert high[0][0] == 0  # a flagged label never keeps a confidence above its in-scope share


def test_every_export_shows_the_scope_flags(first_run, flow_home, tiny_task, tmp_path):
    import csv

    from distillery.export import export

    spec = load_spec(str(tiny_task / "tiny.yaml"))
    for table in ("bulk_labels", "machine_labels"):
        with _in(flow_home):
            path, n = export(spec, "csv", tmp_path / f"{table}.csv", table)
            ls, _ = export(spec, "label-studio", tmp_path / f"{table}.json", table)
        rows = list(csv.DictReader(open(path)))
        assert n == len(rows) > 0 and all(r["needs_review"] in ("True", "False") and r["in_scope"] for r in rows)
        assert all("needs_review" in t["data"] for t in json.loads(ls.read_text()))


def test_a_review_round_trip_stales_only_the_seed_stage_and_after(first_run, flow_home, tiny_task, tmp_path):
    """queue -> Label Studio JSON -> reviewed -> appended to the seeds: ingest stays cached, the rest goes
    stale; no seeded document is queued; a row naming a label outside the set is refused, nothing written."""
    from distillery.cli import main
    from distillery.errors import SeedError
    from distillery.review import append_seeds
    from tasks.stages import status

    spec_path = str(tiny_task / "tiny.yaml")
    seeds = Path(yaml.safe_load((tiny_task / "tiny.yaml").read_text())["seeds"]["path"])
    before = seeds.read_text()
    queue = tmp_path / "queue.json"
    try:
        with _in(flow_home):
            assert {r["state"] for r in status(load_spec(spec_path))} == {"cached"}
            assert main(["review", spec_path, "--n", "4", "--out", str(queue)]) == 0
            tasks = json.loads(queue.read_text())
            seeded = {Path(d).name for (d,) in _catalog(flow_home, "select document from seed_labels")}
            assert len(tasks) == 4 and not {Path(t["data"]["path"]).name for t in tasks} & seeded
            assert all("needs_review" in t["data"] and t["predictions"][0]["result"] for t in tasks)
            truth = {t["file"]: t["label"] for t in json.loads((tiny_task / "truth.json").read_text())}
            for t in tasks:  # the expert's answer, as Label Studio exports it
                t["annotations"] = [{"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                 "value": {"choices": [truth[Path(t["data"]["path"]).name]]}}]}]
            bad = json.loads(json.dumps(tasks))
            bad[0]["annotations"][0]["result"][0]["value"]["choices"] = ["Not a label"]
            (tmp_path / "bad.json").write_text(json.dumps(bad))
            with pytest.raises(SeedError):
                append_seeds(load_spec(spec_path), tmp_path / "bad.json")
            assert seeds.read_text() == before
            queue.write_text(json.dumps(tasks))
            assert main(["import-label-studio", spec_path, str(queue)]) == 0
            assert append_seeds(load_spec(spec_path), queue) == (0, 4)  # a second import adds nothing
            states = {r["stage"]: r["state"] for r in status(load_spec(spec_path))}
        assert len(seeds.read_text().splitlines()) == len(before.splitlines()) + 4
        assert states == {"ingest": "cached", "seed": "stale", "teacher": "stale", "label": "stale",
                          "student": "stale", "bulk": "stale"}
    finally:
        seeds.write_text(before)
