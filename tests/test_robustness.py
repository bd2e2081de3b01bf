"""Ingestion verdicts on real hostile PDFs from other projects' test suites (read in place)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.robustness import DEFAULT_HOSTILE, robustness

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_the_shared_hostile_corpus_gets_the_right_verdicts_with_no_crash():
    assert (DEFAULT_HOSTILE / "manifest.csv").exists(), f"the shared corpus should sit at {DEFAULT_HOSTILE}"
    result = robustness(Path(DEFAULT_HOSTILE), timeout_s=5.0)
    assert result["files"] == 233  # 231 shared files + a planted hanging file + a planted oversize file
    assert result["accuracy"] >= 0.98, result["wrong"]
    for cls, counts in result["by_class"].items():
        assert counts["right"] / counts["files"] >= 0.9, (cls, result["wrong"])
    assert result["by_class"]["timeout"]["right"] == 1 and result["by_class"]["oversize"]["right"] == 1
