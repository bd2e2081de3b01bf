"""The Ray Data bulk engine on a simulated multi-node cluster (`ray.cluster_utils.Cluster`): a head
that runs no work and two workers with their own CPUs. Labels equal the local engine's, with the
actors spread over both workers; a worker lost mid-run loses and duplicates nothing, nor does a
driver killed after a node loss and run again; a listing longer than a wave runs wave by wave."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from distillery import bulk, synth

from test_bulk import _by_hash, _labeled, _rows_by_path, _same_labels, _spec, student  # noqa: F401
from test_bulk_ray import assert_every_path_once, start_driver, wait_for_shards

pytestmark = pytest.mark.slow

WORKER_CPUS = 3  # two extractors and two labelers (1 CPU each) cannot fit on one worker
LOSS_FILES = 120  # with shards of 4: a run long enough to lose a node in


@pytest.fixture(scope="module")
def nodes():
    ray = pytest.importorskip("ray", reason="the ray engine needs `pip install 'ray[data]'`")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=WORKER_CPUS) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def two_workers(nodes):
    """The cluster with two workers again (a test before may have lost one)."""
    cluster, workers = nodes
    while len(workers) < 2:
        workers.append(cluster.add_node(num_cpus=WORKER_CPUS))
    cluster.wait_for_nodes()
    return nodes


def _on_nodes(spec, actors: int = 2):
    return spec.model_copy(update={"bulk": spec.bulk.model_copy(
        update={"engine": "ray", "ray_extractors": actors, "ray_labelers": actors})})


def _a_run_to_lose_a_node_in(clinical_spec, tmp_path):
    """(spec on both workers, its output folder, valid files) for LOSS_FILES files in shards of 4."""
    truth = synth.generate_clinical(tmp_path / "inbox", LOSS_FILES, bad_every=10)
    spec = _on_nodes(_spec(clinical_spec, tmp_path / "inbox", shard_size=4))
    return spec, tmp_path / "bulk", sum(row["verdict"] == "ok" for row in truth)


def test_three_nodes_label_like_the_local_engine_with_work_on_both_workers(clinical_spec, student, tmp_path,
                                                                         two_workers):
    import ray

    synth.generate_clinical(tmp_path / "inbox", 40, bad_every=10)
    spec = _spec(clinical_spec, tmp_path / "inbox")
    local = bulk.bulk_label(spec, student, out=tmp_path / "local", progress=False)
    on_ray = bulk.bulk_label(_on_nodes(spec), student, out=tmp_path / "ray", progress=False)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    assert on_ray.counts == local.counts
    _same_labels(_by_hash(tmp_path / "local"), _by_hash(tmp_path / "ray"))
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
    placed = on_ray.metrics["nodes"]
    assert set(placed["extract"]) | set(placed["label"]) == workers, "the work ran on both workers, none on the head"
    assert sum(placed["extract"].values()) == on_ray.counts["seen"]
    assert sum(placed["label"].values()) == on_ray.counts["labeled"]


def test_a_worker_lost_mid_run_loses_and_duplicates_nothing(clinical_spec, student, tmp_path, two_workers):
    """No node replaces it: the lost actors restart on the worker left where they fit, their tasks retried."""
    cluster, workers = two_workers
    spec, out, valid = _a_run_to_lose_a_node_in(clinical_spec, tmp_path)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(r=bulk.bulk_label(spec, student, out=out, progress=False)))
    run.start()
    wait_for_shards(out, run.is_alive, time.time() + 600)
    assert run.is_alive(), "the run ended before the node could be lost"
    cluster.remove_node(workers.pop())
    removed_at = len(_rows_by_path(out))
    run.join(timeout=900)
    assert not run.is_alive(), "the run did not finish after the node loss"
    assert 0 < removed_at < LOSS_FILES, "the node should be lost mid-run"
    assert_every_path_once(out, tmp_path / "inbox", valid)


def test_a_driver_killed_after_a_node_loss_resumes_exactly_once(clinical_spec, student, tmp_path, two_workers):
    """Then the rerun on the one worker left completes the rest."""
    cluster, workers = two_workers
    spec, out, valid = _a_run_to_lose_a_node_in(clinical_spec, tmp_path)
    driver = start_driver(spec, student, out, tmp_path, cluster.address)
    running, deadline = (lambda: driver.poll() is None), time.time() + 600
    wait_for_shards(out, running, deadline)
    assert driver.poll() is None, f"the driver ended by itself (exit {driver.returncode}) before the node loss"
    cluster.remove_node(workers.pop())
    wait_for_shards(out, running, deadline, len(bulk.committed(out, "labels")))  # one more shard after the loss
    assert driver.poll() is None, f"the driver ended by itself (exit {driver.returncode}) before it was killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = len(_labeled(out))
    assert 0 < partial < valid, "the kill should land mid-run"
    again = bulk.bulk_label(spec, student, out=out, progress=False)
    assert again.counts["skipped"] > 0
    assert_every_path_once(out, tmp_path / "inbox", valid)


def test_a_listing_longer_than_a_wave_runs_wave_by_wave_holding_one_wave(clinical_spec, student, tmp_path,
                                                                        two_workers, monkeypatch):
    from distillery.bulk import ray as ray_engine

    synth.generate_clinical(tmp_path / "inbox", 90, bad_every=10)
    spec = _on_nodes(_spec(clinical_spec, tmp_path / "inbox", shard_size=8), actors=1)
    waves = []
    real = ray_engine._dataset
    monkeypatch.setattr(ray_engine, "WAVE", 25)
    monkeypatch.setattr(ray_engine, "_dataset", lambda ray, spec, student, wave, run: waves.append(len(wave)) or
                        real(ray, spec, student, wave, run))
    listed, ahead = [0], []  # files listed so far; at each result, files listed but not yet back

    def counted(source, real_items=bulk._items):
        for item in real_items(source):
            listed[0] += 1
            yield item

    def watched(*args, real_events=ray_engine.events):
        for event in real_events(*args):
            ahead.append(listed[0] - len(ahead))
            yield event

    monkeypatch.setattr(bulk, "_items", counted)
    monkeypatch.setattr(ray_engine, "events", watched)
    result = bulk.bulk_label(spec, student, out=tmp_path / "bulk", progress=False)
    assert waves == [25, 25, 25, 15]
    assert len(ahead) + result.counts["duplicates"] == 90  # a copy of a file done is no event
    assert max(ahead) <= 25  # the driver never holds more than a wave of the listing (copies counted as held)
    rows = _rows_by_path(tmp_path / "bulk")
    assert len(rows) == 90 and all(len(r) == 1 for r in rows.values())
    assert result.counts["labeled"] + result.counts["quarantined"] + result.counts["duplicates"] == 90
