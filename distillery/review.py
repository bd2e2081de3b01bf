"""The review queue: which documents deserve the expert's next hour, and their labels back as seeds.

Candidates are the documents the labeling stage labeled; a document the seed file already holds
never is one. Doubt is what the teacher says without any new label: 1 - the margin of its top
probability over the second, plus half the share of its members whose first label differs from the
committee's. Up to a tenth of the queue goes to out-of-scope documents (`scope.py`; the expert says
what they are, or that they belong to no label), the most doubtful of each cluster. The rest is spread over
the document space: k-means with one cluster per place in the queue, over the committee's encoder
features, and from each cluster the document of highest doubt x in-scope share (a typical document
the teacher is unsure of, not an outlier). Measured on texlive_dev before choosing this (40 labels
on top of 80 seeds, committee top-1 on the same 610 held-out manuals; start 0.803): these clusters
0.800; doubt alone with a diversity penalty 0.793; doubt with the labels taking turns 0.777; random
0.795 (2 draws). No choice of forty labels moves this teacher much: frozen features with every
label reach 0.79-0.81, and 80 seeds already get there (`make bench-review`).

`review(spec, n)` writes the queue as Label Studio tasks with the teacher's answer pre-filled;
`append_seeds` reads the reviewed export back and appends its rows to the task's seed file,
validated as seeds are, so the next `distillery run` reruns the seed stage and what follows it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from distillery import lake, scope
from distillery.errors import DistilleryError, StageInputMissing
from distillery.spec import ClassificationOutput, TaskSpec

DISAGREE = 0.5  # weight of the members' disagreement beside 1 - margin
OUTSIDE_SHARE = 0.1  # of the queue kept for out-of-scope documents (the expert says what they are)


def doubt(probs: np.ndarray, member_tops: np.ndarray | None) -> np.ndarray:
    """1 - the margin of the top probability over the second, + DISAGREE x the share of members whose
    top label differs from the committee's."""
    ordered = np.sort(probs, axis=1)
    score = 1.0 - (ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0))
    if member_tops is not None and member_tops.size:
        score = score + DISAGREE * (member_tops != probs.argmax(axis=1)[:, None]).mean(axis=1)
    return score


def pick(priority: np.ndarray, vectors: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """Up to `n` row indices spread over the space: k-means with `n` clusters on `vectors` (rows
    L2-normalised), and from each cluster its row of highest priority."""
    from sklearn.cluster import KMeans

    if n <= 0:
        return []
    if n >= len(priority):
        return [int(i) for i in np.argsort(-priority, kind="stable")]
    clusters = KMeans(n_clusters=n, n_init=3, random_state=seed).fit_predict(vectors)
    chosen = [int(np.flatnonzero(clusters == c)[np.argmax(priority[clusters == c])]) for c in range(n)
              if (clusters == c).any()]
    return sorted(chosen, key=lambda i: -priority[i])


def member_tops(teacher, texts: list[str]) -> np.ndarray | None:
    """Each weighted member's top label per text (a committee's members; None for another teacher)."""
    members = getattr(teacher, "members", None)
    if not members:
        return None
    named = [m for m, w in teacher.weights.items() if w > 0]
    return np.stack([members[m].probabilities(texts).argmax(axis=1) for m in named], axis=1) if named else None


def candidates(spec: TaskSpec, root: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """The latest labeling run's labels with their documents' text, less the seed file's documents;
    and the stage outputs it read (label, teacher)."""
    from distillery.seed import DocumentIndex, read_seed_file

    if not isinstance(spec.output, ClassificationOutput):
        raise DistilleryError("the review queue ranks classification labels (its priority reads the probability rows)")
    layout = lake.Layout.at(root)
    found = {stage: lake.latest_outputs(layout, spec.name, stage) for stage in ("ingest", "teacher", "label")}
    for stage, outputs in found.items():
        if outputs is None:
            raise StageInputMissing("review", f"a finished {stage} stage for task {spec.name!r}", f"make {stage}")
    docs = lake.read_table(found["ingest"]["documents"]).to_pandas()
    labels = lake.read_table(found["label"]["machine_labels"]).to_pandas()
    labels = labels[labels["probs"].notna()].merge(docs[["sha256", "path", "text"]].drop_duplicates("sha256"), on="sha256")
    index = DocumentIndex(docs, spec)
    seeded = {index.find(str(d))[0] for d in read_seed_file(spec.path(spec.seeds.path))["document"]}
    return labels[~labels["sha256"].isin(seeded)].reset_index(drop=True), found


def queue(spec: TaskSpec, labels: pd.DataFrame, teacher, scope_model, n: int) -> pd.DataFrame:
    """The `n` rows of `labels` (sha256, text, probs; with the scope: in_scope, out_of_scope, as the
    labeling stage wrote them) the expert should label next, each
    with its priority and a one-line `why`: up to OUTSIDE_SHARE of them out of scope (the most doubtful),
    the rest one per k-means cluster of the teacher's space (its encoder member's features, else the
    scope's TF-IDF vectors), each cluster's most doubtful typical document (doubt x in-scope share)."""
    probs = np.array([json.loads(p) for p in labels["probs"]])
    texts = labels["text"].tolist()
    outside = labels["out_of_scope"].fillna(False).to_numpy(bool) if "out_of_scope" in labels else np.zeros(len(labels), bool)
    scoped = "in_scope" in labels and labels["in_scope"].notna().all()
    typical = labels["in_scope"].to_numpy(float) if scoped else np.ones(len(labels))
    tops = member_tops(teacher, texts) if teacher is not None else None
    unsure = doubt(probs, tops)
    vectors = space(teacher, scope_model, texts, probs)
    rows = np.arange(len(labels))
    chosen = []
    if outside.any():
        far = rows[outside]
        chosen += [int(far[i]) for i in pick(unsure[outside], vectors[outside], min(outside.sum(), round(n * OUTSIDE_SHARE)))]
    near = rows[~outside]
    priority = unsure * typical
    chosen += [int(near[i]) for i in pick(priority[~outside], vectors[~outside], n - len(chosen))] if len(near) else []
    out = labels.iloc[chosen].copy()
    out["priority"] = np.where(outside[chosen], unsure[chosen], priority[chosen])
    shown = typical if scoped else [None] * len(texts)
    out["why"] = [why(probs[i], tops[i] if tops is not None else None, shown[i], bool(outside[i])) for i in chosen]
    return out


def space(teacher, scope_model, texts: list[str], probs: np.ndarray) -> np.ndarray:
    """Rows (L2-normalised) the queue spreads over: the committee's encoder features, else the scope's
    TF-IDF vectors (sparse), else the probability rows."""
    encoder = getattr(teacher, "members", {}).get("encoder") if teacher is not None else None
    if encoder is not None:
        x = np.asarray(encoder.features(texts), dtype=np.float64)
    elif scope_model is not None:
        return scope_model.vectors(texts)
    else:
        x = probs
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def why(row: np.ndarray, tops: np.ndarray | None, typical: float | None, outside: bool) -> str:
    ordered = np.sort(row)
    parts = [f"margin {ordered[-1] - (ordered[-2] if len(row) > 1 else 0):.2f}"]
    if typical is not None:
        parts.append(f"in scope {typical:.2f}")
    if tops is not None and (tops != row.argmax()).any():
        parts.append(f"{int((tops != row.argmax()).sum())} of {len(tops)} members disagree")
    if outside:
        parts.append("out of scope")
    return "; ".join(parts)


def review(spec: TaskSpec, n: int, out: Path, root: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Write the queue of `n` documents as Label Studio tasks (the teacher's answer as a prediction)."""
    from distillery.export import to_label_studio
    from distillery.members import load_labeler

    labels, found = candidates(spec, root)
    if not len(labels):
        raise DistilleryError(f"no labeled document of task {spec.name!r} is outside the seed file: nothing to review")
    teacher = load_labeler(found["teacher"]["model"])
    scope_model = scope.load(Path(found["label"]["scope"]).parent) if found["label"].get("scope") else None
    chosen = queue(spec, labels, teacher if hasattr(teacher, "members") else None, scope_model, n)
    chosen = chosen.assign(answer=[json.loads(a) for a in chosen["answer"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    return to_label_studio(chosen, out, spec), chosen


def append_seeds(spec: TaskSpec, export: Path, root: Path | None = None) -> tuple[int, int]:
    """Append the reviewed rows of a Label Studio export to the spec's seed file, validated against the
    corpus as seeds are (every problem reported, nothing written); a document the seed file already
    holds is skipped. Returns (rows appended, rows skipped)."""
    from distillery.export import from_label_studio
    from distillery.seed import DocumentIndex, read_seed_file, validate_seeds

    ingest = lake.latest_outputs(lake.Layout.at(root), spec.name, "ingest")
    if ingest is None:
        raise StageInputMissing("import", f"a finished ingest stage for task {spec.name!r}", "make seed")
    docs = lake.read_table(ingest["documents"]).to_pandas()
    path = spec.path(spec.seeds.path)
    existing = read_seed_file(path)
    index = DocumentIndex(docs, spec)
    held = {index.find(str(d))[0] for d in existing["document"]}
    rows = from_label_studio(export, spec)
    rows = rows[(rows["source"] == "annotation") & rows["answer"].notna()]
    new, skipped, known = [], 0, set(docs["sha256"])
    for r in rows.itertuples():
        sha = r.sha256 if r.sha256 in known else index.find(r.path or r.document)[0]
        if sha in held:
            skipped += 1
            continue
        named = index.find(r.document)[0] == sha  # the file name alone when it is unambiguous
        answer = r.answer if isinstance(r.answer, str) else json.dumps(r.answer, ensure_ascii=False)
        new.append({"document": r.document if named else (sha or r.path), "answer": answer})
        held.add(sha)
    if not new:
        return 0, skipped
    combined = pd.concat([existing[["document", "answer"]].astype(str), pd.DataFrame(new)], ignore_index=True)
    validate_seeds(combined, docs, spec, str(path))
    _append(path, new, combined)
    return len(new), skipped


def _append(path: Path, new: list[dict], combined: pd.DataFrame) -> None:
    """Add rows to a seed file in its own format: CSV (under its own header) and JSONL appended,
    Parquet rewritten."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        combined.to_parquet(path, index=False)
        return
    text = path.read_text(encoding="utf-8")
    header = next(csv.reader([text.splitlines()[0]])) if suffix == ".csv" and text else ["document", "answer"]
    with open(path, "a", encoding="utf-8", newline="") as f:
        if text and not text.endswith("\n"):
            f.write("\n")
        if suffix == ".csv":
            csv.DictWriter(f, fieldnames=header, lineterminator="\n", restval="").writerows(new)
        else:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
