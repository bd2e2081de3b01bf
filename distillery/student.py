"""Stage 4, the student: a smaller, faster model distilled from the teacher's machine labels.

It learns from the teacher's labels that parse and reach `student.min_confidence`, never from a
seed. Kinds (`student.kind`), fastest first:
- `static` (`static.py`): static token vectors distilled from the sentence encoder beside TF-IDF
  n-grams, two linear heads: a lookup per token, thousands of documents a second, as fast as PDFs read;
- `encoder`: the pretrained sentence encoder, frozen, with a logistic regression: it starts with
  what the encoder knows, and its embeddings are the ones labeling cached (a transformer per window);
- `lm`: SFT (`sft.train_sft`) of the student base model or a shallow copy of it (`student.layers`),
  answering directly: it scores the label set after the `Answer:` prefill (`answer.score_answers`).
`auto` trains `static` and `encoder` (and `lm` only when neither passes) and promotes the fastest
that passes the gate. Each candidate is measured on the expert held-out seeds, on a slice of the
teacher's labels kept out of its training (agreement: the one figure no seed leaks into, as the
teacher was fitted on every seed) and for speed on fresh text (no embedding cache). The gate: the
held-out top-1 keeps `student.gate` x the teacher's, and the agreement keeps `student.gate` x the
most faithful candidate's. Bulk labeling uses the latest promoted student. The TF-IDF baseline
(`baseline.py`, fitted on the seed train split) is scored on the same held-out items, and a student
below it gets a warning in the metrics.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
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
from distillery.encoder import Encoder
from distillery.models import load_tokenizer, shallow_copy
from distillery.scope import SCOPE_FILE
from distillery.sft import train_sft
from distillery.spec import ClassificationOutput, TaskSpec


SPEED_DOCS = 64  # fresh documents each candidate's speed is timed on


@dataclass(frozen=True)
class Inputs:
    """What the student reads: the teacher's labels, the seed split, the documents' text, and the
    teacher's held-out top-1 (the promotion gate's reference)."""

    reads: ClassVar = ("label", "seed", "ingest", "teacher")
    machine_labels: Path
    seed_labels: Path
    documents: Path
    teacher_top1: float | None = None
    scope: Path | None = None  # the labeling stage's out-of-scope model: it travels with the student to bulk

    @classmethod
    def of(cls, results: Mapping[str, lake.StageResult]) -> "Inputs":
        scope_file = results["label"].outputs.get("scope")
        return cls(results["label"].path("machine_labels"), results["seed"].path("seed_labels"),
                   results["ingest"].path("documents"), results["teacher"].metrics["teacher"]["top1"],
                   Path(scope_file) if scope_file else None)


def run(spec: TaskSpec, inputs: Inputs, out: Path, *, run_id: str | None = None) -> lake.StageResult:
    """Train, evaluate and gate the student; its model lands in out/model."""
    return train_student(spec, inputs.machine_labels, inputs.seed_labels, inputs.documents, out=out,
                         run_id=run_id, teacher_top1=inputs.teacher_top1, scope_file=inputs.scope)


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


def fit_student(spec: TaskSpec, kind: str, base: str, items: list[dict], out: Path) -> tuple[object, dict]:
    """A student of `kind` trained on `items` into out/model; returns (what answers with it, training
    metrics). `static` and `encoder`: a probability model (`members`); `lm`: SFT of the base (or a
    shallow copy)."""
    started = time.perf_counter()
    if kind in ("static", "encoder"):
        model = members.make_member(kind, spec).fit(items)
        members.save(model, out / "model")
        return model, {"seconds": time.perf_counter() - started, "examples": len(items)}
    init = base
    if spec.student.layers:
        init = str(shallow_copy(base, out / "init", spec.student.layers))
    tokenizer = load_tokenizer(init)
    train = train_sft(init, answer_examples(spec, items, tokenizer), spec.student.sft, out / "model", seed=spec.seed)
    shutil.rmtree(out / "init", ignore_errors=True)
    return TransformersBackend(str(out / "model"), batch_size=spec.student.batch_size), train


def uncached(spec: TaskSpec, model, cache: str | Path):
    """`model` reading through an empty embedding cache at `cache` when it embeds with the sentence
    encoder (an `encoder` student), else `model` itself: how it meets documents it never saw."""
    if getattr(model, "name", None) != "encoder":
        return model
    model = copy.copy(model)
    model.encoder = Encoder(model.encoder.name, root=spec.root, cache=cache)
    return model


def fresh_speed(spec: TaskSpec, model, texts: list[str]) -> float | None:
    """Documents a second on `texts` as bulk meets them: an encoder student reads through an empty
    embedding cache (labeling cached these texts' windows), after one warm-up text loads the model."""
    if not texts:
        return None
    with tempfile.TemporaryDirectory() as cache:
        model = uncached(spec, model, cache)
        score_answers(spec, model, texts[:1], student=True)
        started = time.perf_counter()
        score_answers(spec, model, texts, student=True)
        return len(texts) / (time.perf_counter() - started)


def choose(candidates: list[dict], gate: float) -> dict:
    """The fastest candidate that passes, with why. Passing: `promotion` holds (held-out top-1 keeps
    `gate` x the teacher's) and its agreement with the teacher keeps `gate` x the best candidate's.
    None passing: the most accurate on the held-out seeds, not promoted."""
    agreements = [c["teacher_agreement"] for c in candidates if c.get("teacher_agreement") is not None]
    best_agreement = max(agreements) if agreements else None
    for c in candidates:
        faithful = best_agreement is None or c.get("teacher_agreement") is None or \
            c["teacher_agreement"] >= gate * best_agreement - 1e-9
        c["passes"] = bool(c["promotion"]["promoted"] and faithful)
        c["why"] = c["promotion"]["reason"] + ("" if faithful else
                                               f"; agreement {c['teacher_agreement']:.3f} is below {gate:g} x the "
                                               f"best candidate's {best_agreement:.3f}")
    passing = [c for c in candidates if c["passes"]]
    if passing:
        pick = max(passing, key=lambda c: c["docs_per_s"] or 0)
        others = [c["kind"] for c in passing if c is not pick]
        return {**pick, "why": f"{pick['kind']}: the fastest that passes ({pick['docs_per_s'] or 0:.0f} docs/s)"
                + (f", beside {', '.join(others)}" if others else "")}
    pick = max(candidates, key=lambda c: (c["top1"] or 0, c["docs_per_s"] or 0))
    if len(candidates) == 1:
        return pick
    return {**pick, "why": f"{pick['why']} ({pick['kind']}: none of the {len(candidates)} candidates passes the "
                           f"gate, it is the most accurate)"}


def measure(spec: TaskSpec, kind: str, model, heldout: list[dict], agreement_items: list[dict],
            teacher_top1: float | None) -> tuple[pd.DataFrame, dict]:
    """One candidate's graded held-out rows and its figures: top-1, agreement, fresh docs/s, promotion."""
    answers, probs = score_answers(spec, model, [it["text"] for it in heldout], student=True)
    rows = grade_items(spec, heldout, answers, [{"probs": json.dumps(p), "confidence": max(p)} for p in probs])
    summary = summarize(rows)
    agreement = None
    if agreement_items:
        agreed, _ = score_answers(spec, model, [it["text"] for it in agreement_items], student=True)
        agreement = float(grade_items(spec, agreement_items, agreed)["top1"].mean())
    sample = [it["text"] for it in (agreement_items + heldout)][:SPEED_DOCS]
    return rows, {"kind": kind, **summary, "teacher_agreement": agreement, "docs_per_s": fresh_speed(spec, model, sample),
                  "layers": model.model.config.num_hidden_layers if kind == "lm" else None,
                  "promotion": promotion(spec, summary["top1"], teacher_top1)}


def train_student(spec: TaskSpec, machine_labels: Path, seeds: Path, documents: Path, *, out: Path,
                  run_id: str | None = None, teacher_top1: float | None = None,
                  scope_file: Path | None = None) -> lake.StageResult:
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
    heldout = seed_items(spec, seeds, documents, "heldout")
    kinds, fallback = spec.student_kinds
    candidates, rows_of, trains = [], {}, {}
    for kind in kinds + fallback:
        if kind in fallback and any(c["passes"] for c in candidates):
            break
        model, trains[kind] = fit_student(spec, kind, base, train_items, out / kind)
        rows_of[kind], figures = measure(spec, kind, model, heldout, agreement_items, teacher_top1)
        candidates.append({**figures, "train_seconds": trains[kind].get("seconds")})
        choose(candidates, spec.student.gate)  # marks which pass (the fallback runs only when none does)
    pick = choose(candidates, spec.student.gate)
    kind = pick["kind"]
    shutil.rmtree(out / "model", ignore_errors=True)
    (out / kind / "model").rename(out / "model")
    if scope_file is not None:
        shutil.copy(scope_file, out / "model" / SCOPE_FILE)
    for other in kinds + fallback:
        shutil.rmtree(out / other, ignore_errors=True)
    rows = rows_of[kind]
    summary = summarize(rows)
    baseline_rows, baseline_metrics = baseline.evaluate(spec, seed_items(spec, seeds, documents, "train"), heldout)
    promoted = {**pick["promotion"], "promoted": pick["passes"], "reason": pick["why"]}
    metrics = {**summary, "train": trains[kind], "trained_on": len(train_items), "filtered_out": int(len(labels) - len(items)),
               "teacher_agreement": pick["teacher_agreement"], "agreement_items": len(agreement_items),
               "docs_per_s": pick["docs_per_s"], "kind": kind, "layers": pick["layers"],
               "candidates": [{k: v for k, v in c.items() if k != "promotion"} for c in candidates],
               "promotion": promoted, "baseline": baseline_metrics,
               "warnings": baseline.below_baseline("student", summary, baseline_metrics, baseline.student_tips(spec))}
    rows = rows.assign(model="student")
    if len(baseline_rows):
        rows = pd.concat([rows, baseline_rows], ignore_index=True)
    rows["task"], rows["run_id"], rows["stage"] = spec.name, run_id, "student"
    outputs = {"student_eval": str(lake.write_parquet(rows, out / "student_eval.parquet")), "model": str(out / "model")}
    counts = {"trained_on": len(train_items), "heldout": len(heldout)}
    return lake.StageResult("student", run_id, outputs, counts, metrics, time.perf_counter() - started)
