"""The Ray Data bulk engine: extraction and student scoring on a Ray cluster, commits on the driver.

The pipeline is one Ray Data dataset per wave of listed files:

    paths -> map_batches(Extractor, ActorPoolStrategy(size=bulk.ray_extractors or ingest.workers))
          -> map_batches(Labeler, ActorPoolStrategy(size=bulk.ray_labelers), num_gpus=1 where there are GPUs)
          -> iter_batches on the driver

Ray Data streams it: its executor keeps each operator's queue within the cluster's memory budget
(backpressure), the extracted text goes from Extractor to Labeler inside the cluster, and only
verdicts and label fields reach the driver, which commits them through the same manifest and
shards as the local engine (exactly-once, incremental, one run per folder).

The dataset is made of paths, not `read_binary_files`: the Extractor reads each file itself, in a
worker process with the per-file timeout, so a hanging object-store read or a hostile PDF costs
one `timeout` verdict, an oversize file is hashed without being held, and a file done before is
hashed and skipped without being extracted. The listing is cut into waves (`WAVE` files) so a
source of millions of files never sits in the driver's memory whole; each wave starts its actors
again (the student loads once per wave).

Cluster: `RAY_ADDRESS` (or an already initialized Ray); without one, a local Ray is started. The
workers need this package importable (the same image, or a runtime env), the source's files and
the student's folder readable on every node (an object store URL or a shared path). memory://
files exist only in this process: their bytes travel in the dataset.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from distillery import pdf, scope
from distillery.bulk.labeling import FIELDS, extract_options, label_fields
from distillery.bulk.ledger import Run
from distillery.spec import TaskSpec

WAVE = 50_000  # files per dataset: bounds the driver's memory on a huge listing
LOCAL_CPUS = 8  # logical CPUs of a Ray started here: long-lived map actors deadlock when CPUs = cores (2)

EXTRACTED = pa.schema([("path", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()),
                       ("verdict", pa.string()), ("reason", pa.string()), ("pages", pa.int64()),
                       ("text", pa.string()), ("extracted_on", pa.string())])
LABELED = pa.schema([*(f for f in EXTRACTED if f.name != "text"), ("labeled_on", pa.string()),
                     ("label", pa.string()), ("ranked", pa.string()),
                     ("confidence", pa.float64()), ("probs", pa.string()), *scope.COLUMNS])


def connect():
    """Ray, joined to `RAY_ADDRESS` (or the Ray this process already runs), else started here."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        local = {} if address else {"num_cpus": max(LOCAL_CPUS, os.cpu_count() or 1)}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    return ray


class Extractor:
    """One extraction worker process (pebble, spawned: forking a threaded Ray worker is unsafe) per actor."""

    def __init__(self, skip, options: dict):
        import ray

        self.options, self.node = options, ray.get_runtime_context().get_node_id()
        self.pool = pdf.worker_pool(1, ray.get(skip), spawn=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = batch.column("path").to_pylist()
        data = batch.column("data").to_pylist() if "data" in batch.column_names else [None] * len(names)
        items = [name if blob is None else (name, blob) for name, blob in zip(names, data)]
        rows = pdf.extract_in(self.pool, items, window=len(items) or 1, ordered=False, **self.options)
        return pa.Table.from_pylist([{**r.row(), "extracted_on": self.node} for r in rows], schema=EXTRACTED)


class Labeler:
    """The student on one replica: label fields for the ok rows; the text stays on the cluster."""

    def __init__(self, spec_json: str, student: str):
        import ray

        from distillery.members import load_labeler

        self.spec = TaskSpec.model_validate_json(spec_json)
        self.backend = load_labeler(student, batch_size=self.spec.bulk.batch_size, backend="transformers")
        self.scope = scope.load(student)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ok = [r for r in rows if r["verdict"] == "ok"]
        for r, fields in zip(ok, label_fields(self.spec, self.backend, [r["text"] for r in ok], self.scope,
                                                   [r["sha256"] for r in ok])):
            r.update(fields, labeled_on=self.node)
        return pa.Table.from_pylist(rows, schema=LABELED)


def events(spec: TaskSpec, student: Path, items: Iterable[pdf.Item], run: Run):
    """(extracted, label fields or None) per new file, wave after wave, as the cluster finishes blocks."""
    ray = connect()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run's own bar counts documents
    items = iter(items)
    while wave := list(islice(items, WAVE)):
        for batch in _dataset(ray, spec, student, wave, run).iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                r = pdf.Extracted(row["path"], row["sha256"], row["bytes"], row["verdict"], row["reason"],
                                  row["pages"], "")
                run.ran_on("extract", row["extracted_on"])
                run.ran_on("label", row["labeled_on"])
                if run.fresh(r):
                    yield r, _fields(row)


def _fields(row: dict) -> dict | None:
    if row["verdict"] != "ok":
        return None
    return {k: row[k] for k in FIELDS}


def _dataset(ray, spec: TaskSpec, student: Path, wave: list[pdf.Item], run: Run):
    cfg = spec.bulk
    workers = cfg.ray_extractors or spec.ingest.workers
    gpus = int(ray.cluster_resources().get("GPU", 0))
    rows = [{"path": i[0], "data": i[1]} if isinstance(i, tuple) else {"path": str(i)} for i in wave]
    ds = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // cfg.batch_size))  # a block per batch
    ds = ds.map_batches(Extractor, batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=1,
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_kwargs={"skip": ray.put(run.seen), "options": extract_options(spec)})
    return ds.map_batches(Labeler, batch_size=cfg.batch_size, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=cfg.ray_labelers),
                          fn_constructor_kwargs={"spec_json": spec.model_dump_json(), "student": str(student)},
                          **({"num_gpus": 1} if gpus else {"num_cpus": 1}))
