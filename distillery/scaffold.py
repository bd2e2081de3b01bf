"""`distillery init`: a commented task spec for a folder of PDFs and a seed file.

The labels are the answers found in the seed file; every path in the spec is written relative to
the spec's folder (where `load_spec` resolves them), so the task folder can move; the settings are
the demo's, sized for a CPU, with a comment on each section saying what to change first.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from distillery.errors import DistilleryError

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
LABEL_CAP = 5000  # the teacher is the slow labeler; the student labels the rest in bulk


def task_name(text: str) -> str:
    """A valid task name from a folder name: lower case, runs of other characters as `-`."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return name if NAME.match(name) else "task"


def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start`, through symlinks as named (a linked corpus stays the link)."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(start))).as_posix()


def _c(line: str, comment: str) -> str:
    return f"{line:<32} # {comment}"


def _labels(seeds: Path) -> tuple[list[str], int, list[str]]:
    """(labels sorted, seed rows, seed documents) from a seed file; a bad file raises SeedError."""
    from distillery.seed import read_seed_file

    rows = read_seed_file(seeds)
    missing = [c for c in ("document", "answer") if c not in rows.columns]
    if missing:
        raise DistilleryError(f"{seeds}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, rows.columns))}); "
                              "a seed file has columns `document` (a PDF's path under the folder, or its name) and `answer`")
    answers = [str(a).strip() for a in rows["answer"] if str(a).strip()]
    labels = sorted(set(answers), key=str.lower)
    bad = [a for a in labels if ";" in a or "\n" in a]
    if bad:
        raise DistilleryError(f"{seeds}: answers {bad} contain ';' or a newline; init writes classification specs, "
                              "whose labels cannot (write an extraction spec by hand: see data/demo/invoices.yaml)")
    if len(labels) < 2:
        raise DistilleryError(f"{seeds}: {len(labels)} distinct answer(s); a classification task needs at least 2 labels")
    return labels, len(rows), [str(d).strip().replace("\\", "/") for d in rows["document"]]


def _unmatched(documents: list[str], pdfs: Path) -> list[str]:
    """Seed documents that no PDF of the folder answers to (by path under it, or by name)."""
    from distillery.ingest import list_pdfs

    relative = {_relative(Path(p), pdfs) for p in list_pdfs(pdfs)}
    names = {r.rsplit("/", 1)[-1] for r in relative}
    return [d for d in documents if d.removeprefix("./") not in relative and d.rsplit("/", 1)[-1] not in names
            and not re.fullmatch(r"[0-9a-f]{64}", d)]


def render_spec(*, name: str, source: str, seeds: str, base: str, labels: list[str], documents: int,
                n_seeds: int, shown: str | None = None) -> str:
    """The spec's text; `shown` is the spec's path as the header's commands name it (where init ran)."""
    shown = shown or f"{name}.yaml"
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    label_lines = "\n".join(f"    - {{name: {q(label)}, description: \"\"}}" for label in labels)
    top_k = min(3, len(labels))
    limit = max(1, min(documents - n_seeds, LABEL_CAP))
    why = f"all {documents} PDFs minus the seeds" + (f", at most {LABEL_CAP}" if documents - n_seeds > LABEL_CAP else "")
    return f"""# The task spec of {name!r}, written by `distillery init`. Run it with:
#   distillery plan {shown}     (what the run will cost)
#   distillery run {shown}      (every stage; `--until seed` stops early, e.g. to check the seed file)
# Relative paths here (source, seeds.path, models, bulk.source) are relative to this file's folder.
# Every field is documented in distillery/spec.py.
name: {name}
{_c(f"source: {source}", "a folder (searched recursively) or a glob of PDFs")}
output:
  kind: classification
{_c(f"  top_k: {top_k}", "how many labels a ranked answer holds")}
  # The labels found in the seed file. A one-line description helps the models (it is shown in the
  # prompt by {{label_descriptions}}), the reviewer in Label Studio and the report.
  labels:
{label_lines}
prompts:
  system: You label documents.
  # The question and the labels come first, the document last: every prompt then starts with the
  # same tokens, which labeling computes once. Placeholders: {{labels}}, {{label_descriptions}},
  # {{top_k}}, {{document}}.
  instruction: |-
    Which label fits this document best? The labels:
    {{label_descriptions}}
    Reply with the {{top_k}} most likely labels, most likely first, separated by semicolons, after "Answer:".

    Document:
    {{document}}
{_c("  max_doc_chars: 800", "the text is cut here: prompt length drives every stage's time")}
grader:
{_c("  type: ranked", "credit by the position of the right label")}
  weights: [1.0, 0.5]
seeds:
{_c(f"  path: {seeds}", f"{n_seeds} rows: document (path under the source, name or SHA-256), answer")}
{_c("  heldout_fraction: 0.25", "kept out of training, for the reported evaluation")}
  validation_fraction: 0.15
models:
  base: {base}
  student: {base}
# The demo's recipe for a 2-core CPU: a short SFT warm start and 16 GRPO steps for the teacher's
# LLM member; the student: kind auto (static and encoder heads, the fastest that passes the gate),
# or kind lm: one decoder layer trained on the teacher's labels.
teacher:
  sft: {{epochs: 3, learning_rate: 5.0e-5, batch_size: 4}}
  grpo: {{steps: 16, num_generations: 8, prompts_per_step: 2, learning_rate: 2.0e-5, temperature: 1.0,
         max_completion_length: 16, eval_interval: 4, patience: 3, heldout_from_sft: 0.4}}
label:
{_c(f"  limit: {limit}", f"documents the teacher labels: {why}")}
  batch_size: 16
  max_new_tokens: 16
student:
{_c("  kind: auto", "static and encoder students on the teacher's labels: the fastest that passes")}
  layers: 1
  sft: {{epochs: 4, learning_rate: 1.0e-3, batch_size: 8}}
{_c("  gate: 0.9", "promoted only if its held-out top-1 is at least 0.9 x the teacher's")}
scope:
{_c("  flag_share: 0.05", "labels flagged out of scope: the least typical 5% of in-scope documents")}
{_c("  review_below: 0.5", "a label under this confidence needs review (distillery review)")}
bulk:
{_c(f"  source: {source}", "what the promoted student labels (make inbox SOURCE=... for another)")}
profiles:
  # `demo` is the profile every command applies unless `--profile` names another: overrides for a
  # first, quick run go here (e.g. label: {{limit: 200}}). Add others, e.g.
  # full: {{teacher: {{grpo: {{steps: 200}}}}}}, and run them with --profile full.
  demo: {{}}
"""


def init_task(folder: Path, pdfs: Path, seeds: Path, *, name: str | None = None, base: Path | None = None,
              force: bool = False) -> tuple[Path, dict]:
    """Write `<folder>/<name>.yaml`; returns its path and what init found (labels, counts, unmatched seeds)."""
    from distillery.ingest import list_pdfs

    name = name or task_name(Path(folder).resolve().name)
    if not NAME.match(name):
        raise DistilleryError(f"task name {name!r}: use lower-case letters, digits, '-' and '_' (e.g. --name {task_name(name)})")
    if not pdfs.is_dir():
        raise DistilleryError(f"--pdfs {pdfs}: not a folder; give the folder that holds the PDFs")
    documents = sum(1 for _ in list_pdfs(pdfs))
    if documents == 0:
        raise DistilleryError(f"--pdfs {pdfs}: no PDF in it (searched recursively for *.pdf)")
    labels, n_seeds, seed_docs = _labels(seeds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    if path.exists() and not force:
        raise DistilleryError(f"{path} exists: pass --force to write over it, or --name to write another")
    base = base or REPO / "models" / "base"
    shown = _relative(path, Path.cwd())  # the commands in its header, as typed where init ran
    shown = str(path.resolve()) if shown.startswith("../") else shown
    path.write_text(render_spec(name=name, source=_relative(pdfs, folder), seeds=_relative(seeds, folder),
                                base=_relative(base, folder), labels=labels, documents=documents, n_seeds=n_seeds,
                                shown=shown))
    return path, {"labels": labels, "documents": documents, "seeds": n_seeds,
                  "unmatched": _unmatched(seed_docs, pdfs)}
