"""Which text of a document the models read, and reading no more of it than that.

A window is a strategy, a character budget and a page cap (`ingest.read` in the spec):
- `head`: the first `chars` characters;
- `after_front`: the first `chars` characters after the front matter. The body starts at the first
  run of three prose lines (40+ characters, not a table-of-contents entry), so title blocks, near-empty
  pages and contents pages are skipped; a document with no such run falls back to `head`;
- `head_middle`: the first half of the budget from the start, the second half from the middle page on.

`choose` asks for pages one at a time and stops once the window is full, so a 1,000-page manual costs
what its first pages cost. The chosen text is whitespace-collapsed: what the models read, and no more.
With `chars: null` the window keeps every page it reads, separated by PAGE_BREAK, and the strategy
picks from those pages when a prompt is rendered (`choose_from_pages`).
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

STRATEGIES = ("head", "after_front", "head_middle")
PAGE_BREAK = "\f"  # pdf.py strips form feeds from page text, so this marks only page boundaries
GAP = " … "  # between the head and the middle sample: the model sees that text was left out
_BODY_LINE = 40
_BODY_RUN = 3
_TOC_LINE = re.compile(r"(?:\.\s*){3,}|\s\d{1,4}\s*$|^\s*(?:table of )?contents\s*$", re.IGNORECASE)


class Read(Protocol):
    """The window's settings (spec.IngestSpec.read)."""

    strategy: str
    chars: int | None
    pages: int | None


def collapse(text: str) -> str:
    return " ".join(text.split())


def _nonspace(text: str) -> int:
    return len(text) - sum(ch.isspace() for ch in text)


def body_start(text: str) -> int | None:
    """Offset of the first line of the first run of prose lines, None when the text has none yet."""
    run, start, offset = 0, 0, 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if len(stripped) >= _BODY_LINE and not _TOC_LINE.search(stripped):
            start = offset if run == 0 else start
            run += 1
            if run >= _BODY_RUN:
                return start
        else:
            run = 0
        offset += len(line)
    return None


class _Pages:
    """The pages of one document read so far, in order, with the non-space characters among them."""

    def __init__(self, page_text: Callable[[int], str], count: int, min_chars: int):
        self.page_text, self.count, self.min_chars = page_text, count, min_chars
        self.texts: list[str] = []
        self.nonspace = 0

    def take(self, numbers: range, part: Callable[[str], str], chars: int | None, cap: int | None) -> str:
        """The window's part of pages `numbers`, read in order until `chars` characters or `cap` pages.

        `part(page)` is what a page adds to the window (collapsed text). While fewer than min_chars
        characters have turned up, reading goes on past the cap: an image-only verdict needs it.
        """
        parts: list[str] = []
        length = read = 0
        for number in numbers:
            enough = (chars is not None and length >= chars) or (cap is not None and read >= cap)
            if read and enough and self.nonspace >= self.min_chars:
                break
            text = self.page_text(number)
            self.texts.append(text)
            self.nonspace += _nonspace(text)
            read += 1
            piece = part(text)
            if piece:
                length += len(piece) + bool(parts)
                parts.append(piece)
        return " ".join(parts)


def choose(page_text: Callable[[int], str], count: int, read: Read, *, min_chars: int = 0) -> tuple[str, int, int]:
    """(text, pages read, non-space characters read) of a document of `count` pages.

    `page_text(n)` gives page n's text (0-based) and may raise; it is called only for the pages the
    window needs.
    """
    pages = _Pages(page_text, count, min_chars)
    if read.chars is None:
        pages.take(range(count), lambda text: "", None, read.pages)
        return PAGE_BREAK.join(pages.texts), len(pages.texts), pages.nonspace
    chosen = _STRATEGY[read.strategy](pages, read.chars, read.pages)
    return chosen, len(pages.texts), pages.nonspace


def choose_from_pages(texts: Sequence[str], strategy: str, chars: int) -> str:
    """The window's text from pages already read (a document kept whole, rendered into a prompt)."""
    return _STRATEGY[strategy](_Pages(lambda n: texts[n], len(texts), 0), chars, None)


def _head(pages: _Pages, chars: int, cap: int | None) -> str:
    return pages.take(range(pages.count), collapse, chars, cap)[:chars]


def _after_front(pages: _Pages, chars: int, cap: int | None) -> str:
    found = False

    def body(text: str) -> str:
        nonlocal found
        if not found:
            start = body_start(text)
            if start is None:
                return ""
            found, text = True, text[start:]
        return collapse(text)

    text = pages.take(range(pages.count), body, chars, cap)
    return (text if found else collapse(" ".join(pages.texts)))[:chars]


def _head_middle(pages: _Pages, chars: int, cap: int | None) -> str:
    middle = pages.count // 2
    head_chars = chars - chars // 2
    head_cap = None if cap is None else max(1, cap // 2)
    head = pages.take(range(middle or pages.count), collapse, head_chars, head_cap)[:head_chars]
    start = max(middle, len(pages.texts))
    if middle == 0 or start >= pages.count:
        return head
    tail_chars = chars - len(head) - len(GAP)
    tail_cap = None if cap is None else max(1, cap - len(pages.texts))
    tail = pages.take(range(start, pages.count), collapse, tail_chars, tail_cap)[:tail_chars]
    return head + GAP + tail if head and tail else head or tail


_STRATEGY = {"head": _head, "after_front": _after_front, "head_middle": _head_middle}
