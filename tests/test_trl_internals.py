"""The TRL version guard of our overrides of TRL's private internals."""

from __future__ import annotations

import re

import pytest

from distillery import trl_internals

from conftest import REPO


@pytest.mark.parametrize("version, expected", [("1.16.0", "1.16"), ("1.16.2.dev0", "1.16"), ("1.16rc1", "1.16"),
                                               ("2", "2.0"), ("1.17.0", "1.17")])
def test_versions_match_on_major_minor(version, expected):
    assert trl_internals.major_minor(version) == expected


def test_the_trl_pinned_in_constraints_is_a_tested_one():
    pin = re.search(r"^trl==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pin, "constraints.txt pins no trl"
    assert trl_internals.major_minor(pin.group(1)) in trl_internals.TESTED_TRL


def test_an_untested_trl_warns_naming_the_installed_and_the_tested_versions(monkeypatch):
    monkeypatch.setattr(trl_internals, "trl_version", lambda: "2.3.1")
    with pytest.warns(UserWarning) as seen:
        assert not trl_internals.trl_tested("the feature")
    assert len(seen) == 1
    assert "the feature was written against TRL 1.16 and TRL 2.3.1 is installed" in str(seen[0].message)


def test_a_tested_trl_does_not_warn(monkeypatch, recwarn):
    monkeypatch.setattr(trl_internals, "trl_version", lambda: "1.16.4")
    assert trl_internals.trl_tested("the feature")
    assert not recwarn.list
