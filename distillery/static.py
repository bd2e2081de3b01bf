"""Static embeddings distilled from the embedded encoder: a document read at thousands a second.

A sentence encoder runs a transformer over every window it reads (~15 documents a second on two CPU
cores for all-MiniLM-L6-v2), slower than PyMuPDF reads PDFs. The distillation of model2vec (Tulkens
and van Dongen, 2024) runs the encoder once over each token of its vocabulary ([CLS] token [SEP],
the encoder's own pooling), reduces the vectors with PCA and down-weights frequent tokens (SIF,
a / (a + p), p from Zipf's law over the vocabulary's rank); a document's vector is then the mean of
its tokens' rows: a tokenizer pass, a lookup and a sum. It is written here in ~40 lines rather than
taken from the `model2vec` package: its distillation needs transformers < 5.4 (we pin 5.24), and
its last release without that pin built a vocabulary-misaligned model under 5.24 (similar phrases
scored as unrelated). The distillation takes about a minute on a CPU, once per encoder, cached
under `<home>/cache/static/<encoder id>-<dims>/`, from the encoder's folder alone (no hub).

The `static` student kind (`StaticMember`) reads the first window and the whole text ingestion
kept: at this speed a longer read costs nothing. Its features are the two vectors side by side,
like the encoder member's, and a logistic regression on them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import regex

from distillery import lake
from distillery.baseline import Baseline, LinearHead
from distillery.encoder import Encoder
from distillery.prompts import document_text

DIMS = 256  # PCA components (model2vec's default)
SIF = 1e-4  # the SIF coefficient a (model2vec's default)
VECTORS, TOKENIZER = "vectors.npy", "tokenizer.json"
# BERT's pre-tokenizer: whitespace splits, and each punctuation mark (ASCII's, Unicode's P*) stands alone
_PUNCT = r"\p{P}!-/:-@\[-`{-~"
_WORDS = regex.compile(rf"[^\s{_PUNCT}]+|[{_PUNCT}]")
WORD_CACHE = 500_000  # distinct words remembered (then forgotten at once): bounded memory on any corpus


def distill(encoder_path: str | Path, out: str | Path, *, dims: int = DIMS, sif: float = SIF,
            batch_size: int = 512) -> Path:
    """Write a static model of the sentence encoder at `encoder_path` into `out`: one vector per
    vocabulary token (`vectors.npy`, float32) and the encoder's fast tokenizer (`tokenizer.json`)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.decomposition import PCA

    st = SentenceTransformer(str(encoder_path), device="cpu", local_files_only=True)
    tokenizer = st.tokenizer
    vocab = tokenizer.vocab_size
    wrap = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    vectors = []
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab))[:, None]
            if None not in wrap:
                ids = torch.cat([torch.full_like(ids, wrap[0]), ids, torch.full_like(ids, wrap[1])], dim=1)
            features = st({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                           "token_type_ids": torch.zeros_like(ids)})
            vectors.append(features["sentence_embedding"].float().numpy())
    vectors = np.concatenate(vectors)
    dims = min(dims, vectors.shape[1])
    vectors = PCA(n_components=dims, random_state=0).fit_transform(vectors)
    rank = np.arange(vocab) + 2.0
    p = (1 / rank) / (1 / rank).sum()
    vectors *= (sif / (sif + p))[:, None]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / VECTORS, vectors.astype(np.float32))
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER))
    return out


def distilled(encoder: Encoder, dims: int = DIMS) -> Path:
    """The folder of the static model distilled from `encoder` (distilled on the first call, then cached)."""
    folder = lake.home() / "cache" / "static" / f"{encoder.id}-{dims}"
    if (folder / VECTORS).exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    distill(encoder.path, tmp, dims=dims)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)  # atomic; a concurrent distillation that landed first wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class StaticModel:
    """Token vectors and a tokenizer: text -> the normalised mean of its tokens' vectors."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.vectors = np.load(Path(folder) / VECTORS)
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / TOKENIZER))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._words: dict[str, list[int]] = {}

    def token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids for `text`, word by word through a cache: a regex split finds
        the words (whitespace and each punctuation mark apart, as BERT's pre-tokenizer splits) and
        each new word goes through the tokenizer once (its normalisation and word pieces). Four to
        six times faster than tokenizing every document whole, the same ids (tests/test_static.py)."""
        out, known = [], self._words
        for word in _WORDS.findall(text):
            ids = known.get(word)
            if ids is None:
                if len(known) >= WORD_CACHE:
                    known.clear()
                ids = known[word] = self.tokenizer.encode(word, add_special_tokens=False).ids
            out.extend(ids)
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        """One normalised row per text (zeros for a text with no token): a sparse (texts x vocabulary)
        matrix of token shares times the vectors, one matrix product for the batch."""
        from scipy.sparse import csr_matrix

        ids = [self.token_ids(t) for t in texts]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        shares = csr_matrix((np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32),
                             np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())),
                             np.concatenate([[0], np.cumsum(lengths)])), shape=(len(texts), len(self.vectors)))
        out = np.asarray(shares @ self.vectors, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class StaticMember(LinearHead):
    """Two linear heads over features a lookup computes, their probability rows averaged: static token
    vectors distilled from the encoder (first window beside the whole read, C=100) and the TF-IDF
    baseline's n-grams. Measured on texlive_dev (students on half the manuals' teacher labels + the
    seeds, scored on the other half's truth; teacher 0.759): static alone 0.700, TF-IDF alone 0.651,
    the mean 0.729; the encoder member 0.765."""

    name = "static"
    C = 100.0

    def __init__(self, spec, encoder: Encoder, *, dims: int = DIMS):
        self.spec, self.encoder, self.dims = spec, encoder, dims
        self.labels = list(spec.output.labels)
        self.tfidf = Baseline(spec)
        self.path, self._model = None, None

    def __getstate__(self):
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> StaticModel:
        if self._model is None:
            self.path = self.path or str(distilled(self.encoder, self.dims))
            self._model = StaticModel(self.path)
        return self._model

    def features(self, texts: list[str]) -> np.ndarray:
        """The first window's vector beside the vector of everything ingestion kept, each normalised."""
        read = self.spec.prompts.max_doc_chars * self.spec.encoder.chunks
        firsts = self.model.encode([document_text(t, self.spec) for t in texts])
        wholes = self.model.encode([document_text(t, self.spec, read) for t in texts]) if self.spec.encoder.chunks > 1 \
            else firsts  # one window: the whole read is the first window
        return np.hstack([firsts, wholes])

    def fit(self, items: list[dict]) -> "StaticMember":
        super().fit(items)
        self.tfidf.fit(items)
        return self

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return (super().probabilities(texts) + self.tfidf.probabilities(texts)) / 2
