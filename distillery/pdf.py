"""PDF ingestion: a verdict and the text for every file, in worker processes with a per-file timeout.

Verdicts: ok, corrupt, encrypted, empty, image_only, not_pdf, oversize, timeout. The checks are
the ones a careful engineer makes rather than "did PyMuPDF open it": the `%PDF-` header (PyMuPDF
happily opens images and text files), encryption (also when it only surfaces as an open failure),
errors caught per page (a page can fail where the document opened), a page count that lies, and a
repair that leaves no pages. A file that repairs cleanly and yields real text is ok.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pymupdf

VERDICTS = ("ok", "corrupt", "encrypted", "empty", "image_only", "not_pdf", "oversize", "timeout")
_OBJECT = re.compile(rb"-?\d+\s+-?\d+\s+obj\s*(?:<<|\[)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NULs from broken font encodings are not text
_HEADER_WINDOW = 1024  # the PDF spec lets junk precede %PDF- within the first 1 KiB


@dataclass(frozen=True)
class Extracted:
    path: str
    sha256: str
    bytes: int
    verdict: str
    reason: str
    pages: int
    text: str

    def row(self) -> dict:
        return asdict(self)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _encrypted_error(err: Exception) -> bool:
    msg = str(err).lower()
    return any(w in msg for w in ("password", "encrypt", "security handler", "decrypt"))


def _looks_like_pdf(data: bytes) -> bool:
    """A PDF that lost its header (fuzzers do this) still has numbered objects: `12 0 obj <<`."""
    return _OBJECT.search(data, 0, 1 << 20) is not None


def classify_bytes(data: bytes, *, min_chars: int = 50) -> tuple[str, str, int, str]:
    """(verdict, reason, pages, text) for the bytes of one file."""
    headerless = b"%PDF-" not in data[:_HEADER_WINDOW]
    if headerless and not _looks_like_pdf(data):
        return "not_pdf", "no %PDF- header and no PDF object syntax", 0, ""
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as err:  # MuPDF raises a zoo of types for broken files
        if _encrypted_error(err):
            return "encrypted", f"open failed on encryption: {err}", 0, ""
        return "corrupt", f"does not open: {err}", 0, ""
    with doc:
        if not doc.is_pdf:
            return "not_pdf", "opened, but not as a PDF", 0, ""
        if doc.needs_pass and not doc.authenticate(""):
            return "encrypted", "needs a password", 0, ""
        try:
            pages = doc.page_count
        except Exception as err:
            return "corrupt", f"page tree unreadable: {err}", 0, ""
        if pages == 0:
            if doc.is_repaired:
                return "corrupt", "repairs to zero pages", 0, ""
            return "empty", "the document has no pages", 0, ""
        texts = []
        for number in range(pages):
            try:
                texts.append(doc[number].get_text("text"))
            except Exception as err:
                return "corrupt", f"page {number + 1} of {pages} fails: {err}", pages, ""
        text = _CONTROL.sub("", "\n".join(texts))
        chars = len("".join(text.split()))
        if chars < min_chars:
            return "image_only", f"{chars} characters of text on {pages} page(s)", pages, ""
        reason = "repaired" if doc.is_repaired else ""
        return "ok", reason, pages, text


def extract_file(path: str, *, max_bytes: int | None = None, min_chars: int = 50) -> Extracted:
    """Classify and extract one file; never raises for a bad file."""
    size = os.path.getsize(path)
    digest = sha256_file(path)
    if max_bytes is not None and size > max_bytes:
        return Extracted(path, digest, size, "oversize", f"{size} bytes > limit {max_bytes}", 0, "")
    try:
        data = Path(path).read_bytes()
        verdict, reason, pages, text = classify_bytes(data, min_chars=min_chars)
    except Exception as err:
        verdict, reason, pages, text = "corrupt", f"extraction failed: {type(err).__name__}: {err}", 0, ""
    return Extracted(path, digest, size, verdict, reason, pages, text)


def _timeout_row(path: str, timeout_s: float) -> Extracted:
    # isfile, not exists: reading a FIFO or device here would hang the parent the worker was killed for
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    digest = sha256_file(path) if os.path.isfile(path) else ""
    return Extracted(path, digest, size, "timeout", f"extraction took longer than {timeout_s:g} s", 0, "")


def extract_many(paths: Iterable[str], *, workers: int = 2, timeout_s: float = 30.0,
                 max_bytes: int | None = None, min_chars: int = 50, window: int = 64) -> Iterator[Extracted]:
    """Extract files in worker processes, yielding results in input order.

    A worker that passes `timeout_s` on a file is killed and replaced (pebble), and the file gets a
    `timeout` verdict. At most `window` files are in flight, so memory stays flat on any corpus size.
    """
    from pebble import ProcessPool

    with ProcessPool(max_workers=workers) as pool:
        pending: list[tuple[str, object]] = []
        for path in paths:
            pending.append((path, pool.schedule(extract_file, (str(path),),
                                                {"max_bytes": max_bytes, "min_chars": min_chars}, timeout=timeout_s)))
            if len(pending) >= window:
                yield _result(*pending.pop(0), timeout_s)
        for item in pending:
            yield _result(*item, timeout_s)


def _result(path: str, future, timeout_s: float) -> Extracted:
    try:
        return future.result()
    except FutureTimeout:
        return _timeout_row(path, timeout_s)
    except Exception as err:  # a worker that died (segfault, OOM) loses only its own file
        size = os.path.getsize(path) if os.path.exists(path) else 0
        return Extracted(path, sha256_file(path) if size else "", size, "corrupt",
                         f"worker died: {type(err).__name__}: {err}", 0, "")
