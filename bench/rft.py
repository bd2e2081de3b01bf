"""`python -m bench.rft`: does RL on the seeds beat plain SFT on the same seeds? Base, the TF-IDF
baseline, SFT on the seeds (time-matched), SFT then GRPO (optionally rerun with other sampling seeds)
and a random-reward GRPO control, all scored on fresh documents -> data/bench/rft.json.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from bench import common


def rft(spec_path: str, profile: str = "demo", docs: int = 300, grpo_steps: int | None = None,
        sampling_seeds: list[int] | None = None) -> dict:
    """Does RL on the seeds beat plain SFT on the same seeds? Four arms, one run, fresh documents.

    - base: the base model;
    - baseline: TF-IDF + logistic regression fitted on the same seed train split (the bar to clear);
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

    from distillery import baseline
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
    documents = Path(common.stage_outputs(spec, "ingest")["documents"])
    seeds = Path(common.stage_outputs(spec, "seed")["seed_labels"])
    train = seed_items(spec, seeds, documents, "train")
    val = seed_items(spec, seeds, documents, "validation", cfg.eval_max_items)
    items = common.fresh_items(docs)
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
    answers, _ = baseline.fit(spec, train).answer([it["text"] for it in items])
    rows = grade_items(spec, items, answers)
    scores["baseline"] = rows["score"].fillna(0).tolist()
    result["baseline"] = {k: summarize(rows)[k] for k in ("mean_reward", "top1")}
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
             "rft_minus_base": rl["mean_reward"] - result["base"]["mean_reward"],
             "rft_minus_baseline": rl["mean_reward"] - result["baseline"]["mean_reward"],
             "sft_seeds_minus_baseline": result["sft_seeds"]["mean_reward"] - result["baseline"]["mean_reward"]}
    pairs = {"rft_minus_sft_seeds": ("sft_then_rft", "sft_seeds"),
             "rft_minus_warm_start": ("sft_then_rft", "warm_start"),
             "random_minus_warm_start": ("random_reward", "warm_start"),
             "rft_minus_random": ("sft_then_rft", "random_reward"),
             "rft_minus_base": ("sft_then_rft", "base"),
             "rft_minus_baseline": ("sft_then_rft", "baseline"),
             "sft_seeds_minus_baseline": ("sft_seeds", "baseline")}
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
        "rft>=baseline": gains["rft_minus_baseline"] >= 0,
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return {**result, "seconds_per_step": rl["grpo_seconds"] / max(rl["grpo_steps"], 1), "steps": rl["grpo_steps"],
            "device": device, "docs": len(items), "train_seeds": len(train), "sft_seeds_for_warm_start": len(sft_items),
            "grpo_seeds": len(grpo_items), "validation_seeds": len(val),
            "grpo": cfg.grpo.model_dump(), "sft": cfg.sft.model_dump(),
            "gains": gains, "gains_ci95": paired, "targets": targets}


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--sampling-seeds", default="",
                    help="comma-separated seeds; the RFT arm is rerun from the same warm start with each")
    ap.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default: the spec's)")
    args = ap.parse_args(argv)
    seeds = [int(x) for x in args.sampling_seeds.split(",")] if args.sampling_seeds else None
    result = rft(args.spec, args.profile, grpo_steps=args.grpo_steps, sampling_seeds=seeds)
    common.write("rft", result, args.out, args.profile)


if __name__ == "__main__":
    main()
