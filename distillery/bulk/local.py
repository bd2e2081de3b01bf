"""The local bulk engine: extraction in worker processes, the student scoring batches in this process."""

from __future__ import annotations

from pathlib import Path

from distillery import pdf, scope
from distillery.bulk.labeling import extract_options, label_fields
from distillery.bulk.ledger import Run
from distillery.members import load_labeler
from distillery.spec import TaskSpec


def events(spec: TaskSpec, student: Path, items, run: Run):
    """(extracted, label fields or None) per new file.

    The pool works through its window (4 batches or more) while this thread scores a batch, so
    extraction and inference overlap; files come back as they finish (one slow file holds back
    nothing), and workers hash each file first and skip the ones done before without extracting.
    """
    cfg, workers = spec.bulk, spec.ingest.workers
    backend = load_labeler(student, batch_size=cfg.batch_size, backend="transformers")
    scope_model = scope.load(student)

    def labeled(batch: list[pdf.Extracted]):
        return zip(batch, label_fields(spec, backend, [b.text for b in batch], scope_model, [b.sha256 for b in batch]))

    window = max(64, 4 * cfg.batch_size, 8 * workers)
    with pdf.worker_pool(workers, run.seen) as pool:
        files = pdf.extract_in(pool, items, window=window, ordered=False, **extract_options(spec))
        batch: list[pdf.Extracted] = []
        for r in files:
            if not run.fresh(r):
                continue
            if r.verdict != "ok":
                yield r, None
                continue
            batch.append(r)
            if len(batch) >= cfg.batch_size:
                yield from labeled(batch)
                batch = []
        if batch:
            yield from labeled(batch)
