"""`python -m bench.robustness`: ingestion verdicts on the shared corpus of real hostile PDFs (qpdf,
pdf.js, py-pdf test suites; read in place, never copied), plus planted hanging and oversize files
-> data/bench/robustness.json.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

from bench import common
from distillery import pdf, synth

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
            "wrong": wrong, "seconds": seconds, "corpus": str(corpus), **common.machine()}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__, spec=False, profile=False)
    ap.add_argument("--corpus", default=str(DEFAULT_HOSTILE), help="the hostile PDF corpus folder")
    args = ap.parse_args(argv)
    common.write("robustness", robustness(Path(args.corpus)), args.out)


if __name__ == "__main__":
    main()
