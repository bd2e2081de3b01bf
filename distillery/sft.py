"""Supervised fine-tuning with TRL's SFTTrainer, and stage 4: the student.

`train_sft` is shared: the teacher's warm start trains on the seed train split, the student on
the teacher's machine labels. Examples are prompt/completion pairs, so TRL computes the loss on
the completion (the answer) only. The student answers directly (no reasoning): at inference it
scores every label of the schema after the `Answer:` prefill and can emit nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from distillery import lake
from distillery.constrained import in_schema
from distillery.errors import StageInputMissing
from distillery.evaluate import grade_items, seed_items, summarize
from distillery.inference import TransformersBackend
from distillery.models import device, load_tokenizer, shallow_copy
from distillery.prompts import Answer, format_answer, render_prompt
from distillery.spec import ClassificationOutput, ExtractionOutput, SFTSpec, TaskSpec


@contextmanager
def answer_positions_only():
    """Project only the answer positions through the LM head during TRL's SFT loss.

    TRL's fused LM head scores every position on devices without Triton (so that tile shapes stay
    fixed for compilers such as Neuron's) and zeroes the prompt positions afterwards; on CPU nothing
    recompiles, and the full-vocabulary head over every prompt position is most of a shallow
    student's training time. Scoring only the positions the loss keeps gives the same loss and
    gradients (tests/test_student.py). A no-op, with a warning, on a TRL release it was not written
    against (`trl_internals.TESTED_TRL`), and where TRL's internals differ.
    """
    from trl.trainer import utils as trl_utils

    from distillery.trl_internals import trl_tested

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or not trl_tested("answer_positions_only"):
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def train_sft(model_name: str, examples: list[dict], cfg: SFTSpec, out_dir: Path, *, seed: int = 0,
              max_length: int = 1024) -> dict:
    """Fine-tune on prompt/completion pairs (loss on completions only); save to out_dir."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    gpu = device() == "cuda"
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
            per_device_train_batch_size=cfg.batch_size, lr_scheduler_type="constant", warmup_steps=0,
            completion_only_loss=True, max_length=max_length, save_strategy="no", report_to=[], logging_steps=1,
            seed=seed, data_seed=seed, use_cpu=not gpu, bf16=gpu, dataloader_num_workers=0, disable_tqdm=True,
        )
        tokenizer = load_tokenizer(model_name)
        tokenizer.padding_side = "right"
        trainer = SFTTrainer(model=model_name, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer)
        started = time.perf_counter()
        with answer_positions_only():
            result = trainer.train()
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        trainer.save_model(str(tmp))
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": int(trainer.state.global_step), "train_loss": float(result.training_loss),
            "final_loss": float(losses[-1]) if losses else None, "seconds": time.perf_counter() - started}


def answer_examples(spec: TaskSpec, items: list[dict], tokenizer) -> list[dict]:
    """SFT examples: the answer-only prompt and the gold answer as completion (an extraction answer
    with the spec's fields in the spec's order: what schema-constrained decoding writes)."""
    def target(answer):
        if isinstance(answer, str):
            return [answer]
        return in_schema(spec.output, answer) if isinstance(spec.output, ExtractionOutput) else answer

    return [{"prompt": render_prompt(it["text"], spec, tokenizer), "completion": format_answer(target(it["answer"]))}
            for it in items]


def first_token_scoring(spec: TaskSpec, tokenizer, *, student: bool) -> bool:
    """Whether the student (or the teacher) scores labels by their first token alone.

    Under a schema that allows exactly the label set (vLLM's structured `choice`), once a label's
    first token is chosen its remaining tokens are forced, so P(label) under constrained decoding is
    the first token's probability renormalized over the labels' first tokens: one forward pass per
    document. It needs labels whose first tokens differ; otherwise every label's full sequence is scored.
    """
    enabled = spec.student.first_token if student else spec.teacher.first_token
    if not (isinstance(spec.output, ClassificationOutput) and enabled):
        return False
    firsts = [tokenizer(" " + label, add_special_tokens=False)["input_ids"][0] for label in spec.output.labels]
    return len(set(firsts)) == len(firsts)


def score_answers(spec: TaskSpec, backend: TransformersBackend, texts: list[str], *,
                  student: bool = False) -> tuple[list[Answer], list[list[float]]]:
    """Answers under the schema, and a probability row per document.

    Classification: every label scored in one pass, ranked by probability; each label by its first
    token when the spec allows it for this model (`teacher.first_token`, or `student.first_token` with
    `student=True`) and the labels' first tokens differ, otherwise by its whole token sequence.
    Extraction: the JSON skeleton forced and each field's value decoded over the tokens its type
    allows (`constrained.decode`); the row holds one number, the decoding's confidence.
    """
    prompts = [render_prompt(t, spec, backend.tokenizer) for t in texts]
    if not isinstance(spec.output, ClassificationOutput):  # extraction: the JSON skeleton forced, values typed
        decoded = backend.extract(prompts, spec.output)
        return [Answer("ok", value=value) for value, _ in decoded], [[confidence] for _, confidence in decoded]
    labels = list(spec.output.labels)
    probs = backend.score_labels(prompts, labels, first_token=first_token_scoring(spec, backend.tokenizer, student=student))
    answers = []
    for row in probs:
        order = row.argsort(descending=True)[: spec.output.top_k].tolist()
        answers.append(Answer("ok", ranked=[labels[i] for i in order]))
    return answers, probs.tolist()


def promotion(spec: TaskSpec, student_top1: float, teacher_top1: float | None) -> dict:
    """The gate: promote when the student keeps `gate` x the teacher's held-out top-1."""
    gate = spec.student.gate
    if teacher_top1 is None:
        return {"promoted": True, "gate": gate, "reason": "no teacher measurement to compare with"}
    needed = gate * teacher_top1
    ok = student_top1 >= needed - 1e-9
    verdict = "reaches" if ok else "is below"
    return {"promoted": ok, "gate": gate, "teacher_top1": teacher_top1, "student_top1": student_top1,
            "reason": f"held-out top-1 {student_top1:.3f} {verdict} {gate:g} x teacher {teacher_top1:.3f} = {needed:.3f}"}


def _validation_slice(items: list[dict], share: float = 0.1) -> tuple[list[dict], list[dict]]:
    """A stable slice of the teacher's labels (by content hash) kept out of training, for agreement."""
    if len(items) < 10:
        return items, []
    ranked = sorted(items, key=lambda it: it["sha256"])
    n = max(1, int(len(items) * share))
    held = {it["sha256"] for it in ranked[:n]}
    return [it for it in items if it["sha256"] not in held], [it for it in items if it["sha256"] in held]


def train_student(spec: TaskSpec, machine_labels: Path, seeds: Path, documents: Path, *, out: Path,
                  run_id: str | None = None, teacher_top1: float | None = None) -> lake.StageResult:
    """Train the student on confident teacher labels; evaluate it on the expert held-out split.

    Metrics: held-out accuracy and reward, agreement with the teacher on a slice of its labels kept
    out of training, inference speed, and `promotion` (the gate against the teacher's top-1).
    """
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("student")
    out.mkdir(parents=True, exist_ok=True)
    base = str(spec.path(spec.models.student)) if spec.path(spec.models.student).exists() else spec.models.student
    labels = lake.read_table(machine_labels).to_pandas()
    usable = labels[(labels["parse_status"] != "failed") & (labels["confidence"] >= spec.student.min_confidence)]
    docs = lake.read_table(documents).to_pandas()[["sha256", "text"]]
    usable = usable.merge(docs, on="sha256")
    classify = isinstance(spec.output, ClassificationOutput)
    items = [{"sha256": r.sha256, "text": r.text,
              "answer": json.loads(r.answer)[0] if classify else json.loads(r.answer)} for r in usable.itertuples()]
    if not items:
        raise StageInputMissing("student", f"teacher labels that parse and reach confidence "
                                f"{spec.student.min_confidence} (0 of {len(labels)} do)",
                                "make teacher` with more training, or lower `student.min_confidence")
    train_items, agreement_items = _validation_slice(items)
    init = base
    if spec.student.layers:
        init = str(shallow_copy(base, out / "init", spec.student.layers))
    tokenizer = load_tokenizer(init)
    train = train_sft(init, answer_examples(spec, train_items, tokenizer), spec.student.sft, out / "model", seed=spec.seed)
    shutil.rmtree(out / "init", ignore_errors=True)
    backend = TransformersBackend(str(out / "model"), batch_size=spec.student.batch_size)
    heldout = seed_items(spec, seeds, documents, "heldout")
    scored = time.perf_counter()
    answers, probs = score_answers(spec, backend, [it["text"] for it in heldout], student=True)
    docs_per_s = len(heldout) / (time.perf_counter() - scored) if heldout else None
    rows = grade_items(spec, heldout, answers, [{"probs": json.dumps(p), "confidence": max(p)} for p in probs])
    summary = summarize(rows)
    agreement = None
    if agreement_items:
        agreed, _ = score_answers(spec, backend, [it["text"] for it in agreement_items], student=True)
        agreement = float(grade_items(spec, agreement_items, agreed)["top1"].mean())
    metrics = {**summary, "train": train, "trained_on": len(train_items), "filtered_out": int(len(labels) - len(items)),
               "teacher_agreement": agreement, "agreement_items": len(agreement_items), "docs_per_s": docs_per_s,
               "layers": backend.model.config.num_hidden_layers,
               "promotion": promotion(spec, summary["top1"], teacher_top1)}
    rows["task"], rows["run_id"], rows["stage"], rows["model"] = spec.name, run_id, "student", "student"
    outputs = {"student_eval": str(lake.write_parquet(rows, out / "student_eval.parquet")), "model": str(out / "model")}
    counts = {"trained_on": len(train_items), "heldout": len(heldout)}
    return lake.StageResult("student", run_id, outputs, counts, metrics, time.perf_counter() - started)
