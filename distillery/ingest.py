"""Stage 1a, ingestion: every PDF of the task's source becomes a document row or a quarantine row.

Documents are keyed by the SHA-256 of their bytes, so byte-identical copies collapse into one
document (the copies are counted, not lost). Nothing is dropped: each listed file ends in exactly
one of `documents` (first path of its hash), `duplicates` (counted on the document) or `quarantine`.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from distillery import lake, pdf
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


def list_pdfs(source: str | Path) -> Iterator[str]:
    """Stream the PDF paths of a directory (recursively) or a glob, in sorted order per folder.

    Any fsspec URL works too (s3://, gs://, memory://, ...): its folders are listed one at a time
    (`fs.walk`), so a bucket of millions of files is never held in memory whole; paths come back as
    URLs. A file:// URL is listed like the local path it names.
    """
    source = str(source)
    local = _local(source)
    if local is None:
        yield from _list_url(source)
        return
    if any(ch in local for ch in _GLOB):
        yield from sorted(globlib.iglob(local, recursive=True))
        return
    root = Path(local)
    if not root.is_dir():
        raise FileNotFoundError(f"PDF source {source} is not a directory or glob")
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".pdf"):
                yield str(Path(folder) / name)


def _walk_url(source: str, *, detail: bool = False):
    """(fs, [(path, info)] per folder) of an fsspec URL: a glob is listed at once, a folder folder by folder."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if any(ch in root for ch in _GLOB):
        found = fs.glob(root, detail=True)
        return fs, iter([sorted((p, i) for p, i in found.items() if i.get("type") != "directory")])
    if not fs.isdir(root):
        raise FileNotFoundError(f"PDF source {source} is not a directory or glob")

    def folders():
        for folder, dirs, files in fs.walk(root, detail=True):
            yield [(f"{folder.rstrip('/')}/{name}", files[name]) for name in sorted(files)]
    return fs, folders()


def _list_url(source: str) -> Iterator[str]:
    fs, folders = _walk_url(source)
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


def ingest(spec: TaskSpec, *, out: Path, run_id: str | None = None) -> lake.StageResult:
    """Extract every PDF of `spec.source`; write documents.parquet and quarantine.parquet under `out`."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("ingest")
    cfg = spec.ingest
    rows = pdf.extract_many(list_pdfs(spec.path(spec.source)), workers=cfg.workers, timeout_s=cfg.timeout_s,
                            max_bytes=int(cfg.max_file_mb * 2**20), min_chars=cfg.min_chars, read=cfg.read)
    docs: dict[str, dict] = {}
    quarantine: list[dict] = []
    for r in rows:
        if r.verdict != "ok":
            quarantine.append({"path": r.path, "sha256": r.sha256, "bytes": r.bytes, "reason": r.verdict,
                               "detail": r.reason})
        elif r.sha256 in docs:
            docs[r.sha256]["copies"] += 1
        else:
            docs[r.sha256] = {"sha256": r.sha256, "path": r.path, "name": Path(r.path).name, "bytes": r.bytes,
                              "pages": r.pages, "chars": len(r.text), "text": r.text, "copies": 1}
    meta = {"task": spec.name, "run_id": run_id, "stage": "ingest"}
    doc_table = _with_meta(list(docs.values()), meta, _DOC_SCHEMA)
    q_table = _with_meta(quarantine, meta, _Q_SCHEMA)
    outputs = {"documents": str(lake.write_parquet(doc_table, out / "documents.parquet")),
               "quarantine": str(lake.write_parquet(q_table, out / "quarantine.parquet"))}
    counts = {"documents": len(docs), "quarantined": len(quarantine),
              "duplicates": sum(d["copies"] - 1 for d in docs.values())}
    by_reason: dict[str, int] = {}
    for q in quarantine:
        by_reason[q["reason"]] = by_reason.get(q["reason"], 0) + 1
    return lake.StageResult("ingest", run_id, outputs, counts, {"quarantine_by_reason": by_reason},
                            time.perf_counter() - started)


_DOC_SCHEMA = pa.schema([("sha256", pa.string()), ("path", pa.string()), ("name", pa.string()),
                         ("bytes", pa.int64()), ("pages", pa.int32()), ("chars", pa.int64()),
                         ("text", pa.string()), ("copies", pa.int32())])
_Q_SCHEMA = pa.schema([("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()),
                       ("reason", pa.string()), ("detail", pa.string())])


def _with_meta(rows: list[dict], meta: dict, schema: pa.Schema) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schema)
    for name, value in meta.items():
        table = table.append_column(name, pa.array([value] * len(table), pa.string()))
    return table
