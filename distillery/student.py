"""Stage 4, the student: a smaller, faster model distilled from the teacher's machine labels.

It learns from the teacher's labels that parse and reach `student.min_confidence`, never from a
seed. `student.kind`: `encoder` (the default for classification) is the pretrained sentence
encoder, frozen, with a logistic regression on the labels: it starts with what the encoder knows,
and its embeddings are the ones labeling cached. `lm` is SFT (`sft.train_sft`) of the student base
model or a shallow copy of it (`student.layers`: evenly spaced layers of the base). The student answers directly (no reasoning): it scores the label set after the
`Answer:` prefill (`answer.score_answers`) and can emit nothing else. It is measured on the expert
held-out seeds and on a slice of the teacher's labels kept out of its training (agreement), and
promoted only when it keeps `student.gate` x the teacher's held-out top-1: bulk labeling uses the
latest promoted student. The TF-IDF baseline (`baseline.py`, fitted on the seed train split) is
scored on the same held-out items, and a student below it gets a warning in the metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import pandas as pd

from distillery import baseline, lake, members
from distillery.answer import answer_examples, score_answers
from distillery.errors import StageInputMissing
from distillery.evaluate import grade_items, seed_items, stable_slice, summarize
from distillery.inference import TransformersBackend
from distillery.models import load_tokenizer, shallow_copy
from distillery.sft import train_sft
from distillery.spec import ClassificationOutput, TaskSpec


@dataclass(frozen=True)
class Inputs:
    """What the student reads: the teacher's labels, the seed split, the documents' text, and the
    teacher's held-out top-1 (the promotion gate's reference)."""

    reads: ClassVar = ("label", "seed", "ingest", "teacher")
    machine_labels: Path
    seed_labels: Path
    documents: Path
    teacher_top1: float | None = None

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        return cls(results["label"].path("machine_labels"), results["seed"].path("seed_labels"),
                   results["ingest"].path("documents"), results["teacher"].metrics["teacher"]["top1"])


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None) -> lake.StageResult:
    """Train, evaluate and gate the student; its model lands in out/model."""
    return train_student(spec, inputs.machine_labels, inputs.seed_labels, inputs.documents, out=out,
                         run_id=run_id, teacher_top1=inputs.teacher_top1)


def promotion(spec: TaskSpec, student_top1: float, teacher_top1: float | None) -> dict:
    """The gate: promote when the student keeps `gate` x the teacher's held-out top-1."""
    gate = spec.student.gate
    if teacher_top1 is None:
        return {"promoted": True, "gate": gate, "reason": "no teacher measurement to compare with"}
    needed = gate * teacher_top1
    ok = student_top1 >= needed - 1e-9
    verdict = "reaches" if ok else "is below"
    return {"promoted": ok, "gate": gate, "teacher_top1": teacher_top1, "student_top1": student_top1,
            "reason": f"held-out top-1 {student_top1:.3f} {verdict} {gate:g} x teacher {teacher_top1:.3f} = {needed:.3f}"}


def _validation_slice(items: list[dict], share: float = 0.1) -> tuple[list[dict], list[dict]]:
    """A stable slice of the teacher's labels (by content hash) kept out of training, for agreement."""
    if len(items) < 10:
        return items, []
    return stable_slice(items, max(1, int(len(items) * share)))


def fit_student(spec: TaskSpec, base: str, items: list[dict], out: Path) -> tuple[object, dict]:
    """The student of `student.kind` trained on `items` into out/model; returns (what answers with it,
    training metrics). `lm`: SFT of the base (or a shallow copy); `encoder`: the sentence encoder's
    embeddings (cached, usually computed already by the labeling stage) + logistic regression."""
    started = time.perf_counter()
    if spec.student_kind == "encoder":
        model = members.make_member("encoder", spec).fit(items)
        members.save(model, out / "model")
        return model, {"seconds": time.perf_counter() - started, "examples": len(items)}
    init = base
    if spec.student.layers:
        init = str(shallow_copy(base, out / "init", spec.student.layers))
    tokenizer = load_tokenizer(init)
    train = train_sft(init, answer_examples(spec, items, tokenizer), spec.student.sft, out / "model", seed=spec.seed)
    shutil.rmtree(out / "init", ignore_errors=True)
    return TransformersBackend(str(out / "model"), batch_size=spec.student.batch_size), train


def train_student(spec: TaskSpec, machine_labels: Path, seeds: Path, documents: Path, *, out: Path,
                  run_id: str | None = None, teacher_top1: float | None = None) -> lake.StageResult:
    """Train the student on confident teacher labels; evaluate it on the expert held-out split.

    Metrics: held-out accuracy and reward, agreement with the teacher on a slice of its labels kept
    out of training, inference speed, and `promotion` (the gate against the teacher's top-1).
    """
    started = time.perf_counter()
    run_id = run_id or lake.new_run_id("student")
    out.mkdir(parents=True, exist_ok=True)
    base = spec.model_ref(spec.models.student)
    labels = lake.read_table(machine_labels).to_pandas()
    usable = labels[(labels["parse_status"] != "failed") & (labels["confidence"] >= spec.student.min_confidence)]
    docs = lake.read_table(documents).to_pandas()[["sha256", "text"]]
    usable = usable.merge(docs, on="sha256")
    classify = isinstance(spec.output, ClassificationOutput)
    items = [{"sha256": r.sha256, "text": r.text,
              "answer": json.loads(r.answer)[0] if classify else json.loads(r.answer)} for r in usable.itertuples()]
    if not items:
        raise StageInputMissing("student", f"teacher labels that parse and reach confidence "
                                f"{spec.student.min_confidence} (0 of {len(labels)} do)",
                                "make teacher` with more training, or lower `student.min_confidence")
    train_items, agreement_items = _validation_slice(items)
    backend, train = fit_student(spec, base, train_items, out)
    heldout = seed_items(spec, seeds, documents, "heldout")
    scored = time.perf_counter()
    answers, probs = score_answers(spec, backend, [it["text"] for it in heldout], student=True)
    docs_per_s = len(heldout) / (time.perf_counter() - scored) if heldout else None
    rows = grade_items(spec, heldout, answers, [{"probs": json.dumps(p), "confidence": max(p)} for p in probs])
    summary = summarize(rows)
    baseline_rows, baseline_metrics = baseline.evaluate(spec, seed_items(spec, seeds, documents, "train"), heldout)
    agreement = None
    if agreement_items:
        agreed, _ = score_answers(spec, backend, [it["text"] for it in agreement_items], student=True)
        agreement = float(grade_items(spec, agreement_items, agreed)["top1"].mean())
    metrics = {**summary, "train": train, "trained_on": len(train_items), "filtered_out": int(len(labels) - len(items)),
               "teacher_agreement": agreement, "agreement_items": len(agreement_items), "docs_per_s": docs_per_s,
               "kind": spec.student_kind,
               "layers": backend.model.config.num_hidden_layers if spec.student_kind == "lm" else None,
               "promotion": promotion(spec, summary["top1"], teacher_top1), "baseline": baseline_metrics,
               "warnings": baseline.below_baseline("student", summary, baseline_metrics, baseline.student_tips(spec))}
    rows = rows.assign(model="student")
    if len(baseline_rows):
        rows = pd.concat([rows, baseline_rows], ignore_index=True)
    rows["task"], rows["run_id"], rows["stage"] = spec.name, run_id, "student"
    outputs = {"student_eval": str(lake.write_parquet(rows, out / "student_eval.parquet")), "model": str(out / "model")}
    counts = {"trained_on": len(train_items), "heldout": len(heldout)}
    return lake.StageResult("student", run_id, outputs, counts, metrics, time.perf_counter() - started)
