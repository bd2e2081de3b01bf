"""`python -m bench.bulk_ray`: the Ray engine on a simulated multi-node cluster against the local
engine, on the same generated PDFs and the same machine -> data/bench/bulk_ray.json.

The cluster is `ray.cluster_utils.Cluster` on this machine: a head with no CPUs (it runs no work)
and NODES-1 workers. Every simulated node shares this machine's cores, disk and network, so
`ray_docs_per_s` against `local_docs_per_s` measures what the engine costs (actors, object store,
the driver's commits), not what more machines would add. Arms, one after the other:
- local: the local engine, `ingest.workers` extraction processes and the student here;
- ray: extraction and labeling actors spread over the workers, waves of `--wave` files;
  `wave_wait_share`: of each wave's time, the share after its second-to-last batch reached the
  driver (the wave waiting on its slowest block), summed over waves; `wave_first_batch_s`: each
  wave's wait for its first batch (its actors start and load the student again);
  `ray_streaming_docs_per_s`: the rows after each wave's first batch over the time after it (the
  engine once its actors are up);
- node_loss: the Ray run again into a new folder, a worker removed once a third of the files have
  rows (no node replaces it); then every listed path is checked: `lost` (no row) and `duplicated`
  (more than one);
- driver_rss: the driver alone in a process joined to the cluster (`python -m bench.bulk_ray
  --driver`), on --rss-docs files each (several waves of --rss-wave files), its peak RSS read from
  the kernel (`ru_maxrss`); beside it `ledger_bytes_per_file`, what the driver keeps per file done
  (hash -> path, the paths seen: what exactly-once needs), measured with tracemalloc on 100,000
  hashes and paths, so the slope at millions of files is a measurement, not a guess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench import common
from bench.bulk import make_corpus
from distillery import bulk
from distillery.bulk import ray as ray_engine


def rows_by_path(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in ("labels", "quarantine"):
        for f in bulk.committed(out, kind):
            for p in pq.read_table(f, columns=["path"]).column("path").to_pylist():
                counts[p] = counts.get(p, 0) + 1
    return counts


def linked(paths: list[str], folder: Path) -> Path:
    """`folder` holding a link to each of `paths`: these files as a source, without the rest of their folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        link = folder / Path(p).name
        if not link.exists():
            link.symlink_to(Path(p).resolve())
    return folder


def timed_waves(record: list, streamed: list):
    """Wrap the engine's datasets so each wave's batch arrival times (and rows) are recorded."""
    real = ray_engine._dataset

    class Timed:
        def __init__(self, ds):
            self.ds = ds

        def iter_batches(self, **kw):
            times = [time.perf_counter()]
            record.append(times)
            for batch in self.ds.iter_batches(**kw):
                times.append(time.perf_counter())
                streamed.append(batch.num_rows if len(times) > 2 else 0)  # rows after each wave's first batch
                yield batch

    return lambda *a, **kw: Timed(real(*a, **kw))


def wave_wait(record: list[list[float]]) -> float:
    total = sum(t[-1] - t[0] for t in record if len(t) > 1)
    tail = sum(t[-1] - t[-2] for t in record if len(t) > 2)
    return tail / total if total else 0.0


def driver_rss(spec, student: Path, corpus: Path, docs: int, wave: int, scratch: Path, address: str) -> dict:
    """The driver's peak RSS on `docs` files in waves of `wave`, in a process of its own."""
    source = linked(make_corpus(corpus, docs)[:docs], scratch / f"rss-source-{docs}")
    spec = spec.model_copy(update={"bulk": spec.bulk.model_copy(update={"source": str(source)})})
    (scratch / "spec.json").write_text(spec.model_dump_json())
    env = {**os.environ, "RAY_ADDRESS": address}
    done = subprocess.run([sys.executable, "-m", "bench.bulk_ray", "--driver", str(scratch / "spec.json"),
                           str(student), str(scratch / f"rss-{docs}"), str(wave)],
                          env=env, capture_output=True, text=True, check=True)
    return {"docs": docs, "wave": wave, **json.loads(done.stdout.strip().splitlines()[-1])}


def drive(spec_json: str, student: str, out: str, wave: str) -> None:
    """One bulk run as a driver of its own; prints its counts, seconds and peak RSS (MB) as JSON."""
    from distillery.spec import TaskSpec

    ray_engine.WAVE = int(wave)
    started = time.perf_counter()
    result = bulk.bulk_label(TaskSpec.model_validate_json(Path(spec_json).read_text()), Path(student), out=Path(out),
                             progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": time.perf_counter() - started, "counts": result.counts, "peak_rss_mb": peak}))


def ledger_bytes_per_file(files: int = 100_000) -> float:
    """What the driver keeps per file done (hash -> path, the set of paths), by tracemalloc."""
    import hashlib
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    twins = {hashlib.sha256(str(i).encode()).hexdigest(): f"s3://bucket/inbox/2026/12/case-{i:09d}.pdf"
             for i in range(files)}
    paths = set(twins.values())
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(paths) == files
    return used / files


def run(spec_path: str, profile: str, docs: int, nodes: int, worker_cpus: int, wave: int,
        rss_docs: list[int], rss_wave: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    student = Path(common.stage_outputs(spec, "student")["model"])
    folder = common.bench_dir() / "bulk-corpus"
    paths = make_corpus(folder, docs)[:docs]
    source = linked(paths, common.bench_dir() / "bulk-ray-source")  # the same files for every arm
    common.warm_page_cache(paths)
    spec = spec.model_copy(update={"bulk": spec.bulk.model_copy(update={"source": str(source)})})
    on_ray = spec.model_copy(update={"bulk": spec.bulk.model_copy(
        update={"engine": "ray", "ray_extractors": nodes - 1, "ray_labelers": nodes - 1})})
    scratch = common.bench_dir() / "bulk-ray-runs"
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    local = bulk.bulk_label(spec, student, out=scratch / "local", progress=False)
    local_s = time.perf_counter() - started

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=worker_cpus) for _ in range(nodes - 1)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    record: list = []
    streamed: list = []
    ray_engine.WAVE, real = wave, ray_engine._dataset
    ray_engine._dataset = timed_waves(record, streamed)
    try:
        started = time.perf_counter()
        result = bulk.bulk_label(on_ray, student, out=scratch / "ray", progress=False)
        ray_s = time.perf_counter() - started
        ray_engine._dataset = real
        out, box = scratch / "node-loss", {}
        t = threading.Thread(target=lambda: box.update(r=bulk.bulk_label(on_ray, student, out=out, progress=False)))
        t.start()
        while t.is_alive() and len(rows_by_path(out)) < len(paths) // 3:
            time.sleep(0.2)
        removed_at = len(rows_by_path(out))
        cluster.remove_node(workers.pop())
        t.join()
        workers.append(cluster.add_node(num_cpus=worker_cpus))  # back to NODES for the driver arm
        cluster.wait_for_nodes()
        rss = [driver_rss(on_ray, student, folder, n, rss_wave, scratch, cluster.address) for n in rss_docs]
    finally:
        ray_engine._dataset = real
        ray.shutdown()
        cluster.shutdown()
    rows = rows_by_path(out)
    listed = [str(source / Path(p).name) for p in paths]
    after = box["r"].counts
    return {
        "nodes": nodes, "worker_cpus": worker_cpus, "docs": len(paths), "wave": wave, "waves": len(record),
        "ray_docs_per_s": len(paths) / ray_s, "local_docs_per_s": len(paths) / local_s,
        "ray_vs_local": local_s / ray_s, "wave_wait_share": wave_wait(record),
        "wave_seconds": [t[-1] - t[0] for t in record if len(t) > 1],
        "wave_first_batch_s": [t[1] - t[0] for t in record if len(t) > 1],  # actors starting, the student loading
        # once a wave's actors are up: the rows after its first batch over the time after it
        "ray_streaming_docs_per_s": sum(streamed) / sum(t[-1] - t[1] for t in record if len(t) > 2),
        "counts": {"local": local.counts, "ray": result.counts}, "ray_nodes_worked": result.metrics.get("nodes"),
        "node_loss": {"removed_at_docs": removed_at, "labeled": after["labeled"], "quarantined": after["quarantined"],
                      "duplicates_of_copies": after["duplicates"],
                      "lost": sum(1 for p in listed if p not in rows),
                      "duplicated": sum(1 for p in listed if rows.get(p, 0) > 1)},
        "driver_rss": rss, "ledger_bytes_per_file": ledger_bytes_per_file(),
        "note": "simulated nodes share this machine's cores: the ratio is the engine's overhead, not a scale-out",
        **common.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--nodes", type=int, default=3, help="head + NODES-1 workers")
    ap.add_argument("--worker-cpus", type=int, default=3, help="logical CPUs of each simulated worker")
    ap.add_argument("--wave", type=int, default=200, help="files per wave (the engine's WAVE)")
    ap.add_argument("--rss-docs", default="1000,2000,4000", help="files of each driver-memory run")
    ap.add_argument("--rss-wave", type=int, default=500, help="files per wave in the driver-memory runs")
    ap.add_argument("--driver", nargs=4, metavar=("SPEC_JSON", "STUDENT", "OUT", "WAVE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.driver:
        return drive(*args.driver)
    rss_docs = [int(n) for n in args.rss_docs.split(",")]
    common.write("bulk_ray", run(args.spec, args.profile, args.docs, args.nodes, args.worker_cpus, args.wave,
                                 rss_docs, args.rss_wave), args.out)


if __name__ == "__main__":
    main()
