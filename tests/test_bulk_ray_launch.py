"""The README's multi-node launch, run as written against a three-node cluster started with the
`ray` command line on this machine: `ray start --head`, two `ray start --address` workers, then
`RAY_ADDRESS=... make inbox ENGINE=ray` and `ray job submit` with a runtime env. The nodes share
this machine (so its disk is their shared file system); what is checked is the commands, the
driver joining by address, the work landing on both workers, and the job's code travelling in its
working_dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import lake, synth

from conftest import REPO
from test_bulk import _rows_by_path, student  # noqa: F401

pytestmark = pytest.mark.slow

WORKER_CPUS = 3  # two extractors and two labelers (1 CPU each) cannot fit on one worker
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_lines(address: str, env: dict) -> int:
    done = subprocess.run([str(BIN / "ray"), "status", "--address", address], capture_output=True, text=True,
                          env=env, timeout=60)
    return sum(line.strip().startswith("1 node_") for line in done.stdout.split("Pending")[0].splitlines())


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """A head with no CPUs and two workers of 3 CPUs, each a `ray start --block` in its own session
    (stopped by killing that session: `ray stop` would stop every Ray on the machine)."""
    pytest.importorskip("ray.dashboard", reason="`ray job submit` needs `pip install 'ray[default]'`")
    logs = tmp_path_factory.mktemp("ray-cli")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}  # the nodes: the package
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0")  # installed, as from an image
    port, dashboard = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={_free_port()}"]
    worker = ["ray", "start", f"--address={address}", f"--num-cpus={WORKER_CPUS}"]
    started = []

    def start(command: list[str], name: str) -> None:
        started.append(subprocess.Popen([str(BIN / command[0]), *command[1:], "--block"], env=env,
                                        start_new_session=True, stdout=open(logs / f"{name}.log", "wb"),
                                        stderr=subprocess.STDOUT))

    try:
        deadline = time.time() + 600
        for nodes, (command, name) in enumerate([(head, "head"), (worker, "worker-1"), (worker, "worker-2")], 1):
            start(command, name)  # one after the other: nodes started together time out on two cores
            while time.time() < deadline and _node_lines(address, env) < nodes and started[-1].poll() is None:
                time.sleep(1)
            assert _node_lines(address, env) == nodes, (logs / f"{name}.log").read_text()[-2000:]
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        for p in reversed(started):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    continue


@pytest.fixture
def promoted(student, tmp_path) -> Path:  # noqa: F811
    """A data root whose demo task has the tiny student promoted."""
    home = tmp_path / "home"
    lake.record_model(home, "clinical", "student", str(student), "k", {}, True)
    return home


def _env(cluster: dict, home: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in cluster["env"].items() if not k.startswith(("PREFECT_API_URL", "DISTILLERY_", "RAY_ADDRESS"))}
    env.update(PYTHONPATH=str(REPO), DISTILLERY_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _check_run(home: Path, inbox: Path, truth: list[dict]) -> dict:
    """Every file of the inbox once, the valid ones labeled; the run's metrics from the catalog."""
    rows = _rows_by_path(home / "lake" / "clinical" / "bulk")
    assert sorted(rows) == sorted(str(p) for p in inbox.iterdir())
    assert all(len(r) == 1 for r in rows.values())
    assert sum(r["kind"] == "labels" for (r,) in rows.values()) == sum(t["verdict"] == "ok" for t in truth)
    import duckdb

    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as db:
        (metrics,) = db.execute("SELECT metrics FROM runs WHERE stage = 'bulk' ORDER BY started_at DESC "
                                "LIMIT 1").fetchone()
    return json.loads(metrics)


def _spread(metrics: dict) -> None:
    assert metrics["engine"] == "ray"
    nodes = metrics["nodes"]  # the demo spec: one Extractor and one Labeler, 1 CPU each
    assert len(set(nodes["extract"]) | set(nodes["label"])) == 2, nodes  # both workers worked, the head did not
    assert sum(nodes["extract"].values()) == 40


def test_make_inbox_joins_the_cluster_by_ray_address(cli_cluster, promoted, tmp_path):
    truth = synth.generate_clinical(tmp_path / "inbox", 40, bad_every=10)
    env = {**_env(cli_cluster, promoted, tmp_path), "RAY_ADDRESS": cli_cluster["address"]}
    done = subprocess.run(["make", "--no-print-directory", "inbox", f"PY={sys.executable}", "ENGINE=ray",
                           f"SOURCE={tmp_path / 'inbox'}", f"PREFECT_HOME={tmp_path / 'prefect'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    _spread(_check_run(promoted, tmp_path / "inbox", truth))


def test_ray_job_submit_sends_the_code_in_a_runtime_env(cli_cluster, promoted, tmp_path):
    truth = synth.generate_clinical(tmp_path / "inbox", 40, bad_every=10)
    env = _env(cli_cluster, promoted, tmp_path)
    runtime = {"working_dir": ".", "env_vars": {k: env[k] for k in ("DISTILLERY_HOME", "PREFECT_HOME", "HF_HUB_OFFLINE",
                                                                  "TRANSFORMERS_OFFLINE")}}
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cli_cluster["dashboard"],
                           "--runtime-env-json", json.dumps(runtime), "--",
                           "python", "-m", "flows.bulk", "data/demo/clinical.yaml", "--engine", "ray",
                           "--source", str(tmp_path / "inbox")],
                          cwd=REPO, env={k: v for k, v in env.items() if k != "PYTHONPATH"},  # the code travels
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "succeeded" in done.stdout, (done.stdout + done.stderr)[-3000:]
    _spread(_check_run(promoted, tmp_path / "inbox", truth))
