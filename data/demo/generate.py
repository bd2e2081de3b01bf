"""Write the demo corpora: `python data/demo/generate.py [--n 1300] [--out data/demo]`.

Deterministic: the same arguments write the same documents, byte for byte, except the planted
encrypted files (MuPDF draws fresh encryption keys each time). The expert seed sheets
(`seeds.csv`, `invoice_seeds.jsonl`) are committed; the PDFs and `truth.csv` (which the pipeline
never reads; benchmarks do) are generated.
"""

import argparse
from pathlib import Path

from distillery import synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1300, help="clinical case reports to write")
    ap.add_argument("--invoices", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--seeds-per-label", type=int, default=8)
    args = ap.parse_args()
    out = Path(args.out)
    truth = synth.generate_clinical(out / "pdfs", args.n)
    synth.write_csv(truth, out / "truth.csv")
    synth.write_csv(synth.pick_seeds(truth, args.seeds_per_label), out / "seeds.csv")
    invoices = synth.generate_invoices(out / "invoices", args.invoices)
    synth.write_jsonl([{"document": r.pop("file"), "answer": r} for r in invoices[:30]], out / "invoice_seeds.jsonl")
    bad = sum(r["verdict"] != "ok" for r in truth)
    print(f"wrote {len(truth)} case reports ({bad} bad on purpose) and {len(invoices)} invoices under {out}")


if __name__ == "__main__":
    main()
