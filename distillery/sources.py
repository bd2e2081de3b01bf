"""Where PDFs come from: a local folder or glob, or any fsspec URL (s3://, gs://, memory://, file://).

Shared by ingestion and bulk labeling. URLs are listed one folder at a time, so a bucket of
millions of files is never held in memory; a source's identity is either its listing (names,
sizes, mtimes: cheap) or its content (every byte hashed).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from distillery import lake
from distillery.errors import SpecPathError
from distillery.spec import TaskSpec

_GLOB = "*?["
PROCESS_LOCAL = ("memory",)  # fsspec filesystems that live in one process: the parent reads their bytes


def resolve_source(spec: TaskSpec, value: str) -> str:
    """A spec's source as a string: URLs untouched (Path would fold `s3://` to `s3:/`), paths resolved."""
    return value if "://" in value else str(spec.path(value))


def _local(source: str) -> str | None:
    """The local path of a source (a plain path or a file:// URL), None for any other URL."""
    if "://" not in source:
        return source
    if source.startswith("file://"):
        return source[len("file://"):]
    return None


def missing_source(source: str, field: str = "source") -> SpecPathError:
    """The error for a source that is neither a folder, a glob nor a URL that exists."""
    return SpecPathError(field, source, "is not a folder, a glob or a URL that exists",
                         f"create the folder, or set `{field}:` in the spec to the folder (or glob, or fsspec URL) "
                         "that holds the PDFs")


def list_pdfs(source: str | Path, *, field: str = "source") -> Iterator[str]:
    """Stream the PDF paths of a directory (recursively) or a glob, in sorted order per folder.

    Any fsspec URL works too (s3://, gs://, memory://, ...): its folders are listed one at a time
    (`fs.walk`), so a bucket of millions of files is never held in memory whole; paths come back as
    URLs. A file:// URL is listed like the local path it names. A source that does not exist raises
    `SpecPathError` naming `field`, the spec field it came from.
    """
    source = str(source)
    local = _local(source)
    if local is None:
        yield from _list_url(source, field)
        return
    if any(ch in local for ch in _GLOB):
        yield from sorted(globlib.iglob(local, recursive=True))
        return
    root = Path(local)
    if not root.is_dir():
        raise missing_source(source, field)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".pdf"):
                yield str(Path(folder) / name)


def _walk_url(source: str, *, detail: bool = False, field: str = "source"):
    """(fs, [(path, info)] per folder) of an fsspec URL: a glob is listed at once, a folder folder by folder."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if any(ch in root for ch in _GLOB):
        found = fs.glob(root, detail=True)
        return fs, iter([sorted((p, i) for p, i in found.items() if i.get("type") != "directory")])
    if not fs.isdir(root):
        raise missing_source(source, field)

    def folders():
        for folder, dirs, files in fs.walk(root, detail=True):
            yield [(f"{folder.rstrip('/')}/{name}", files[name]) for name in sorted(files)]
    return fs, folders()


def _list_url(source: str, field: str) -> Iterator[str]:
    fs, folders = _walk_url(source, field=field)
    for rows in folders:
        for path, _ in rows:
            if path.lower().endswith(".pdf"):
                yield fs.unstrip_protocol(path)


def process_local(source: str) -> bool:
    """Whether the source's files exist only in this process (fsspec `memory://`)."""
    if "://" not in source:
        return False
    import fsspec

    fs, _ = fsspec.core.url_to_fs(source)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(p in PROCESS_LOCAL for p in protocols)


def read_bytes(url: str) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


def count_pdfs(source: str | Path, limit: int) -> int | None:
    """How many PDFs a local source holds, if at most `limit` (None beyond it or for a URL: listing a
    bucket twice costs requests, and listing millions of local files twice costs minutes)."""
    if _local(str(source)) is None:
        return None
    n = 0
    for _ in list_pdfs(source):
        n += 1
        if n > limit:
            return None
    return n


def source_listing_hash(source: str | Path) -> str:
    """Hash of the source's file names, sizes and modification times: a cheap change detector."""
    h = hashlib.sha256()
    source = str(source)
    if _local(source) is None:
        fs, folders = _walk_url(source)
        for rows in folders:
            for path, info in rows:
                if path.lower().endswith(".pdf"):
                    stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("updated") or ""
                    h.update(f"{path}\0{info.get('size')}\0{stamp}\n".encode())
        return h.hexdigest()[:16]
    for path in list_pdfs(source):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def source_hash(source: str | Path) -> str:
    """Content hash of every file of the source: the ingestion stage's input identity."""
    return lake.hash_files(list_pdfs(source))
