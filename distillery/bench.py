"""Benchmarks: `python -m distillery.bench NAME`, each writing `data/bench/NAME.json`.

- `robustness`: ingestion verdicts on the shared corpus of real hostile PDFs (qpdf, pdf.js,
  py-pdf test suites; read in place, never copied), plus planted hanging and oversize files.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

from distillery import lake, pdf, synth

DEFAULT_HOSTILE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "hostile_pdfs"


def _acceptable(row: dict) -> set[str]:
    extra = row.get("acceptable_classes") or ""
    return {row["expected_class"], *(c.strip() for c in extra.replace(";", ",").replace("|", ",").split(",") if c.strip())}


def planted_cases(folder: Path, max_bytes: int) -> list[tuple[str, str]]:
    """A hanging file (a FIFO named .pdf: reading it blocks forever) and a valid PDF over the size limit."""
    hang = folder / "hangs.pdf"
    os.mkfifo(hang)
    big = folder / "oversize.pdf"
    good = synth.case_pdf(synth.make_case(0), 0)
    big.write_bytes(good + b"%" + b"0" * (max_bytes - len(good) + 1))
    return [(str(hang), "timeout"), (str(big), "oversize")]


def robustness(corpus: Path = DEFAULT_HOSTILE, *, timeout_s: float = 10.0) -> dict:
    """Verdict accuracy on the hostile corpus; `right` = expected class or an acceptable one.

    The size limit sits just above the corpus's largest file, so only the planted file passes it.
    """
    rows = list(csv.DictReader(open(corpus / "manifest.csv", newline="")))
    max_bytes = max(int(r["bytes"]) for r in rows) + (1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        planted = planted_cases(Path(tmp), max_bytes)
        cases = [(str(corpus / "files" / r["file"]), _acceptable(r), r["expected_class"]) for r in rows]
        cases += [(path, {verdict}, verdict) for path, verdict in planted]
        started = time.perf_counter()
        results = list(pdf.extract_many([c[0] for c in cases], workers=2, timeout_s=timeout_s,
                                        max_bytes=max_bytes))
        seconds = time.perf_counter() - started
    by_class: dict[str, dict[str, int]] = {}
    wrong = []
    for (path, ok, expected), got in zip(cases, results):
        cls = by_class.setdefault(expected, {"files": 0, "right": 0})
        cls["files"] += 1
        if got.verdict in ok:
            cls["right"] += 1
        else:
            wrong.append([Path(path).name, expected, got.verdict])
    right = sum(c["right"] for c in by_class.values())
    return {"files": len(cases), "right": right, "accuracy": right / len(cases), "by_class": by_class,
            "wrong": wrong, "seconds": seconds, "corpus": str(corpus), "machine": platform.machine(),
            "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=["robustness"])
    ap.add_argument("--corpus", default=str(DEFAULT_HOSTILE), help="robustness: the hostile PDF corpus folder")
    ap.add_argument("--out", default="data/bench")
    args = ap.parse_args()
    result = robustness(Path(args.corpus))
    path = lake.write_json(result, Path(args.out) / f"{args.name}.json")
    print(f"{args.name}: accuracy {result['accuracy']:.3f} ({result['right']}/{result['files']}), "
          f"{len(result['wrong'])} wrong -> {path}")


if __name__ == "__main__":
    main()
