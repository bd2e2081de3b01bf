"""Out of scope: how far a document is from the documents the task is about.

A real folder holds documents outside the label set, and a probability row over the label set
cannot say "none of these". Two signals need no label for "other", each measured against the
in-scope documents: the seeds (an expert put each in the label set) and the documents the labeling
stage labels (the corpus the task was built for), at most `scope.reference` of them:
- similarity: the mean TF-IDF cosine (English stop words out, words found in two documents or more)
  to the `scope.neighbours` nearest in-scope documents;
- length: the characters of text read (a one-line form among ten-page manuals is out of place).
A document's `in_scope` is the smaller of the two shares of in-scope documents that are as far out
(no more similar; at least as far in length), each measured leave-one-out (a document against the
others, its own copies left out). `out_of_scope`: an `in_scope` under the `scope.flag_share`
quantile of the in-scope documents' own, so about that share of them is flagged. A flagged label
is kept, marked `out_of_scope` and `needs_review`, and its confidence is capped at its `in_scope`:
a label outside the task never reaches a high confidence.

Measured on texlive_dev (the 919 manuals in scope; out of set: 300 demo case reports and the 53
readable files of the hostile PDF corpus), the share flagged at 5% of the manuals flagged:

| signal | case reports | hostile files |
|---|---|---|
| similarity, plain TF-IDF words | 100% | 42% |
| similarity, stop words out, word pairs | 100% | 64% |
| the same + length | 100% | 85% |
| words alone, stop words out, + length, the text uncollapsed (this module: twice as fast) | 100% | 85% |
| MiniLM embeddings (half the manuals as neighbours), first window / window mean | 100% / 100% | 64% / 72% |
| static token vectors (first window, whole read) | 38-77% | 64-74% |

TF-IDF also needs no encoder (extraction tasks have none), and bulk scores it beside the student.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa


SCOPE_FILE = "scope.pkl"
COLUMNS = [("in_scope", pa.float64()), ("out_of_scope", pa.bool_()), ("needs_review", pa.bool_())]  # on every label
FLAGS = tuple(name for name, _ in COLUMNS)
BLOCK = 512  # query rows per similarity block: BLOCK x reference floats at a time


class Scope:
    """Nearest-neighbour similarity to the in-scope documents, and the threshold under which a
    document is out of scope."""

    def __init__(self, spec):
        cfg = spec.scope
        self.spec, self.k, self.share, self.limit = spec, cfg.neighbours, cfg.flag_share, cfg.reference
        self.review_below = cfg.review_below
        self.chars = spec.prompts.max_doc_chars * spec.encoder.chunks
        self.vectorizer = self.reference = self.calibration = self.lengths = None
        self.hashes: dict[str, int] = {}
        self.threshold = -np.inf

    def _text(self, texts: list[str]) -> list[str]:
        """What is compared: the first characters ingestion kept, as they are (collapsing whitespace
        first would cost as much as the rest of the scoring, and the words are the same)."""
        return [t[: self.chars] for t in texts]

    def fit(self, texts: list[str], hashes: list[str]) -> "Scope":
        """In-scope documents, copies counted once; past `scope.reference` the first ones (the seeds
        come first, then the labeled documents in hash order)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        first = {}
        for text, h in zip(texts, hashes):
            first.setdefault(h, text)
        kept = list(first.items())[: self.limit]
        self.hashes = {h: i for i, (h, _) in enumerate(kept)}
        texts = self._text([t for _, t in kept])
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2 if len(texts) >= 10 else 1,
                                          dtype=np.float32)
        self.reference = self.vectorizer.fit_transform(texts).T.tocsr()
        loo = self._similarity(self.reference.T.tocsr(), [h for h, _ in kept])
        lengths = [len(t) for t in texts]
        self.calibration, self.lengths = np.sort(loo), np.sort(lengths)
        typical = self._typical(loo, lengths)  # each document's similarity beside its own length
        self.threshold = float(np.quantile(typical, self.share)) if self.share > 0 else -np.inf
        return self

    def _typical(self, sims: np.ndarray, lengths) -> np.ndarray:
        """The smaller of two shares of in-scope documents: those no more similar to the others, and those
        at least as far out in length (shorter, or longer)."""
        by_sim = np.searchsorted(self.calibration, sims, side="right") / len(self.calibration)
        lengths = np.asarray(lengths)
        n = len(self.lengths)
        by_length = np.minimum(np.searchsorted(self.lengths, lengths, side="right"),
                               n - np.searchsorted(self.lengths, lengths, side="left")) / n
        return np.minimum(by_sim, by_length)

    @property
    def size(self) -> int:
        return len(self.hashes)

    def _similarity(self, queries, hashes: list[str] | None) -> np.ndarray:
        out = np.zeros(queries.shape[0], dtype=np.float32)
        for start in range(0, queries.shape[0], BLOCK):
            sims = (queries[start:start + BLOCK] @ self.reference).toarray()
            for row, h in enumerate((hashes or [])[start:start + BLOCK]):
                if h in self.hashes:  # a reference document is compared with the others only
                    sims[row, self.hashes[h]] = -1.0
            k = min(self.k, max(sims.shape[1] - 1, 1))
            out[start:start + BLOCK] = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
        return out

    def vectors(self, texts: list[str]):
        """The texts' TF-IDF rows (sparse, L2-normalised) in the space the similarity is measured in."""
        return self.vectorizer.transform(self._text(texts))

    def similarity(self, texts: list[str], hashes: list[str] | None = None) -> np.ndarray:
        """Each text's mean cosine to its nearest in-scope documents (a document of the reference
        itself is compared with the others, as the threshold was measured)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return self._similarity(self.vectors(texts), hashes)

    def score(self, texts: list[str], hashes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(in_scope: how typical of the in-scope documents each text is (`_typical`), out_of_scope:
        under the threshold)."""
        if not texts:
            return np.zeros(0), np.zeros(0, dtype=bool)
        typical = self._typical(self.similarity(texts, hashes), [min(len(t), self.chars) for t in texts])  # _text's
        return typical, typical < self.threshold

    def mark(self, rows: list[dict], texts: list[str], hashes: list[str] | None = None) -> list[dict]:
        """Label rows (with `confidence`) with their in-scope share and flags: out of scope, the
        confidence capped at it; `needs_review` when out of scope or under `scope.review_below`."""
        in_scope, out = self.score(texts, hashes)
        return marked(rows, in_scope.tolist(), out.tolist(), self.review_below)

    def summary(self) -> dict:
        return {"reference": self.size, "neighbours": self.k, "flag_share": self.share,
                "threshold": None if not np.isfinite(self.threshold) else self.threshold,
                "review_below": self.review_below}


def marked(rows: list[dict], in_scope: list, out_of_scope: list, review_below: float) -> list[dict]:
    """Rows with `in_scope`, `out_of_scope` and `needs_review`, the confidence of an out-of-scope row
    capped at its in-scope share (also after a pass that recomputed it, e.g. the prior correction)."""
    done = []
    for row, share, out in zip(rows, in_scope, out_of_scope):
        row = {**row, "in_scope": share, "out_of_scope": out}
        if out and row.get("confidence") is not None:
            row["confidence"] = min(row["confidence"], share)
        row["needs_review"] = bool(out) or (row.get("confidence") or 0.0) < review_below
        done.append(row)
    return done


def fit(spec, texts: list[str], hashes: list[str]) -> Scope | None:
    """The task's scope from its in-scope documents; None with fewer than two (nothing to compare)."""
    if len(set(hashes)) < 2:
        return None
    return Scope(spec).fit(texts, hashes)


def save(scope: Scope | None, folder: str | Path) -> Path | None:
    if scope is None:
        return None
    path = Path(folder) / SCOPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(scope))
    tmp.replace(path)
    return path


def load(folder: str | Path) -> Scope | None:
    """The scope saved beside a model (a student's folder), or None for a model saved without one."""
    path = Path(folder) / SCOPE_FILE
    return pickle.loads(path.read_bytes()) if path.exists() else None
