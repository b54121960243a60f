"""The README's site.yaml reference documents every field of the schema."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from appliance.model import schema

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
REFERENCE = README[README.index("## `site.yaml` reference") :]


def field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen or set()
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        names.add(name)
        for sub in re.findall(r"[A-Za-z]+", str(info.annotation)):
            cls = getattr(schema, sub, None)
            if isinstance(cls, type) and issubclass(cls, BaseModel) and cls not in seen | {schema.SecretRef}:
                seen.add(cls)
                names |= field_names(cls, seen)
    return names


def test_every_schema_field_is_in_the_reference() -> None:
    documented = {
        part.removesuffix("[]") for token in re.findall(r"`([a-z0-9_.\[\]]+)`", REFERENCE) for part in token.split(".")
    }
    missing = sorted(field_names(schema.Site) - documented)
    assert missing == []
