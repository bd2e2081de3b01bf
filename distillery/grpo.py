"""Shared-prompt GRPO: each prompt of a group is forwarded once, its completions on top of its cache.

TRL's GRPOTrainer scores a batch by forwarding every completion with its own copy of its prompt:
G completions of C tokens on a prompt of P tokens cost G·(P+C) tokens, forward and backward.
`SharedPromptGRPOTrainer` forwards each distinct prompt once, keeping its keys and values in the
autograd graph, and then the G completions on top of that cache expanded to the G rows: P + G·C
tokens (exactly (P-1) + G·(C+1): the prompt's last token travels with each completion, since its
position predicts the first completion token, so that TRL's own fused LM head, with its temperature,
entropy and fp32 options, scores every completion token). Every completion's gradient flows back
through the one prompt pass, so log-probs, loss and gradients are TRL's up to float rounding.

The per-token log-prob method is replaced (the policy in `_compute_loss`, and the old and
reference log-probs, which go through the same method), and so is plain transformers generation:
each distinct prompt is prefilled once and its G samples decode on copies of its cache, with TRL's
generation config (vLLM, continuous batching and multimodal generation stay TRL's). Rewards,
advantages, loss types, clipping and logging are TRL's. Rows are grouped by identical prompt ids
and mask, wherever they sit in the batch (TRL shuffles rows after generation); without repeated prompts, with images,
with an MoE aux loss, or under gradient checkpointing (which drops the cache while the graph is
recorded: set `activation_checkpointing=False`, it defaults to True in GRPOConfig) the parent's path runs.
Positions follow transformers 5: with no `position_ids`, TRL's forward numbers the columns of the
padded row 0..P+C-1, pads included, and that is what both passes pass explicitly.

`bench_grpo_step` times forward+backward of the loss on one batch for both paths.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context, profiling_decorator

from distillery.trl_internals import trl_tested

REPO = Path(__file__).resolve().parents[1]


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows sharing a prompt: (first row of each group, group of each row), groups in order of first
    appearance; None when no prompt repeats or a prompt is too short (one column) to split."""
    rows, width = prompt_ids.shape
    if width < 2 or rows < 2:
        return None
    key = prompt_ids.masked_fill(prompt_mask == 0, -1)  # token ids are >= 0: pads never equal a token
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    if n == rows:
        return None
    index = torch.arange(rows, device=inverse.device)
    first = torch.full((n,), rows, device=inverse.device).scatter_reduce(0, inverse, index, "amin")
    order = torch.argsort(first)
    rank = torch.argsort(order)
    return first[order], rank[inverse]


def tokens_per_step(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor) -> dict[str, int]:
    """Tokens forwarded (and backwarded) to score one batch, padding included: TRL's path and ours."""
    rows, width = prompt_ids.shape
    completion = completion_ids.shape[1]
    trl = rows * (width + completion)
    groups = prompt_groups(prompt_ids, prompt_mask)
    ours = trl if groups is None else len(groups[0]) * (width - 1) + rows * (completion + 1)
    return {"trl": trl, "ours": ours}


def _chunks(sizes: list[int], limit: int | None) -> list[list[int]]:
    """Consecutive groups packed into chunks of at most `limit` rows (a larger group gets its own chunk)."""
    if limit is None or sum(sizes) <= limit:
        return [list(range(len(sizes)))]
    chunks: list[list[int]] = [[]]
    rows = 0
    for g, size in enumerate(sizes):
        if chunks[-1] and rows + size > limit:
            chunks.append([])
            rows = 0
        chunks[-1].append(g)
        rows += size
    return chunks


def sample_on_shared_prompt(model, prompt: list[int], n: int, generation_config, eos_token_ids) -> list[list[int]]:
    """`n` completions of one prompt: the prompt (but its last token) is forwarded once, its cache
    repeated `n` times, and `generate` samples on top of it. Each completion runs to its first EOS,
    included (what TRL keeps)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(n)
    rows = ids.expand(n, -1)
    seqs = model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), cache=cache,
                          generation_config=generation_config)
    out = []
    eos = set(eos_token_ids if isinstance(eos_token_ids, (list, tuple)) else [eos_token_ids])
    for seq in seqs[:, ids.size(1):].tolist():
        end = next((i for i, t in enumerate(seq) if t in eos), None)
        out.append(seq if end is None else seq[: end + 1])
    return out


class SharedPromptGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that forwards each prompt once per group; `shared_prompt = False` gives TRL's path.

    On a TRL release the overrides were not written against (`trl_internals.TESTED_TRL`) it is a plain
    GRPOTrainer: TRL's own methods are bound on the instance, so ours never run (a private method whose
    signature changed would not meet our override)."""

    shared_prompt: bool = True

    def __init__(self, *args, **kwargs):
        if not trl_tested("SharedPromptGRPOTrainer"):
            self.shared_prompt = False
            for name in ("_get_per_token_logps_and_entropies", "_generate_single_turn"):
                setattr(self, name, getattr(super(), name))
            super().__init__(*args, **kwargs)
            return
        super().__init__(*args, **kwargs)
        if self.args.activation_checkpointing:
            warnings.warn("SharedPromptGRPOTrainer needs the KV cache, which activation checkpointing drops: the loss "
                          "falls back to TRL's path. Set activation_checkpointing=False.", stacklevel=2)

    def _cache_usable(self, model) -> bool:
        """False while activation checkpointing would drop the cache (training, with gradients)."""
        unwrapped = self.accelerator.unwrap_model(model)
        checkpointing = getattr(unwrapped, "is_activation_checkpointing", False)
        return not (checkpointing and unwrapped.training and torch.is_grad_enabled())

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's generation, but each distinct prompt is prefilled once and its G samples decode on copies
        of its cache (transformers' `generate` continues from a given cache). Same sampler, same
        generation config; the vLLM, continuous-batching and multimodal paths stay TRL's."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, ids in enumerate(prompt_ids):
            groups.setdefault(tuple(ids), []).append(row)
        if (not self.shared_prompt or self.use_vllm or self.use_transformers_continuous_batching or images
                or multimodal_fields or len(groups) == len(prompt_ids) or min(map(len, groups)) < 2):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)
        from trl.models import unwrap_model_for_generation

        completions: list[list[int] | None] = [None] * len(prompt_ids)
        with (
            profiling_context(self, "transformers.generate"),
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                        generation_kwargs=self.generation_kwargs,
                                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            for ids, rows in groups.items():
                for row, completion in zip(rows, sample_on_shared_prompt(
                        model, list(ids), len(rows), self.generation_config, self.eos_token_ids)):
                    completions[row] = completion
        return completions, None

    @profiling_decorator
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        prompt_width = input_ids.size(1) - logits_to_keep
        groups = None
        if self.shared_prompt and not compute_aux_loss and all(v is None for v in multimodal.values()) \
                and self._cache_usable(model):
            groups = prompt_groups(input_ids[:, :prompt_width], attention_mask[:, :prompt_width])
        mode = "train" if self.model.training else "eval"
        if groups is None:
            self._metrics[mode]["shared_prompt/token_fraction"].append(1.0)
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        first, row_group = groups
        tokens = tokens_per_step(input_ids[:, :prompt_width], attention_mask[:, :prompt_width],
                                 input_ids[:, prompt_width:])
        self._metrics[mode]["shared_prompt/token_fraction"].append(tokens["ours"] / tokens["trl"])

        sizes = torch.bincount(row_group, minlength=len(first)).tolist()
        rows_done, logps, entropies = [], [], []
        for chunk in _chunks(sizes, batch_size):
            chunk_groups = torch.tensor(chunk, device=input_ids.device)
            rows = torch.isin(row_group, chunk_groups).nonzero().squeeze(-1)
            local = torch.full_like(first, -1)
            local[chunk_groups] = torch.arange(len(chunk), device=input_ids.device)
            lp, ent = self._score_on_shared_prompts(
                model, input_ids[first[chunk_groups]][:, : prompt_width - 1],
                attention_mask[first[chunk_groups]][:, : prompt_width - 1], local[row_group[rows]],
                input_ids[rows][:, prompt_width - 1:], attention_mask[rows], logits_to_keep, compute_entropy)
            rows_done.append(rows)
            logps.append(lp)
            entropies.append(ent)
        back = torch.argsort(torch.cat(rows_done))  # chunk order -> the batch's row order
        logps_out = torch.cat(logps)[back]
        entropies_out = torch.cat(entropies)[back] if compute_entropy else None
        return logps_out, entropies_out, None

    def _score_on_shared_prompts(self, model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor,
                                 row_prompt: torch.Tensor, tail_ids: torch.Tensor, mask: torch.Tensor,
                                 logits_to_keep: int, compute_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts minus their last column, once; then each row's last prompt token + completion on the cache.

        `row_prompt[i]` is the prefix row of row i; `mask` is each row's full prompt+completion mask."""
        past = prefix_ids.size(1)
        device = prefix_ids.device
        with self.accelerator.autocast():
            # the cache keeps its graph; logits_to_keep=1 keeps the (unused) LM head to one position
            prompt = model(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1,
                           position_ids=torch.arange(past, device=device).unsqueeze(0))
        cache = prompt.cache
        cache.batch_select_indices(row_prompt)  # gather: gradients of every row sum into its prompt's pass
        # TRL's labels, on the tail: pads and everything before the completion are not scored
        labels = tail_ids.masked_fill(mask[:, past:] == 0, -100)
        labels[:, :-logits_to_keep] = -100
        positions = torch.arange(past, mask.size(1), device=device).unsqueeze(0)
        with self.accelerator.autocast():
            out = model(input_ids=tail_ids, attention_mask=mask, position_ids=positions, cache=cache, labels=labels,
                        fused_lm_head=True)
        if cache.get_seq_length() != mask.size(1):  # a model that ignored the cache would score without the prompt
            raise RuntimeError(f"{type(model).__name__} did not extend the prompt cache; use TRL's path")
        entropy = out.entropy[:, -logits_to_keep:] if compute_entropy else None
        return out.log_probs[:, -logits_to_keep:], entropy


# --- benchmark -------------------------------------------------------------------------------------------------------


def demo_prompts(tokenizer, n: int, spec_path: str | Path = REPO / "data" / "demo" / "clinical.yaml") -> list[str]:
    """`n` clinical demo prompts: ingested documents from the lake if any, else synthetic case texts."""
    from distillery import synth
    from distillery.prompts import render_prompt
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile="demo")
    texts: list[str] = []
    docs = sorted((REPO / "data" / "lake" / spec.name / "ingest").glob("*/documents.parquet"))
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


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_grpo_step(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "models" / "base")), indent=2))
