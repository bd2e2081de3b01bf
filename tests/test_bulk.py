"""Bulk labeling: every valid PDF labeled exactly once, incrementally, across crashes."""

from __future__ import annotations

import json
import os
import random
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


@pytest.fixture(params=["lm", "static", "encoder"])
def any_student(request, student, clinical_spec, tiny_encoder_dir, tmp_path) -> Path:
    """A student of each kind: the tiny LM, or a probability model fitted on a few case reports."""
    if request.param == "lm":
        return student
    from distillery import members

    spec = clinical_spec.model_copy(update={"models": clinical_spec.models.model_copy(update={"encoder": str(tiny_encoder_dir)})})
    cases = [synth.make_case(i) for i in range(20)]
    items = [{"text": " ".join(synth._case_paragraphs(c, random.Random(i))), "answer": c.label}
             for i, c in enumerate(cases)]
    return members.save(members.make_member(request.param, spec).fit(items), tmp_path / request.param)


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
    assert result.counts == {"seen": 30, "skipped": 0, "labeled": 27, "quarantined": 3, "duplicates": 0}
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


def _rows_by_path(out: Path) -> dict[str, list[dict]]:
    """Every committed row, label or quarantine, under the path it names."""
    rows: dict[str, list[dict]] = {}
    for kind in ("labels", "quarantine"):
        for f in bulk.committed(out, kind):
            for r in lake.read_table(f).to_pylist():
                rows.setdefault(r["path"], []).append({**r, "kind": kind})
    return rows


def _pair(rows: dict[str, list[dict]], a: Path, b: Path) -> tuple[dict, dict]:
    """(twin, copy) of two byte-identical files: exactly one points at the other."""
    ra, rb = rows[str(a)][0], rows[str(b)][0]
    first, second = (ra, rb) if rb["duplicate_of"] == str(a) else (rb, ra)
    assert first["duplicate_of"] is None and second["duplicate_of"] == first["path"], (ra, rb)
    return first, second


def test_a_byte_identical_copy_gets_a_row_under_its_own_path(clinical_spec, inbox, student, tmp_path,
                                                             distillery_home):
    good, bad = inbox / "case-00000.pdf", inbox / "case-00019.pdf"  # a valid report and the encrypted one
    (inbox / "copies").mkdir()
    (inbox / "copies" / "same-report.pdf").write_bytes(good.read_bytes())
    (inbox / "copies" / "same-encrypted.pdf").write_bytes(bad.read_bytes())
    out = tmp_path / "bulk"
    spec = _spec(clinical_spec, inbox)
    result = bulk.bulk_label(spec, student, out=out, progress=False)
    rows = _rows_by_path(out)
    assert sorted(rows) == sorted(str(p) for p in inbox.rglob("*.pdf"))  # every path: a row
    assert all(len(r) == 1 for r in rows.values())  # and only one
    assert result.counts == {"seen": 32, "skipped": 0, "labeled": 27, "quarantined": 3, "duplicates": 2}
    # Files finish in any order: whichever of two copies came first is the twin the other points at.
    first, second = _pair(rows, inbox / "copies" / "same-report.pdf", good)
    assert first["kind"] == second["kind"] == "labels"
    assert (first["label"], first["probs"], first["sha256"]) == (second["label"], second["probs"], second["sha256"])
    first_bad, second_bad = _pair(rows, inbox / "copies" / "same-encrypted.pdf", bad)
    assert first_bad["kind"] == second_bad["kind"] == "quarantine" and first_bad["reason"] == second_bad["reason"] == "encrypted"
    lake.register(distillery_home, "clinical", result, cache_key="k", config_hash="c", inputs={},
                  started_at=lake.now(), views={"bulk_labels": [str(f) for f in bulk.committed(out, "labels")]})
    with lake.catalog(distillery_home, read_only=True) as con:  # the catalog finds it by path too
        found = con.execute("SELECT label, duplicate_of FROM bulk_labels WHERE path = ?",
                            [second["path"]]).fetchall()
    assert found == [(first["label"], first["path"])]

    (inbox / "later-copy.pdf").write_bytes(good.read_bytes())  # a copy of a file done in an earlier run
    again = bulk.bulk_label(spec, student, out=out, progress=False)
    assert again.counts == {"seen": 33, "skipped": 32, "labeled": 0, "quarantined": 0, "duplicates": 1}
    rows = _rows_by_path(out)
    assert len(rows) == 33 and all(len(r) == 1 for r in rows.values())
    assert rows[str(inbox / "later-copy.pdf")][0]["duplicate_of"] == first["path"]  # the one labeled


class _NoBar:
    def update(self, n: int) -> None:
        pass


def test_files_that_could_not_be_hashed_are_never_taken_for_copies(tmp_path):
    from distillery import pdf
    from distillery.bulk.ledger import Run

    run = Run(tmp_path, "r", 8, ({}, set()), "m", {"task": "t", "run_id": "r", "stage": "bulk"}, _NoBar())
    for name in ("s3://inbox/a.pdf", "s3://inbox/b.pdf"):  # remote reads that timed out: no bytes, no hash
        r = pdf.Extracted(name, "", 0, "timeout", "extraction took longer than 3 s", 0, "")
        assert run.fresh(r)
        run.add(r, None)
    run.finish()
    assert _quarantined(tmp_path) == {"a.pdf": "timeout", "b.pdf": "timeout"}
    assert run.counts == {"seen": 0, "skipped": 0, "labeled": 0, "quarantined": 2, "duplicates": 0}


HOLD_LOCK = """
import sys, time
from pathlib import Path
from distillery import bulk
with bulk.exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.integration
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


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_mid_run_then_rerun_labels_every_document_exactly_once(clinical_spec, inbox, any_student, tmp_path):
    student = any_student
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


# ---- sources, incremental runs, quarantine reasons, the Ray engine --------------------------------

def _by_hash(out: Path) -> dict[str, tuple[str, list[float]]]:
    rows = [r for f in bulk.committed(out, "labels") for r in lake.read_table(f).to_pylist()]
    return {r["sha256"]: (r["label"], json.loads(r["probs"])) for r in rows}


def _same_labels(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for h in a:
        assert a[h][0] == b[h][0]
        assert max(abs(x - y) for x, y in zip(a[h][1], b[h][1])) < 1e-4


def test_an_fsspec_memory_source_labels_like_the_local_folder(clinical_spec, inbox, student, tmp_path):
    import uuid

    import fsspec

    spec = _spec(clinical_spec, inbox)
    bulk.bulk_label(spec, student, out=tmp_path / "local", progress=False)
    fs = fsspec.filesystem("memory")
    root = f"/inbox-{uuid.uuid4().hex[:8]}"
    for f in sorted(inbox.iterdir()):
        fs.pipe(f"{root}/{'sub/' if f.name < 'case-00015' else ''}{f.name}", f.read_bytes())
    try:
        result = bulk.bulk_label(spec, student, out=tmp_path / "memory", source=f"memory://{root}", progress=False)
    finally:
        fs.rm(root, recursive=True)
    assert result.counts == {"seen": 30, "skipped": 0, "labeled": 27, "quarantined": 3, "duplicates": 0}
    assert all(p.startswith("memory://") for p in (r["path"] for f in bulk.committed(tmp_path / "memory", "labels")
                                                   for r in lake.read_table(f).to_pylist()))
    _same_labels(_by_hash(tmp_path / "local"), _by_hash(tmp_path / "memory"))
    assert sorted(_quarantined(tmp_path / "memory").values()) == sorted(_quarantined(tmp_path / "local").values())


def test_a_file_url_source_is_the_local_folder(clinical_spec, inbox, student, tmp_path):
    spec = _spec(clinical_spec, inbox)
    url = bulk.bulk_label(spec, student, out=tmp_path / "url", source=f"file://{inbox}", progress=False)
    assert url.counts["labeled"] == 27
    again = bulk.bulk_label(spec, student, out=tmp_path / "url", progress=False)  # same files, as a path
    assert again.counts == {"seen": 30, "skipped": 30, "labeled": 0, "quarantined": 0, "duplicates": 0}


def test_a_hundred_new_pdfs_in_a_labeled_inbox_are_the_only_ones_labeled(clinical_spec, inbox, student, tmp_path):
    out = tmp_path / "bulk"
    spec = _spec(clinical_spec, inbox, shard_size=32)
    bulk.bulk_label(spec, student, out=out, progress=False)
    before = set(_labeled(out))
    new = {}
    for i in range(1000, 1100):
        data = synth.case_pdf(synth.make_case(i), i)
        (inbox / f"new-{i}.pdf").write_bytes(data)
        new[i] = data
    again = bulk.bulk_label(spec, student, out=out, progress=False)
    assert again.counts == {"seen": 130, "skipped": 30, "labeled": 100, "quarantined": 0, "duplicates": 0}
    added = set(_labeled(out)) - before
    assert len(added) == 100 and len(_labeled(out)) == len(set(_labeled(out))) == 127
    import hashlib
    assert added == {hashlib.sha256(d).hexdigest() for d in new.values()}


def test_every_quarantine_reason_is_recorded_and_summarized(clinical_spec, student, tmp_path):
    import os as _os

    folder = tmp_path / "hostile"
    folder.mkdir()
    good = synth.case_pdf(synth.make_case(0), 0)
    (folder / "good.pdf").write_bytes(good)
    (folder / "corrupt.pdf").write_bytes(synth.corrupt_bytes(1))
    (folder / "encrypted.pdf").write_bytes(synth.encrypted_pdf(synth.case_pdf(synth.make_case(2), 2)))
    (folder / "empty.pdf").write_bytes(synth.zero_page_pdf())
    (folder / "image_only.pdf").write_bytes(synth.image_only_pdf(synth.case_pdf(synth.make_case(3), 3)))
    (folder / "not_pdf.pdf").write_bytes(b"just some text, no PDF in sight\n" * 20)
    (folder / "oversize.pdf").write_bytes(good + b"%" + b"0" * 200_000)
    _os.mkfifo(folder / "timeout.pdf")  # reading it blocks forever
    spec = _spec(clinical_spec, folder)
    spec = spec.model_copy(update={"ingest": spec.ingest.model_copy(update={"timeout_s": 3.0, "max_file_mb": 0.1})})
    out = tmp_path / "bulk"
    result = bulk.bulk_label(spec, student, out=out, progress=False)
    reasons = ["corrupt", "empty", "encrypted", "image_only", "not_pdf", "oversize", "timeout"]
    assert {name.removesuffix(".pdf"): reason for name, reason in _quarantined(out).items()} == {r: r for r in reasons}
    assert result.counts == {"seen": 8, "skipped": 0, "labeled": 1, "quarantined": 7, "duplicates": 0}
    assert result.metrics["quarantine_by_reason"] == {r: 1 for r in reasons}
    assert result.metrics["engine"] == "local" and result.metrics["docs_per_s"] > 0


def test_the_run_summary_lands_in_the_bulk_runs_view(clinical_spec, inbox, student, tmp_path, distillery_home):
    out = tmp_path / "bulk"
    result = bulk.bulk_label(_spec(clinical_spec, inbox), student, out=out, progress=False)
    lake.register(distillery_home, "clinical", result, cache_key="k", config_hash="c", inputs={},
                  started_at=lake.now(), views={"bulk_labels": [str(f) for f in bulk.committed(out, "labels")]})
    with lake.catalog(distillery_home, read_only=True) as con:
        row = con.execute("SELECT seen, skipped, labeled, quarantined, engine, docs_per_s, quarantine_by_reason "
                          "FROM bulk_runs WHERE run_id = ?", [result.run_id]).fetchone()
    assert row[:5] == (30, 0, 27, 3, "local") and row[5] > 0
    assert json.loads(row[6]) == {"corrupt": 1, "empty": 1, "encrypted": 1}


def test_the_progress_bar_knows_the_total_of_a_small_local_source(inbox):
    from distillery import sources

    assert sources.count_pdfs(inbox, bulk.COUNT_LIMIT) == 30
    assert sources.count_pdfs(inbox, 10) is None  # too many to count first: docs/s without an ETA
    assert sources.count_pdfs("memory://nowhere", 10) is None
