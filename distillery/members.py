"""Models that stand in for each other: one contract, `fit(items) -> self`, `probabilities(texts)`.

Teacher members (`llm`, `encoder`, `tfidf`) and the probability-model student kinds share it, as
scikit-learn's estimators share `fit` and `predict_proba`: a row per text, columns in the spec's
label order, summing to 1. The committee, labeling, the student gate and bulk only ever call the
contract, so a new member is one class and one line in `MEMBERS`. A fitted model of this kind is
saved as one pickle in a folder (`save` / `load_labeler`); what cannot pickle (a torch model, a
sentence encoder) is dropped on the way and reloaded from its path where it is used next.

- `tfidf`: the baseline (`baseline.Baseline`): word 1-2 grams, logistic regression, C=10.
- `encoder`: the embedded sentence encoder (`encoder.py`), frozen, with a logistic regression on its
  normalised embeddings (`encoder.C`, 10: what the measurement on texlive_dev used); with
  `encoder.chunks` > 1 the first window's embedding sits beside the mean of the next windows'.
- `static` (`static.py`): static token vectors distilled from the encoder beside TF-IDF n-grams; a
  student kind (as fast as PDFs read), a teacher member only when `teacher.members` lists it.
- `llm`: the RFT model, scoring the label set after the `Answer:` prefill (`answer.score_answers`);
  `fit` is the SFT warm start, the teacher stage adds GRPO before it joins the committee.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from distillery.baseline import Baseline, LinearHead
from distillery.encoder import Encoder
from distillery.prompts import document_text, document_windows
from distillery.spec import ClassificationOutput, TaskSpec
from distillery.static import StaticMember

LABELER_FILE = "labeler.pkl"


class Member(Protocol):
    name: str

    def fit(self, items: list[dict]) -> "Member": ...

    def probabilities(self, texts: list[str]) -> np.ndarray: ...


class EncoderMember(LinearHead):
    """Frozen sentence embeddings of the document window + logistic regression."""

    name = "encoder"

    def __init__(self, spec: TaskSpec, encoder: Encoder):
        self.spec, self.encoder, self.C, self.chunks = spec, encoder, spec.encoder.C, spec.encoder.chunks
        self.labels = list(spec.output.labels)

    def features(self, texts: list[str]) -> np.ndarray:
        """The first window's embedding; with `encoder.chunks` > 1, beside the normalised mean of the
        embeddings of every window read (a longer document seen whole, its opening kept apart)."""
        if self.chunks == 1:
            return self.encoder.embed([document_text(t, self.spec) for t in texts])
        windows = [document_windows(t, self.spec, self.chunks) for t in texts]
        flat = self.encoder.embed([w for ws in windows for w in ws])
        ends = np.cumsum([len(ws) for ws in windows])
        means = np.stack([flat[end - len(ws):end].mean(axis=0) for ws, end in zip(windows, ends)]) if texts \
            else np.zeros((0, flat.shape[1]))
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        firsts = flat[ends - [len(ws) for ws in windows]] if texts else means
        return np.hstack([firsts, means])


class LLMMember:
    """A causal LM answering under the schema: P(label | prompt, `Answer:`) over the label set."""

    name = "llm"

    def __init__(self, spec: TaskSpec, path: str | Path | None = None, *, batch_size: int = 8, backend: str = "auto"):
        self.spec, self.path, self.batch_size, self.backend_kind = spec, str(path) if path else None, batch_size, backend
        self._backend = None

    def __getstate__(self):
        return {**self.__dict__, "_backend": None}

    def fit(self, items: list[dict]) -> "LLMMember":
        """The SFT warm start on `items` from the spec's base model, into a fresh folder."""
        import tempfile

        from distillery.answer import answer_examples
        from distillery.models import load_tokenizer
        from distillery.sft import train_sft

        base = self.spec.model_ref(self.spec.models.base)
        out = Path(tempfile.mkdtemp(prefix="llm-member-")) / "model"
        train_sft(base, answer_examples(self.spec, items, load_tokenizer(base)), self.spec.teacher.sft, out,
                  seed=self.spec.seed)
        self.path, self._backend = str(out), None
        return self

    @property
    def backend(self):
        if self._backend is None:
            from distillery.inference import make_backend

            self._backend = make_backend(self.path, kind=self.backend_kind, batch_size=self.batch_size)
        return self._backend

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from distillery.answer import score_answers

        if not texts:
            return np.zeros((0, len(self.spec.output.labels)))
        return np.asarray(score_answers(self.spec, self.backend, texts)[1], dtype=float)


def make_member(name: str, spec: TaskSpec, *, encoder: Encoder | None = None) -> Member:
    """A fresh (unfitted) member by name."""
    if name not in MEMBERS:
        raise ValueError(f"unknown member {name!r}; known: {sorted(MEMBERS)}")
    return MEMBERS[name](spec, encoder=encoder)


MEMBERS: dict[str, Callable[..., Member]] = {
    "tfidf": lambda spec, **_: Baseline(spec),
    "encoder": lambda spec, encoder=None, **_: EncoderMember(spec, encoder or spec_encoder(spec)),
    "llm": lambda spec, **_: LLMMember(spec, batch_size=spec.label.batch_size, backend=spec.label.backend),
    "static": lambda spec, encoder=None, **_: StaticMember(spec, encoder or spec_encoder(spec)),
}
TEACHER_MEMBERS = ("tfidf", "encoder", "llm")  # the teacher's default; `static` is a student kind first


def spec_encoder(spec: TaskSpec) -> Encoder:
    """The spec's encoder (`models.encoder`), its cache under the artifact root."""
    return Encoder(spec.models.encoder, root=spec.root)


def applicable(spec: TaskSpec, names: list[str] | None = None) -> list[str]:
    """The members a task's teacher trains: those listed (default `TEACHER_MEMBERS`); extraction keeps
    `llm` alone."""
    if not isinstance(spec.output, ClassificationOutput):
        return ["llm"]
    return list(names or TEACHER_MEMBERS)


def save(model, folder: str | Path) -> Path:
    """A probability model (member, committee, student kind) as one pickle in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (LABELER_FILE + ".tmp")
    tmp.write_bytes(pickle.dumps(model))
    tmp.replace(folder / LABELER_FILE)
    return folder


def is_labeler(folder: str | Path) -> bool:
    return (Path(folder) / LABELER_FILE).exists()


def load_labeler(folder: str | Path, *, batch_size: int = 8, backend: str = "auto"):
    """What labels with the model in `folder`: a saved probability model (it answers through its
    `probabilities`), else a causal LM behind an inference backend."""
    if is_labeler(folder):
        return pickle.loads((Path(folder) / LABELER_FILE).read_bytes())
    from distillery.inference import make_backend

    return make_backend(str(folder), kind=backend, batch_size=batch_size)


def llm_of(folder: str | Path) -> str | None:
    """The causal LM a teacher folder labels with: the folder itself, or a committee's `llm` member."""
    if not is_labeler(folder):
        return str(folder)
    model = load_labeler(folder)
    member = getattr(model, "members", {}).get("llm")
    return member.path if member is not None else None
