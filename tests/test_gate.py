"""A student below its promotion gate: the run says so loudly and bulk labeling offers an explicit way on.

One flow run on a tiny model whose student is made to fail its gate, with no earlier promoted
student; each test reads one consequence of it.
"""

from __future__ import annotations

import json
import re

import duckdb
import pytest

from distillery.errors import NotPromoted
from test_pipeline import tiny_task  # noqa: F401  (fixture)

REASON = "held-out top-1 0.100 is below 0.95 x teacher 0.500 = 0.475"


@pytest.fixture(scope="module")
def gated(tiny_task, tmp_path_factory):  # noqa: F811
    """(home, final flow state, spec path): the harness stays up for the module's tests."""
    from prefect.testing.utilities import prefect_test_harness

    from distillery import student
    from flows.distill import distill

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=120):
        mp.setenv("DISTILLERY_HOME", str(home))
        mp.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "results"))
        mp.setattr(student, "promotion", lambda spec, s, t: {"promoted": False, "gate": 0.95, "reason": REASON})
        spec_path = str(tiny_task / "tiny.yaml")
        state = distill(spec_path, None, return_state=True)
        mp.undo()
        yield home, state, spec_path


@pytest.fixture
def home(gated, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(gated[0]))
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(gated[0] / "results"))
    return gated[0]


def test_a_student_below_its_gate_fails_the_run_with_what_to_do(gated):
    _, state, _ = gated
    assert state.is_failed(), state.name
    assert "no student has passed the promotion gate" in state.message and REASON in state.message
    assert "make inbox STUDENT=latest" in state.message


def test_the_bulk_labels_view_exists_and_is_empty(home):
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from bulk_labels").fetchone()[0] == 0
        columns = [c[0] for c in con.execute("describe bulk_labels").fetchall()]
    assert {"sha256", "path", "label", "confidence"} <= set(columns)


def test_the_report_says_first_that_the_student_was_not_promoted(home):
    (page,) = home.glob("reports/*/index.html")
    first = re.search(r'<p class="note">(.*?)</p>', page.read_text()).group(1)
    assert first.startswith("Student not promoted: " + REASON.replace("=", "="))
    assert "STUDENT=latest" in first


def test_inbox_explains_the_gate_instead_of_asking_for_a_student(home, gated, capsys, monkeypatch):
    from flows import bulk

    with pytest.raises(NotPromoted, match=re.escape(REASON)):
        bulk.bulk(gated[2], None)
    capsys.readouterr()  # what the failed flow run above logged is Prefect's, not the command line's
    monkeypatch.setattr("sys.argv", ["flows.bulk", gated[2], "--profile", ""])
    with pytest.raises(SystemExit) as exit_:
        bulk.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err  # Prefect's own log handlers may write here too: find our line
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "--student latest" in line and REASON in line
    assert "errors.NotPromoted" not in err, "a message, not a traceback of our error"


def test_latest_labels_anyway_and_the_lineage_records_the_choice(home, gated):
    from flows import bulk

    out = bulk.bulk(gated[2], None, student="latest")
    assert out["counts"]["labeled"] > 0 and out["student_choice"].startswith(f"latest, not promoted: {REASON}")
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        (inputs,) = con.execute("select inputs from runs where stage = 'bulk' order by finished_at desc limit 1").fetchone()
        labeled = con.execute("select count(*) from bulk_labels").fetchone()[0]
    assert json.loads(inputs)["student_choice"].startswith("latest, not promoted")
    assert labeled == out["counts"]["labeled"]
