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

`bench/grpo_step.py` times forward+backward of the loss on one batch for both paths.
"""

from __future__ import annotations

import warnings

import torch
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context, profiling_decorator

from distillery.trl_internals import trl_tested


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
