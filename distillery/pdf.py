"""PDF ingestion: a verdict and the text for every file, in worker processes with a per-file timeout.

Verdicts: ok, corrupt, encrypted, empty, image_only, not_pdf, oversize, timeout. The checks are
the ones a careful engineer makes rather than "did PyMuPDF open it": the `%PDF-` header (PyMuPDF
happily opens images and text files), encryption (also when it only surfaces as an open failure:
the trailer names an /Encrypt dictionary), errors caught per page read (a page can fail where the
document opened), a page count that lies (the last page must load), and a repair that leaves no
pages. A file that repairs cleanly and yields real text is ok. Only the pages the spec's window
needs are read (distillery/excerpt.py); a page past the window that would fail goes unseen, as the
models never read it. Reasons carry MuPDF's own error and warnings, page numbers counted from 1.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Union

import pymupdf
from pymupdf import mupdf

from distillery import excerpt
from distillery.spec import ReadSpec

VERDICTS = ("ok", "corrupt", "encrypted", "empty", "image_only", "not_pdf", "oversize", "timeout")
_OBJECT = re.compile(rb"-?\d+\s+-?\d+\s+obj\s*(?:<<|\[)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NULs from broken font encodings are not text
_HEADER_WINDOW = 1024  # the PDF spec lets junk precede %PDF- within the first 1 KiB
_TRAILER = re.compile(rb"trailer\s*<<")
_XREF_STREAM = re.compile(rb"/Type\s*/XRef\b")
_ENCRYPT = re.compile(rb"/Encrypt\s*(?:\d+\s+\d+\s+R|<<)")
_DICT_WINDOW = 4096
_ERROR_CODE = re.compile(r"^code=\d+:\s*")
_ERROR_KIND = re.compile(r"^(?:format|syntax|limit|library) error:\s*")
_REPAIR_CHATTER = ("trying to repair", "repairing PDF document", "... repeated", "dropping unclosed PDF processor")
DEFAULT_READ = ReadSpec()


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


def _encrypted_error(message: str) -> bool:
    msg = message.lower()
    return any(w in msg for w in ("password", "encrypt", "security handler", "decrypt"))


def _trailer_encrypts(data: bytes) -> bool:
    """Whether a trailer (or an xref stream's dictionary) names an /Encrypt dictionary: MuPDF gives up
    on public-key and damaged standard encryption with an open error that need not say so."""
    for match in _TRAILER.finditer(data):
        end = data.find(b"startxref", match.end(), match.end() + _DICT_WINDOW)
        if _ENCRYPT.search(data, match.end(), end if end >= 0 else match.end() + _DICT_WINDOW):
            return True
    for match in _XREF_STREAM.finditer(data):
        start = max(data.rfind(b" obj", max(0, match.start() - _DICT_WINDOW), match.start()), 0)
        end = data.find(b"stream", match.end(), match.end() + _DICT_WINDOW)
        if _ENCRYPT.search(data, start, end if end >= 0 else match.end() + _DICT_WINDOW):
            return True
    return False


def _mupdf_message(err: Exception) -> str:
    """MuPDF's own error: PyMuPDF wraps open errors in a bare "Failed to open stream"."""
    cause = err.__cause__ if err.__cause__ is not None else err
    message = _ERROR_CODE.sub("", str(cause)).strip()
    return "" if message == "Failed to open stream" else message


def _mupdf_warnings(message: str = "", limit: int = 2) -> str:
    """The first distinct warnings MuPDF gave since the last reset, minus its repair chatter and `message`."""
    seen: list[str] = [message]
    for line in pymupdf.TOOLS.mupdf_warnings(reset=False).splitlines():
        line = _ERROR_KIND.sub("", line.strip())
        if line and line not in seen and not any(line.startswith(n) for n in _REPAIR_CHATTER):
            seen.append(line)
    return "; ".join(seen[1:limit + 1])


def _explained(message: str) -> str:
    """A reason with MuPDF's warnings after it, when it gave any."""
    warnings = _mupdf_warnings(message)
    if not message:
        return f"MuPDF: {warnings}" if warnings else "MuPDF gave no reason"
    return f"{message} (MuPDF: {warnings})" if warnings else message


def _page_error(err: Exception) -> str:
    if isinstance(err, IndexError):  # PyMuPDF's "page 1 not in document" counts from 0
        return "not in the document"
    return _mupdf_message(err)


def _looks_like_pdf(data: bytes) -> bool:
    """A PDF that lost its header (fuzzers do this) still has numbered objects: `12 0 obj <<`."""
    return _OBJECT.search(data, 0, 1 << 20) is not None


class _Document(pymupdf.Document):
    """A Document that does not load the outline on open: MuPDF resolves every bookmark to its page
    number, which walks the whole page tree (0.75 s for a 1,300-page manual). Nothing here reads it."""

    def _loadOutline(self):
        return None


def open_pdf(data: bytes, *, every_page: bool = False) -> pymupdf.Document:
    """Open PDF bytes so that reading page n costs about what page n costs, whatever the page count.

    MuPDF's page-tree cache maps every page on the first lookup (O(pages)); without it a lookup
    walks the tree by /Count, which a broken tree or a lying count fails just the same. A caller
    that reads `every_page` keeps the cache: one walk, then each lookup is free.
    """
    doc = _Document(stream=data, filetype="pdf")
    if doc.is_pdf and not every_page:
        mupdf.pdf_set_page_tree_cache(mupdf.pdf_document_from_fz_document(doc.this), 0)
    return doc


class _PageFailed(Exception):
    def __init__(self, number: int, err: Exception):
        super().__init__(number, str(err))
        self.number, self.error = number, err


def _page_reader(doc: pymupdf.Document) -> Callable[[int], str]:
    def page_text(number: int) -> str:
        try:
            return _CONTROL.sub("", doc[number].get_text("text"))
        except Exception as err:
            raise _PageFailed(number, err) from err
    return page_text


def classify_bytes(data: bytes, *, min_chars: int = 50, read: excerpt.Read | None = None) -> tuple[str, str, int, str]:
    """(verdict, reason, pages, text) for the bytes of one file; the text is `read`'s window."""
    read = read or DEFAULT_READ
    headerless = b"%PDF-" not in data[:_HEADER_WINDOW]
    if headerless and not _looks_like_pdf(data):
        return "not_pdf", "no %PDF- header and no PDF object syntax", 0, ""
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        doc = open_pdf(data, every_page=read.pages is None)
    except Exception as err:  # MuPDF raises a zoo of types for broken files
        message = _mupdf_message(err)
        if _encrypted_error(message) or _trailer_encrypts(data):
            return "encrypted", f"encrypted with a scheme MuPDF cannot open: {_explained(message)}", 0, ""
        return "corrupt", f"does not open: {_explained(message)}", 0, ""
    with doc:
        return _classify_open(doc, min_chars, read)


def _classify_open(doc: pymupdf.Document, min_chars: int, read: excerpt.Read) -> tuple[str, str, int, str]:
    if not doc.is_pdf:
        return "not_pdf", "opened, but not as a PDF", 0, ""
    if doc.needs_pass and not doc.authenticate(""):
        return "encrypted", "needs a password", 0, ""
    try:
        pages = doc.page_count
    except Exception as err:
        return "corrupt", f"page tree unreadable: {_explained(_mupdf_message(err))}", 0, ""
    if pages == 0:
        if doc.is_repaired:
            return "corrupt", _explained("repairs to zero pages"), 0, ""
        return "empty", "the document has no pages", 0, ""
    try:
        text, read_pages, chars = excerpt.choose(_page_reader(doc), pages, read, min_chars=min_chars)
    except _PageFailed as failed:
        return "corrupt", f"page {failed.number + 1} of {pages} fails: {_explained(_page_error(failed.error))}", pages, ""
    try:
        if read_pages < pages:  # a page count that lies, or a broken page tree, shows on the last page
            doc.load_page(pages - 1)
    except Exception as err:
        return "corrupt", f"page {pages} of {pages} fails: {_explained(_page_error(err))}", pages, ""
    if chars < min_chars:
        return "image_only", f"{chars} characters of text on {pages} page(s)", pages, ""
    return "ok", _explained("repaired") if doc.is_repaired else "", pages, text


Item = Union[str, tuple[str, bytes]]  # a local path, an fsspec URL, or (name, bytes) already read


def is_url(path: str) -> bool:
    return "://" in path


def item_name(item: Item) -> str:
    return item[0] if isinstance(item, tuple) else str(item)


def _read_url(url: str, max_bytes: int | None) -> tuple[int, str, bytes | None]:
    """(size, sha256, bytes) of a file behind an fsspec URL; the bytes are None when oversize
    (hashed in chunks, never held whole)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        size = getattr(f, "size", None)
        if size is None or max_bytes is None or size <= max_bytes:
            data = f.read()
            return len(data), hashlib.sha256(data).hexdigest(), data
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return size, h.hexdigest(), None


_SKIP: Container[str] = frozenset()  # hashes a worker skips without extracting (set by the pool initializer)


def _set_skip(skip: Container[str]) -> None:
    global _SKIP
    _SKIP = skip


def extract_file(path: Item, *, max_bytes: int | None = None, min_chars: int = 50,
                 skip: Container[str] | None = None, read: excerpt.Read | None = None) -> Extracted:
    """Classify and extract one file (local path, fsspec URL or (name, bytes)); never raises for a bad file.

    A file whose hash is in `skip` (or in the worker's skip set) gets verdict `skipped` and is not
    extracted: done documents cost one read and one hash, in the worker.
    """
    skip = _SKIP if skip is None else skip
    data: bytes | None = None
    if isinstance(path, tuple):
        path, data = path
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    elif is_url(path):
        size, digest, data = _read_url(path, max_bytes)
    else:
        size = os.path.getsize(path)
        if max_bytes is None or size <= max_bytes:  # one read: hash and extract the same bytes
            with open(path, "rb") as f:
                data = f.read()
            size, digest = len(data), hashlib.sha256(data).hexdigest()
        else:
            digest = sha256_file(path)
    if digest in skip:
        return Extracted(path, digest, size, "skipped", "done before", 0, "")
    if max_bytes is not None and size > max_bytes:
        return Extracted(path, digest, size, "oversize", f"{size} bytes > limit {max_bytes}", 0, "")
    try:
        if data is None:
            data = Path(path).read_bytes()
        verdict, reason, pages, text = classify_bytes(data, min_chars=min_chars, read=read)
    except Exception as err:
        verdict, reason, pages, text = "corrupt", f"extraction failed: {type(err).__name__}: {err}", 0, ""
    return Extracted(path, digest, size, verdict, reason, pages, text)


def _local_file(item: Item) -> str | None:
    """The path of a local regular file (hashing a FIFO or device in the parent would hang it)."""
    if isinstance(item, tuple) or is_url(item) or not os.path.isfile(item):
        return None
    return str(item)


def _timeout_row(item: Item, timeout_s: float) -> Extracted:
    local = _local_file(item)
    size, digest = _size_and_hash(item, local)
    return Extracted(item_name(item), digest, size, "timeout", f"extraction took longer than {timeout_s:g} s", 0, "")


def _size_and_hash(item: Item, local: str | None) -> tuple[int, str]:
    if isinstance(item, tuple):
        return len(item[1]), hashlib.sha256(item[1]).hexdigest()
    if local:
        return os.path.getsize(local), sha256_file(local)
    return 0, ""  # a remote file is not read again in the parent: it would hang there too


def extract_many(paths: Iterable[Item], *, workers: int = 2, timeout_s: float = 30.0,
                 max_bytes: int | None = None, min_chars: int = 50, window: int = 64, ordered: bool = True,
                 skip: Container[str] | None = None, read: excerpt.Read | None = None) -> Iterator[Extracted]:
    """Extract files in worker processes, yielding results in input order (or as they finish).

    A worker that passes `timeout_s` on a file is killed and replaced (pebble), and the file gets a
    `timeout` verdict. At most `window` files are in flight, so memory stays flat on any corpus size;
    the pool works through the window while the caller is busy with earlier results (the bulk stage
    scores a batch meanwhile). `ordered=False` yields each file as it finishes, so one slow file does
    not hold back the ones behind it. `skip`: content hashes the workers do not extract (verdict
    `skipped`), handed to each worker once at start. `read`: how much of each document is extracted
    (the spec's `ingest.read`; default its defaults).
    """
    with worker_pool(workers, skip) as pool:
        yield from extract_in(pool, paths, timeout_s=timeout_s, max_bytes=max_bytes, min_chars=min_chars,
                              window=window, ordered=ordered, read=read)


def worker_pool(workers: int, skip: Container[str] | None = None, *, spawn: bool = False):
    """A pebble ProcessPool for `extract_in`; `skip` goes to each worker once, at start. `spawn`: start
    workers fresh instead of forking, where the parent is threaded (a Ray worker)."""
    import multiprocessing

    from pebble import ProcessPool

    init = {"initializer": _set_skip, "initargs": (skip,)} if skip else {}
    context = multiprocessing.get_context("spawn") if spawn else multiprocessing
    return ProcessPool(max_workers=workers, context=context, **init)


def extract_in(pool, paths: Iterable[Item], *, timeout_s: float = 30.0, max_bytes: int | None = None,
               min_chars: int = 50, window: int = 64, ordered: bool = True,
               read: excerpt.Read | None = None) -> Iterator[Extracted]:
    """`extract_many` on a pebble ProcessPool the caller owns (a long-lived one, as a Ray actor keeps)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict = {}  # future -> item, in scheduling order
    kwargs = {"max_bytes": max_bytes, "min_chars": min_chars, "read": read}

    def drain(keep: int) -> Iterator[Extracted]:
        while len(pending) > keep:
            if ordered:
                future = next(iter(pending))
                yield _result(pending.pop(future), future, timeout_s)
                continue
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                yield _result(pending.pop(future), future, timeout_s)

    for item in paths:
        item = item if isinstance(item, tuple) else str(item)
        pending[pool.schedule(extract_file, (item,), kwargs, timeout=timeout_s)] = item
        if len(pending) >= window:
            yield from drain(window - 1)
    yield from drain(0)


def _result(item: Item, future, timeout_s: float) -> Extracted:
    try:
        return future.result()
    except FutureTimeout:
        return _timeout_row(item, timeout_s)
    except Exception as err:  # a worker that died (segfault, OOM) loses only its own file
        size, digest = _size_and_hash(item, _local_file(item))
        return Extracted(item_name(item), digest if size else "", size, "corrupt",
                         f"worker died: {type(err).__name__}: {err}", 0, "")
