from __future__ import annotations

import hashlib
import os
import re
import threading

import pymupdf
import pytest

from distillery import pdf, synth
from distillery.pdf import VERDICTS, classify_bytes, extract_file, extract_many, sha256_file


def _png() -> bytes:
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 32, 32), False)
    pix.clear_with(200)
    return pix.tobytes("png")


@pytest.fixture(scope="module")
def bad_files(good_bytes) -> dict[str, bytes]:
    """Bytes of one file per non-ok verdict that classify_bytes can give, keyed by that verdict."""
    return {
        "corrupt": synth.corrupt_bytes(7),
        "encrypted": synth.encrypted_pdf(good_bytes),
        "empty": synth.zero_page_pdf(),
        "image_only": synth.image_only_pdf(good_bytes),
        "not_pdf": b"Dear customer, please find the invoice attached.\n" * 20,
    }


def _write(folder, name, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


# ---- classify_bytes ----------------------------------------------------------------------------

def test_valid_pdf_is_ok_with_its_pages_and_text(good_bytes):
    verdict, reason, pages, text = classify_bytes(good_bytes)
    assert verdict == "ok" and reason == ""
    assert pages == 2
    assert "Case Report 00000" in text and "Investigations" in text


@pytest.mark.parametrize("verdict", ["corrupt", "encrypted", "empty", "image_only", "not_pdf"])
def test_bad_file_gets_its_verdict_a_reason_and_no_text(bad_files, verdict):
    got, reason, _, text = classify_bytes(bad_files[verdict])
    assert got == verdict
    assert reason
    assert text == ""


def test_encrypted_pdf_is_encrypted_not_corrupt(good_bytes):
    assert classify_bytes(synth.encrypted_pdf(good_bytes))[0] == "encrypted"


def _standard_encrypted(xref_stream: bool = False) -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A short letter that nobody without the key should read.")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_RC4_128, user_pw="", owner_pw="owner", use_objstms=xref_stream)


def test_public_key_encryption_is_encrypted_not_corrupt():
    data = re.sub(rb"/Filter\s*/Standard", b"/Filter/Adobe.PubSec/SubFilter/adbe.pkcs7.s5", _standard_encrypted())
    verdict, reason, _, _ = classify_bytes(data)
    assert verdict == "encrypted"
    assert "Adobe.PubSec" in reason  # MuPDF's own words: an encryption handler it does not know


def test_an_encryption_dictionary_without_its_owner_key_is_encrypted():
    data = re.sub(rb"/O\s*<[0-9A-Fa-f]+>", b"", _standard_encrypted())
    verdict, reason, _, _ = classify_bytes(data)
    assert verdict == "encrypted" and "owner password" in reason


@pytest.mark.parametrize("xref_stream", [False, True], ids=["trailer", "xref-stream"])
def test_encryption_is_read_from_the_trailer_when_mupdfs_error_does_not_name_it(xref_stream):
    data = re.sub(rb"/R\s*\d", b"/R 9", _standard_encrypted(xref_stream), count=1)  # MuPDF: "unknown crypt revision 9"
    verdict, reason, _, _ = classify_bytes(data)
    assert verdict == "encrypted" and "crypt revision 9" in reason


def test_a_file_that_does_not_open_says_why_in_mupdfs_words():
    verdict, reason, _, _ = classify_bytes(synth.corrupt_bytes(0))
    assert verdict == "corrupt"
    assert "Failed to open stream" not in reason
    assert reason.startswith("does not open: no objects found (MuPDF: ")


def test_a_repaired_file_carries_mupdfs_warning():
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Enough text to be a real document, and then a good deal more of it.")
    data = re.sub(rb"/Size\s*\d+", lambda m: b" " * len(m.group(0)), doc.tobytes(use_objstms=1), count=1)
    verdict, reason, _, _ = classify_bytes(data)
    assert verdict == "ok" and "xref stream missing Size entry" in reason


def test_page_numbers_in_a_reason_are_one_based_and_agree_with_the_count():
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "One real page of text, though the page tree claims three.")
    data = doc.tobytes().replace(b"/Count 1", b"/Count 3")
    verdict, reason, pages, _ = classify_bytes(data)
    assert verdict == "corrupt" and pages == 3
    numbers = {int(n) for n in re.findall(r"page (\d+)", reason)}
    assert len(numbers) == 1 and 2 <= numbers.pop() <= 3, reason  # never "page 2 of 3 fails: page 1 not in ..."


def test_image_is_not_a_pdf_even_though_pymupdf_opens_it():
    assert classify_bytes(_png())[0] == "not_pdf"


@pytest.mark.parametrize("data", [b"", b"hello", b"\x00" * 5000])
def test_tiny_or_blank_files_are_not_pdfs(data):
    assert classify_bytes(data)[0] == "not_pdf"


def test_header_alone_is_corrupt_not_ok():
    assert classify_bytes(b"%PDF-1.7\n")[0] == "corrupt"


def test_junk_before_the_header_within_the_first_kilobyte_is_tolerated(good_bytes):
    verdict, _, pages, text = classify_bytes(b"\x00junk " * 100 + good_bytes)
    assert verdict == "ok" and pages == 2 and "Case Report" in text


def test_pdf_that_lost_its_header_is_still_read(good_bytes):
    headerless = good_bytes.replace(b"%PDF-", b"%XXX-", 1)
    verdict, reason, pages, _ = classify_bytes(headerless)
    assert verdict == "ok" and pages == 2
    assert reason.startswith("repaired") and "cannot find version marker" in reason  # MuPDF's own words


def test_too_little_text_is_image_only(good_bytes):
    verdict, reason, pages, text = classify_bytes(good_bytes, min_chars=1_000_000)
    assert verdict == "image_only" and pages == 2 and text == ""
    assert "characters" in reason


def test_min_chars_zero_accepts_a_page_without_text(good_bytes):
    assert classify_bytes(synth.image_only_pdf(good_bytes), min_chars=0)[0] == "ok"


# ---- extract_file ------------------------------------------------------------------------------

def test_extract_file_records_size_and_sha256_of_the_bytes(tmp_path, good_bytes):
    path = _write(tmp_path, "a.pdf", good_bytes)
    row = extract_file(path)
    assert row.verdict == "ok"
    assert row.path == path
    assert row.bytes == len(good_bytes)
    assert row.sha256 == hashlib.sha256(good_bytes).hexdigest() == sha256_file(path)


def test_file_over_max_bytes_is_oversize_and_not_parsed(tmp_path, good_bytes):
    row = extract_file(_write(tmp_path, "big.pdf", good_bytes), max_bytes=1000)
    assert row.verdict == "oversize"
    assert "1000" in row.reason
    assert row.pages == 0 and row.text == ""
    assert row.sha256 == hashlib.sha256(good_bytes).hexdigest()


def test_file_at_exactly_max_bytes_is_not_oversize(tmp_path, good_bytes):
    assert extract_file(_write(tmp_path, "a.pdf", good_bytes), max_bytes=len(good_bytes)).verdict == "ok"


def test_extract_file_never_raises_for_a_bad_file(tmp_path, bad_files):
    for verdict, data in bad_files.items():
        assert extract_file(_write(tmp_path, f"{verdict}.pdf", data)).verdict == verdict


def test_extract_file_reports_a_crash_inside_extraction_as_corrupt(tmp_path, good_bytes, monkeypatch):
    def boom(data, **_):
        raise MemoryError("page too large")

    monkeypatch.setattr(pdf, "classify_bytes", boom)
    row = extract_file(_write(tmp_path, "a.pdf", good_bytes))
    assert row.verdict == "corrupt" and "MemoryError" in row.reason


def test_extracted_row_is_a_plain_dict_of_its_fields(tmp_path, good_bytes):
    row = extract_file(_write(tmp_path, "a.pdf", good_bytes)).row()
    assert set(row) == {"path", "sha256", "bytes", "verdict", "reason", "pages", "text"}


# ---- extract_many ------------------------------------------------------------------------------

def test_extract_many_yields_one_verdict_per_file_in_input_order(tmp_path, good_bytes, bad_files):
    paths = [_write(tmp_path, f"{verdict}.pdf", data) for verdict, data in bad_files.items()]
    paths.insert(2, _write(tmp_path, "good.pdf", good_bytes))
    rows = list(extract_many(paths, workers=2, timeout_s=30, window=3))
    assert [r.path for r in rows] == paths
    assert [r.verdict for r in rows] == ["corrupt", "encrypted", "ok", "empty", "image_only", "not_pdf"]
    assert all(r.verdict in VERDICTS for r in rows)


def test_extract_many_applies_max_bytes(tmp_path, good_bytes):
    (row,) = extract_many([_write(tmp_path, "a.pdf", good_bytes)], workers=1, max_bytes=100)
    assert row.verdict == "oversize"


def test_hung_file_times_out_and_the_other_files_still_get_verdicts(tmp_path, good_bytes):
    hung = tmp_path / "hung.pdf"
    os.mkfifo(hung)  # opening a named pipe for reading blocks until a writer comes: it never does
    paths = [_write(tmp_path, "a.pdf", good_bytes), str(hung), _write(tmp_path, "b.pdf", synth.zero_page_pdf()),
             _write(tmp_path, "c.pdf", good_bytes)]
    result = {}
    consumer = threading.Thread(target=lambda: result.update(rows=list(extract_many(paths, workers=1, timeout_s=2))),
                                daemon=True)
    consumer.start()
    consumer.join(30)
    if consumer.is_alive():  # fail rather than hang the suite: let a writer in so the blocked reader sees EOF
        os.close(os.open(hung, os.O_WRONLY | os.O_NONBLOCK))
        consumer.join(10)
        pytest.fail("extract_many hung on a file that never finishes reading")
    rows = result["rows"]
    assert [r.verdict for r in rows] == ["ok", "timeout", "empty", "ok"]
    assert "2 s" in rows[1].reason
    assert rows[1].pages == 0 and rows[1].text == ""


def test_extract_many_of_nothing_yields_nothing():
    assert list(extract_many([], workers=1)) == []
