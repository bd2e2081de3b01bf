"""A run's processes end with it, even when the run is killed with SIGKILL.

Without `PREFECT_API_URL`, Prefect 3.8 runs a temporary API server (uvicorn, a child process,
`prefect.server.api.server.SubprocessASGIServer`) and stops it from an atexit hook, which a SIGKILL
never runs: the server outlived the flow, holding its port and database. Extraction workers and a
Ray started here are children too. `watch()` marks this process's environment with a token every
process it starts inherits, and starts a watchdog that waits for this process to end, however it
ends, then stops every process of this user carrying the token (SIGTERM, then SIGKILL). A server
named by `PREFECT_API_URL` and a Ray cluster named by `RAY_ADDRESS` are not started here, carry no
token and are left alone.

Run as a script, this file is the watchdog: `python flows/lifetime.py PID TOKEN`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

TOKEN = "DISTILLERY_RUN_TOKEN"
EXIT_WITH_PARENT = "DISTILLERY_EXIT_WITH_PARENT"  # set by the Makefile: a killed `make` ends its run too
GRACE_S = 3.0  # between SIGTERM and SIGKILL: a server gets to close its database


def watch() -> None:
    """Tie every process this one starts from now on to this process's life (Linux: /proc, prctl)."""
    if not sys.platform.startswith("linux"):
        return
    if os.environ.pop(EXIT_WITH_PARENT, None):
        _exit_with_parent()
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != TOKEN}
    os.environ[TOKEN] = token
    # Its own session: a Ctrl-C or a kill of the run's process group does not stop the one that cleans up.
    subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid()), token], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


def _exit_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux); the watchdog then stops its children."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_for(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel: poll for being reparented
        while os.getppid() == pid:
            time.sleep(0.5)
        return
    if os.getppid() == pid:  # still alive once the pidfd is open: it becomes readable on exit
        select.select([fd], [], [])
    os.close(fd)


def carriers(token: str) -> list[int]:
    """Live processes (not this one) whose environment carries the token."""
    mark = f"{TOKEN}={token}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, or another user's
            continue
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(token: str) -> None:
    """SIGTERM the token's carriers, SIGKILL what is left after the grace period, until none is left."""
    _signal(carriers(token), signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while carriers(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(20):  # a pool may start a replacement worker while its siblings die
        left = carriers(token)
        if not left:
            return
        _signal(left, signal.SIGKILL)
        time.sleep(0.1)


if __name__ == "__main__":
    _wait_for(int(sys.argv[1]))
    stop(sys.argv[2])
