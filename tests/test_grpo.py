"""Shared-prompt GRPO: the same log-probs, loss and gradients as TRL's path, with fewer tokens forwarded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl import GRPOTrainer

from bench import grpo_step
from bench.grpo_step import loss_and_grads, loss_trainer
from distillery import grpo, trl_internals
from distillery.grpo import SharedPromptGRPOTrainer, prompt_groups, tokens_per_step
from distillery.models import load_tokenizer, tiny_model

from conftest import REPO

G, PROMPT_LENGTHS, COMPLETION_LENGTHS = 4, (5, 9), (6, 3, 8, 1, 8, 2, 5, 7)
TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(REPO / "models" / "base"))


def small_llama():
    """A random 2-layer llama with a small vocabulary (the loss is computed on hand-made token ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, tokenizer) -> SharedPromptGRPOTrainer:
    return loss_trainer(small_llama(), tokenizer, num_generations=G, completion_length=max(COMPLETION_LENGTHS),
                        output_dir=str(tmp_path_factory.mktemp("grpo")), temperature=0.7)


def make_batch(prompt_lengths=PROMPT_LENGTHS, *, shuffle: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """TRL's layout: each prompt G times in a row, left-padded; completions right-padded; old log-probs given."""
    gen = torch.Generator().manual_seed(seed)
    width, cwidth = max(prompt_lengths), max(COMPLETION_LENGTHS)
    rows = G * len(prompt_lengths)
    prompt_ids, prompt_mask = torch.zeros((rows, width), dtype=torch.long), torch.zeros((rows, width), dtype=torch.long)
    for p, n in enumerate(prompt_lengths):
        ids = torch.randint(3, 512, (n,), generator=gen)
        prompt_ids[p * G:(p + 1) * G, width - n:] = ids
        prompt_mask[p * G:(p + 1) * G, width - n:] = 1
    completion_ids = torch.zeros((rows, cwidth), dtype=torch.long)
    completion_mask = torch.zeros((rows, cwidth), dtype=torch.long)
    for r, n in enumerate(COMPLETION_LENGTHS[:rows]):
        completion_ids[r, :n] = torch.randint(3, 512, (n,), generator=gen)
        completion_mask[r, :n] = 1
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
             "completion_mask": completion_mask, "advantages": torch.randn(rows, generator=gen),
             "old_per_token_logps": -5 + torch.randn((rows, cwidth), generator=gen),
             "num_items_in_batch": completion_mask.sum()}
    if shuffle:  # TRL shuffles rows after generation: groups need not be consecutive
        order = torch.randperm(rows, generator=gen)
        batch = {k: v[order] if v.dim() else v for k, v in batch.items()}
    return batch


def logps(trainer, batch, *, shared: bool, batch_size: int | None = None):
    trainer.shared_prompt = shared
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        return trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, batch["completion_ids"].size(1),
                                                          batch_size=batch_size, compute_entropy=True)[:2]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_groups_are_found_wherever_the_rows_sit():
    batch = make_batch(shuffle=True)
    first, group = prompt_groups(batch["prompt_ids"], batch["prompt_mask"])
    assert len(first) == 2 and group[first].tolist() == [0, 1]
    assert torch.bincount(group).tolist() == [G, G]
    for g in range(2):
        rows = batch["prompt_ids"][group == g]
        assert (rows == rows[0]).all()
    distinct = make_batch((3, 4, 5, 6, 7, 8, 9, 9))
    assert prompt_groups(distinct["prompt_ids"][::G], distinct["prompt_mask"][::G]) is None


@pytest.mark.parametrize("shuffle", [False, True])
def test_shared_path_gives_trls_logps_entropies_loss_and_gradients(trainer, shuffle):
    batch = make_batch(shuffle=shuffle)
    trl_lp, trl_ent = logps(trainer, batch, shared=False)
    our_lp, our_ent = logps(trainer, batch, shared=True)
    assert torch.isfinite(our_lp).all() and (our_lp[batch["completion_mask"] == 1] < 0).all()
    assert max_diff(trl_lp, our_lp) < TOL and max_diff(trl_ent, our_ent) < TOL

    trl_loss, trl_grads = loss_and_grads(trainer, batch, shared=False)
    our_loss, our_grads = loss_and_grads(trainer, batch, shared=True)
    assert abs(trl_loss - our_loss) < TOL
    assert trl_grads.keys() == our_grads.keys() == {n for n, _ in trainer.model.named_parameters()}
    assert max(max_diff(trl_grads[n], our_grads[n]) for n in trl_grads) < TOL
    assert any(float(g.abs().max()) > 1e-3 for g in our_grads.values())


def test_lora_policy_with_kl_term_matches_trl(tmp_path, tokenizer):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    trainer = loss_trainer(small_llama(), tokenizer, num_generations=G, completion_length=max(COMPLETION_LENGTHS),
                           output_dir=str(tmp_path), beta=0.04, peft_config=lora)
    batch = make_batch(shuffle=True)
    trl_lp, _ = logps(trainer, batch, shared=False)
    batch["ref_per_token_logps"] = trl_lp - 0.1
    trl_loss, trl_grads = loss_and_grads(trainer, batch, shared=False)
    our_loss, our_grads = loss_and_grads(trainer, batch, shared=True)
    assert trl_grads and all("lora" in n for n in trl_grads) and trl_grads.keys() == our_grads.keys()
    assert abs(trl_loss - our_loss) < TOL
    assert max(max_diff(trl_grads[n], our_grads[n]) for n in trl_grads) < TOL


def test_chunked_by_batch_size_gives_the_same_logps(trainer):
    batch = make_batch(shuffle=True)
    whole, _ = logps(trainer, batch, shared=True)
    chunked, _ = logps(trainer, batch, shared=True, batch_size=G)
    assert max_diff(whole, chunked) < TOL


def spy_parent(monkeypatch) -> list[int]:
    calls: list[int] = []
    parent = GRPOTrainer._get_per_token_logps_and_entropies

    def counted(self, model, input_ids, *args, **kwargs):
        calls.append(input_ids.size(0))
        return parent(self, model, input_ids, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counted)
    return calls


def test_distinct_prompts_fall_back_to_trls_path(trainer, monkeypatch):
    batch = make_batch()
    distinct = {k: v[::G] if v.dim() else v for k, v in batch.items()}  # one row per prompt
    calls = spy_parent(monkeypatch)
    ours, _ = logps(trainer, distinct, shared=True)
    assert calls == [2]
    trl, _ = logps(trainer, distinct, shared=False)
    assert torch.equal(ours, trl)


def test_an_untested_trl_gets_trls_own_scoring_and_generation_and_one_warning(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(trl_internals, "trl_version", lambda: "1.17.0")

    def ours(*args, **kwargs):
        pytest.fail("an override ran on an untested TRL")

    for name in ("_get_per_token_logps_and_entropies", "_generate_single_turn", "_score_on_shared_prompts"):
        monkeypatch.setattr(SharedPromptGRPOTrainer, name, ours)
    calls = spy_parent(monkeypatch)
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", lambda self, prompts, *a, **k: ("trl", len(prompts)))
    with pytest.warns(UserWarning, match=r"written against TRL 1\.16 and TRL 1\.17\.0 is installed") as seen:
        fallback = loss_trainer(small_llama(), tokenizer, num_generations=G, completion_length=max(COMPLETION_LENGTHS),
                                output_dir=str(tmp_path))
    assert sum("written against TRL" in str(w.message) for w in seen) == 1
    batch = make_batch()  # prompts repeat: our path would group them
    loss, _ = loss_and_grads(fallback, batch, shared=True)
    assert calls == [len(batch["advantages"])]  # TRL's method, on every row at once
    prompts = [[5, 6, 7]] * G
    assert fallback._generate_single_turn(prompts, None, {}, G) == ("trl", G)


def test_the_installed_trl_is_tested_and_keeps_the_overrides(tokenizer, tmp_path, recwarn):
    assert trl_internals.major_minor(trl_internals.trl_version()) in trl_internals.TESTED_TRL
    fresh = loss_trainer(small_llama(), tokenizer, num_generations=G, completion_length=max(COMPLETION_LENGTHS),
                         output_dir=str(tmp_path))
    assert not [w for w in recwarn if "written against TRL" in str(w.message)]
    assert fresh.shared_prompt and "_get_per_token_logps_and_entropies" not in vars(fresh)


def test_activation_checkpointing_falls_back_while_recording_gradients(trainer, monkeypatch):
    batch = make_batch()
    calls = spy_parent(monkeypatch)
    trainer.model.gradient_checkpointing_enable()
    try:
        with_ckpt, _ = loss_and_grads(trainer, batch, shared=True)
    finally:
        trainer.model.gradient_checkpointing_disable()
    assert calls == [len(batch["advantages"])]
    without, _ = loss_and_grads(trainer, batch, shared=True)
    assert abs(with_ckpt - without) < TOL


def test_token_counts():
    batch = make_batch()
    p, c = max(PROMPT_LENGTHS), max(COMPLETION_LENGTHS)
    assert tokens_per_step(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"]) == {
        "trl": 2 * G * (p + c), "ours": 2 * (p - 1) + 2 * G * (c + 1)}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "m", REPO / "models" / "base")


def test_trainer_runs_two_grpo_steps_on_shared_prompts(tiny_path, tmp_path, tokenizer):
    from datasets import Dataset
    from trl import GRPOConfig

    def short(completions, **_) -> list[float]:
        return [-len(c) / 10 for c in completions]

    data = Dataset.from_list([{"prompt": p} for p in ["Fever and cough. Answer:", "Flank pain, in waves:", "Hi there"]])
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_steps=2,
                      per_device_train_batch_size=4, num_generations=4, max_completion_length=6, logging_steps=1,
                      learning_rate=1e-3, save_strategy="no", disable_tqdm=True, activation_checkpointing=False,
                      seed=0)
    trainer = SharedPromptGRPOTrainer(model=str(tiny_path), reward_funcs=[short], args=args, train_dataset=data,
                                      processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert all(h["shared_prompt/token_fraction"] < 1.0 for h in logs)
    after = dict(trainer.model.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert len(changed) == len(before), sorted(before.keys() - set(changed))  # every trainable tensor moved


@pytest.fixture(scope="module")
def generation_trainer(tiny_path, tokenizer, tmp_path_factory) -> SharedPromptGRPOTrainer:
    """A trainer on the tiny model whose generation is greedy, so both paths must agree token for token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float32)
    return loss_trainer(model, tokenizer, num_generations=G, completion_length=7,
                        output_dir=str(tmp_path_factory.mktemp("gen")), generation_kwargs={"do_sample": False})


def generation_prompts(tokenizer) -> list[list[int]]:
    a = tokenizer("Fever and productive cough for three days. Answer:", add_special_tokens=False)["input_ids"]
    b = tokenizer("Flank pain. Answer:", add_special_tokens=False)["input_ids"]
    return [a, b, a, b, b, a, a, b]  # two prompts of different lengths, G=4 each, interleaved


def test_shared_prompt_generation_gives_trls_completions(generation_trainer, tokenizer, monkeypatch):
    prompts = generation_prompts(tokenizer)
    calls = []
    sample = grpo.sample_on_shared_prompt

    def counted(model, prompt, n, *args):
        calls.append(n)
        return sample(model, prompt, n, *args)

    monkeypatch.setattr(grpo, "sample_on_shared_prompt", counted)
    generation_trainer.shared_prompt = True
    ours, _ = generation_trainer._generate_single_turn(prompts, None, {}, G)
    generation_trainer.shared_prompt = False
    trl, _ = generation_trainer._generate_single_turn(prompts, None, {}, G)
    assert calls == [4, 4]  # one prefill per distinct prompt, its four rows sampled on it
    assert ours == trl
    assert ours[0] == ours[2] and ours[1] == ours[3]  # greedy: a prompt's rows agree, in their own places
    assert all(1 <= len(c) <= 7 for c in ours)


def test_shared_prompt_generation_stops_at_eos(generation_trainer, tokenizer):
    """A completion keeps its first EOS and nothing after it, as TRL's path keeps."""
    model = generation_trainer.model
    prompt = generation_prompts(tokenizer)[0]
    eos = grpo.sample_on_shared_prompt(model, prompt, 2, generation_trainer.generation_config, [])[0][0]
    cut = grpo.sample_on_shared_prompt(model, prompt, 2, generation_trainer.generation_config, [eos])
    assert cut == [[eos], [eos]]


def test_distinct_prompts_generate_on_trls_path(generation_trainer, tokenizer, monkeypatch):
    prompts = generation_prompts(tokenizer)[:2]
    monkeypatch.setattr(grpo, "sample_on_shared_prompt", lambda *a: pytest.fail("no prompt repeats"))
    generation_trainer.shared_prompt = True
    ours, _ = generation_trainer._generate_single_turn(prompts, None, {}, 1)
    assert len(ours) == 2


@pytest.mark.slow
def test_bench_on_a_tiny_model(tiny_path, tokenizer):
    prompts = ["Fever and productive cough. Answer:", "Flank pain radiating to the groin and blood in the urine."]
    out = grpo_step.bench_grpo_step(str(tiny_path), prompts=prompts, prompts_per_step=2, num_generations=4,
                               completion_length=6, repeats=1)
    assert {"trl_s_per_step", "ours_s_per_step", "speedup", "tokens_per_step", "max_abs_loss_diff",
            "max_abs_grad_diff", "prompt_tokens", "completion_tokens", "num_generations", "model",
            "generate_s_per_step"} <= out.keys()
    assert out["max_abs_loss_diff"] < TOL and out["max_abs_grad_diff"] < TOL
    assert out["generate_s_per_step"]["trl"] > 0 and out["generate_s_per_step"]["ours"] > 0
    assert out["tokens_per_step"]["ours"] < out["tokens_per_step"]["trl"]


def test_demo_prompts_are_clinical_prompts_of_about_170_tokens(tokenizer):
    prompts = grpo_step.demo_prompts(tokenizer, 2)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert all(p.rstrip().endswith("Answer:") for p in prompts)
    assert all(120 < n < 260 for n in lengths)


def test_grpo_keeps_the_top_k_checkpoints_on_validation_and_writes_metrics(tiny_path, tmp_path, clinical_spec):
    import shutil

    from safetensors.torch import load_file

    from distillery import synth
    from distillery.evaluate import kept_checkpoint
    from distillery.teacher import run_grpo

    grpo_cfg = {"steps": 3, "num_generations": 2, "max_completion_length": 4, "eval_interval": 1, "patience": 10,
                "keep": 2, "learning_rate": 1e-2}
    spec = clinical_spec.model_copy(update={"teacher": clinical_spec.teacher.model_copy(
        update={"grpo": clinical_spec.teacher.grpo.model_copy(update=grpo_cfg)})})
    items = [{"sha256": str(i), "text": " ".join(synth.make_case(i).findings), "answer": synth.make_case(i).label}
             for i in range(4)]
    shutil.copytree(tiny_path, tmp_path / "start")
    steps, history = run_grpo(spec, tmp_path / "start", items, items, tmp_path)
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    ranked = sorted(history, key=lambda h: (-h["mean_reward"], h["step"]))
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").iterdir())
    assert kept == sorted(h["step"] for h in ranked[:2])
    assert (tmp_path / "best" / "model.safetensors").exists()
    # the stage says which checkpoint it kept: the first best on validation, the one in best/
    said = kept_checkpoint(history, spec.teacher.grpo.steps)
    assert said["step"] == ranked[0]["step"] and said["validation_reward"] == ranked[0]["mean_reward"]
    assert said["kind"] == ("sft" if said["step"] == 0 else "grpo") and said["why"]
    best = load_file(tmp_path / "best" / "model.safetensors")
    chosen = load_file(tmp_path / "checkpoints" / f"step-{said['step']}" / "model.safetensors")
    assert all(torch.equal(best[name], chosen[name]) for name in best)
    train = steps[steps["split"] == "train"]
    assert len(train) == 3 and {"reward", "frac_reward_zero_std", "step_time"} <= set(train.columns)


def test_a_multi_grader_logs_the_reward_of_each_component(tiny_path, tmp_path, clinical_spec):
    import shutil

    from distillery import synth
    from distillery.teacher import run_grpo
    from distillery.spec import GraderSpec

    length = tmp_path / "length.py"  # credit a random tiny model's answers earn: their length
    length.write_text("def grade(sample, item):\n    return min(1.0, len(sample['output_text'] or '') / 40)\n")
    grader = GraderSpec(type="multi", components=[{"grader": {"type": "ranked"}, "weight": 3.0},
                                                  {"grader": {"type": "python", "path": str(length)}, "weight": 1.0}])
    grpo_cfg = {"steps": 2, "num_generations": 4, "max_completion_length": 6, "eval_interval": 2, "patience": 10,
                "learning_rate": 1e-3, "temperature": 1.5}
    spec = clinical_spec.model_copy(update={"grader": grader, "teacher": clinical_spec.teacher.model_copy(
        update={"grpo": clinical_spec.teacher.grpo.model_copy(update=grpo_cfg)})})
    items = [{"sha256": str(i), "text": " ".join(synth.make_case(i).findings), "answer": synth.make_case(i).label}
             for i in range(4)]
    shutil.copytree(tiny_path, tmp_path / "start")
    steps, _ = run_grpo(spec, tmp_path / "start", items, items, tmp_path)
    train = steps[steps["split"] == "train"]
    ranked, length = train["rewards/grader_0_ranked/mean"], train["rewards/grader_1_python/mean"]
    assert (length > 0).all()
    # the trained reward is the multi grader's weighted total; the components are only logged
    assert np.allclose(train["reward"], (3 * ranked + length) / 4, atol=1e-5)
