"""The window of text a document is read through: strategies, and reading no more pages than it needs."""

from __future__ import annotations

import pymupdf
import pytest

from distillery import excerpt, pdf
from distillery.spec import ReadSpec

TITLE = "The Widget Manual\nJane Doe\nVersion 2.1\n2024/05/01"
CONTENTS = "Contents\n1 Introduction . . . . . . . . . . . . . 3\n2 Usage . . . . . . . . . . . . . . 4\n3 Options 7"
PROSE = ("The widget package balances the load across every spindle of the machine and reports each fault "
         "to the operator as soon as it is seen, so that no fault goes unnoticed for long. ")


def _pdf(pages: list[str]) -> bytes:
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        if text:
            page.insert_textbox(pymupdf.Rect(50, 50, 550, 800), text, fontsize=10)
    return doc.tobytes()


def _manual(body_pages: int) -> bytes:
    """A title page, a contents page, then prose pages that each name their own page number."""
    body = [f"Chapter page {n}. " + PROSE * 4 for n in range(3, body_pages + 3)]
    return _pdf([TITLE, CONTENTS, *body])


@pytest.fixture
def get_text_calls(monkeypatch) -> list[int]:
    """The page numbers PyMuPDF extracted text from, in order."""
    calls: list[int] = []
    original = pymupdf.Page.get_text

    def counted(self, *args, **kwargs):
        calls.append(self.number)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "get_text", counted)
    return calls


# ---- the window stops early --------------------------------------------------------------------

def test_a_300_page_pdf_is_read_only_as_far_as_the_window(get_text_calls):
    data = _pdf([f"Page {n} " + PROSE * 3 for n in range(1, 301)])
    verdict, _, pages, text = pdf.classify_bytes(data, read=ReadSpec(strategy="head", chars=320, pages=10))
    assert verdict == "ok" and pages == 300
    assert get_text_calls == [0]
    assert text.startswith("Page 1 The widget package") and len(text) == 320


def test_the_page_cap_bounds_pages_read_when_the_characters_never_fill(get_text_calls):
    data = _pdf([f"Page {n} short." for n in range(1, 301)])  # far fewer characters than asked for
    verdict, _, _, text = pdf.classify_bytes(data, read=ReadSpec(chars=5000, pages=7), min_chars=10)
    assert verdict == "ok"
    assert get_text_calls == list(range(7))
    assert text.startswith("Page 1 short.") and "Page 7 short." in text and "Page 8" not in text


def test_full_text_is_kept_only_when_the_spec_asks(get_text_calls):
    data = _pdf([f"Page {n} " + PROSE for n in range(1, 301)])
    verdict, _, _, text = pdf.classify_bytes(data, read=ReadSpec(chars=None, pages=None))
    assert verdict == "ok"
    assert len(get_text_calls) == 300
    assert text.count(excerpt.PAGE_BREAK) == 299 and "Page 300 " in text


def test_image_only_pages_are_read_past_the_cap_until_text_turns_up():
    data = _pdf([""] * 12 + ["Late text: " + PROSE])
    verdict, _, pages, text = pdf.classify_bytes(data, read=ReadSpec(chars=320, pages=4))
    assert verdict == "ok" and pages == 13 and text.startswith("Late text:")


def test_a_document_without_text_is_image_only_whatever_the_cap():
    verdict, reason, pages, _ = pdf.classify_bytes(_pdf([""] * 12), read=ReadSpec(chars=320, pages=4))
    assert verdict == "image_only" and pages == 12
    assert reason == "0 characters of text on 12 page(s)"


def test_a_page_count_that_lies_beyond_the_window_is_still_corrupt():
    data = _pdf([PROSE * 3]).replace(b"/Count 1", b"/Count 3")
    verdict, reason, pages, _ = pdf.classify_bytes(data, read=ReadSpec(chars=320, pages=10))
    assert verdict == "corrupt" and pages == 3
    assert reason.startswith("page 3 of 3 fails")


# ---- strategies --------------------------------------------------------------------------------

def test_head_starts_at_the_title_page():
    text = pdf.classify_bytes(_manual(4), read=ReadSpec(strategy="head", chars=400))[3]
    assert text.startswith("The Widget Manual Jane Doe")


def test_after_front_skips_the_title_page_and_the_contents():
    text = pdf.classify_bytes(_manual(4), read=ReadSpec(strategy="after_front", chars=400))[3]
    assert text.startswith("Chapter page 3. The widget package")
    assert len(text) == 400


def test_after_front_falls_back_to_the_head_when_no_prose_is_found():
    text = pdf.classify_bytes(_pdf([TITLE, CONTENTS]), read=ReadSpec(strategy="after_front", chars=400))[3]
    assert text.startswith("The Widget Manual Jane Doe") and "Contents" in text


def test_head_middle_takes_half_from_the_start_and_half_from_the_middle_page(get_text_calls):
    text = pdf.classify_bytes(_manual(18), read=ReadSpec(strategy="head_middle", chars=400))[3]
    head, middle = text.split(excerpt.GAP)
    assert head.startswith("The Widget Manual") and len(head) == 200
    assert middle.startswith("Chapter page 11. The widget")  # page 11 of 20 is the middle one
    assert len(text) == 400
    assert get_text_calls == [0, 1, 2, 10]  # the head fills on page 3; the middle fills on its first page


def test_head_middle_of_a_one_page_document_is_its_head():
    text = pdf.classify_bytes(_pdf([PROSE * 3]), read=ReadSpec(strategy="head_middle", chars=300))[3]
    assert excerpt.GAP not in text and text.startswith("The widget package") and len(text) == 150


def test_choose_from_pages_equals_the_window_read_at_extraction():
    data = _manual(18)
    whole = pdf.classify_bytes(data, read=ReadSpec(chars=None, pages=None))[3]
    for strategy in excerpt.STRATEGIES:
        windowed = pdf.classify_bytes(data, read=ReadSpec(strategy=strategy, chars=400, pages=None))[3]
        assert excerpt.choose_from_pages(whole.split(excerpt.PAGE_BREAK), strategy, 400) == windowed


def test_body_start_ignores_contents_lines_with_dot_leaders():
    toc = "\n".join(f"{n} A long section title that goes on and on . . . . . . . {n + 2}" for n in range(1, 6))
    prose = "\n".join(["This paragraph is the first real prose line of the document body."] * 3)
    text = f"{toc}\n{prose}"
    assert text[excerpt.body_start(text):].startswith("This paragraph")
    assert excerpt.body_start(toc) is None
