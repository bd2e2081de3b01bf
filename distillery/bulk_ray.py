"""The bulk stage's Ray engine: extraction and student scoring on a Ray cluster, commits here.

The driver (the bulk run) lists the source, cuts it into chunks and keeps a bounded number of
chunks in flight: each chunk goes to an `Extractor` actor (a pebble worker process with the
per-file timeout, skipping done hashes without extracting), whose result goes straight to a
`Labeler` actor (the student, on a GPU where the cluster has one) without passing through the
driver. Only the results come back: label rows and verdicts, small. The driver de-duplicates and
commits them through the same manifest and shards as the local engine, so exactly-once holds.

Cluster: `RAY_ADDRESS` (or an already initialized Ray); without one, a local Ray is started. The
workers need this package importable (the same image, or `ray job submit --runtime-env`), the
student's folder and the source's files readable: an object store URL (s3://, gs://) for the
source and a shared path for the student. memory:// files are read on the driver and shipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from distillery import pdf
from distillery.spec import TaskSpec


def _ray():
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    return ray


class Extractor:
    """One extraction worker process (pebble, spawned: forking a Ray worker is unsafe) kept for the run."""

    def __init__(self, skip: set[str], timeout_s: float, max_bytes: int, min_chars: int):
        import multiprocessing

        from pebble import ProcessPool

        self.opts = {"timeout_s": timeout_s, "max_bytes": max_bytes, "min_chars": min_chars}
        self.pool = ProcessPool(max_workers=1, initializer=pdf._set_skip, initargs=(frozenset(skip),),
                                context=multiprocessing.get_context("spawn"))

    def extract(self, items: list[pdf.Item]) -> list[pdf.Extracted]:
        return list(pdf.extract_in(self.pool, items, window=len(items) or 1, ordered=True, **self.opts))


class Labeler:
    """The student on one replica: scores the ok documents of a chunk, passes the rest through."""

    def __init__(self, spec_json: str, student: str, model_id: str, meta: dict):
        from distillery.inference import TransformersBackend

        self.spec = TaskSpec.model_validate_json(spec_json)
        self.backend = TransformersBackend(student, batch_size=self.spec.bulk.batch_size)
        self.model_id, self.meta = model_id, meta

    def label(self, rows: list[pdf.Extracted]) -> list[tuple[pdf.Extracted, dict | None]]:
        from dataclasses import replace

        from distillery.bulk import _label_batch

        ok = [r for r in rows if r.verdict == "ok"]
        out: dict[int, dict] = {}
        size = self.spec.bulk.batch_size
        for start in range(0, len(ok), size):
            batch = ok[start:start + size]
            for r, row in zip(batch, _label_batch(self.spec, self.backend, batch, self.model_id, self.meta)):
                out[id(r)] = row
        return [(replace(r, text=""), out.get(id(r))) for r in rows]  # the text stays on the cluster


def _chunks(items: Iterable[pdf.Item], size: int) -> Iterator[list[pdf.Item]]:
    chunk: list[pdf.Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def label_events(spec: TaskSpec, student: Path, items: Iterable[pdf.Item], run, model_id: str, meta: dict):
    """(extracted, label row or None) per new file, as the cluster finishes chunks (bounded in flight)."""
    ray = _ray()
    cfg, ing = spec.bulk, spec.ingest
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    n_lab = cfg.ray_labelers
    lab_opts = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    n_ext = max(1, min(ing.workers, cpus - n_lab))
    skip = ray.put(set(run.seen))  # done before this run: the extractors skip these without extracting
    extract_cls = ray.remote(Extractor)
    label_cls = ray.remote(Labeler)
    extractors = [extract_cls.options(num_cpus=1).remote(skip, ing.timeout_s, int(ing.max_file_mb * 2**20),
                                                         ing.min_chars) for _ in range(n_ext)]
    labelers = [label_cls.options(**lab_opts).remote(spec.model_dump_json(), str(student), model_id, meta)
                for _ in range(n_lab)]
    size = max(cfg.batch_size, 32)
    limit = 2 * (n_ext + n_lab)  # chunks in flight: every actor busy with one and one queued
    inflight: list = []
    try:
        for k, chunk in enumerate(_chunks(items, size)):
            extracted = extractors[k % n_ext].extract.remote(chunk)
            inflight.append(labelers[k % n_lab].label.remote(extracted))
            while len(inflight) >= limit:
                yield from _collect(ray, inflight, run)
        while inflight:
            yield from _collect(ray, inflight, run)
    finally:
        for actor in (*extractors, *labelers):
            ray.kill(actor)


def _collect(ray, inflight: list, run):
    done, rest = ray.wait(inflight, num_returns=1)
    inflight[:] = rest
    for ref in done:
        for r, row in ray.get(ref):
            if run.fresh(r):
                yield r, row
