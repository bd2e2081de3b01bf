"""Graders: score a parsed answer against the gold answer, in [0, 1], with a short reason.

`ranked` is RFT's partial-credit grader (OpenPipe's analysis of OpenAI RFT): 1.0 when the right
label is first, 0.5 when second, 0 otherwise (weights configurable). `fields` gives field-level
credit for JSON extraction with typed normalization; `similarity` a fuzzy string score; `python` runs
a user's `grade(sample, item)` in a worker process under a time limit. A grader returns score None
for "cannot grade" (no gold) and 0.0 for "wrong"; it never raises on a model's output.
"""

from __future__ import annotations

import atexit
import difflib
import importlib.util
import math
import multiprocessing
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

from distillery.errors import SpecPathError
from distillery.prompts import Answer, format_answer, match_label, parse_answer
from distillery.spec import ExtractionOutput, FieldSpec, GraderSpec, TaskSpec


@dataclass(frozen=True)
class Grade:
    score: float | None
    reason: str


Grader = Callable[[Answer, Any], Grade]


def grade_ranked(answer: Answer, gold: str, weights: list[float]) -> Grade:
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    if gold in answer.ranked:
        pos = answer.ranked.index(gold)
        credit = weights[pos] if pos < len(weights) else 0.0
        return Grade(float(credit), f"right label at position {pos + 1}")
    return Grade(0.0, "right label not in the answer")


def _norm_text(s: Any) -> str:
    return " ".join(str(s).lower().split())


def grade_exact(answer: Answer, gold: Any) -> Grade:
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    got = answer.top if answer.value is None else answer.value
    if isinstance(gold, dict):
        same = got == gold
    else:
        same = _norm_text(got) == _norm_text(gold)
    return Grade(1.0 if same else 0.0, "exact match" if same else f"got {got!r}")


def similarity(got: Any, gold: Any) -> float:
    """Fuzzy string score in [0, 1] (difflib's ratio), ignoring case and runs of whitespace."""
    a, b = _norm_text(got), _norm_text(gold)
    return 1.0 if a == b else difflib.SequenceMatcher(None, a, b).ratio()


def grade_similarity(answer: Answer, gold: Any) -> Grade:
    """The top label against the gold label; for extraction, the mean over the gold's fields."""
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    if isinstance(gold, dict):
        got = answer.value or {}
        if not gold:
            return Grade(1.0 if not got else 0.0, "empty gold object")
        per = {k: similarity(got[k], v) if k in got else 0.0 for k, v in gold.items()}
        return Grade(sum(per.values()) / len(per), ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    score = similarity(answer.top or "", gold)
    return Grade(score, f"similarity {score:.2f} to {gold!r}")


# ---- python: a user's grade(sample, item), out of process, under a time limit ------------------

_user_grade: dict[str, Callable] = {}


class _NoGradeFunction(Exception):
    """A user's grader file that loads but defines no callable `grade`."""


def _load_user_grade(path: str) -> Callable:
    if path not in _user_grade:
        module_spec = importlib.util.spec_from_file_location("distillery_user_grader", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        grade = getattr(module, "grade", None)
        if not callable(grade):
            raise _NoGradeFunction(f"{path} defines no function grade(sample, item)")
        _user_grade[path] = grade
    return _user_grade[path]


GRADE_SIGNATURE = "def grade(sample, item) -> float, a score in [0, 1]"


def _check_user_grade(path: str) -> tuple[str, str] | None:
    """In the worker: load the file; None when it defines grade(), else (what is wrong, the fix)."""
    try:
        _load_user_grade(path)
        return None
    except _NoGradeFunction:
        return "defines no function grade(sample, item)", f"add `{GRADE_SIGNATURE}` to the file"
    except BaseException as err:  # noqa: BLE001 - the user's file may raise anything, SystemExit included
        return f"does not load ({type(err).__name__}: {err})", "fix the error in the file"


def _call_user_grade(path: str, sample: dict, item: dict) -> tuple[float | None, str]:
    """In the worker: (score, '') or (None, why). Never raises: the reason crosses the process boundary."""
    try:
        value = _load_user_grade(path)(sample, item)
    except BaseException as err:  # noqa: BLE001
        return None, f"grade() raised {type(err).__name__}: {err}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"grade() returned {value!r}, not a number"
    if not 0.0 <= value <= 1.0:
        return None, f"grade() returned {value!r}, outside [0, 1]"
    return float(value), ""


class PythonGrader:
    """`grade(sample, item) -> float` from a user's file, in one worker process, `timeout_s` per call.

    sample: {"output_text", "output_json" (extraction), "ranked", "top", "status"}; item: {"answer": gold}.
    An exception, a non-number, a score outside [0, 1] or a timeout scores 0 with the reason; a call
    that times out kills the worker, and the next call starts a fresh one. A file that does not load
    or defines no `grade` is refused when the grader is built: a SpecPathError naming `field`.
    """

    def __init__(self, path: str | Path, timeout_s: float = 5.0, *, field: str = "grader.path"):
        self.path, self.timeout_s = str(Path(path).resolve()), timeout_s
        if not Path(self.path).is_file():
            raise SpecPathError(field, self.path, "is not a file",
                                f"create it with `{GRADE_SIGNATURE}`, or set `{field}` to such a file")
        self._pool = None
        problem, why = self._run(_check_user_grade, (self.path,), max(timeout_s, 30.0))  # imports take a while
        if why:
            self.close()
            raise SpecPathError(field, self.path, f"did not load: {why}", "make importing the file quick")
        if problem:
            self.close()
            raise SpecPathError(field, self.path, *problem)

    def _run(self, fn, args, timeout: float):
        """fn(*args) in the worker: (result, '') or (None, why it did not finish)."""
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(1)
        job = self._pool.apply_async(fn, args)
        try:
            return job.get(timeout), ""
        except multiprocessing.TimeoutError:
            self.close()
            return None, f"timed out after {timeout:g}s"

    def __call__(self, answer: Answer, gold: Any) -> Grade:
        sample = {"output_text": answer.text, "output_json": answer.value, "ranked": list(answer.ranked),
                  "top": answer.top, "status": answer.status}
        out, why = self._run(_call_user_grade, (self.path, sample, {"answer": gold}), self.timeout_s)
        if out is None:
            return Grade(0.0, f"python grader {why}")
        score, why = out
        return Grade(0.0, f"python grader: {why}") if score is None else Grade(score, "python grader")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None


_python_graders: dict[tuple, PythonGrader] = {}


def python_grader(path: Path, timeout_s: float, *, field: str = "grader.path") -> PythonGrader:
    """One grader (one worker) per file and limit, reloaded when the file changes."""
    key = (str(path.resolve()), timeout_s, path.stat().st_mtime_ns if path.exists() else None)
    if key not in _python_graders:
        for old in [k for k in _python_graders if k[:2] == key[:2]]:  # the file changed: retire its worker
            _python_graders.pop(old).close()
        _python_graders[key] = PythonGrader(path, timeout_s, field=field)
    return _python_graders[key]


@atexit.register
def _close_python_graders() -> None:
    for grader in _python_graders.values():
        grader.close()


def _to_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v) if math.isfinite(v) else None
        except OverflowError:  # an int too large for a float
            return None
    cleaned = re.sub(r"[^\d.,-]", "", str(v))
    if cleaned.count(",") and cleaned.count("."):
        # the separator that comes last is the decimal one: 1,234.56 and 1.234,56
        if cleaned.rfind(",") > cleaned.rfind("."):
            cleaned = cleaned.replace(".", "").replace(",", ".")
        else:
            cleaned = cleaned.replace(",", "")
    elif cleaned.count(",") == 1 and len(cleaned.split(",")[1]) != 3:
        cleaned = cleaned.replace(",", ".")
    else:
        cleaned = cleaned.replace(",", "")
    try:
        x = float(cleaned)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y", "%Y/%m/%d")


def _to_date(v: Any) -> date | None:
    from datetime import datetime

    s = " ".join(str(v).split()).strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    return None


def field_matches(got: Any, gold: Any, fs: FieldSpec) -> bool:
    if got is None:
        return False
    if fs.type == "number":
        a, b = _to_number(got), _to_number(gold)
        return a is not None and b is not None and abs(a - b) <= fs.tolerance
    if fs.type == "date":
        a, b = _to_date(got), _to_date(gold)
        return a is not None and a == b
    return _norm_text(got) == _norm_text(gold)


def grade_fields(answer: Answer, gold: dict, fields: dict[str, FieldSpec]) -> Grade:
    """Mean per-field credit; keys outside the schema cost credit like a wrong field."""
    if not answer.ok or answer.value is None:
        return Grade(0.0, f"unparsable: {answer.error or 'no JSON'}")
    got = answer.value
    right = [name for name, fs in fields.items() if field_matches(got.get(name), gold.get(name), fs)]
    extra = [k for k in got if k not in fields]
    score = len(right) / (len(fields) + len(extra))
    wrong = [n for n in fields if n not in right]
    reason = f"{len(right)}/{len(fields)} fields right" + (f"; wrong: {', '.join(wrong)}" if wrong else "")
    return Grade(score, reason + (f"; extra keys: {', '.join(extra)}" if extra else ""))


def grade_format(answer: Answer, spec: TaskSpec) -> Grade:
    """1.0 when the answer parses and fits the schema, else 0."""
    if not answer.ok:
        return Grade(0.0, f"unparsable: {answer.error}")
    if isinstance(spec.output, ExtractionOutput):
        missing = [k for k in spec.output.fields if k not in (answer.value or {})]
        return Grade(0.0 if missing else 1.0, f"missing keys: {missing}" if missing else "fits the schema")
    return Grade(1.0 if answer.status == "ok" else 0.5, f"parse {answer.status}")


def build_grader(cfg: GraderSpec | dict, spec: TaskSpec, *, field: str = "grader") -> Grader:
    """A grader function `(answer, gold) -> Grade` from the spec's grader section (nestable); `field`
    is where `cfg` sits in the spec, for error messages."""
    cfg = cfg if isinstance(cfg, GraderSpec) else GraderSpec.model_validate(cfg)
    if cfg.type == "ranked":
        return lambda a, g: grade_ranked(a, g, cfg.weights)
    if cfg.type == "exact":
        return grade_exact
    if cfg.type == "similarity":
        return grade_similarity
    if cfg.type == "python":
        return python_grader(spec.path(cfg.path), cfg.timeout_s, field=f"{field}.path")
    if cfg.type == "fields":
        if not isinstance(spec.output, ExtractionOutput):
            raise ValueError("grader 'fields' needs output.kind: extraction")
        return lambda a, g: grade_fields(a, g, spec.output.fields)
    if cfg.type == "format":
        return lambda a, g: grade_format(a, spec)
    parts = [(build_grader(c["grader"], spec, field=f"{field}.components.{i}.grader"), float(c.get("weight", 1.0)))
             for i, c in enumerate(cfg.components)]

    def multi(a: Answer, g: Any) -> Grade:
        grades = [(grader(a, g), w) for grader, w in parts]
        scored = [(gr.score, w) for gr, w in grades if gr.score is not None]
        if not scored:
            return Grade(None, "no component could grade")
        total = sum(w for _, w in scored) or 1.0  # a component that cannot grade is left out, not scored 0
        return Grade(sum(s * w for s, w in scored) / total, "; ".join(gr.reason for gr, _ in grades))

    return multi


def component_names(cfg: GraderSpec) -> list[str]:
    """Names of a `multi` grader's components, `grader_<i>_<type>` (the reward names GRPO logs)."""
    if cfg.type != "multi":
        return []
    return [f"grader_{i}_{c['grader'].get('type', 'unknown')}" for i, c in enumerate(cfg.components)]


def grade_gold(gold: Any, spec: TaskSpec) -> Any:
    """Normalise a gold answer from a seed row: a label for classification, a dict for extraction."""
    if isinstance(spec.output, ExtractionOutput):
        return gold
    return match_label(str(gold), spec.output.labels) or gold


def score_completions(completions: list[str], golds: list[Any], spec: TaskSpec, *, prefilled: bool = True) -> list[Grade]:
    grader = build_grader(spec.grader, spec)
    out = []
    for text, gold in zip(completions, golds):
        if gold is None:
            out.append(Grade(None, "no gold answer"))
            continue
        out.append(grader(parse_answer(text, spec, prefilled=prefilled), gold))
    return out


def _corruptions(gold: Any, spec: TaskSpec) -> dict[str, str]:
    """Answers a working grader must score below gold, as completions after the `Answer:` prefill."""
    bad = {"unparsable": " I am not sure about this one."}
    if isinstance(spec.output, ExtractionOutput):
        name = next(iter(spec.output.fields))
        changed = dict(gold, **{name: f"{gold.get(name)}-wrong"})
        bad["wrong_field"] = format_answer(changed)
        bad["missing_field"] = format_answer({k: v for k, v in gold.items() if k != name})
        return bad
    others = [label for label in spec.output.labels if label != gold]
    bad["wrong_label"] = format_answer(others[: spec.output.top_k])
    bad["shuffled_rank"] = format_answer([others[0], gold, *others[1: spec.output.top_k - 1]])
    return bad


def validate_grader(spec: TaskSpec, golds: list[Any]) -> tuple[list[dict], bool]:
    """Grade each gold answer and its corruptions. Ok when gold scores 1.0 and every corruption less."""
    golds = [grade_gold(g, spec) for g in golds]
    completions: dict[str, list[str]] = {"gold": [format_answer([g] if isinstance(g, str) else g) for g in golds]}
    for gold in golds:
        for kind, text in _corruptions(gold, spec).items():
            completions.setdefault(kind, []).append(text)
    scores = {kind: [g.score or 0.0 for g in score_completions(texts, golds, spec)] for kind, texts in completions.items()}
    table = [{"answer": kind, "n": len(v), "mean": sum(v) / len(v), "max": max(v)} for kind, v in scores.items()]
    gold_ok = all(s == 1.0 for s in scores["gold"])
    separated = all(row["max"] < 1.0 for row in table if row["answer"] != "gold")
    return table, gold_ok and separated
