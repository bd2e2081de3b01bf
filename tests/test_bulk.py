"""Bulk labeling: every valid PDF labeled exactly once, incrementally, across crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillery import bulk, lake, synth
from distillery.models import tiny_model

from conftest import REPO


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("student") / "m", REPO / "models" / "base")


@pytest.fixture
def inbox(tmp_path) -> Path:
    synth.generate_clinical(tmp_path / "inbox", 30, bad_every=10)
    return tmp_path / "inbox"


def _spec(clinical_spec, inbox: Path, shard_size: int = 8):
    return clinical_spec.model_copy(update={
        "bulk": clinical_spec.bulk.model_copy(update={"source": str(inbox), "batch_size": 4, "shard_size": shard_size}),
        "ingest": clinical_spec.ingest.model_copy(update={"workers": 1}),
    })


def _labeled(out: Path) -> list[str]:
    return [h for f in bulk.committed(out, "labels") for h in lake.read_table(f).column("sha256").to_pylist()]


def _quarantined(out: Path) -> dict[str, str]:
    rows = [r for f in bulk.committed(out, "quarantine") for r in lake.read_table(f).to_pylist()]
    return {Path(r["path"]).name: r["reason"] for r in rows}


def test_every_valid_pdf_is_labeled_once_and_every_bad_one_quarantined(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    result = bulk.bulk_label(_spec(clinical_spec, inbox), student, out=out, progress=False)
    assert result.counts == {"seen": 30, "skipped": 0, "labeled": 27, "quarantined": 3}
    assert len(_labeled(out)) == len(set(_labeled(out))) == 27
    assert sorted(_quarantined(out).values()) == ["corrupt", "empty", "encrypted"]


def test_new_files_in_a_labeled_inbox_are_the_only_ones_labeled(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    spec = _spec(clinical_spec, inbox)
    bulk.bulk_label(spec, student, out=out, progress=False)
    for i in range(100, 105):
        (inbox / f"new-{i}.pdf").write_bytes(synth.case_pdf(synth.make_case(i), i))
    again = bulk.bulk_label(spec, student, out=out, progress=False)
    assert again.counts["labeled"] == 5 and again.counts["skipped"] == 30
    assert len(_labeled(out)) == len(set(_labeled(out))) == 32


def test_relabel_labels_everything_again_with_the_current_student(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    spec = _spec(clinical_spec, inbox)
    bulk.bulk_label(spec, student, out=out, progress=False)
    again = bulk.bulk_label(spec, student, out=out, relabel=True, progress=False)
    assert again.counts["labeled"] == 27


HOLD_LOCK = """
import sys, time
from pathlib import Path
from distillery import bulk
with bulk.exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_concurrent_run_is_refused(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(bulk.BulkBusy):
            bulk.bulk_label(_spec(clinical_spec, inbox), student, out=out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not bulk.committed(out, "labels")


KILLABLE = """
import sys, time
from pathlib import Path
from distillery import bulk
from distillery.spec import TaskSpec
spec = TaskSpec.model_validate_json(Path(sys.argv[1]).read_text())
bulk.bulk_label(spec, Path(sys.argv[2]), out=Path(sys.argv[3]), progress=False)
"""


def test_sigkill_mid_run_then_rerun_labels_every_document_exactly_once(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    spec = _spec(clinical_spec, inbox, shard_size=4)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path / "spec.json"), str(student), str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not bulk.committed(out, "labels"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_labeled(out))
    assert 0 < partial < 27, "the kill should land mid-run"
    bulk.bulk_label(spec, student, out=out, progress=False)
    assert len(_labeled(out)) == len(set(_labeled(out))) == 27
    assert len(_quarantined(out)) == 3


def test_prompt_injected_pdfs_never_yield_a_label_outside_the_schema(clinical_spec, student, tmp_path):
    inbox = tmp_path / "adversarial"
    inbox.mkdir()
    targets = []
    for i in range(8):
        case, target = synth.adversarial_case(i)
        targets.append(target)
        (inbox / case.name).write_bytes(synth.case_pdf(case, i))
    assert synth.OUT_OF_SET in targets and set(targets) & set(clinical_spec.output.labels)
    out = tmp_path / "bulk"
    bulk.bulk_label(_spec(clinical_spec, inbox), student, out=out, progress=False)
    rows = [r for f in bulk.committed(out, "labels") for r in lake.read_table(f).to_pylist()]
    assert len(rows) == 8
    for r in rows:
        assert r["label"] in clinical_spec.output.labels
        assert set(json.loads(r["ranked"])) <= set(clinical_spec.output.labels)
