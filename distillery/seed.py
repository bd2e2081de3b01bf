"""Stage 1b, seeds: import the expert's labels, validate every row, split train / validation / held-out.

A seed file is CSV, JSONL or Parquet with a `document` column (a corpus PDF's path relative to
the source, its file name when no other PDF has it, or its SHA-256) and an `answer` column (a label, or a JSON object for extraction). Every problem is
collected and reported at once, naming the file, the row and the problem, before any training.
The split is stratified by label: `heldout` is only ever used for the reported evaluation,
`validation` picks checkpoints, `train` trains.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import pandas as pd
import pyarrow as pa

from distillery import lake
from distillery.errors import SeedError
from distillery.graders import grade_gold
from distillery.prompts import match_label
from distillery.spec import ClassificationOutput, TaskSpec


def read_seed_file(path: str | Path) -> pd.DataFrame:
    """Read a seed file into strings; unreadable files raise SeedError naming the problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise SeedError(str(path), [f"line {n}: not valid JSON ({err.msg})"]) from None
            return pd.DataFrame(rows)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except FileNotFoundError:
        raise SeedError(str(path), ["file not found"]) from None
    except UnicodeDecodeError as err:
        raise SeedError(str(path), [f"not UTF-8 text (byte {err.start}): save the file as UTF-8"]) from None
    except (pd.errors.ParserError, ValueError, OSError) as err:
        raise SeedError(str(path), [f"cannot read: {err}"]) from None
    raise SeedError(str(path), [f"unsupported extension {suffix!r}: expected .csv, .jsonl or .parquet"])


def _answer(raw, spec: TaskSpec, where: str, problems: list[str]):
    if raw is None or (isinstance(raw, float) and pd.isna(raw)) or (isinstance(raw, str) and not raw.strip()):
        problems.append(f"{where}: empty answer")
        return None
    out = spec.output
    if isinstance(out, ClassificationOutput):
        label = match_label(str(raw), out.labels)
        if label is None or label.lower() != str(raw).strip().lower():
            problems.append(f"{where}: unknown label {raw!r} (expected one of: {'; '.join(out.labels)})")
            return None
        return label
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            problems.append(f"{where}: answer is not a JSON object")
            return None
    if not isinstance(value, dict):
        problems.append(f"{where}: answer is not a JSON object")
        return None
    missing = [k for k in out.fields if k not in value]
    if missing:
        problems.append(f"{where}: answer lacks field(s) {', '.join(missing)}")
    return value


def _source_prefix(spec: TaskSpec) -> str:
    """The folder every document path starts with: the source, or the folder part of a glob."""
    source = spec.source if "://" in spec.source else str(spec.path(spec.source))
    cuts = [source.find(ch) for ch in "*?[" if ch in source]
    if cuts:
        source = source[: min(cuts)].rsplit("/", 1)[0]
    return source.rstrip("/") + "/"


class DocumentIndex:
    """Finds the document a seed row names: its SHA-256, its path relative to the source (or as
    listed), or its file name when no other document has that name."""

    def __init__(self, documents: pd.DataFrame, spec: TaskSpec):
        prefix = _source_prefix(spec)
        self.exact: dict[str, str] = {}
        self.by_name: dict[str, dict[str, str]] = {}  # name -> {sha256: path relative to the source}
        for row in documents.itertuples():
            relative = row.path[len(prefix):] if row.path.startswith(prefix) else row.path
            for key in (row.sha256, relative, row.path):
                self.exact.setdefault(key, row.sha256)
            self.by_name.setdefault(row.name, {}).setdefault(row.sha256, relative)

    def find(self, doc: str) -> tuple[str | None, str]:
        """(sha256, "") for a match, else (None, the problem)."""
        key = doc.replace("\\", "/").removeprefix("./")
        if key in self.exact:
            return self.exact[key], ""
        candidates = self.by_name.get(key.rsplit("/", 1)[-1], {})
        if len(candidates) == 1:
            return next(iter(candidates)), ""
        if candidates:
            listed = ", ".join(sorted(candidates.values()))
            return None, (f"document {doc!r} is ambiguous: {len(candidates)} documents have that name ({listed}); "
                          "write its path relative to the source, or its SHA-256")
        return None, f"document {doc!r} is not in the corpus (or was quarantined)"


def validate_seeds(df: pd.DataFrame, documents: pd.DataFrame, spec: TaskSpec, path: str) -> pd.DataFrame:
    """Rows resolved to documents, or SeedError listing every problem."""
    missing = [c for c in ("document", "answer") if c not in df.columns]
    if missing:
        raise SeedError(path, [f"missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})"])
    index = DocumentIndex(documents, spec)
    problems: list[str] = []
    seen: dict[str, int] = {}
    out = []
    for i, row in enumerate(df.itertuples(index=False), start=2 if path.endswith(".csv") else 1):
        where = f"row {i}"
        doc = str(row.document).strip() if row.document is not None else ""
        answer = _answer(row.answer, spec, where, problems)
        if not doc:
            problems.append(f"{where}: empty document")
            continue
        sha, problem = index.find(doc)
        if sha is None:
            problems.append(f"{where}: {problem}")
            continue
        if sha in seen:
            problems.append(f"{where}: duplicate document {doc!r} (same file as row {seen[sha]})")
            continue
        seen[sha] = i
        if answer is not None:
            out.append({"document": doc, "sha256": sha, "answer": answer})
    if problems:
        raise SeedError(path, problems)
    if not out:
        raise SeedError(path, ["no seed rows"])
    return pd.DataFrame(out)


def split_seeds(rows: pd.DataFrame, spec: TaskSpec) -> list[str]:
    """Stratified split: per label, shuffle, take held-out first, then validation, rest train."""
    cfg = spec.seeds
    rng = random.Random(cfg.split_seed)
    strata = (rows["answer"].astype(str) if isinstance(spec.output, ClassificationOutput)
              else pd.Series(["all"] * len(rows))).reset_index(drop=True)  # positions, whatever rows' index
    split = [""] * len(rows)
    for _, idx in sorted(strata.groupby(strata).groups.items()):
        idx = list(idx)
        rng.shuffle(idx)
        n_held = max(1, round(len(idx) * cfg.heldout_fraction)) if len(idx) > 1 else 0
        n_val = round((len(idx) - n_held) * cfg.validation_fraction)
        for j, k in enumerate(idx):
            split[k] = "heldout" if j < n_held else "validation" if j < n_held + n_val else "train"
    return split


@dataclass(frozen=True)
class Inputs:
    """What the seed stage reads: the ingested documents (the seed file is the spec's `seeds.path`)."""

    reads: ClassVar = ("ingest",)
    documents: Path

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        return cls(results["ingest"].path("documents"))


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None) -> lake.StageResult:
    """Validate the expert's seed file against the documents and split it train/validation/held-out."""
    return import_seeds(spec, inputs.documents, out=out, run_id=run_id)


def import_seeds(spec: TaskSpec, documents: Path, *, out: Path, run_id: str | None = None) -> lake.StageResult:
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("seed")
    path = str(spec.path(spec.seeds.path))
    docs = lake.read_table(documents).to_pandas()
    rows = validate_seeds(read_seed_file(path), docs, spec, path)
    rows["split"] = split_seeds(rows, spec)
    rows["answer"] = [json.dumps(grade_gold(a, spec)) for a in rows["answer"]]
    rows["task"], rows["run_id"], rows["stage"] = spec.name, run_id, "seed"
    table = pa.Table.from_pandas(rows, preserve_index=False)
    outputs = {"seed_labels": str(lake.write_parquet(table, out / "seed_labels.parquet"))}
    counts = rows["split"].value_counts().to_dict()
    return lake.StageResult("seed", run_id, outputs, {k: int(v) for k, v in counts.items()}, {},
                            time.perf_counter() - started)


def load_split(seeds: Path, split: str) -> list[dict]:
    """Seed rows of one split as dicts with the answer decoded."""
    df = lake.read_table(seeds).to_pandas()
    df = df[df["split"] == split]
    return [{"sha256": r.sha256, "document": r.document, "answer": json.loads(r.answer)} for r in df.itertuples()]
