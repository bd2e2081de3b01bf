"""`python -m bench.grpo_step`: one GRPO batch at the spec's sizes, forward+backward by TRL's path vs
the shared-prompt one (and generation by each) -> data/bench/grpo_step.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import common
from distillery import lake
from distillery.grpo import SharedPromptGRPOTrainer, tokens_per_step


def demo_prompts(tokenizer, n: int, spec_path: str | Path = common.DEFAULT_SPEC) -> list[str]:
    """`n` clinical demo prompts: ingested documents from the lake if any, else synthetic case texts."""
    from distillery import synth
    from distillery.prompts import render_prompt
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile="demo")
    texts: list[str] = []
    docs = sorted((lake.Layout.at().lake / spec.name / "ingest").glob("*/documents.parquet"))
    if docs:
        import pandas as pd

        texts = pd.read_parquet(docs[0], columns=["name", "text"]).sort_values("name")["text"].head(n).tolist()
    for i in range(len(texts), n):
        case = synth.make_case(i)
        texts.append(f"A patient presented with {', '.join(case.findings)}. The patient also reported {case.distractor}.")
    return [render_prompt(t, spec, tokenizer) for t in texts]


def grpo_batch(model, tokenizer, prompts: list[str], *, num_generations: int, completion_length: int,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like TRL's: each prompt repeated `num_generations` times in a row, left-padded; sampled
    completions right-padded to `completion_length`, masked after their first EOS (kept, as TRL does);
    random advantages; old log-probs = the model's, perturbed, so that the loss depends on the log-probs
    (with no old log-probs TRL's ratio is exactly 1) and some tokens are clipped."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(num_generations, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(num_generations, 0)
    torch.manual_seed(seed)
    with torch.no_grad():
        seqs = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=1.0,
                              top_k=None, top_p=None, max_new_tokens=completion_length,
                              pad_token_id=tokenizer.pad_token_id)
    completion = seqs[:, prompt_ids.size(1):]
    completion_ids = torch.full((len(completion), completion_length), tokenizer.pad_token_id, dtype=torch.long)
    completion_ids[:, : completion.size(1)] = completion
    is_eos = completion_ids == tokenizer.eos_token_id
    eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_length)
    completion_mask = (torch.arange(completion_length) <= eos.unsqueeze(1)).int()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1),
                       attention_mask=torch.cat([prompt_mask, completion_mask], 1)).logits
    logps = logits[:, prompt_ids.size(1) - 1:-1].float().log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1))
    old = logps.squeeze(-1) + 0.2 * torch.randn(completion_ids.shape, generator=gen)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.randn(len(prompt_ids), generator=gen),
            "old_per_token_logps": old, "num_items_in_batch": completion_mask.sum()}


def loss_trainer(model, tokenizer, *, num_generations: int, completion_length: int, output_dir: str,
                 peft_config=None, **config: Any) -> SharedPromptGRPOTrainer:
    """A SharedPromptGRPOTrainer on CPU in fp32 (no checkpointing), ready to call `compute_loss` outside `train`;
    `config` goes to GRPOConfig."""
    from datasets import Dataset
    from trl import GRPOConfig

    args = GRPOConfig(output_dir=output_dir, use_cpu=True, bf16=False, report_to=[], num_generations=num_generations,
                      per_device_train_batch_size=num_generations, max_completion_length=completion_length,
                      activation_checkpointing=False, save_strategy="no", disable_tqdm=True, **config)
    data = Dataset.from_list([{"prompt": "x"}] * num_generations)
    trainer = SharedPromptGRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                                      args=args, train_dataset=data, processing_class=tokenizer,
                                      peft_config=peft_config)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop; compute_loss reads it
    trainer.model.train()
    return trainer


def loss_and_grads(trainer: SharedPromptGRPOTrainer, batch: dict[str, torch.Tensor], *,
                   shared: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss on `batch` and the gradient of every trainable parameter, by either path."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    trainer.shared_prompt = shared
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def time_generation(trainer: SharedPromptGRPOTrainer, batch: dict[str, torch.Tensor], rows: int,
                    completion_length: int, repeats: int) -> dict:
    """Seconds to sample the batch's completions, TRL's generation vs prefilling each prompt once. Every
    completion is made exactly `completion_length` tokens long (no early EOS), so both arms decode the
    same number of tokens whatever they sample."""
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])]
    config = trainer.generation_config
    saved = config.min_new_tokens
    config.min_new_tokens = completion_length
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for r in range(repeats + 1):  # the first round of each arm warms up, untimed
            for shared in ((False, True) if r % 2 == 0 else (True, False)):
                trainer.shared_prompt = shared
                started = time.perf_counter()
                completions, _ = trainer._generate_single_turn(prompts, None, {}, rows)
                if r:
                    times[shared].append(time.perf_counter() - started)
                if any(len(c) != completion_length for c in completions):
                    raise RuntimeError("a completion stopped early although min_new_tokens was set")
    finally:
        config.min_new_tokens = saved
        trainer.shared_prompt = True
    trl_s, ours_s = statistics.mean(times[False]), statistics.mean(times[True])
    return {"trl": round(trl_s, 4), "ours": round(ours_s, 4), "speedup": round(trl_s / ours_s, 2)}


def bench_grpo_step(model_path: str, *, prompts: list[str] | None = None, prompts_per_step: int = 1,
                    num_generations: int = 8, completion_length: int = 16, repeats: int = 3,
                    seed: int = 0) -> dict:
    """Seconds of forward+backward of the GRPO loss on one batch, TRL's path vs shared prompts (fp32, CPU).

    Same model, prompts and sampled completions for both arms; one untimed round of each (warm-up, and the
    loss and gradient diffs), then `repeats` timed rounds, alternating which arm goes first. On CPU TRL's fused
    LM head scores every position of prompt and completion (it compacts to the scored ones only under Triton);
    ours scores C+1 positions per row, which adds to the gain on CPU."""
    from distillery.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    prompts = prompts or demo_prompts(tokenizer, prompts_per_step)
    if len(prompts) < prompts_per_step:
        raise ValueError(f"{len(prompts)} prompts for prompts_per_step={prompts_per_step}")
    batch = grpo_batch(model, tokenizer, prompts[:prompts_per_step], num_generations=num_generations,
                       completion_length=completion_length, seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = loss_trainer(model, tokenizer, num_generations=num_generations * prompts_per_step,
                               completion_length=completion_length, output_dir=scratch)
        trl_loss, trl_grads = loss_and_grads(trainer, batch, shared=False)
        our_loss, our_grads = loss_and_grads(trainer, batch, shared=True)
        times: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}  # process CPU time: less sensitive to a busy machine
        for r in range(repeats):
            for shared in ((False, True) if r % 2 == 0 else (True, False)):
                started, cpu_started = time.perf_counter(), time.process_time()
                loss_and_grads(trainer, batch, shared=shared)
                times[shared].append(time.perf_counter() - started)
                cpu[shared].append(time.process_time() - cpu_started)
        generation = time_generation(trainer, batch, num_generations * prompts_per_step, completion_length, repeats)
    trl_s, ours_s = statistics.mean(times[False]), statistics.mean(times[True])
    if trl_grads.keys() != our_grads.keys():
        raise RuntimeError(f"gradients differ in support: {sorted(trl_grads.keys() ^ our_grads.keys())}")
    grad_diff = max(float((trl_grads[n] - our_grads[n]).abs().max()) for n in trl_grads)
    return {
        "trl_s_per_step": round(trl_s, 4), "ours_s_per_step": round(ours_s, 4), "speedup": round(trl_s / ours_s, 2),
        "tokens_per_step": tokens_per_step(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"]),
        "max_abs_loss_diff": abs(trl_loss - our_loss), "max_abs_grad_diff": grad_diff,
        "prompt_tokens": int(batch["prompt_ids"].size(1)), "completion_tokens": completion_length,
        "num_generations": num_generations, "prompts_per_step": prompts_per_step,
        "runs_s": {"trl": [round(t, 4) for t in times[False]], "ours": [round(t, 4) for t in times[True]]},
        "cpu_s_per_step": {"trl": round(statistics.mean(cpu[False]), 4), "ours": round(statistics.mean(cpu[True]), 4)},
        "generate_s_per_step": generation, "model": model_path,
    }


def grpo_step(spec_path: str, profile: str = "demo") -> dict:
    """One GRPO batch at the spec's sizes: TRL's forward+backward vs the shared-prompt one."""
    import torch

    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    cfg = spec.teacher.grpo
    torch.set_num_threads(os.cpu_count() or 1)
    result = bench_grpo_step(str(spec.path(spec.models.base)), prompts_per_step=cfg.prompts_per_step,
                             num_generations=cfg.num_generations, completion_length=cfg.max_completion_length)
    return {**result, **common.machine(torch_threads=True)}


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    common.write("grpo_step", grpo_step(args.spec, args.profile), args.out, args.profile)


if __name__ == "__main__":
    main()
