"""The Ray Data bulk engine on a local Ray cluster the tests start: same labels as the local engine,
exactly once across a killed driver. The cluster outlives the driver, as a real one does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import bulk, synth

from conftest import REPO
from test_bulk import KILLABLE, _by_hash, _labeled, _rows_by_path, _same_labels, _spec, student  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster with 8 logical CPUs (2 cores here: fewer deadlock long-lived map actors);
    the tests' pipelines run two worker processes on it, one Extractor and one Labeler actor."""
    ray = pytest.importorskip("ray", reason="the ray engine needs `pip install 'ray[data]'`")
    from ray.cluster_utils import Cluster

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "include_dashboard": False})
    ray.init(address=head.address, log_to_driver=False)
    yield head
    ray.shutdown()
    head.shutdown()


def _on_ray(spec):
    return spec.model_copy(update={"bulk": spec.bulk.model_copy(update={"engine": "ray"})})


@pytest.fixture
def inbox(tmp_path) -> Path:
    synth.generate_clinical(tmp_path / "inbox", 30, bad_every=10)
    return tmp_path / "inbox"


def _by_path(out: Path) -> dict[str, tuple]:
    """path -> (labels or quarantine, label or reason, twin); exactly one row per path or this fails."""
    return {p: (r["kind"], r.get("label") or r["reason"], r["duplicate_of"]) for p, (r,) in _rows_by_path(out).items()}


def test_the_ray_engine_labels_like_the_local_engine(clinical_spec, inbox, student, tmp_path, cluster):
    (inbox / "copy-of-00003.pdf").write_bytes((inbox / "case-00003.pdf").read_bytes())
    spec = _spec(clinical_spec, inbox)
    local = bulk.bulk_label(spec, student, out=tmp_path / "local", progress=False)
    on_ray = bulk.bulk_label(_on_ray(spec), student, out=tmp_path / "ray", progress=False)
    counts = {"seen": 31, "skipped": 0, "labeled": 27, "quarantined": 3, "duplicates": 1}
    assert on_ray.counts == local.counts == counts
    assert on_ray.metrics["engine"] == "ray"
    _same_labels(_by_hash(tmp_path / "local"), _by_hash(tmp_path / "ray"))
    assert _by_path(tmp_path / "ray") == _by_path(tmp_path / "local")  # the copy included
    for i in range(200, 210):  # incremental on Ray too: only the new files are labeled
        (inbox / f"new-{i}.pdf").write_bytes(synth.case_pdf(synth.make_case(i), i))
    again = bulk.bulk_label(_on_ray(spec), student, out=tmp_path / "ray", progress=False)
    assert again.counts == {"seen": 41, "skipped": 31, "labeled": 10, "quarantined": 0, "duplicates": 0}
    assert len(set(_labeled(tmp_path / "ray"))) == 37 and len(_rows_by_path(tmp_path / "ray")) == 41


def start_driver(spec, student, out: Path, tmp_path: Path, address: str) -> subprocess.Popen:
    """A bulk run in its own process (a driver that can be killed), joined to the cluster at `address`."""
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path / "spec.json"), str(student), str(out)],
                            env=env)


def wait_for_shards(out: Path, running, deadline: float, more_than: int = 0) -> None:
    """Until `out` has committed more than `more_than` label shards, `running()` turns false or the deadline."""
    while time.time() < deadline and len(bulk.committed(out, "labels")) <= more_than and running():
        time.sleep(0.05)


def assert_every_path_once(out: Path, inbox: Path, valid: int) -> None:
    rows = _rows_by_path(out)
    assert sorted(rows) == sorted(str(p) for p in inbox.iterdir())  # nothing lost
    assert all(len(r) == 1 for r in rows.values())  # nothing twice
    assert sum(r["kind"] == "labels" for (r,) in rows.values()) == valid


def test_a_killed_ray_driver_resumes_with_nothing_lost_or_duplicated(clinical_spec, student, tmp_path, cluster):
    truth = synth.generate_clinical(tmp_path / "inbox", 120, bad_every=10)
    valid = sum(row["verdict"] == "ok" for row in truth)
    spec = _on_ray(_spec(clinical_spec, tmp_path / "inbox", shard_size=4))
    out = tmp_path / "bulk"
    driver = start_driver(spec, student, out, tmp_path, cluster.address)
    # joining the cluster and starting the actors is slow on a loaded machine
    wait_for_shards(out, lambda: driver.poll() is None, time.time() + 900)
    assert driver.poll() is None, f"the driver ended by itself (exit {driver.returncode}) before it was killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = len(_labeled(out))
    assert 0 < partial < valid, "the kill should land mid-run"
    again = bulk.bulk_label(spec, student, out=out, progress=False)  # on the same cluster
    assert again.counts["skipped"] > 0
    assert_every_path_once(out, tmp_path / "inbox", valid)
