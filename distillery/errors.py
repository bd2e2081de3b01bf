"""Errors raised by Distillery.

Bad *data* (a PDF, a seed row, a model answer) never raises in a long run: it becomes a recorded
outcome. These exceptions are for bad *inputs to a stage* (a spec, a seed file, a missing
artifact) and must pickle, since they cross Prefect and process boundaries.
"""

from __future__ import annotations


class DistilleryError(Exception):
    """Base class: a terminal error that retrying will not fix."""


class SpecError(DistilleryError):
    """A task spec that does not validate; lists every problem at once."""

    def __init__(self, path: str, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s) in task spec\n{lines}")

    def __reduce__(self):
        return (type(self), (self.path, self.problems))


class SeedError(DistilleryError):
    """A seed file with bad rows; lists every problem at once, each naming the row."""

    def __init__(self, path: str, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s) in seed file\n{lines}")

    def __reduce__(self):
        return (type(self), (self.path, self.problems))


class StageInputMissing(DistilleryError):
    """A stage ran before the stage it reads from."""

    def __init__(self, stage: str, needs: str, hint: str):
        self.stage, self.needs, self.hint = stage, needs, hint
        super().__init__(f"stage {stage!r} needs {needs}: run `{hint}` first")

    def __reduce__(self):
        return (type(self), (self.stage, self.needs, self.hint))


class TransientError(Exception):
    """A failure worth retrying (a worker lost, a timeout), kept apart from terminal errors."""
