"""Supervised fine-tuning with TRL's SFTTrainer.

Shared machinery, not a stage: the teacher's warm start trains on the seed train split, the
student on the teacher's machine labels. Examples are prompt/completion pairs
(`answer.answer_examples`), so TRL computes the loss on the completion (the answer) only.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from distillery.models import device, load_tokenizer
from distillery.spec import SFTSpec


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
