"""The Makefile: your own spec runs without the demo corpus; the demo still builds it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(*args: str) -> str:
    """What make would run, every target taken as out of date (-B), nothing executed (-n)."""
    proc = subprocess.run(["make", "-n", "-B", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_run_runs_your_spec_without_building_the_demo_corpus():
    out = _dry_run("run", "SPEC=tasks/mine.yaml")
    assert "-m flows.distill tasks/mine.yaml --profile demo --until bulk" in out
    assert "generate.py" not in out
    assert "--until seed" in _dry_run("run", "SPEC=tasks/mine.yaml", "UNTIL=seed")


def test_make_demo_with_another_spec_points_to_make_run_instead_of_regenerating_the_demo():
    out = _dry_run("demo", "SPEC=tasks/mine.yaml")
    assert "generate.py" not in out and "flows.distill" not in out
    assert "make run SPEC=tasks/mine.yaml" in out


def test_make_demo_still_builds_the_demo_corpus_then_runs_the_demo_spec():
    out = _dry_run("demo")
    assert "data/demo/generate.py" in out
    assert "-m flows.distill data/demo/clinical.yaml" in out
