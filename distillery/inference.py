"""Inference backends behind one interface: generate answers, or score a label set.

- `TransformersBackend` (CPU and GPU): batched, left-padded generation with the KV cache; documents
  sorted by length so a batch pads little; greedy or sampled; a token budget per document.
  `score_labels` runs each prompt once, then every label's tokens on top of the prompt's cached
  keys and values: one forward pass per batch gives a distribution over exactly the label set.
- `VLLMBackend` (GPU): offline `LLM.generate` with structured outputs, prefix caching and LoRA
  requests; `score_labels` reads each label's tokens' log-probs from vLLM's prompt log-probs.
  Written against vLLM's documented API (>= 0.12, `StructuredOutputsParams`); it needs a CUDA GPU
  and the vllm wheel, which the test machines lack: the tests drive it through a stand-in for
  `vllm.LLM`, so the code around vLLM is tested and vLLM itself is not exercised.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from distillery.models import load_model


@dataclass(frozen=True)
class Generation:
    text: str
    confidence: float  # probability of the tokens of the first answer item (greedy path)
    tokens: int


class Backend(Protocol):
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                 num_samples: int = 1, seed: int = 0) -> list[list[Generation]]: ...


def _first_item_end(texts: list[str]) -> int:
    """How many generated tokens make up the first answer item (up to the first ';' or newline)."""
    joined = ""
    for n, t in enumerate(texts):
        joined += t
        stripped = joined.strip()
        if stripped and any(sep in t for sep in (";", "\n")):
            return n
    return len(texts)


def label_token_ids(tokenizer, labels: list[str], *, first_token: bool = False) -> list[list[int]]:
    """Each label's tokens as they follow the prompt (after a space); with `first_token`, the first
    token alone, which must then differ between labels."""
    label_ids = [tokenizer(" " + label, add_special_tokens=False)["input_ids"] for label in labels]
    if first_token and len({ids[0] for ids in label_ids}) < len(labels):
        raise ValueError("first-token scoring needs labels whose first tokens differ; these share one: "
                         + ", ".join(lab for lab, ids in zip(labels, label_ids)
                                     if sum(x[0] == ids[0] for x in label_ids) > 1))
    return [ids[:1] for ids in label_ids] if first_token else label_ids


class TransformersBackend:
    def __init__(self, model_path: str, *, batch_size: int = 8, model=None, tokenizer=None):
        if model is None:
            model, tokenizer = load_model(model_path)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size

    def _encode(self, prompts: list[str]):
        return self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)

    @torch.inference_mode()
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                 num_samples: int = 1, seed: int = 0) -> list[list[Generation]]:
        torch.manual_seed(seed)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[Generation]] = [[] for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self._encode([prompts[i] for i in idx])
            gen = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                num_return_sequences=num_samples, output_scores=True, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            scores = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            new = gen.sequences[:, enc["input_ids"].shape[1]:]
            for row in range(new.shape[0]):
                out[idx[row // num_samples]].append(self._generation(new[row], scores[row]))
        return out

    def _generation(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> Generation:
        keep = tokens != self.tokenizer.pad_token_id
        if self.tokenizer.eos_token_id is not None:
            eos = (tokens == self.tokenizer.eos_token_id).nonzero()
            if len(eos):
                keep[int(eos[0]):] = False
        tokens, logprobs = tokens[keep], logprobs[keep]
        pieces = [self.tokenizer.decode([t]) for t in tokens.tolist()]
        first = _first_item_end(pieces)
        lp = float(logprobs[:first].sum()) if first else float("-inf")
        return Generation("".join(pieces) if pieces else "", math.exp(lp) if math.isfinite(lp) else 0.0, len(pieces))

    @torch.inference_mode()
    def score_labels(self, prompts: list[str], labels: list[str], *, share_prefix: bool = True,
                     first_token: bool = False) -> torch.Tensor:
        """P(label | prompt) over exactly `labels`, one row per prompt: [len(prompts), len(labels)].

        The token prefix common to every prompt (system message, instruction, label list: whatever
        the template puts before the document) is run once and its keys and values reused by every
        batch, as vLLM's prefix caching does; only the rest of each prompt is computed per document.
        `first_token` scores each label by its first token alone (what constrained decoding over the
        label set gives it: the rest of a label is forced once its first token is chosen), which
        needs no pass over the labels' tokens; it requires labels whose first tokens differ.
        """
        tok = self.tokenizer
        label_ids = label_token_ids(tok, labels, first_token=first_token)
        width = max(len(ids) for ids in label_ids)
        lab = torch.full((len(labels), width), tok.pad_token_id, dtype=torch.long)
        lab_mask = torch.zeros((len(labels), width), dtype=torch.long)
        for j, ids in enumerate(label_ids):
            lab[j, : len(ids)] = torch.tensor(ids)
            lab_mask[j, : len(ids)] = 1
        lab, lab_mask = lab.to(self.model.device), lab_mask.to(self.model.device)
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        shared = _common_prefix(ids) if share_prefix and len(ids) > 1 else 0
        prefix = self._prefix_cache(ids[0][:shared]) if shared else None
        order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
        out = torch.zeros((len(prompts), len(labels)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._score_batch([ids[i][shared:] for i in idx], prefix, shared, lab, lab_mask).float().cpu()
        return out

    def extract(self, prompts: list[str], output) -> list[tuple[dict, float]]:
        """Schema-constrained JSON extraction (`constrained.decode`), in batches of similar length."""
        from distillery import constrained

        if getattr(self, "_vocab", None) is None:
            self._vocab = constrained.Vocabulary(self.tokenizer)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[tuple[dict, float] | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            decoded = constrained.decode(self.model, self.tokenizer, [prompts[i] for i in idx], output,
                                         vocab=self._vocab)
            for i, result in zip(idx, decoded):
                out[i] = result
        return out

    def _plain_head(self) -> bool:
        """Logits are exactly hidden @ W.T (+ b): no soft-capping or scaling after the LM head."""
        config = self.model.config
        head = self.model.get_output_embeddings()
        return (isinstance(head, torch.nn.Linear) and self.model.base_model is not self.model
                and not getattr(config, "final_logit_softcapping", None) and getattr(config, "logit_scale", 1.0) in (None, 1.0))

    def _prefix_cache(self, prefix: list[int]):
        ids = torch.tensor([prefix], device=self.model.device)
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=1).cache

    def _score_batch(self, ids: list[list[int]], prefix, shared: int, lab: torch.Tensor, lab_mask: torch.Tensor) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id
        longest = max(len(x) for x in ids)
        rows = torch.tensor([[pad] * (longest - len(x)) + x for x in ids], device=self.model.device)
        mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids], device=self.model.device)
        b, n_lab = len(ids), lab.shape[0]
        cache = None
        if prefix is not None:  # every row continues the one shared prefix
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(b)
            mask = torch.cat([torch.ones((b, shared), dtype=mask.dtype, device=mask.device), mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -rows.shape[1]:]
        if lab.shape[1] == 1 and self._plain_head():
            # One token per label: softmax over the labels' first tokens of the last position's logits,
            # of which only those rows of the LM head are needed (the full-vocabulary normalizer cancels).
            hidden = self.model.base_model(input_ids=rows, attention_mask=mask, position_ids=pos, cache=cache,
                                           use_cache=False).last_hidden_state[:, -1]
            head = self.model.get_output_embeddings()
            logits = hidden @ head.weight[lab[:, 0]].T
            if head.bias is not None:
                logits = logits + head.bias[lab[:, 0]]
            return torch.softmax(logits.float(), dim=-1)
        first = self.model(input_ids=rows, attention_mask=mask, position_ids=pos, cache=cache,
                           use_cache=True, logits_to_keep=1)
        if lab.shape[1] == 1:  # one token per label: the prompt's last logits are all it takes
            logp = torch.log_softmax(first.logits[:, -1].float(), -1)
            return torch.softmax(logp[:, lab[:, 0]], dim=-1)
        cache = first.cache
        cache.batch_repeat_interleave(n_lab)
        lab_rows = lab.repeat(b, 1)
        lmask = lab_mask.repeat(b, 1)
        full_mask = torch.cat([mask.repeat_interleave(n_lab, 0), lmask], dim=1)
        start = mask.sum(-1, keepdim=True).repeat_interleave(n_lab, 0)
        lpos = start + torch.arange(lab_rows.shape[1], device=lab_rows.device)
        cont = self.model(input_ids=lab_rows, attention_mask=full_mask, position_ids=lpos, cache=cache)
        # token j of a label is predicted by the prompt's last logits (j = 0) or the label's (j - 1)
        logits = torch.cat([first.logits[:, -1:].repeat_interleave(n_lab, 0), cont.logits[:, :-1]], dim=1)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, lab_rows.unsqueeze(-1)).squeeze(-1)
        seq = (logp * lmask).sum(-1).view(b, n_lab)
        return torch.softmax(seq, dim=-1)


def _common_prefix(ids: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for x in ids[1:]:
        n = min(n, next((i for i in range(n) if x[i] != first[i]), n))
        if n == 0:
            break
    return max(n, 0)


class VLLMBackend:
    """vLLM offline inference (GPU only; not exercised by the test suite, which has no GPU: the tests
    drive it through a stand-in for `vllm.LLM` that answers as vLLM's documented API does)."""

    def __init__(self, model_path: str, *, lora_path: str | None = None, max_model_len: int = 4096, llm=None):
        if llm is None:
            from vllm import LLM  # noqa: PLC0415 - optional GPU dependency

            llm = LLM(model=model_path, enable_prefix_caching=True, enable_lora=lora_path is not None,
                      max_model_len=max_model_len)
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.lora_path = lora_path

    def _lora(self):
        if not self.lora_path:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("adapter", 1, self.lora_path)

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                 num_samples: int = 1, seed: int = 0, regex: str | None = None) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(regex=regex) if regex else None
        params = SamplingParams(n=num_samples, temperature=temperature, max_tokens=max_new_tokens, seed=seed,
                                logprobs=1, structured_outputs=structured)
        results = self.llm.generate(prompts, params, lora_request=self._lora())
        return [[_vllm_generation(c) for c in r.outputs] for r in results]

    def score_labels(self, prompts: list[str], labels: list[str], *, share_prefix: bool = True,
                     first_token: bool = False) -> torch.Tensor:
        """P(label | prompt) over exactly `labels`, as `TransformersBackend.score_labels` computes it.

        Each (prompt, label) pair is one request, the prompt's tokens followed by the label's, with
        `prompt_logprobs=0` (the log-prob of every prompt token) and one generated token; a label's
        score is the sum of its tokens' log-probs. Prefix caching computes each prompt once for all
        its labels, and the template's shared head once for all prompts (`share_prefix` is vLLM's
        to decide)."""
        from vllm import SamplingParams

        label_ids = label_token_ids(self.tokenizer, labels, first_token=first_token)
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        requests = [{"prompt_token_ids": x + lab} for x in ids for lab in label_ids]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        results = self.llm.generate(requests, params, lora_request=self._lora(), use_tqdm=False)
        scores = torch.empty(len(requests), dtype=torch.float64)
        for k, (request, result) in enumerate(zip(requests, results)):
            n = len(label_ids[k % len(labels)])
            tokens = request["prompt_token_ids"][-n:]
            scores[k] = sum(position[token].logprob for position, token in zip(result.prompt_logprobs[-n:], tokens))
        return torch.softmax(scores.view(len(prompts), len(labels)), dim=-1).float()


def _vllm_generation(completion) -> Generation:
    lp = sum(next(iter(d.values())).logprob for d in (completion.logprobs or [])[:1]) if completion.logprobs else 0.0
    return Generation(completion.text, math.exp(lp), len(completion.token_ids))


def vllm_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def make_backend(model_path: str, *, kind: str = "auto", batch_size: int = 8) -> Backend:
    if kind == "vllm" or (kind == "auto" and vllm_available()):
        return VLLMBackend(model_path)
    return TransformersBackend(model_path, batch_size=batch_size)
