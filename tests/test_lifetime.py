"""A killed run leaves nothing running: `kill -9` of the bulk flow (or of the `make inbox` running it)
takes Prefect's temporary API server and the extraction workers with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import bulk, lake, synth

from conftest import REPO
from test_bulk import student  # noqa: F401

pytestmark = pytest.mark.slow


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, session, ... (None once gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _running(pid: int, started: str | None = None) -> bool:
    """Alive and not a zombie (ended, only its parent's wait missing); the same process if `started` is given."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in "ZX" and started in (None, stat[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(root: int) -> set[int]:
    """Running processes of the run: in its session (the test starts it in a new one) or descended from it."""
    stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    stats = {pid: s for pid, s in stats.items() if s is not None and s[0] not in "ZX"}
    found = {pid for pid, s in stats.items() if int(s[3]) == root}
    grown = True
    while grown:
        more = {pid for pid, s in stats.items() if int(s[1]) in found | {root}} - found
        found |= more
        grown = bool(more)
    return found - {root}


def _left(root: int, before: dict[int, str]) -> set[int]:
    """The run's processes still running: in its session or tree now, or seen in it before the kill."""
    return _ours(root) | {pid for pid, started in before.items() if _running(pid, started)}


@pytest.mark.parametrize("killed", ["flow", "make"])
def test_a_killed_bulk_run_leaves_no_process_running(killed, student, tmp_path):  # noqa: F811
    if killed == "make" and shutil.which("make") is None:
        pytest.skip("no make on this machine")
    truth = synth.generate_clinical(tmp_path / "inbox", 60, bad_every=10)
    home = tmp_path / "home"
    lake.record_model(home, "clinical", "student", str(student), "k", {}, True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "DISTILLERY_"))}
    env.update(PYTHONPATH=str(REPO), DISTILLERY_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600",
               HF_HUB_OFFLINE="1")
    spec, inbox = str(REPO / "data" / "demo" / "clinical.yaml"), str(tmp_path / "inbox")
    if killed == "flow":
        command = [sys.executable, "-m", "flows.bulk", spec, "--profile", "demo", "--source", inbox]
    else:
        command = ["make", "--no-print-directory", "inbox", f"PY={sys.executable}", f"SPEC={spec}", f"SOURCE={inbox}",
                   f"PREFECT_HOME={tmp_path / 'prefect'}"]
    run = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=open(tmp_path / "run.log", "wb"))
    lock = home / "lake" / "clinical" / "bulk" / ".lock"
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not lock.exists() and run.poll() is None:  # mid-run: labeling
            time.sleep(0.1)
        assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        before = {pid: _stat(pid)[19] for pid in _ours(run.pid)}  # pid -> start time
        assert any("uvicorn" in _cmdline(p) for p in before), "the temporary Prefect server should be up"
        run.send_signal(signal.SIGKILL)
        run.wait()
        deadline = time.time() + 120
        while time.time() < deadline and _left(run.pid, before):
            time.sleep(0.2)
        assert not _left(run.pid, before), [_cmdline(p) for p in _left(run.pid, before)]
        labeled = sum(len(lake.read_table(f)) for f in bulk.committed(lock.parent, "labels"))
        assert labeled < sum(row["verdict"] == "ok" for row in truth), "the run went on after the kill"
    finally:
        for pid in _ours(run.pid):  # whatever this test started and is still there
            os.kill(pid, signal.SIGKILL)
