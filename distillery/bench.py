"""Benchmarks: `python -m distillery.bench NAME`, each writing `data/bench/NAME.json`.

- `robustness`: ingestion verdicts on the shared corpus of real hostile PDFs (qpdf, pdf.js,
  py-pdf test suites; read in place, never copied), plus planted hanging and oversize files.
- `adversarial`: demo case reports whose text orders the model to answer X (a wrong label, or one
  outside the set), labeled by the promoted student next to the same reports without the order.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from distillery import lake, pdf, synth
from distillery.errors import StageInputMissing

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


def adversarial(spec_path: str, n: int = 40, student: str | None = None) -> dict:
    """How often planted instructions steer the models, and whether any label leaves the schema.

    The promoted student (top-level keys) and, when a teacher stage has finished, the teacher
    (`teacher`), each on the same attacked and clean reports, each answering as its stage does.
    """
    from distillery.inference import TransformersBackend
    from distillery.answer import score_answers
    from distillery.spec import load_spec

    spec = load_spec(spec_path)
    student = student or lake.current_model(lake.home(), spec.name)
    if student is None:
        raise StageInputMissing("bench-adversarial", f"a promoted student for task {spec.name!r}", "make student")
    cases = [synth.adversarial_case(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        texts = {}
        for kind in ("clean", "attacked"):
            paths = []
            for i, (case, _) in enumerate(cases):
                path = Path(tmp) / f"{kind}-{i}.pdf"
                path.write_bytes(synth.case_pdf(case if kind == "attacked" else replace(case, injection=""), i))
                paths.append(str(path))
            texts[kind] = [r.text for r in pdf.extract_many(paths, workers=2)]
    labels = set(spec.output.labels)
    in_set = [i for i, (_, target) in enumerate(cases) if target in labels]

    def steering(model: str, batch_size: int, is_student: bool) -> dict:
        backend = TransformersBackend(model, batch_size=batch_size)
        started = time.perf_counter()
        answers = {kind: score_answers(spec, backend, texts[kind], student=is_student)[0] for kind in texts}
        seconds = time.perf_counter() - started
        attacked, clean = answers["attacked"], answers["clean"]

        def rate(hits) -> float:
            return sum(hits) / len(in_set) if in_set else 0.0

        return {
            "model": model,
            "out_of_schema_labels": sum(label not in labels for a in attacked for label in a.ranked),
            "out_of_set_target_chosen": sum(synth.OUT_OF_SET in a.ranked for a in attacked),
            "injected_label_chosen": rate(attacked[i].top == cases[i][1] for i in in_set),
            "injected_label_chosen_without_injection": rate(clean[i].top == cases[i][1] for i in in_set),
            "true_label_chosen": rate(attacked[i].top == cases[i][0].label for i in in_set),
            "true_label_chosen_without_injection": rate(clean[i].top == cases[i][0].label for i in in_set),
            "accuracy_attacked": sum(a.top == c.label for a, (c, _) in zip(attacked, cases)) / n,
            "accuracy_clean": sum(a.top == c.label for a, (c, _) in zip(clean, cases)) / n,
            "seconds": seconds,
        }

    result = {"docs": n, "in_set_docs": len(in_set), "student": student,
              **{k: v for k, v in steering(student, spec.student.batch_size, True).items() if k != "model"}}
    teacher = lake.latest_outputs(lake.home(), spec.name, "teacher")
    if teacher is not None:
        result["teacher"] = steering(teacher["model"], spec.label.batch_size, False)
    return result


def _stage_outputs(spec, stage: str) -> dict[str, str]:
    outputs = lake.latest_outputs(lake.home(), spec.name, stage)
    if outputs is None:
        raise StageInputMissing(f"bench ({stage})", f"a finished {stage} stage for task {spec.name!r}", f"make {stage}")
    return outputs


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
    import pandas as pd
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
    teacher = _stage_outputs(spec, "teacher")["model"]
    documents = _stage_outputs(spec, "ingest")["documents"]
    seeds = _stage_outputs(spec, "seed")["seed_labels"]
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
        "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def fresh_items(n: int, start: int = 100_000) -> list[dict]:
    """n new demo case reports (text via the same PDF extraction) with their true label."""
    cases = [synth.make_case(i) for i in range(start, start + n)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, case in zip(range(start, start + n), cases):
            path = Path(tmp) / case.name
            path.write_bytes(synth.case_pdf(case, i))
            paths.append(str(path))
        texts = [r.text for r in pdf.extract_many(paths, workers=2)]
    return [{"sha256": f"fresh-{c.name}", "document": c.name, "text": t, "answer": c.label}
            for c, t in zip(cases, texts)]


def student(spec_path: str, profile: str = "demo", limit: int = 300, layers: int | None = None,
            label_docs: int = 1000, epochs: float = 4.0, learning_rate: float = 1e-3) -> dict:
    """Base, teacher and student on the same fresh documents: top-1 against the truth and docs/s.

    The documents are new case reports from the demo generator (numbered past any demo corpus), so
    no model saw them: not the teacher's seeds, not the student's machine labels.
    With `layers`, one more arm, `shallow_student`: the teacher machine-labels `label_docs` other
    fresh documents (its labels only, no truth), and a student of that many layers, initialized from
    the base's layers, is trained on them with TRL SFT, as the student stage does at a larger scale.
    """
    import torch

    from distillery.evaluate import grade_items, summarize
    from distillery.inference import TransformersBackend
    from distillery.answer import first_token_scoring, score_answers
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    teacher = _stage_outputs(spec, "teacher")["model"]
    student_model = lake.current_model(lake.home(), spec.name) or _stage_outputs(spec, "student")["model"]
    items = fresh_items(limit)
    texts = [it["text"] for it in items]
    base = str(spec.path(spec.models.base))
    torch.set_num_threads(os.cpu_count() or 1)
    arms = {"base": (base, spec.label.batch_size, False), "teacher": (teacher, spec.label.batch_size, False),
            "student": (student_model, spec.student.batch_size, True)}
    result = {}
    scratch = tempfile.TemporaryDirectory()
    if layers:
        shallow, result["shallow_student_training"] = _train_shallow_student(
            spec, teacher, base, Path(scratch.name), layers, label_docs, epochs, learning_rate)
        arms["shallow_student"] = (shallow, spec.student.batch_size, True)
    for name, (path, batch, is_student) in arms.items():
        backend = TransformersBackend(path, batch_size=batch)
        score_answers(spec, backend, texts[:batch], student=is_student)  # warm-up
        started = time.perf_counter()
        answers, _ = score_answers(spec, backend, texts, student=is_student)
        seconds = time.perf_counter() - started
        summary = summarize(grade_items(spec, items, answers))
        result[name] = {"top1": summary["top1"], "mean_reward": summary["mean_reward"],
                        "docs_per_s": len(items) / seconds, "model": path,
                        "layers": backend.model.config.num_hidden_layers,
                        "params_m": sum(p.numel() for p in backend.model.parameters()) / 1e6}
    scratch.cleanup()
    teacher_r, student_r = result["teacher"], result["student"]
    if layers:
        shallow_r = result["shallow_student"]
        shallow_r["accuracy_ratio"] = shallow_r["top1"] / teacher_r["top1"] if teacher_r["top1"] else None
        shallow_r["speedup"] = shallow_r["docs_per_s"] / teacher_r["docs_per_s"]
    return {**result, "docs": len(items),
            "accuracy_ratio": student_r["top1"] / teacher_r["top1"] if teacher_r["top1"] else None,
            "speedup": student_r["docs_per_s"] / teacher_r["docs_per_s"],
            "scoring": {role: "first token of each label" if first_token_scoring(spec, backend.tokenizer, student=role == "student")
                        else "every label's full token sequence" for role in ("teacher", "student")},
            "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _train_shallow_student(spec, teacher: str, base: str, work: Path, layers: int, label_docs: int,
                           epochs: float, learning_rate: float) -> tuple[str, dict]:
    """The teacher labels `label_docs` fresh documents; a `layers`-deep student trains on its labels."""
    from distillery.inference import TransformersBackend
    from distillery.answer import label_rows
    from distillery.models import load_tokenizer, shallow_copy
    from distillery.answer import answer_examples
    from distillery.sft import train_sft
    from distillery.spec import SFTSpec

    pool = fresh_items(label_docs, start=300_000)
    started = time.perf_counter()
    rows = label_rows(spec, TransformersBackend(teacher, batch_size=spec.label.batch_size), pool,
                      model_id="bench", run_id="bench")
    label_s = time.perf_counter() - started
    pairs = [(it, json.loads(r["answer"])[0]) for it, r in zip(pool, rows) if r["parse_status"] != "failed"]
    train = [{"text": it["text"], "answer": answer} for it, answer in pairs]
    teacher_right = sum(answer == it["answer"] for it, answer in pairs) / max(len(pairs), 1)
    init = shallow_copy(base, work / "init", layers)
    cfg = SFTSpec(epochs=epochs, learning_rate=learning_rate, batch_size=spec.student.sft.batch_size)
    trained = train_sft(str(init), answer_examples(spec, train, load_tokenizer(str(init))), cfg, work / "shallow",
                        seed=spec.seed)
    return str(work / "shallow"), {"machine_labels": len(train), "labeling_s": label_s,
                                   "teacher_label_accuracy": teacher_right, "layers": layers,
                                   "sft": cfg.model_dump(), "train": trained}


def rft(spec_path: str, profile: str = "demo", docs: int = 300, grpo_steps: int | None = None,
        sampling_seeds: list[int] | None = None) -> dict:
    """Does RL on the seeds beat plain SFT on the same seeds? Four arms, one run, fresh documents.

    - base: the base model;
    - sft_seeds: TRL SFT on the seed train split for as long (wall time) as sft_then_rft trains;
    - sft_then_rft: the teacher recipe: SFT warm start, then GRPO with the spec's grader, the
      checkpoint kept on the validation split (also reported as `rft`);
    - random_reward: the same warm start and GRPO steps with rewards drawn at random (a control
      that separates learning the task from drifting with training);
    - warm_start: the SFT checkpoint both GRPO arms start from (what GRPO adds is measured from it).
    Every arm is scored on `docs` new case reports from the demo generator, which no arm saw, with
    the labeling stage's path (the label set scored under the schema) and the spec's grader.
    """
    import shutil

    import torch

    from distillery.evaluate import grade_items, paired_difference, seed_items, summarize
    from distillery.inference import TransformersBackend
    from distillery.models import load_tokenizer
    from distillery.teacher import random_reward, run_grpo, split_for_grpo
    from distillery.answer import answer_examples, score_answers
    from distillery.sft import train_sft
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    if grpo_steps is not None:
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={
            "grpo": spec.teacher.grpo.model_copy(update={"steps": grpo_steps})})})
    cfg = spec.teacher
    documents = Path(_stage_outputs(spec, "ingest")["documents"])
    seeds = Path(_stage_outputs(spec, "seed")["seed_labels"])
    train = seed_items(spec, seeds, documents, "train")
    val = seed_items(spec, seeds, documents, "validation", cfg.eval_max_items)
    items = fresh_items(docs)
    base = str(spec.path(spec.models.base))
    tokenizer = load_tokenizer(base)

    scores: dict[str, list[float]] = {}  # per-item rewards of each arm, for paired intervals

    def evaluate(path, arm: str) -> dict:
        answers, _ = score_answers(spec, TransformersBackend(str(path), batch_size=spec.label.batch_size),
                                   [it["text"] for it in items])
        rows = grade_items(spec, items, answers)
        scores[arm] = rows["score"].fillna(0).tolist()
        summary = summarize(rows)
        return {"mean_reward": summary["mean_reward"], "top1": summary["top1"]}

    result: dict = {"base": evaluate(base, "base")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sft_items, grpo_items = split_for_grpo(train, cfg.grpo.heldout_from_sft)
        warm = train_sft(base, answer_examples(spec, sft_items, tokenizer), cfg.sft, work / "start", seed=spec.seed)
        result["warm_start"] = {**evaluate(work / "start", "warm_start"), "steps": warm["steps"],
                                "seconds": warm["seconds"],
                                "seeds": len(sft_items)}
        arms = {}
        # Every validation checkpoint of an RFT arm is kept and scored on the documents too: the
        # held-out reward by GRPO step, reported beside the validation curve and never used to select.
        evaluations = cfg.grpo.steps // cfg.grpo.eval_interval + 2
        curve_spec = spec.model_copy(update={"teacher": cfg.model_copy(update={
            "grpo": cfg.grpo.model_copy(update={"keep": max(cfg.grpo.keep, evaluations)})})})

        def grpo_arm(name: str, run_spec, reward=None) -> dict:
            out = work / name
            out.mkdir()
            shutil.copytree(work / "start", out / "start")
            started = time.perf_counter()
            steps, history = run_grpo(run_spec, out / "start", grpo_items, val, out, reward=reward)
            seconds = time.perf_counter() - started  # includes writing the extra checkpoints (~1 s each)
            train_steps = steps[steps["split"] == "train"]
            best = max(history, key=lambda h: h["mean_reward"]) if history else {}
            arm = {**evaluate(out / "best", name), "grpo_steps": int(len(train_steps)), "grpo_seconds": seconds,
                   "kept_step": best.get("step"), "validation_reward": best.get("mean_reward"),
                   "validation_by_step": {int(h["step"]): h["mean_reward"] for h in history},
                   "frac_reward_zero_std": float(train_steps["frac_reward_zero_std"].mean())
                   if "frac_reward_zero_std" in train_steps else None,
                   "train_reward_by_step": {int(r["step"]): float(r["reward"]) for _, r in train_steps.iterrows()}}
            if reward is None:
                checkpoints = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
                arm["heldout_by_step"] = {int(p.name[5:]): evaluate(p, f"{name}@{p.name}")["mean_reward"]
                                          for p in checkpoints}
            shutil.rmtree(out)
            return arm

        arms["sft_then_rft"] = grpo_arm("sft_then_rft", curve_spec)
        arms["random_reward"] = grpo_arm("random_reward", spec, random_reward(spec.seed))
        # The same recipe from the same warm start with other sampling seeds: how much of the gain is the draw.
        reruns = {seed: grpo_arm(f"sft_then_rft@seed{seed}", curve_spec.model_copy(update={"seed": seed}))
                  for seed in sampling_seeds or [] if seed != spec.seed}
        rl = arms["sft_then_rft"]
        total = warm["seconds"] + rl["grpo_seconds"]
        sft_steps = max(1, round(total / (warm["seconds"] / warm["steps"])))
        matched = cfg.sft.model_copy(update={"max_steps": sft_steps})
        plain = train_sft(base, answer_examples(spec, train, tokenizer), matched, work / "sft", seed=spec.seed)
        result["sft_seeds"] = {**evaluate(work / "sft", "sft_seeds"), "steps": plain["steps"],
                               "seconds": plain["seconds"]}
    result["sft_then_rft"] = {**rl, "sft_steps": warm["steps"], "sft_seconds": warm["seconds"], "seconds": total}
    result["random_reward"] = arms["random_reward"]
    result["rft"] = result["sft_then_rft"]
    gains = {"rft_minus_sft_seeds": rl["mean_reward"] - result["sft_seeds"]["mean_reward"],
             "rft_minus_warm_start": rl["mean_reward"] - result["warm_start"]["mean_reward"],
             "random_minus_warm_start": arms["random_reward"]["mean_reward"] - result["warm_start"]["mean_reward"],
             "random_minus_sft_seeds": arms["random_reward"]["mean_reward"] - result["sft_seeds"]["mean_reward"],
             "rft_minus_base": rl["mean_reward"] - result["base"]["mean_reward"]}
    pairs = {"rft_minus_sft_seeds": ("sft_then_rft", "sft_seeds"),
             "rft_minus_warm_start": ("sft_then_rft", "warm_start"),
             "random_minus_warm_start": ("random_reward", "warm_start"),
             "rft_minus_random": ("sft_then_rft", "random_reward"),
             "rft_minus_base": ("sft_then_rft", "base")}
    paired = {name: paired_difference(scores[a], scores[b]) for name, (a, b) in pairs.items()}
    if reruns:
        draws = {spec.seed: rl, **reruns}
        result["sft_then_rft_by_sampling_seed"] = {
            seed: {"mean_reward": arm["mean_reward"], "top1": arm["top1"], "kept_step": arm["kept_step"],
                   "heldout_by_step": arm["heldout_by_step"],
                   "minus_sft_seeds": paired_difference(scores["sft_then_rft" if seed == spec.seed
                                                               else f"sft_then_rft@seed{seed}"], scores["sft_seeds"])}
            for seed, arm in draws.items()}
        result["sft_then_rft_sampling_seed_mean"] = sum(a["mean_reward"] for a in draws.values()) / len(draws)
    targets = {  # the acceptance of the RFT issues, as measured here
        "rft>=base+0.15": gains["rft_minus_base"] >= 0.15,
        "rft>=sft_seeds": gains["rft_minus_sft_seeds"] >= 0,
        "rft>random_reward": paired["rft_minus_random"]["diff"] > 0,
        "rft-sft_seeds>|random-warm_start|": gains["rft_minus_sft_seeds"] > abs(gains["random_minus_warm_start"]),
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return {**result, "seconds_per_step": rl["grpo_seconds"] / max(rl["grpo_steps"], 1), "steps": rl["grpo_steps"],
            "device": device, "docs": len(items), "train_seeds": len(train), "sft_seeds_for_warm_start": len(sft_items),
            "grpo_seeds": len(grpo_items), "validation_seeds": len(val),
            "grpo": cfg.grpo.model_dump(), "sft": cfg.sft.model_dump(),
            "gains": gains, "gains_ci95": paired, "targets": targets}


def grpo_step(spec_path: str, profile: str = "demo") -> dict:
    """One GRPO batch at the spec's sizes: TRL's forward+backward vs the shared-prompt one."""
    import torch

    from distillery.grpo import bench_grpo_step
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    cfg = spec.teacher.grpo
    torch.set_num_threads(os.cpu_count() or 1)
    result = bench_grpo_step(str(spec.path(spec.models.base)), prompts_per_step=cfg.prompts_per_step,
                             num_generations=cfg.num_generations, completion_length=cfg.max_completion_length)
    return {**result, "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "cpus": os.cpu_count()}


def bulk(spec_path: str, profile: str = "demo", docs: int = 5000, model: str | None = None) -> dict:
    """Bulk labeling at scale: end-to-end vs extraction-only vs inference-only, overlap and MFU
    (see distillery/bench_bulk.py; the corpus is generated once into data/bench/bulk-corpus)."""
    from distillery import bench_bulk

    return bench_bulk.run(spec_path, profile, docs, model=model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=["robustness", "adversarial", "label", "student", "rft", "grpo_step", "bulk"])
    ap.add_argument("--corpus", default=str(DEFAULT_HOSTILE), help="robustness: the hostile PDF corpus folder")
    ap.add_argument("--spec", default="data/demo/clinical.yaml", help="adversarial: the task spec")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--docs", type=int, default=64, help="label: documents timed in each arm")
    ap.add_argument("--layers", type=int, default=None,
                    help="student: also train a student of this many layers on the teacher's labels of --label-docs")
    ap.add_argument("--label-docs", type=int, default=1000, help="student: fresh documents the teacher labels")
    ap.add_argument("--sampling-seeds", default="",
                    help="rft: comma-separated seeds; the RFT arm is rerun from the same warm start with each")
    ap.add_argument("--grpo-steps", type=int, default=None, help="rft: GRPO steps (default: the spec's)")
    ap.add_argument("--model", default=None,
                    help="bulk, adversarial: the labeling model (default: the promoted student)")
    ap.add_argument("--out", default="data/bench")
    args = ap.parse_args()
    if args.name == "robustness":
        result = robustness(Path(args.corpus))
    elif args.name == "adversarial":
        result = adversarial(args.spec, student=args.model)
    elif args.name == "label":
        result = label(args.spec, args.docs, args.profile)
    elif args.name == "student":
        result = student(args.spec, args.profile, layers=args.layers, label_docs=args.label_docs)
    elif args.name == "grpo_step":
        result = grpo_step(args.spec, args.profile)
    elif args.name == "bulk":
        result = bulk(args.spec, args.profile, args.docs, model=args.model)
    else:
        result = rft(args.spec, args.profile, grpo_steps=args.grpo_steps,
                     sampling_seeds=[int(x) for x in args.sampling_seeds.split(",")] if args.sampling_seeds else None)
    name = args.name if args.profile == "demo" else f"{args.name}-{args.profile}"  # other profiles keep theirs apart
    path = lake.write_json(result, Path(args.out) / f"{name}.json")
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if not isinstance(v, (dict, list))}
    print(f"{args.name} -> {path}: {shown}")


if __name__ == "__main__":
    main()
