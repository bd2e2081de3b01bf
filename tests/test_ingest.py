from __future__ import annotations

import hashlib

import pytest
import yaml

from conftest import CLINICAL_YAML
from distillery import lake, synth
from distillery.errors import SpecPathError
from distillery.ingest import ingest
from distillery.sources import list_pdfs, source_hash
from distillery.spec import parse_spec


def _spec(source, **ingest_cfg):
    raw = yaml.safe_load(CLINICAL_YAML.read_text())
    raw.pop("profiles")
    raw["source"] = str(source)
    raw["ingest"] = {"workers": 2, "timeout_s": 20, **ingest_cfg}
    return parse_spec(raw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three good case reports (one also copied twice), and one file per kind of bad file."""
    root = tmp_path_factory.mktemp("corpus")
    good = [synth.case_pdf(synth.make_case(i), i) for i in range(3)]
    files = {
        "a/case-0.pdf": good[0],
        "a/case-1.pdf": good[1],
        "b/case-2.PDF": good[2],
        "b/copy-of-case-0.pdf": good[0],
        "c/again/case-0.pdf": good[0],
        "bad/corrupt.pdf": synth.corrupt_bytes(1),
        "bad/encrypted.pdf": synth.encrypted_pdf(good[0]),
        "bad/empty.pdf": synth.zero_page_pdf(),
        "bad/scan.pdf": synth.image_only_pdf(good[1]),
        "bad/letter.pdf": b"Not a PDF at all, just a letter.\n" * 10,
        "notes.txt": b"not listed: not a .pdf",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def ingested(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    result = ingest(_spec(corpus), out=out, run_id="ingest-test")
    docs = lake.read_table(result.path("documents")).to_pandas()
    quarantine = lake.read_table(result.path("quarantine")).to_pandas()
    return result, docs, quarantine


def test_list_pdfs_walks_folders_in_sorted_order_and_keeps_only_pdfs(corpus):
    names = [p.removeprefix(str(corpus) + "/") for p in list_pdfs(corpus)]
    assert names == ["a/case-0.pdf", "a/case-1.pdf", "b/case-2.PDF", "b/copy-of-case-0.pdf", "bad/corrupt.pdf",
                     "bad/empty.pdf", "bad/encrypted.pdf", "bad/letter.pdf", "bad/scan.pdf", "c/again/case-0.pdf"]


def test_list_pdfs_accepts_a_glob(corpus):
    assert [p.removeprefix(str(corpus) + "/") for p in list_pdfs(f"{corpus}/a/*.pdf")] == ["a/case-0.pdf",
                                                                                               "a/case-1.pdf"]


def test_list_pdfs_of_a_missing_folder_is_a_spec_path_error_naming_the_field(tmp_path):
    with pytest.raises(SpecPathError) as err:
        list(list_pdfs(tmp_path / "nope", field="bulk.source"))
    assert (err.value.field, err.value.value) == ("bulk.source", str(tmp_path / "nope"))
    assert "set `bulk.source:` in the spec" in str(err.value)


def test_ingesting_a_missing_source_folder_names_the_source_field_and_the_fix(tmp_path):
    with pytest.raises(SpecPathError) as err:
        ingest(_spec(tmp_path / "nope"), out=tmp_path / "out")
    assert str(err.value).startswith(f"source: '{tmp_path / 'nope'}' is not a folder")
    assert "create the folder, or set `source:`" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_fsspec_source_is_a_spec_path_error():
    with pytest.raises(SpecPathError, match="memory://no/such/folder"):
        list(list_pdfs("memory://no/such/folder"))


def test_source_hash_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.pdf").write_bytes(b"one")
    before = source_hash(tmp_path)
    assert source_hash(tmp_path) == before
    (tmp_path / "a.pdf").write_bytes(b"two")
    assert source_hash(tmp_path) != before


def test_good_files_become_documents_keyed_by_sha256(ingested, corpus):
    _, docs, _ = ingested
    assert len(docs) == 3
    for row in docs.itertuples():
        assert row.sha256 == hashlib.sha256((corpus / row.path).read_bytes()).hexdigest()
        assert row.pages == 2 and row.chars == len(row.text) > 0
        assert "Case Report" in row.text


def test_duplicates_collapse_into_one_document_and_are_counted(ingested, corpus):
    result, docs, _ = ingested
    first = docs[docs.sha256 == hashlib.sha256((corpus / "a/case-0.pdf").read_bytes()).hexdigest()].iloc[0]
    assert first.path == str(corpus / "a/case-0.pdf")  # the first path of its hash
    assert first["name"] == "case-0.pdf"
    assert first.copies == 3
    assert result.counts["duplicates"] == 2


def test_bad_files_are_quarantined_with_their_reason(ingested, corpus):
    _, _, quarantine = ingested
    reasons = {p.removeprefix(str(corpus) + "/"): r for p, r in zip(quarantine.path, quarantine.reason)}
    assert reasons == {"bad/corrupt.pdf": "corrupt", "bad/encrypted.pdf": "encrypted", "bad/empty.pdf": "empty",
                       "bad/scan.pdf": "image_only", "bad/letter.pdf": "not_pdf"}
    assert all(quarantine.detail.str.len() > 0)


def test_every_listed_file_is_a_document_a_duplicate_or_quarantined(ingested, corpus):
    result, docs, quarantine = ingested
    listed = len(list(list_pdfs(corpus)))
    assert int(docs.copies.sum()) + len(quarantine) == listed
    assert result.counts == {"documents": 3, "quarantined": 5, "duplicates": 2}


def test_quarantine_is_summarised_by_reason(ingested):
    result, _, _ = ingested
    assert result.metrics["quarantine_by_reason"] == {"corrupt": 1, "encrypted": 1, "empty": 1, "image_only": 1,
                                                      "not_pdf": 1}


def test_rows_carry_task_run_and_stage(ingested):
    _, docs, quarantine = ingested
    for table in (docs, quarantine):
        assert set(table.task) == {"clinical"} and set(table.run_id) == {"ingest-test"} and set(table.stage) == {"ingest"}


def test_outputs_are_written_under_out(ingested):
    result, _, _ = ingested
    assert result.path("documents").name == "documents.parquet"
    assert result.path("quarantine").parent == result.path("documents").parent
    assert result.stage == "ingest"


def test_files_over_max_file_mb_are_quarantined_as_oversize(corpus, tmp_path):
    result = ingest(_spec(f"{corpus}/a/*.pdf", max_file_mb=0.001), out=tmp_path)
    quarantine = lake.read_table(result.path("quarantine")).to_pandas()
    assert list(quarantine.reason) == ["oversize", "oversize"]
    assert result.counts["documents"] == 0


def test_empty_source_writes_empty_tables(tmp_path):
    (tmp_path / "pdfs").mkdir()
    result = ingest(_spec(tmp_path / "pdfs"), out=tmp_path / "out")
    docs = lake.read_table(result.path("documents"))
    assert docs.num_rows == 0
    assert {"sha256", "path", "text", "copies"} <= set(docs.column_names)
    assert result.counts == {"documents": 0, "quarantined": 0, "duplicates": 0}


def _long_pdf(pages: int) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for n in range(1, pages + 1):
        doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 550, 800), f"Page {n}. " + "A line of real prose. " * 60)
    return doc.tobytes()


def test_documents_keep_the_window_the_prompt_reads_not_the_whole_text(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "long.pdf").write_bytes(_long_pdf(120))
    result = ingest(_spec(tmp_path / "src"), out=tmp_path / "out", run_id="ingest-window")
    (doc,) = lake.read_table(result.path("documents")).to_pylist()
    assert doc["pages"] == 120 and doc["chars"] == 320  # the clinical spec's prompts.max_doc_chars
    assert doc["text"].startswith("Page 1. A line of real prose.") and "Page 2." not in doc["text"]


def test_documents_keep_every_page_when_the_spec_asks(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "long.pdf").write_bytes(_long_pdf(30))
    spec = _spec(tmp_path / "src", read={"chars": None, "pages": None})
    result = ingest(spec, out=tmp_path / "out", run_id="ingest-whole")
    (doc,) = lake.read_table(result.path("documents")).to_pylist()
    assert doc["text"].count("\f") == 29 and "Page 30." in doc["text"]
