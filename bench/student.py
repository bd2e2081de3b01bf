"""`python -m bench.student`: base, the TF-IDF baseline, teacher and student on the same fresh
documents: top-1 against the truth and docs/s (with --layers, also a shallow student trained on the
teacher's labels) -> data/bench/student.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from bench import common
from distillery import lake


def student(spec_path: str, profile: str = "demo", limit: int = 300, layers: int | None = None,
            label_docs: int = 1000, epochs: float = 4.0, learning_rate: float = 1e-3) -> dict:
    """Base, baseline, teacher and student on the same fresh documents: top-1 against the truth and docs/s.

    The baseline is TF-IDF + logistic regression fitted on the seed train split the teacher trained on.

    The documents are new case reports from the demo generator (numbered past any demo corpus), so
    no model saw them: not the teacher's seeds, not the student's machine labels.
    With `layers`, one more arm, `shallow_student`: the teacher machine-labels `label_docs` other
    fresh documents (its labels only, no truth), and a student of that many layers, initialized from
    the base's layers, is trained on them with TRL SFT, as the student stage does at a larger scale.
    """
    import torch

    from distillery.evaluate import grade_items, summarize
    from distillery.answer import first_token_scoring, score_answers
    from distillery.members import load_labeler
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    teacher = common.stage_outputs(spec, "teacher")["model"]
    student_model = lake.current_model(lake.Layout.at(), spec.name) or common.stage_outputs(spec, "student")["model"]
    items = common.fresh_items(limit)
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
    result["baseline"] = _baseline_arm(spec, items)
    for name, (path, batch, is_student) in arms.items():
        backend = load_labeler(path, batch_size=batch, backend="transformers")
        score_answers(spec, backend, texts[:batch], student=is_student)  # warm-up
        started = time.perf_counter()
        answers, _ = score_answers(spec, backend, texts, student=is_student)
        seconds = time.perf_counter() - started
        summary = summarize(grade_items(spec, items, answers))
        result[name] = {"top1": summary["top1"], "mean_reward": summary["mean_reward"],
                        "docs_per_s": len(items) / seconds, "model": path,
                        **({"layers": backend.model.config.num_hidden_layers,
                            "params_m": sum(p.numel() for p in backend.model.parameters()) / 1e6}
                           if hasattr(backend, "model") else {"kind": getattr(backend, "name", "")})}
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
            **common.machine(torch_threads=True)}


def _baseline_arm(spec, items: list[dict]) -> dict:
    """TF-IDF + logistic regression fitted on the seed train split, scored on `items`."""
    from distillery import baseline
    from distillery.evaluate import grade_items, seed_items, summarize

    train = seed_items(spec, common.stage_outputs(spec, "seed")["seed_labels"],
                       common.stage_outputs(spec, "ingest")["documents"], "train")
    started = time.perf_counter()
    answers, _ = baseline.fit(spec, train).answer([it["text"] for it in items])
    seconds = time.perf_counter() - started  # fitting included: it takes well under a second
    summary = summarize(grade_items(spec, items, answers))
    return {"top1": summary["top1"], "mean_reward": summary["mean_reward"], "docs_per_s": len(items) / seconds,
            "model": "tfidf+logreg", "trained_on": len(train)}


def _train_shallow_student(spec, teacher: str, base: str, work: Path, layers: int, label_docs: int,
                           epochs: float, learning_rate: float) -> tuple[str, dict]:
    """The teacher labels `label_docs` fresh documents; a `layers`-deep student trains on its labels."""
    from distillery.answer import label_rows
    from distillery.members import load_labeler
    from distillery.models import load_tokenizer, shallow_copy
    from distillery.answer import answer_examples
    from distillery.sft import train_sft
    from distillery.spec import SFTSpec

    pool = common.fresh_items(label_docs, start=300_000)
    started = time.perf_counter()
    rows = label_rows(spec, load_labeler(teacher, batch_size=spec.label.batch_size, backend="transformers"), pool,
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



def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--layers", type=int, default=None,
                    help="also train a student of this many layers on the teacher's labels of --label-docs")
    ap.add_argument("--label-docs", type=int, default=1000, help="fresh documents the teacher labels")
    args = ap.parse_args(argv)
    result = student(args.spec, args.profile, layers=args.layers, label_docs=args.label_docs)
    common.write("student", result, args.out, args.profile)


if __name__ == "__main__":
    main()
