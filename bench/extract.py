"""Extraction benchmarks on a folder of real PDFs, one process, warm page cache.

    python -m bench.extract speed --corpus /data/texlive_dev            -> data/bench/extract_texlive_dev.json
    python -m bench.extract strategies --corpus /data/texlive_dev \\
        --labels ../shared/corpora/texlive_dev                          -> data/bench/strategies_texlive_dev.json
    python -m bench.extract strategies --corpus data/demo/pdfs --labels data/demo --name demo
                                                                        -> data/bench/strategies_demo.json

Rates are documents per CPU second of the one process (see `timed`).

- `speed`: docs/s of a bare all-pages PyMuPDF loop (open, `get_text` on every page), a bare window
  loop (open, pages in order until the window's characters are there) and the ingestion's own
  extraction with the spec's default window (`pdf.extract_file`: hash, header check, verdicts, the
  window), each over every file; and the seconds of the longest documents against the median
  10-page one, in our extraction.
- `strategies`: for each window strategy at equal character budgets, TF-IDF (1-2 grams, sublinear tf)
  + logistic regression (C=10) trained on the seed documents and scored on the held-out ones, with the
  extraction docs/s of each. Labels: `seeds.csv` and `heldout.csv` (`document,answer`) in --labels, or
  a demo-style `seeds.csv` + `truth.csv` (`file,label,verdict`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

from bench import common
from distillery import excerpt, pdf
from distillery.spec import ReadSpec

BUDGETS = (320, 1000, 2000)


def bare_all_pages(path: str) -> int:
    import pymupdf

    with pymupdf.open(path) as doc:
        return sum(len(page.get_text()) for page in doc)


def bare_window(path: str, chars: int, pages: int) -> int:
    """The window as a plain PyMuPDF loop would read it: pages in order until `chars` are there."""
    import pymupdf

    got = 0
    with pymupdf.open(path) as doc:
        for number in range(min(pages, doc.page_count)):
            got += len(excerpt.collapse(doc[number].get_text()))
            if got >= chars:
                break
    return got


def timed(fn, paths: list[str]) -> tuple[float, dict[str, float], list]:
    """(docs per CPU second, CPU seconds per file, results) of fn over paths, in order, in this process.

    CPU time of this process, not wall time: on a machine whose cores other jobs share, wall time
    measures the neighbours; one process on one core, its CPU seconds are its cost.
    """
    per_file, results = {}, []
    started = time.process_time()
    for path in paths:
        t = time.process_time()
        results.append(fn(path))
        per_file[path] = time.process_time() - t
    return len(paths) / (time.process_time() - started), per_file, results


def pdf_paths(corpus: Path) -> list[str]:
    return sorted(str(p) for p in corpus.iterdir() if p.suffix.lower() == ".pdf")


def speed(corpus: Path, read: ReadSpec = ReadSpec()) -> dict:
    paths = pdf_paths(corpus)
    load = os.getloadavg()
    corpus_bytes = common.warm_page_cache(paths)
    ours_rate, ours_s, rows = timed(lambda p: pdf.extract_file(p, read=read), paths)
    window_rate, _, _ = timed(lambda p: bare_window(p, read.chars or 0, read.pages or 10**9), paths)
    all_rate, all_s, _ = timed(bare_all_pages, paths)
    pages = {r.path: r.pages for r in rows}
    ten = [ours_s[p] for p in paths if 8 <= pages[p] <= 12]
    longest = sorted(paths, key=lambda p: -pages[p])[:4]
    return {
        "docs": len(paths), "pages": sum(pages.values()), "corpus_bytes": corpus_bytes,
        "window": read.model_dump(),
        "ours_docs_per_s": ours_rate, "bare_window_docs_per_s": window_rate, "bare_all_pages_docs_per_s": all_rate,
        "ours_vs_bare_all_pages": ours_rate / all_rate, "ours_vs_bare_window": ours_rate / window_rate,
        "median_seconds_8_to_12_pages": statistics.median(ten) if ten else None,
        "longest": [{"file": Path(p).name, "pages": pages[p], "ours_s": ours_s[p], "bare_all_pages_s": all_s[p]}
                    for p in longest],
        "verdicts": _count(r.verdict for r in rows),
        "machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_at_start": load, "corpus": str(corpus),
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def read_labels(labels: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(seeds, held-out): document file name -> label."""
    def rows(name: str) -> list[dict]:
        return list(csv.DictReader(open(labels / name, newline="")))

    seeds = {r["document"]: r["answer"] for r in rows("seeds.csv")}
    if (labels / "heldout.csv").exists():
        return seeds, {r["document"]: r["answer"] for r in rows("heldout.csv")}
    truth = [r for r in rows("truth.csv") if r.get("verdict", "ok") == "ok" and r["file"] not in seeds]
    return seeds, {r["file"]: r["label"] for r in truth}


def classify(texts: dict[str, str], seeds: dict[str, str], heldout: dict[str, str]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    train, test = sorted(d for d in seeds if d in texts), sorted(d for d in heldout if d in texts)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(C=10, max_iter=3000))
    model.fit([texts[d] for d in train], [seeds[d] for d in train])
    pred, gold = model.predict([texts[d] for d in test]), [heldout[d] for d in test]
    return {"accuracy": accuracy_score(gold, pred), "macro_f1": f1_score(gold, pred, average="macro"),
            "train": len(train), "test": len(test)}


def strategies(corpus: Path, labels: Path, budgets=BUDGETS, pages: int | None = 10) -> dict:
    seeds, heldout = read_labels(labels)
    paths = [str(corpus / d) for d in sorted({**seeds, **heldout})]
    load = os.getloadavg()
    common.warm_page_cache(paths)
    results = []
    for chars in budgets:
        for strategy in excerpt.STRATEGIES:
            read = ReadSpec(strategy=strategy, chars=chars, pages=pages)
            rate, _, rows = timed(lambda p: pdf.extract_file(p, read=read), paths)
            texts = {Path(r.path).name: r.text for r in rows if r.verdict == "ok"}
            scores = classify(texts, seeds, heldout)
            results.append({"strategy": strategy, "chars": chars, "docs_per_s": rate, **scores,
                            "mean_chars": statistics.mean(len(t) for t in texts.values())})
            print(json.dumps(results[-1]))
    return {"results": results, "docs": len(paths), "pages_cap": pages, "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg_at_start": load, "corpus": str(corpus), "labels": str(labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=["speed", "strategies"])
    ap.add_argument("--corpus", required=True, help="folder of PDFs")
    ap.add_argument("--labels", help="strategies: folder with seeds.csv and heldout.csv (or truth.csv)")
    ap.add_argument("--strategy", default="head", help="speed: the window strategy")
    ap.add_argument("--chars", type=int, default=ReadSpec().chars, help="speed: the window's characters")
    ap.add_argument("--name", help="names the output file (default: the corpus folder's name)")
    ap.add_argument("--out", default=str(common.bench_dir()))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if args.bench == "speed":
        result = speed(corpus, ReadSpec(strategy=args.strategy, chars=args.chars))
    else:
        result = strategies(corpus, Path(args.labels))
    out = Path(args.out) / f"{'extract' if args.bench == 'speed' else 'strategies'}_{args.name or corpus.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if not isinstance(v, (dict, list))}
    print(f"{args.bench} -> {out}: {shown}")


if __name__ == "__main__":
    main()
