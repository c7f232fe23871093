"""What is wrong with a data folder: one `Problem` per finding, and the error that carries them.

Shared by the readers (`features.table_files`), the contract checks (`features.validation`), the
importer and loading (`features.io`), so none of them needs another to say what went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"

# DataValidationError's message lists this many problems, then "... and N more".
MAX_MESSAGE_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. `row` is the 0-based data row in the file (header excluded)."""

    table: str  # "" for problems with the data folder itself
    column: str | None
    row: int | None
    reason: str
    severity: str = ERROR  # or WARNING

    def __str__(self) -> str:
        where = self.table or "data folder"
        if self.column is not None:
            where += f".{self.column}"
        if self.row is not None:
            where += f" row {self.row}"
        return f"{where}: {self.reason}"


class DataValidationError(ValueError):
    """The data breaks the contract; `.problems` lists everything found (errors and warnings)."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        super().__init__(format_problems(self.problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]


def format_problems(problems: list[Problem], limit: int = MAX_MESSAGE_PROBLEMS) -> str:
    """A readable report: a count line, then errors before warnings, at most `limit` lines."""
    errors = [p for p in problems if p.severity == ERROR]
    others = [p for p in problems if p.severity != ERROR]
    ordered = errors + others
    lines = [f"{len(errors)} error(s) and {len(others)} warning(s) in the data:"]
    lines += [f"  {p}" if p.severity == ERROR else f"  {p.severity}: {p}" for p in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"  ... and {len(ordered) - limit} more")
    return "\n".join(lines)


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(p.severity == ERROR for p in problems)
