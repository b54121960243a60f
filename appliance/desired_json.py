"""DesiredState <-> JSON, so that a generation can be re-applied without re-reading its sources.

A generation stores the state exactly as it was applied (secrets included, hence 0600 in a
0700 directory): `rollback` must restore it even when the site file, its secret files or the
environment have changed since.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .render import spec
from .render.spec import DesiredState


def to_data(value: Any) -> Any:
    """Dataclasses -> dicts, tuples/frozensets -> lists (sorted for sets), recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted(to_data(v) for v in value)
    if isinstance(value, list | tuple):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    return value


def _from_data(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if data is None:
            return None
        return _from_data(members[0], data) if len(members) == 1 else data
    if origin is tuple:
        (item, *_rest) = typing.get_args(hint)
        return tuple(_from_data(item, v) for v in data)
    if origin is frozenset:
        (item,) = typing.get_args(hint)
        return frozenset(_from_data(item, v) for v in data)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint, vars(spec))
        return hint(**{k: _from_data(hints[k], v) for k, v in data.items()})
    return data


def from_data(data: dict[str, Any]) -> DesiredState:
    return _from_data(DesiredState, data)
