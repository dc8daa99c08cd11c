"""Errors the daemon's parts raise at operators; the control plane maps each to a gRPC code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file or request: where, which key, and what to do about it."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class OracleError(Exception):
    """Base class: the message is written for an operator."""


class InvalidArgument(OracleError):
    def __init__(self, problems: list[Problem] | Problem | str, field: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem("request", field, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class NotFound(OracleError):
    pass


class AlreadyExists(OracleError):
    pass


class FailedPrecondition(OracleError):
    pass


class Unavailable(OracleError):
    pass
