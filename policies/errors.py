"""Errors raised by the policies package; `PolicyError` is the root."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PolicyError(Exception):
    """Root of every error this package raises."""


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with (or worth a warning in) a policy document, and where it is."""

    path: str  # dotted, e.g. resources.default.max_cpus; "" for the whole document
    message: str
    line: int | None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path + ': ' if self.path else ''}{self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "path": self.path, "message": self.message}


class InvalidPolicy(PolicyError):
    """A policy document that does not validate; nothing is changed."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "the policy is not valid"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)

    @property
    def message(self) -> str:
        return str(self)

    @property
    def line(self) -> int | None:
        return self.problems[0].line if self.problems else None
