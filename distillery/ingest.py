"""Stage 1a, ingestion: every PDF of the task's source becomes a document row or a quarantine row.

Documents are keyed by the SHA-256 of their bytes, so byte-identical copies collapse into one
document (the copies are counted, not lost). Nothing is dropped: each listed file ends in exactly
one of `documents` (first path of its hash), `duplicates` (counted on the document) or `quarantine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import pyarrow as pa

from distillery import lake, pdf
from distillery.sources import list_pdfs
from distillery.spec import TaskSpec


@dataclass(frozen=True)
class Inputs:
    """What ingestion reads: a folder, glob or fsspec URL of PDFs (None: the spec's `source`)."""

    reads: ClassVar = ()
    source: str | None = None

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        return cls()


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None) -> lake.StageResult:
    """Extract every PDF of the source into documents.parquet and quarantine.parquet under `out`."""
    return ingest(spec, out=out, run_id=run_id, source=inputs.source)


def ingest(spec: TaskSpec, *, out: Path, run_id: str | None = None, source: str | None = None) -> lake.StageResult:
    """Extract every PDF of `source` (default `spec.source`); write documents.parquet and quarantine.parquet."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("ingest")
    cfg = spec.ingest
    rows = pdf.extract_many(list_pdfs(source or spec.path(spec.source)), workers=cfg.workers, timeout_s=cfg.timeout_s,
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
