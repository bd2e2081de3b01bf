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
from typing import Container, Iterable, Iterator, Union

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
                 skip: Container[str] | None = None) -> Extracted:
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
        verdict, reason, pages, text = classify_bytes(data, min_chars=min_chars)
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
                 skip: Container[str] | None = None) -> Iterator[Extracted]:
    """Extract files in worker processes, yielding results in input order (or as they finish).

    A worker that passes `timeout_s` on a file is killed and replaced (pebble), and the file gets a
    `timeout` verdict. At most `window` files are in flight, so memory stays flat on any corpus size;
    the pool works through the window while the caller is busy with earlier results (the bulk stage
    scores a batch meanwhile). `ordered=False` yields each file as it finishes, so one slow file does
    not hold back the ones behind it. `skip`: content hashes the workers do not extract (verdict
    `skipped`), handed to each worker once at start.
    """
    with worker_pool(workers, skip) as pool:
        yield from extract_in(pool, paths, timeout_s=timeout_s, max_bytes=max_bytes, min_chars=min_chars,
                              window=window, ordered=ordered)


def worker_pool(workers: int, skip: Container[str] | None = None, *, spawn: bool = False):
    """A pebble ProcessPool for `extract_in`; `skip` goes to each worker once, at start. `spawn`: start
    workers fresh instead of forking, where the parent is threaded (a Ray worker)."""
    import multiprocessing

    from pebble import ProcessPool

    init = {"initializer": _set_skip, "initargs": (skip,)} if skip else {}
    context = multiprocessing.get_context("spawn") if spawn else multiprocessing
    return ProcessPool(max_workers=workers, context=context, **init)


def extract_in(pool, paths: Iterable[Item], *, timeout_s: float = 30.0, max_bytes: int | None = None,
               min_chars: int = 50, window: int = 64, ordered: bool = True) -> Iterator[Extracted]:
    """`extract_many` on a pebble ProcessPool the caller owns (a long-lived one, as a Ray actor keeps)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict = {}  # future -> item, in scheduling order
    kwargs = {"max_bytes": max_bytes, "min_chars": min_chars}

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
