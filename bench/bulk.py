"""`python -m bench.bulk` (`make bench-bulk`): the bulk stage at scale, one run -> data/bench/bulk.json.

Arms, on the same PDFs: generated ones (`data/bench/bulk-corpus`, generated once and reused) or a
folder of real ones (`--pdfs DIR --name NAME` -> data/bench/bulk_NAME.json; `make bench-bulk
CORPUS=texlive_dev` uses the TeX Live manuals):
- bare_all_pages: open + `page.get_text()` on every page, in a plain process pool of the same size;
- bare_window: open + pages in order until the spec's window (`ingest.read`) is there, same pool;
- extraction_only: the bulk stage's extraction (`pdf.extract_many`: hash, header checks, verdicts,
  per-file timeout, the spec's window) with its window and worker count, nothing else;
- inference_only: the student scoring the extracted texts in the bulk stage's batches;
- end_to_end: `bulk.bulk_label` into a fresh output folder (listing, extraction, scoring, shards).

overlap_efficiency = end-to-end / min(inference-only, extraction-only): 1.0 means the pipeline runs
at the speed of its slower half. That bound holds when the halves use different hardware (inference
on a GPU); on CPUs shared by both, each document costs the CPU time of both halves, so end-to-end is
at most shared_core_bound = 1 / (1/inference-only + 1/extraction-only), and shared_core_efficiency =
end-to-end / shared_core_bound says how close the pipeline comes to that. Model FLOPs are counted from the tokens the scoring actually runs
(the batch's shared prefix once, then each document's own tokens; padding not counted): 2 x
non-embedding parameters per token, attention (4 x layers x heads x head_dim x context per token)
and the LM head on the one position kept per row. mfu = those FLOP/s in the inference-only arm over
a fp32 matmul peak measured in the same run with the same threads.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import common, extract
from distillery import lake, pdf, synth


def make_corpus(folder: Path, docs: int) -> list[str]:
    """`docs` demo case reports as PDFs, generated once (files already there are reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(docs):
        path = folder / f"case-{i:06d}.pdf"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(synth.case_pdf(synth.make_case(i), i))
            tmp.rename(path)
        paths.append(str(path))
    return paths


def bare_pymupdf(paths: list[str], workers: int, window: tuple[int, int] | None = None) -> float:
    """Seconds for a plain process pool to read every page of each file, or (`window`: chars, pages)
    pages in order until the window's characters are there."""
    import multiprocessing
    from functools import partial

    read = partial(extract.bare_window, chars=window[0], pages=window[1]) if window else extract.bare_all_pages
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap_unordered(read, paths, chunksize=8):
            pass
    return time.perf_counter() - started


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def scoring_flops(spec, backend, texts: list[str]) -> tuple[float, int]:
    """(model FLOPs, tokens) of scoring `texts` as one `score_answers` call does."""
    from distillery.inference import _common_prefix
    from distillery.prompts import render_prompt

    model, tok = backend.model, backend.tokenizer
    cfg = model.config
    dense = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and p.dim() > 1)
    layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attn = 4 * layers * heads * head_dim  # per token per position of context: QK^T and AV
    head = 2 * cfg.hidden_size * cfg.vocab_size  # the LM head, on the one position kept per forward row
    ids = [tok(render_prompt(t, spec, tok), add_special_tokens=False)["input_ids"] for t in texts]
    shared = _common_prefix(ids) if len(ids) > 1 else 0
    flops, tokens = 0.0, 0
    if shared:
        flops += 2 * dense * shared + attn * shared * (shared + 1) / 2 + head
        tokens += shared
    for x in ids:
        own = len(x) - shared
        flops += 2 * dense * own + attn * sum(range(shared + 1, len(x) + 1)) + head
        tokens += own
    return flops, tokens


def run(spec_path: str, profile: str = "demo", docs: int = 5000, corpus: Path | None = None,
        workers: int | None = None, model: str | None = None, pdfs: Path | None = None) -> dict:
    """`model`: the labeling model (default: the promoted student, else the base); `corpus`: where the
    generated PDFs go (default: `bulk-corpus` in the benchmark folder); `pdfs`: a folder of real PDFs
    to use instead, every one of them."""
    import torch

    from distillery import bulk, members
    from distillery.answer import score_answers
    from distillery.members import is_labeler, load_labeler
    from distillery.student import uncached
    from distillery.spec import load_spec

    wall = time.perf_counter()
    load = os.getloadavg()
    spec = load_spec(spec_path, profile=profile)
    student = model or lake.current_model(lake.Layout.at(), spec.name) or str(spec.path(spec.models.base))
    student_folder = student
    workers = workers or spec.ingest.workers
    batch = spec.bulk.batch_size if spec.bulk else 16
    torch.set_num_threads(os.cpu_count() or 1)
    corpus = pdfs or corpus or common.bench_dir() / "bulk-corpus"
    started = time.perf_counter()
    paths = sorted(str(p) for p in Path(pdfs).glob("*.pdf")) if pdfs else make_corpus(corpus, docs)
    corpus_s = time.perf_counter() - started
    corpus_bytes = common.warm_page_cache(paths)  # every arm reads the files from memory, the first one too

    bare_s = bare_pymupdf(paths, workers)
    read = spec.ingest.read
    bare_window_s = bare_pymupdf(paths, workers, window=(read.chars or 10**12, read.pages or 10**9))

    window = max(64, 4 * batch, 8 * workers)
    started = time.perf_counter()
    extracted = list(pdf.extract_many(paths, workers=workers, timeout_s=spec.ingest.timeout_s,
                                      max_bytes=int(spec.ingest.max_file_mb * 2**20), min_chars=spec.ingest.min_chars,
                                      window=window, ordered=False, read=read))
    extraction_s = time.perf_counter() - started
    pages = sum(r.pages for r in extracted if r.verdict == "ok")
    texts = [r.text for r in sorted(extracted, key=lambda r: r.path) if r.verdict == "ok"]

    scratch = tempfile.TemporaryDirectory()
    backend = load_labeler(student, batch_size=batch, backend="transformers")
    kind = getattr(backend, "name", "lm")
    if is_labeler(student):  # a probability model: an encoder student reads through an empty cache, as on new PDFs
        student = str(members.save(uncached(spec, backend, Path(scratch.name) / "cache-end-to-end"),
                                   Path(scratch.name) / "student"))
        backend = uncached(spec, backend, Path(scratch.name) / "cache-warm-up")
    lm = hasattr(backend, "model") and hasattr(backend.model, "config")
    peak = matmul_peak_gflops() if lm else None
    score_answers(spec, backend, texts[:batch], student=True)  # warm-up
    flops, tokens = 0.0, 0
    for start in range(0, len(texts), batch) if lm else ():
        f, t = scoring_flops(spec, backend, texts[start:start + batch])
        flops, tokens = flops + f, tokens + t
    if not lm:  # the scoring pass below fills the empty cache: start it empty again for end to end
        backend = uncached(spec, backend, Path(scratch.name) / "cache-scoring")
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        score_answers(spec, backend, texts[start:start + batch], student=True)
    inference_s = time.perf_counter() - started
    params_m = sum(p.numel() for p in backend.model.parameters()) / 1e6 if lm else None
    del backend

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for p in paths:
            (source / Path(p).name).symlink_to(Path(p).resolve())
        e2e_spec = spec.model_copy(update={"bulk": spec.bulk.model_copy(update={"source": str(source)}),
                                           "ingest": spec.ingest.model_copy(update={"workers": workers})})
        result = bulk.bulk_label(e2e_spec, Path(student), out=Path(tmp) / "out", progress=False)
    end_to_end_s = result.seconds

    n = len(paths)
    rates = {"end_to_end_docs_per_s": n / end_to_end_s, "inference_only_docs_per_s": len(texts) / inference_s,
             "extraction_only_docs_per_s": n / extraction_s, "bare_all_pages_docs_per_s": n / bare_s,
             "bare_window_docs_per_s": n / bare_window_s}
    slower = min(rates["inference_only_docs_per_s"], rates["extraction_only_docs_per_s"])
    shared = 1 / (1 / rates["inference_only_docs_per_s"] + 1 / rates["extraction_only_docs_per_s"])
    achieved = flops / inference_s / 1e9
    scratch.cleanup()
    return {
        "docs": n, **rates,
        "overlap_efficiency": rates["end_to_end_docs_per_s"] / slower,
        "shared_core_bound_docs_per_s": shared,
        "shared_core_efficiency": rates["end_to_end_docs_per_s"] / shared,
        "end_to_end_vs_extraction": rates["end_to_end_docs_per_s"] / rates["extraction_only_docs_per_s"],
        "matmul_peak_gflops": peak, "model_gflops": achieved if lm else None, "mfu": achieved / peak if lm else None,
        "mfu_end_to_end": flops / end_to_end_s / 1e9 / peak if lm else None,
        "pages_per_s": pages / end_to_end_s, "pages": pages,
        "extraction_vs_bare": rates["extraction_only_docs_per_s"] / rates["bare_all_pages_docs_per_s"],
        "extraction_vs_bare_window": rates["extraction_only_docs_per_s"] / rates["bare_window_docs_per_s"],
        "model_gflop_per_doc": flops / len(texts) / 1e9 if lm else None,
        "tokens_per_doc": tokens / len(texts) if lm else None,
        "targets": {"overlap_efficiency>=0.85": rates["end_to_end_docs_per_s"] / slower >= 0.85,
                    "end_to_end>=0.85x_extraction": rates["end_to_end_docs_per_s"] >= 0.85 * rates["extraction_only_docs_per_s"],
                    **({"mfu>=0.40": achieved / peak >= 0.40} if lm else {}),
                    "extraction>=0.8x_bare": rates["extraction_only_docs_per_s"] >= 0.8 * rates["bare_all_pages_docs_per_s"],
                    "shared_core_efficiency>=0.9": rates["end_to_end_docs_per_s"] / shared >= 0.9},
        "counts": result.counts, "seconds": {"corpus": corpus_s, "bare_all_pages": bare_s, "bare_window": bare_window_s,
                                             "extraction_only": extraction_s,
                                             "inference_only": inference_s, "end_to_end": end_to_end_s,
                                             "wall": time.perf_counter() - wall},
        "student": student_folder, "student_kind": kind, "batch_size": batch, "workers": workers, "window": window, "engine": "local",
        "params_m": params_m,
        **common.machine(torch_threads=True),
        "loadavg_at_start": load, "corpus": str(corpus), "corpus_bytes": corpus_bytes,
    }



def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--docs", type=int, default=64, help="generated PDFs in the corpus")
    ap.add_argument("--model", default=None, help="the labeling model (default: the promoted student, else the base)")
    ap.add_argument("--pdfs", type=Path, default=None, help="a folder of real PDFs to use, all of them, instead of generated ones")
    ap.add_argument("--name", default=None, help="names the result: bulk_NAME.json (default: bulk.json)")
    args = ap.parse_args(argv)
    result = run(args.spec, args.profile, args.docs, model=args.model, pdfs=args.pdfs)
    common.write(f"bulk_{args.name}" if args.name else "bulk", result, args.out, args.profile)


if __name__ == "__main__":
    main()
