"""Errors raised by Distillery.

Bad *data* (a PDF, a seed row, a model answer) never raises in a long run: it becomes a recorded
outcome. These exceptions are for bad *inputs to a stage* (a spec, a seed file, a missing
artifact) and must pickle, since they cross Prefect and process boundaries.
"""

from __future__ import annotations


class DistilleryError(Exception):
    """Base class: a terminal error that retrying will not fix."""


class _Problems(DistilleryError):
    """An input with problems, all listed at once, each naming its field or row."""

    what = "input"

    def __init__(self, path: str, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s) in {self.what}\n{lines}")

    def __reduce__(self):
        return (type(self), (self.path, self.problems))


class SpecError(_Problems):
    """A task spec that does not validate."""

    what = "task spec"


class SeedError(_Problems):
    """A seed file with bad rows."""

    what = "seed file"


class StageInputMissing(DistilleryError):
    """A stage ran before the stage it reads from."""

    def __init__(self, stage: str, needs: str, hint: str):
        self.stage, self.needs, self.hint = stage, needs, hint
        super().__init__(f"stage {stage!r} needs {needs}: run `{hint}` first")

    def __reduce__(self):
        return (type(self), (self.stage, self.needs, self.hint))


class NotPromoted(DistilleryError):
    """No student has passed the promotion gate, so bulk labeling has no model to use by default."""

    def __init__(self, task: str, reason: str):
        self.task, self.reason = task, reason
        super().__init__(
            f"task {task!r}: no student has passed the promotion gate ({reason}). To label anyway with the latest "
            "student, say so: `make inbox STUDENT=latest` (or `python -m flows.bulk SPEC --student latest`; the "
            "choice is recorded in the run's lineage). To pass the gate: train the student longer or deeper "
            "(`student.sft`, `student.layers`), give it more teacher labels (`label.limit`), or lower `student.gate`.")

    def __reduce__(self):
        return (type(self), (self.task, self.reason))


class SpecPathError(DistilleryError):
    """A spec field pointing at a file or folder that is missing or unusable (a PDF source, a grader file)."""

    def __init__(self, field: str, value: str, problem: str, fix: str):
        self.field, self.value, self.problem, self.fix = field, str(value), problem, fix
        super().__init__(f"{field}: {self.value!r} {problem}: {fix}")

    def __reduce__(self):
        return (type(self), (self.field, self.value, self.problem, self.fix))


class TransientError(Exception):
    """A failure worth retrying (a worker lost, a timeout), kept apart from terminal errors."""
