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
from pathlib import Path

from distillery import lake
from distillery.errors import DistilleryError, StageInputMissing
from distillery.evaluate import grade_items, seed_items, summarize
from distillery.inference import TransformersBackend
from distillery.models import device, load_tokenizer
from distillery.prompts import Answer, format_answer, render_prompt
from distillery.spec import ClassificationOutput, SFTSpec, TaskSpec


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
    """SFT examples: the answer-only prompt and the gold answer as completion."""
    return [{"prompt": render_prompt(it["text"], spec, tokenizer),
             "completion": format_answer([it["answer"]] if isinstance(it["answer"], str) else it["answer"])}
            for it in items]


def score_answers(spec: TaskSpec, backend: TransformersBackend, texts: list[str]) -> tuple[list[Answer], list[list[float]]]:
    """The student's answers: every label scored in one pass, ranked by probability."""
    if not isinstance(spec.output, ClassificationOutput):
        raise DistilleryError(f"task {spec.name!r}: the student scores a label set, so it serves classification "
                              "tasks; extraction students (schema-constrained JSON decoding) are not supported yet")
    labels = list(spec.output.labels)
    prompts = [render_prompt(t, spec, backend.tokenizer) for t in texts]
    probs = backend.score_labels(prompts, labels)
    answers = []
    for row in probs:
        order = row.argsort(descending=True)[: spec.output.top_k].tolist()
        answers.append(Answer("ok", ranked=[labels[i] for i in order]))
    return answers, probs.tolist()


def train_student(spec: TaskSpec, machine_labels: Path, seeds: Path, documents: Path, *, out: Path,
                  run_id: str | None = None, teacher_top1: float | None = None) -> lake.StageResult:
    """Train the student on confident teacher labels; evaluate it on the expert held-out split."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("student")
    out.mkdir(parents=True, exist_ok=True)
    base = str(spec.path(spec.models.student)) if spec.path(spec.models.student).exists() else spec.models.student
    labels = lake.read_table(machine_labels).to_pandas()
    usable = labels[(labels["parse_status"] != "failed") & (labels["confidence"] >= spec.student.min_confidence)]
    docs = lake.read_table(documents).to_pandas()[["sha256", "text"]]
    usable = usable.merge(docs, on="sha256")
    items = [{"sha256": r.sha256, "text": r.text, "answer": json.loads(r.answer)[0]} for r in usable.itertuples()]
    if not items:
        raise StageInputMissing("student", f"teacher labels that parse and reach confidence "
                                f"{spec.student.min_confidence} (0 of {len(labels)} do)",
                                "make teacher` with more training, or lower `student.min_confidence")
    tokenizer = load_tokenizer(base)
    train = train_sft(base, answer_examples(spec, items, tokenizer), spec.student.sft, out / "model", seed=spec.seed)
    backend = TransformersBackend(str(out / "model"), batch_size=spec.student.batch_size)
    heldout = seed_items(spec, seeds, documents, "heldout")
    answers, probs = score_answers(spec, backend, [it["text"] for it in heldout])
    rows = grade_items(spec, heldout, answers, [{"probs": json.dumps(p)} for p in probs])
    metrics = {**summarize(rows), "train": train, "trained_on": len(items), "filtered_out": int(len(labels) - len(items))}
    rows["task"], rows["run_id"], rows["stage"], rows["model"] = spec.name, run_id, "student", "student"
    outputs = {"student_eval": str(lake.write_parquet(rows, out / "student_eval.parquet")), "model": str(out / "model")}
    counts = {"trained_on": len(items), "heldout": len(heldout)}
    return lake.StageResult("student", run_id, outputs, counts, metrics, time.perf_counter() - started)
