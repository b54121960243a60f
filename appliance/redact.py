"""The one place secrets are taken out of output: plan, apply messages, errors, JSON.

Two nets: every known secret value (DesiredState.secrets), in plain and JSON-escaped form, and
the lines that carry a secret by syntax (FRR keys, swanctl `secret =`, keepalived `auth_pass`),
so a secret nobody listed (an old value in a diff of the running config) is still hidden.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"

# keyword followed by its secret, as FRR, strongSwan and keepalived print them
_SECRET_SYNTAX = [
    re.compile(r"(message-digest-key \d+ md5 )(\S+)"),
    re.compile(r"(ip ospf authentication-key )(\S+)"),
    re.compile(r"(\bpassword )(\S+)"),
    re.compile(r"(ip nhrp authentication )(\S+)"),
    re.compile(r"(\bsecret\s*=\s*)(\"(?:[^\"\\]|\\.)*\"|\S+)"),
    re.compile(r"(\bauth_pass\s+)(\S+)"),
    re.compile(r"(\"data\":\s*)(\"(?:[^\"\\]|\\.)*\")"),
]


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s:
                continue
            forms.add(s)
            forms.add(json.dumps(s)[1:-1])  # as it appears inside JSON output
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: a secret may contain another

    def text(self, text: str) -> str:
        for s in self._forms:
            text = text.replace(s, REDACTED)
        for pattern in _SECRET_SYNTAX:
            text = pattern.sub(lambda m: m.group(1) + (REDACTED if REDACTED not in m.group(2) else m.group(2)), text)
        return text

    def obj(self, value: Any) -> Any:
        """Redact every string inside dicts/lists (for --json output)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value
