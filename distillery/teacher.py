"""Stage 2, the teacher: a committee of an RFT model (GRPO from an SFT warm start), the sentence
encoder and TF-IDF, weighted by out-of-fold predictions over the seeds (`committee.py`).

The committee (classification; `teacher.members` picks its members) follows `committee.py`: every
member's probability row on the seeds it was not fitted on chooses the weights, and the k-fold
members are then refitted on every seed. On real documents a 135M LLM reads a manual worse than a
frozen sentence encoder does (texlive_dev: 0.48 vs 0.74 top-1), so the LLM is kept only at the weight
its out-of-fold rows earn. Extraction tasks keep the LLM alone. What follows is the LLM member.

The algorithm follows OpenAI's RFT as analysed by OpenPipe: sample answers, score them with a
grader that gives partial credit (1.0 if the right label is ranked first, 0.5 if second), and
push the policy towards higher-scoring answers. We use TRL's GRPOTrainer (group-relative
advantages instead of PPO's value model). Departures, measured on a 2-core CPU: GRPO from the
base model learns only the answer format in a CPU budget, so we first run a light SFT on the
seed train split; and checkpoints are chosen on a validation split carved from the seeds, never
on the held-out split that is reported; GRPO replaces the SFT checkpoint only when it beats it on
validation (`kept` in the metrics says which was kept and why). The held-out evaluation scores the
TF-IDF baseline (`baseline.py`) beside base and teacher, and warns when the teacher is below it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import pandas as pd

from distillery import baseline, committee, lake, members
from distillery.answer import answer_examples, evaluate_labeling, ranked_answers
from distillery.evaluate import grade_items, kept_checkpoint, seed_items, stable_slice, summarize
from distillery.graders import build_grader, component_names
from distillery.inference import TransformersBackend, vllm_available
from distillery.models import device, load_model, load_tokenizer
from distillery.prompts import parse_answer, render_prompt
from distillery.sft import train_sft
from distillery.spec import ClassificationOutput, TaskSpec


@dataclass(frozen=True)
class Inputs:
    """What the teacher reads: the seed labels (with their split) and the documents' text."""

    reads: ClassVar = ("seed", "ingest")
    seed_labels: Path
    documents: Path

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        return cls(results["seed"].path("seed_labels"), results["ingest"].path("documents"))


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None) -> lake.StageResult:
    """The members, then the committee: out/committee (classification) or out/best (the LLM) is the model."""
    return train_teacher(spec, inputs.seed_labels, inputs.documents, out=out, run_id=run_id)


def _grader_reward(grader, spec: TaskSpec, name: str, *, prefilled: bool, missing: float | None):
    """A TRL reward function: `grader` over the parsed completions, gold from the `answer` column; an
    answer the grader cannot score gets `missing`."""
    def reward(prompts, completions, answer, **_) -> list[float | None]:
        scores = (grader(parse_answer(c, spec, prefilled=prefilled), g).score for c, g in zip(completions, answer))
        return [missing if s is None else s for s in scores]

    reward.__name__ = name
    return reward


def reward_function(spec: TaskSpec, *, prefilled: bool):
    """The spec's grader as the reward GRPO trains on (an answer it cannot score earns 0)."""
    return _grader_reward(build_grader(spec.grader, spec), spec, f"grader_{spec.grader.type}",
                          prefilled=prefilled, missing=0.0)


def component_rewards(spec: TaskSpec, *, prefilled: bool) -> list:
    """For a `multi` grader, one reward function per component, named by `component_names`: trained
    with weight 0 (the total comes from `reward_function`, whose renormalization over the components
    that could grade stays exact), so they only log `rewards/<name>/mean` per step, the reward per grader."""
    return [_grader_reward(build_grader(component["grader"], spec), spec, name, prefilled=prefilled, missing=None)
            for component, name in zip(spec.grader.components, component_names(spec.grader))]


def _eval_callback(spec: TaskSpec, items: list[dict], out: Path, history: list[dict]):
    from transformers import TrainerCallback

    cfg = spec.teacher.grpo

    class KeepBest(TrainerCallback):
        """Evaluate on the validation split; keep the best checkpoint (and the top `keep`); stop after
        `patience` evaluations without improvement. Ties go to the earlier step."""

        def __init__(self):
            self.best, self.misses, self.tokenizer = float("-inf"), 0, None
            self.kept: list[tuple[float, int]] = []  # (validation reward, step), best first

        def save(self, model, folder: Path) -> None:
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        def evaluate(self, model, step: int):
            model.eval()
            backend = TransformersBackend("", model=model, tokenizer=self.tokenizer, batch_size=8)
            _, metrics = evaluate_labeling(spec, backend, items)
            model.train()
            history.append({"step": step, "split": "validation", **metrics})
            reward = metrics["mean_reward"]
            if reward > self.best:
                self.best, self.misses = reward, 0
                self.save(model, out / "best")
            else:
                self.misses += 1
            if cfg.keep > 1:
                self.kept = sorted(self.kept + [(reward, step)], key=lambda k: (-k[0], k[1]))
                if (reward, step) in self.kept[: cfg.keep]:
                    self.save(model, out / "checkpoints" / f"step-{step}")
                for _, dropped in self.kept[cfg.keep:]:
                    shutil.rmtree(out / "checkpoints" / f"step-{dropped}", ignore_errors=True)
                self.kept = self.kept[: cfg.keep]
            return self.misses >= cfg.patience

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
            self.tokenizer = load_tokenizer(str(out / "start"))
            self.evaluate(model, 0)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % cfg.eval_interval == 0 or state.global_step == state.max_steps:
                if self.evaluate(model, state.global_step):
                    control.should_training_stop = True

    return KeepBest()


def random_reward(seed: int):
    """The control arm: rewards drawn uniformly from the grader's values, whatever the answer."""
    import random

    rng = random.Random(seed)

    def reward(prompts, completions, answer, **_) -> list[float]:
        return [rng.choice([0.0, 0.5, 1.0]) for _ in completions]

    reward.__name__ = "random"
    return reward


def run_grpo(spec: TaskSpec, start: Path, train: list[dict], val: list[dict], out: Path, *,
             reward=None) -> tuple[pd.DataFrame, list[dict]]:
    """GRPO from `start`; the best checkpoint on validation lands in out/best. Returns step metrics.

    `reward` replaces the spec's grader (the random-reward control of the benchmark)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from distillery.grpo import SharedPromptGRPOTrainer

    cfg = spec.teacher.grpo
    gpu = device() == "cuda"
    tokenizer = load_tokenizer(str(start))
    prefilled = not spec.teacher.reasoning
    logged = [] if reward is not None else component_rewards(spec, prefilled=prefilled)
    reward_funcs = [reward or reward_function(spec, prefilled=prefilled), *logged]
    data = Dataset.from_list([{"prompt": render_prompt(it["text"], spec, tokenizer, reasoning=not prefilled),
                               "answer": it["answer"]} for it in train])
    args = GRPOConfig(
        output_dir=str(out / "scratch"), max_steps=cfg.steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.num_generations, gradient_accumulation_steps=cfg.prompts_per_step,
        num_generations=cfg.num_generations, temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length, beta=cfg.beta, loss_type=cfg.loss_type,
        reward_weights=[1.0] + [0.0] * len(logged),
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[],
        seed=spec.seed, use_cpu=not gpu, bf16=gpu, disable_tqdm=True, use_vllm=vllm_available(),
        vllm_mode="colocate", activation_checkpointing=False,  # small models: memory is not the limit
    )
    peft_config = None
    if cfg.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    history: list[dict] = []
    model, _ = load_model(str(start), for_training=True)
    trainer_class = SharedPromptGRPOTrainer if cfg.shared_prompt else GRPOTrainer
    trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=args,
                          train_dataset=data, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[_eval_callback(spec, val, out, history)])
    trainer.train()
    steps = [{"step": h["step"], "split": "train", **{k: v for k, v in h.items() if isinstance(v, (int, float))}}
             for h in trainer.state.log_history if "reward" in h]
    shutil.rmtree(out / "scratch", ignore_errors=True)
    return pd.DataFrame(steps + history), history


def split_for_grpo(train: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """(SFT items, GRPO items): with share > 0, GRPO trains on a stable slice the SFT never saw."""
    if share <= 0 or len(train) < 2:
        return train, train
    return stable_slice(train, min(len(train) - 1, max(1, round(share * len(train)))))


def train_teacher(spec: TaskSpec, seeds: Path, documents: Path, *, out: Path, run_id: str | None = None) -> lake.StageResult:
    """The members the spec lists, then (classification) the committee over them; evaluates base, the
    TF-IDF baseline and the teacher on the held-out seeds.

    The `llm` member: SFT warm start, then GRPO. Metrics also say which checkpoint it kept and why
    (`kept`), and warn when the teacher is below the baseline (`warnings`). With a committee, the
    teacher's held-out figure is the committee's out-of-fold answer on those seeds (it is refitted on
    every seed, so its own answer there would be in-sample); `committee` holds the k-fold figures."""
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("teacher")
    names = members.applicable(spec, spec.teacher.members)
    cap = spec.teacher.eval_max_items
    train = seed_items(spec, seeds, documents, "train")
    val = seed_items(spec, seeds, documents, "validation", cap) or train[:cap]
    heldout = seed_items(spec, seeds, documents, "heldout", cap)
    evals, metrics = [], {}
    baseline_rows, metrics["baseline"] = baseline.evaluate(spec, train, heldout)  # train seeds only
    if len(baseline_rows):
        evals.append(baseline_rows)
    steps, model = pd.DataFrame(columns=["step", "split"]), None
    if "llm" in names:
        steps, llm_rows = train_llm(spec, train, val, heldout, out, metrics)
        evals += llm_rows
        model = out / "best"
    if isinstance(spec.output, ClassificationOutput):
        every = [{**it, "split": split} for split in ("train", "validation", "heldout")
                 for it in seed_items(spec, seeds, documents, split)]
        llm = members.LLMMember(spec, model, batch_size=spec.label.batch_size, backend=spec.label.backend) \
            if "llm" in names else None
        encoder = members.spec_encoder(spec) if "encoder" in names else None
        board, metrics["committee"] = committee.build(spec, every, names, llm=llm, encoder=encoder)
        model = members.save(board, out / "committee")
        rows = committee_rows(spec, heldout, board)
        evals.append(rows.assign(model="teacher"))
        metrics["teacher"] = summarize(rows)
    else:
        evals[-1] = evals[-1].assign(model="teacher")
    metrics["members"] = names
    metrics["warnings"] = teacher_warnings(spec, metrics)
    rows = pd.concat(evals, ignore_index=True)
    rows["task"], rows["run_id"], rows["stage"] = spec.name, run_id, "teacher"
    steps["task"], steps["run_id"], steps["stage"] = spec.name, run_id, "teacher"
    outputs = {"teacher_eval": str(lake.write_parquet(rows, out / "teacher_eval.parquet")),
               "teacher_metrics": str(lake.write_parquet(steps, out / "teacher_metrics.parquet")),
               "model": str(model)}
    plot = reward_curve(steps, out / "reward_curve.png")
    if plot:
        outputs["reward_curve"] = str(plot)
    counts = {"train": len(train), "validation": len(val), "heldout": len(heldout),
              "grpo_steps": _grpo_steps(steps)}
    return lake.StageResult("teacher", run_id, outputs, counts, metrics, time.perf_counter() - started)


def teacher_warnings(spec: TaskSpec, metrics: dict) -> list[str]:
    """Below the baseline? For a committee with a TF-IDF member, judged out of fold on every seed (the
    baseline fitted on the same seeds); else on the held-out seeds, against the train-split baseline."""
    board = metrics.get("committee") or {}
    if "tfidf" in board.get("members", {}):
        tfidf, both = board["members"]["tfidf"], board["committee"]
        return baseline.below_baseline("teacher", both, tfidf, baseline.teacher_tips(spec),
                                       where=f"seeds, out of fold ({board['folds']} folds)")
    return baseline.below_baseline("teacher", metrics["teacher"], metrics["baseline"], baseline.teacher_tips(spec))


def train_llm(spec: TaskSpec, train: list[dict], val: list[dict], heldout: list[dict], out: Path,
              metrics: dict) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The `llm` member: base evaluated, SFT warm start, GRPO, kept checkpoint in out/best, evaluated
    on the held-out seeds (rows model="base" and "llm"; metrics `base`, `sft`, `grpo`, `llm`, `kept`)."""
    base = spec.model_ref(spec.models.base)
    base_rows, metrics["base"] = evaluate_labeling(spec, TransformersBackend(base), heldout)
    start = out / "start"
    sft_items, grpo_items = split_for_grpo(train, spec.teacher.grpo.heldout_from_sft)
    metrics["sft"] = train_sft(base, answer_examples(spec, sft_items, load_tokenizer(base)), spec.teacher.sft, start,
                               seed=spec.seed)
    if spec.teacher.grpo.steps > 0:
        grpo_started = time.perf_counter()
        steps, history = run_grpo(spec, start, grpo_items, val, out)
        metrics["grpo"] = {"steps": _grpo_steps(steps), "seconds": time.perf_counter() - grpo_started}  # validation in
        shutil.rmtree(start)
    else:
        steps, history = pd.DataFrame(columns=["step", "split"]), []
        shutil.rmtree(out / "best", ignore_errors=True)
        start.rename(out / "best")
    llm_rows, metrics["llm"] = evaluate_labeling(spec, TransformersBackend(str(out / "best")), heldout)
    metrics["teacher"] = metrics["llm"]  # an extraction task's teacher; a committee replaces it
    metrics["kept"] = kept_checkpoint(history, spec.teacher.grpo.steps)
    return steps, [base_rows.assign(model="base"), llm_rows.assign(model="llm")]


def committee_rows(spec: TaskSpec, items: list[dict], board: committee.Committee) -> pd.DataFrame:
    """The committee's graded answers on seed items, from its out-of-fold rows (never in-sample)."""
    items = [it for it in items if it["sha256"] in board.out_of_fold]
    probs = np.array([board.out_of_fold[it["sha256"]] for it in items]).reshape(len(items), len(board.labels))
    return grade_items(spec, items, ranked_answers(spec, probs),
                       [{"probs": json.dumps(p.tolist()), "confidence": float(p.max())} for p in probs])


def _grpo_steps(steps: pd.DataFrame) -> int:
    """GRPO steps taken: the last training step logged (0 without GRPO)."""
    done = steps.loc[steps["split"] == "train", "step"]
    return int(done.max()) if len(done) else 0


def reward_curve(steps: pd.DataFrame, path: Path) -> Path | None:
    """Train reward per step and validation reward per evaluation, as a PNG."""
    if steps.empty or "mean_reward" not in steps and "reward" not in steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = steps[steps["split"] == "train"]
    val = steps[steps["split"] == "validation"]
    if "reward" in train:
        ax.plot(train["step"], train["reward"], label="train reward (group mean)", alpha=0.7)
    if "mean_reward" in val:
        ax.plot(val["step"], val["mean_reward"], marker="o", label="validation reward")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
