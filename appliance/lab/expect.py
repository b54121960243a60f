"""Polling until state matches, like FRR topotests' `run_and_expect` with a JSON subset match.

`json_subset(expected, actual)` is None when every key and value of `expected` is found in
`actual` (dicts recursively; each expected list item matches a distinct actual item, in any
order; an expected None means "this key must be absent"), else a one-line description of the first
mismatch. `run_and_expect` polls a function until the match holds; on timeout it raises
ExpectTimeout with the last value seen, so a failing test shows what the state really was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ExpectTimeout(AssertionError):
    """The awaited state did not come; the message carries the last value and why it did not match."""


def json_subset(expected: Any, actual: Any, path: str = "$") -> str | None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{path}: expected an object, got {_short(actual)}"
        for key, want in expected.items():
            if want is None:
                if key in actual:
                    return f"{path}.{key}: expected absent, got {_short(actual[key])}"
                continue
            if key not in actual:
                return f"{path}.{key}: missing (keys: {', '.join(map(str, actual)) or 'none'})"
            problem = json_subset(want, actual[key], f"{path}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{path}: expected a list, got {_short(actual)}"
        unused = list(range(len(actual)))
        for i, want in enumerate(expected):
            match = next((j for j in unused if json_subset(want, actual[j]) is None), None)
            if match is None:
                return f"{path}[{i}]: no item matches {_short(want)}"
            unused.remove(match)
        return None
    if expected != actual:
        return f"{path}: expected {_short(expected)}, got {_short(actual)}"
    return None


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def run_and_expect(
    func: Callable[[], T],
    expected: Any | Callable[[T], bool],
    timeout: float = 60,
    interval: float = 2,
    what: str = "",
) -> T:
    """Call func until its result contains `expected` (JSON subset) or `expected(result)` is true.

    Exceptions from func count as "not yet" (a daemon still starting), and are reported if the
    wait runs out. Returns the matching result.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    why = "never called"
    while True:
        try:
            last = func()
            if callable(expected):
                why = None if expected(last) else "predicate false"
            else:
                why = json_subset(expected, last)
        except Exception as e:  # noqa: BLE001 - "not yet"; reported below if it persists
            last, why = None, f"{type(e).__name__}: {e}"
        if why is None:
            return last
        if time.monotonic() >= deadline:
            raise ExpectTimeout(
                f"{what or 'condition'} not met within {timeout:.0f} s: {why}\nlast value: {_short(last, 2000)}"
            )
        time.sleep(interval)
