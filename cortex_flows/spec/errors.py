"""The one error a bad spec raises: every problem at once, each naming the field and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPEC_ERROR_EXIT = 2  # CLI exit code for an invalid spec (1 stays "the deploy itself failed")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a spec file.

    `path` is the field path, prefixed with the API's name (or `[index]` when the name is unusable), e.g.
    `iris-classifier.autoscaling.min_replicas`; it is empty for problems with the file as a whole.
    """

    path: str
    message: str

    def render(self, file: Path) -> str:
        """`<file>: <path>: <message>`, or `<file>: <message>` for file-level problems."""
        return f"{file}: {self.path}: {self.message}" if self.path else f"{file}: {self.message}"


class SpecError(Exception):
    """A spec file that cannot be deployed; `str()` gives one line per problem."""

    def __init__(self, file: Path, problems: list[Problem]) -> None:
        super().__init__(file, problems)  # keeps the error picklable, so it crosses Prefect task boundaries
        self.file = file
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(problem.render(self.file) for problem in self.problems)


def describe_value(value: object) -> str:
    """A YAML value as the user wrote it, for "got ..." in messages (`true`, `null`, `'abc'`, `a list`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)
