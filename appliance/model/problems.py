"""Errors that point into a user's file: `Problem` (file, line, column, dotted path, message) and
`SiteError`, which carries all of them so the user sees every mistake at once, netplan-style:
`FILE:LINE:COL: path: message`, the source line, and a caret under the column.

Apart from the YAML loader (loader.py), which needs ruamel and pydantic: code that only reports or
re-prints problems need not import either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int


def dotted(path: Sequence[PathPart]) -> str:
    """('dmvpn', 'nhrp', 'nhs', 0, 'nbma') -> 'dmvpn.nhrp.nhs[0].nbma'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


@dataclass(frozen=True)
class Problem:
    """One error or warning, located in a source file (line and col are 1-based)."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"
    source_line: str | None = None

    def headline(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.path}: {self.message}"

    def format(self) -> str:
        """The headline, then the source line and a caret under the column."""
        if self.source_line is None:
            return self.headline()
        caret = " " * (max(self.col, 1) - 1) + "^"
        return f"{self.headline()}\n    {self.source_line}\n    {caret}"


class SiteError(Exception):
    """One or more errors in a user's file. str() is the full, formatted report."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(p.format() for p in self.problems))
