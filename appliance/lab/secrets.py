"""The lab's secrets: one random value per `{env: NAME}` the router sites use, kept once per lab.

Values go to STATE/secrets.env (0600) on the host and, through the exec channel's stdin (never a
command line), to each router node's /etc/appliance/secrets.env (0600), where `appliance apply`
reads them like on a box. A node may override a value in the topology (`env: {OSPF_KEY: wrong}`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..model.inputs import read_secrets_env
from ..model.validate import OSPF_MD5_MAX
from ..redact import Redactor
from .topology import RouterNode, Topology

SECRET_LENGTH = 32


def env_references(data: Any, path: tuple = ()) -> Iterator[tuple[str, tuple]]:
    """(NAME, path) for every `{env: NAME}` in a parsed site file."""
    if isinstance(data, dict):
        if set(data) == {"env"} and isinstance(data["env"], str):
            yield data["env"], path
            return
        for key, value in data.items():
            yield from env_references(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from env_references(value, (*path, i))


def _random_value(path: tuple) -> str:
    # OSPF MD5 keys have at most 16 bytes; everything else gets 32 random characters (PSKs need 20+)
    length = OSPF_MD5_MAX if "ospf" in path else SECRET_LENGTH
    return secrets.token_hex(length // 2)


def lab_secrets(topology: Topology, state: Path) -> dict[str, str]:
    """The lab-wide values, generated on first use and kept in STATE/secrets.env (0600)."""
    file = state / "secrets.env"
    values = read_secrets_env(file)
    changed = False
    for name in topology.routers():
        for env, path in env_references(topology.sites[name].document.data):
            if env not in values:
                values[env] = _random_value(path)
                changed = True
    if changed:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in sorted(values.items()))
    return values


def node_secrets(topology: Topology, node: str, values: Mapping[str, str]) -> dict[str, str]:
    spec = topology.nodes[node]
    assert isinstance(spec, RouterNode)
    return {**values, **spec.env}


def secrets_env_text(values: Mapping[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in sorted(values.items()))


def redactor(topology: Topology, values: Mapping[str, str]) -> Redactor:
    every = set(values.values())
    for name in topology.routers():
        every |= set(node_secrets(topology, name, values).values())
    return Redactor(every)
