"""`python -m bench.label`: the labeling stage vs a per-document transformers pipeline loop (docs/s),
and the teacher's calibration on documents with a known label -> data/bench/label.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench import common
from distillery import lake, members
from distillery.errors import DistilleryError


def known_items(spec, documents: Path, seeds: Path, truth: str, limit: int | None = None) -> list[dict]:
    """Documents whose label is known and that no model trained on: unseeded documents with the
    generator's truth (which the pipeline never sees), then the expert held-out seeds."""
    import pandas as pd

    from distillery.evaluate import seed_items
    from distillery.label import pick_documents

    known = dict(pd.read_csv(truth)[["file", "label"]].itertuples(index=False)) if Path(truth).exists() else {}
    names = dict(lake.read_table(documents).to_pandas()[["sha256", "name"]].itertuples(index=False))
    pool = pick_documents(documents, seeds, 10**9)
    items = [{**d, "answer": known[names[d["sha256"]]]} for d in pool if names.get(d["sha256"]) in known]
    items += seed_items(spec, seeds, documents, "heldout")
    return items[-limit:] if limit else items


def label(spec_path: str, docs: int = 64, profile: str = "demo", truth: str = "data/demo/truth.csv") -> dict:
    """Docs/s of the labeling stage vs a naive pipeline loop; ECE and accuracy at coverage."""
    import torch
    from transformers import pipeline

    from distillery.evaluate import calibration
    from distillery.inference import TransformersBackend
    from distillery.answer import evaluate_labels, label_rows
    from distillery.label import pick_documents
    from distillery.prompts import parse_answer, render_prompt
    from distillery.answer import first_token_scoring
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    teacher = members.llm_of(common.stage_outputs(spec, "teacher")["model"])  # this benchmark times the LLM
    if teacher is None:
        raise DistilleryError("bench label times the teacher's LLM, and this teacher's committee has none "
                              "(teacher.members)")
    documents = common.stage_outputs(spec, "ingest")["documents"]
    seeds = common.stage_outputs(spec, "seed")["seed_labels"]
    pool = pick_documents(Path(documents), Path(seeds), 10**9)
    sample = pool[:docs]
    backend = TransformersBackend(teacher, batch_size=spec.label.batch_size)
    tok = backend.tokenizer
    prompts = [render_prompt(d["text"], spec, tok) for d in sample]
    naive = pipeline("text-generation", model=backend.model, tokenizer=tok)
    budget = spec.label.max_new_tokens

    def run_naive(n: int = len(sample)):
        return [naive(p, max_new_tokens=budget, do_sample=False, return_full_text=False)[0]["generated_text"]
                for p in prompts[:n]]

    def run_ours(n: int = len(sample)):
        return label_rows(spec, backend, sample[:n], model_id="bench", run_id="bench")

    sequence_spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"first_token": False})})

    def run_sequence(n: int = len(sample)):  # every label's full token sequence scored (teacher.first_token: false)
        return label_rows(sequence_spec, backend, sample[:n], model_id="bench", run_id="bench")

    def run_batched_generation():
        return backend.generate(prompts, max_new_tokens=budget)

    torch.set_num_threads(os.cpu_count() or 1)
    run_ours(spec.label.batch_size), run_sequence(spec.label.batch_size), run_naive(4)  # warm-up: allocator, kernels
    timings = {}
    for name, fn in (("naive", run_naive), ("ours", run_ours), ("sequence_scoring", run_sequence),
                     ("batched_generation", run_batched_generation)):
        started = time.perf_counter()
        out = fn()
        timings[name] = (time.perf_counter() - started, out)
    naive_text, ours_rows = timings["naive"][1], timings["ours"][1]

    items = known_items(spec, Path(documents), Path(seeds), truth)
    rows = evaluate_labels(spec, backend, items, model_id="bench")
    cal = calibration(rows["confidence"], rows["top1"])
    sequence_rows = evaluate_labels(sequence_spec, backend, items, model_id="bench")
    sequence_cal = calibration(sequence_rows["confidence"], sequence_rows["top1"])
    golds = {it["sha256"]: it["answer"] for it in items}
    naive_top1 = [parse_answer(t, spec).top == golds.get(d["sha256"]) for t, d in zip(naive_text, sample)]
    ours_top1 = [json.loads(r["answer"])[0] == golds.get(r["sha256"]) for r in ours_rows]
    ours_s, naive_s = timings["ours"][0], timings["naive"][0]
    return {
        "docs": len(sample), "ours_docs_per_s": len(sample) / ours_s, "naive_docs_per_s": len(sample) / naive_s,
        "speedup": naive_s / ours_s,
        "batched_generation_docs_per_s": len(sample) / timings["batched_generation"][0],
        "scoring": "first token of each label" if first_token_scoring(spec, tok, student=False)
        else "every label's full token sequence",
        "sequence_scoring": {"docs_per_s": len(sample) / timings["sequence_scoring"][0],
                             "top1": float(sequence_rows["top1"].mean()), "ece": sequence_cal["ece"],
                             "acc_at_coverage": sequence_cal["acc_at_coverage"]},
        "top1": float(rows["top1"].mean()),
        "ece": cal["ece"], "acc_at_coverage": cal["acc_at_coverage"], "calibration_docs": cal["n"],
        "calibration_bins": cal["bins"],
        "top1_on_timed_docs": {"ours": sum(ours_top1) / len(sample), "naive": sum(naive_top1) / len(sample)},
        "max_new_tokens": budget, "batch_size": spec.label.batch_size, "model": teacher,
        "confidence": "probability of the top label, the label set scored after the Answer: prefill",
        **common.machine(torch_threads=True),
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--docs", type=int, default=64, help="documents timed in each arm")
    args = ap.parse_args(argv)
    common.write("label", label(args.spec, args.docs, args.profile), args.out, args.profile)


if __name__ == "__main__":
    main()
