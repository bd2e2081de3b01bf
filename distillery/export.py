"""Export labels from the catalog to CSV, JSONL and Label Studio; read Label Studio exports back.

A Label Studio export carries each document's text (when the catalog has it), its path and
content hash, and the model's answer as a *prediction* with its confidence as score, so a reviewer
sees it pre-filled. `from_label_studio` reads a Label Studio JSON export back: an annotation (a
human's correction) wins over the prediction, which makes the round trip a way to review labels
or to grow the seed set (`distillery import-label-studio` writes a seed file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from distillery import lake, scope
from distillery.errors import DistilleryError
from distillery.evaluate import gold_label
from distillery.spec import ClassificationOutput, TaskSpec

TABLES = ("bulk_labels", "machine_labels")
FORMATS = ("csv", "jsonl", "label-studio")
TEXT_FIELD, CHOICES = "text", "label"
FLAGS = scope.FLAGS  # every export shows them


def load_labels(spec: TaskSpec, table: str = "bulk_labels", root: Path | None = None) -> pd.DataFrame:
    """One row per document: sha256, path, answer (ranked list or JSON object), confidence, the scope's
    flags (in_scope, out_of_scope, needs_review), model, text."""
    if table not in TABLES:
        raise DistilleryError(f"cannot export {table!r}: choose one of {', '.join(TABLES)}")
    with lake.catalog(root, read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        if table not in views:
            raise DistilleryError(f"the catalog has no {table!r} yet: run the stage that makes it "
                                  f"({'make bulk' if table == 'bulk_labels' else 'make label'})")
        answer = "ranked" if table == "bulk_labels" else "answer"
        path = "l.path" if table == "bulk_labels" else "d.path"
        docs = "documents" in views
        join = "LEFT JOIN (SELECT DISTINCT ON (sha256) sha256, path, text FROM documents) d USING (sha256)" if docs else ""
        text = "d.text" if docs else "NULL"
        if not docs and table == "machine_labels":
            path = "NULL"
        status = "l.parse_status" if table == "machine_labels" else "'ok'"
        have = {c[0] for c in con.execute(f"DESCRIBE {table}").fetchall()}
        flags = ", ".join(f"l.{c}" if c in have else f"NULL AS {c}" for c in FLAGS)  # labels made before scope.py: NULL
        df = con.execute(
            f"SELECT l.sha256, {path} AS path, l.{answer} AS answer, {status} AS parse_status, l.confidence, "
            f"{flags}, l.model, {text} AS text FROM {table} l {join} WHERE l.task = ? ORDER BY path, l.sha256",
            [spec.name]).fetch_df()
    df["answer"] = [json.loads(a) if isinstance(a, str) else None for a in df["answer"]]
    return df


def to_csv(df: pd.DataFrame, path: Path, spec: TaskSpec) -> Path:
    """Spreadsheet-friendly: the top label (or one column per extracted field) plus the full answer."""
    flat = df.drop(columns=["text"]).copy()
    if isinstance(spec.output, ClassificationOutput):
        flat.insert(2, "label", [gold_label(a) for a in flat["answer"]])
    else:
        for name in spec.output.fields:
            flat[name] = [a.get(name) if isinstance(a, dict) else None for a in flat["answer"]]
    flat["answer"] = [json.dumps(a, ensure_ascii=False) for a in flat["answer"]]
    flat.to_csv(path, index=False)
    return path


def to_jsonl(df: pd.DataFrame, path: Path, spec: TaskSpec) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in df.drop(columns=["text"]).to_dict("records"):
            f.write(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
                               ensure_ascii=False) + "\n")
    return path


def label_studio_config(spec: TaskSpec) -> str:
    """The labeling interface that matches the exported tasks (paste it into the project settings)."""
    if isinstance(spec.output, ClassificationOutput):
        out = spec.output
        # A choice's `hint` shows on hover (where Label Studio enables it); the legend always shows.
        choices = "".join(f"\n    <Choice value={quoteattr(label)}"
                          + (f" hint={quoteattr(out.label_descriptions[label])}" if label in out.label_descriptions else "")
                          + "/>" for label in out.labels)
        legend = "".join(f'\n  <Header size="6" value={quoteattr(f"{label}: {out.label_descriptions[label]}")}/>'
                         for label in out.labels if label in out.label_descriptions)
        return (f'<View>\n  <Text name="{TEXT_FIELD}" value="${TEXT_FIELD}"/>\n'
                f'  <Choices name="{CHOICES}" toName="{TEXT_FIELD}" choice="single">{choices}\n  </Choices>{legend}\n</View>\n')
    fields = "".join(f'\n  <Header value={quoteattr(name)}/>\n  <TextArea name={quoteattr(name)} toName="{TEXT_FIELD}" '
                     'maxSubmissions="1" editable="true"/>' for name in spec.output.fields)
    return f'<View>\n  <Text name="{TEXT_FIELD}" value="${TEXT_FIELD}"/>{fields}\n</View>\n'


def _results(answer: Any, spec: TaskSpec) -> list[dict]:
    if answer is None:
        return []
    if isinstance(spec.output, ClassificationOutput):
        return [{"from_name": CHOICES, "to_name": TEXT_FIELD, "type": "choices", "value": {"choices": [gold_label(answer)]}}]
    return [{"from_name": name, "to_name": TEXT_FIELD, "type": "textarea",
             "value": {"text": [json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value]}}
            for name, value in answer.items()]


def to_label_studio(df: pd.DataFrame, path: Path, spec: TaskSpec) -> Path:
    """Label Studio tasks (JSON list) with the model's answer as a prediction; the config beside it."""
    tasks = []
    for row in df.to_dict("records"):
        text = row["text"] if isinstance(row["text"], str) else ""
        flags = {c: _plain(row.get(c)) for c in FLAGS if c in row}
        tasks.append({
            "data": {TEXT_FIELD: text, "path": row["path"], "sha256": row["sha256"], **flags,
                     **({"why": row["why"]} if row.get("why") else {})},
            "predictions": [{"model_version": str(row["model"]), "score": float(row["confidence"] or 0.0),
                             "result": _results(row["answer"], spec)}],
        })
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    path.with_suffix(".config.xml").write_text(label_studio_config(spec), encoding="utf-8")
    return path


def _plain(value):
    """A pandas cell as JSON: numpy scalars as Python ones, missing as None."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


def _answer_from_results(results: list[dict], spec: TaskSpec) -> Any:
    if isinstance(spec.output, ClassificationOutput):
        for r in results:
            if r.get("type") == "choices" and r.get("value", {}).get("choices"):
                return r["value"]["choices"][0]
        return None
    answer = {}
    for r in results:
        if r.get("from_name") in spec.output.fields and r.get("value", {}).get("text"):
            raw = r["value"]["text"][0]
            try:
                answer[r["from_name"]] = json.loads(raw) if spec.output.fields[r["from_name"]].type != "string" else raw
            except json.JSONDecodeError:
                answer[r["from_name"]] = raw
    return answer or None


def from_label_studio(path: Path, spec: TaskSpec) -> pd.DataFrame:
    """Rows (sha256, path, document, answer, source) from a Label Studio JSON export.

    The latest annotation that is not cancelled wins (source `annotation`); otherwise the first
    prediction (source `prediction`); a task with neither is kept with answer None.
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DistilleryError(f"{path}: not a Label Studio JSON export ({err})") from err
    if not isinstance(tasks, list):
        raise DistilleryError(f"{path}: a Label Studio JSON export is a list of tasks")
    rows = []
    for n, task in enumerate(tasks):
        data = task.get("data", {})
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if annotations:
            answer, source = _answer_from_results(annotations[-1].get("result", []), spec), "annotation"
        elif task.get("predictions"):
            answer, source = _answer_from_results(task["predictions"][0].get("result", []), spec), "prediction"
        else:
            answer, source = None, "none"
        doc_path = data.get("path") or ""
        rows.append({"sha256": data.get("sha256"), "path": doc_path, "document": Path(doc_path).name or f"task-{n}",
                     "answer": answer, "source": source})
    return pd.DataFrame(rows, columns=["sha256", "path", "document", "answer", "source"])


def export(spec: TaskSpec, fmt: str, out: Path, table: str = "bulk_labels", root: Path | None = None) -> tuple[Path, int]:
    if fmt not in FORMATS:
        raise DistilleryError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    df = load_labels(spec, table, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {"csv": to_csv, "jsonl": to_jsonl, "label-studio": to_label_studio}[fmt]
    return writer(df, out, spec), len(df)


def seeds_from_label_studio(path: Path, spec: TaskSpec, out: Path, *, annotated_only: bool = True) -> int:
    """A seed file (document, answer) from reviewed Label Studio tasks."""
    rows = from_label_studio(path, spec)
    if annotated_only:
        rows = rows[rows["source"] == "annotation"]
    rows = rows[rows["answer"].notna()]
    answers = [a if isinstance(a, str) else json.dumps(a, ensure_ascii=False) for a in rows["answer"]]
    pd.DataFrame({"document": rows["document"], "answer": answers}).to_csv(out, index=False)
    return len(rows)
