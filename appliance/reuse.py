"""Reusing the last generation's DesiredState when nothing it was rendered from has changed.

Loading a site (ruamel, pydantic) and rendering it (jinja2) is most of what a no-op apply costs, and
its result depends only on what the load read (model/inputs.py: the site file, the variables and
files it names, the FRR version) and on the code that turns those into a DesiredState. A generation
records the names of those inputs and an HMAC over all of them, values included, and over that code
(inputs.json); when the inputs as they are now give the same HMAC, plan and apply take the
generation's DesiredState and neither load nor render. The drivers still read the running state
and diff against it, so drift is repaired exactly as after a full load.

The HMAC's key is random and this machine's own (generations.py: inputs.key, 0600): no secret is
in the record, and guessing a short PSK against it is impossible without that key.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from . import __version__
from .generations import StateDir
from .model.inputs import SiteInputs, read_inputs
from .model.problems import Problem
from .render.spec import DesiredState

PACKAGE_DIR = Path(__file__).resolve().parent
# The package's code that turns inputs into a DesiredState and reads one back (paths under
# PACKAGE_DIR): hashing only these, not the whole package, keeps a no-op apply from reading every
# source file it will never run (tests/unit/test_apply_reuse.py checks that a load and a render
# import nothing else of the package).
RENDERING_CODE = ("model", "render", "packages.py", "desired_json.py")
# Code outside the package that shapes a DesiredState: the YAML parser, the schema, the templates.
LIBRARIES = ("ruamel.yaml", "pydantic", "pydantic_core", "jinja2")


def _feed(h: Any, *parts: str | bytes) -> None:
    """Each part length-prefixed, so that no two different sequences of parts feed the same bytes."""
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)


@cache
def code_digest() -> str:
    """sha256 of the appliance's rendering code (sources, templates), the Python running it and the
    libraries it renders with (an upgrade rewrites a library's files: its __init__'s size and mtime)."""
    h = hashlib.sha256()
    for top in RENDERING_CODE:
        for path in _files_under(PACKAGE_DIR / top):
            _feed(h, path.relative_to(PACKAGE_DIR).as_posix(), path.read_bytes())
    _feed(h, sys.version)
    for name in LIBRARIES:
        try:
            spec = importlib.util.find_spec(name)
            st = os.stat(spec.origin) if spec is not None and spec.origin else None
        except (ImportError, OSError):
            spec, st = None, None
        _feed(h, name, f"{spec.origin} {st.st_size} {st.st_mtime_ns}" if spec and st else "absent")
    return h.hexdigest()


def _files_under(top: Path) -> list[Path]:
    """`top` itself when it is a file, else every file below it but bytecode, in a stable order."""
    if top.is_file():
        return [top]
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found += [Path(dirpath, name) for name in sorted(filenames)]
    return found


def input_key(inputs: SiteInputs, key: bytes) -> str:
    """HMAC-SHA256, under this machine's key, of every input of a rendering and of the code doing it."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    _feed(mac, "appliance", __version__, code_digest())
    _feed(mac, "site", inputs.site, inputs.raw)
    for name, value in sorted(inputs.env.items()):
        _feed(mac, "env", name, value)
    for path, (mode, data) in sorted(inputs.files.items()):
        _feed(mac, "file", path, str(mode), data)
    _feed(mac, "frr", "{}.{}".format(*inputs.frr_version))
    return mac.hexdigest()


def inputs_record(inputs: SiteInputs, warnings: list[Problem], key: bytes) -> dict[str, Any]:
    """What a generation keeps in inputs.json: the names and paths read (no values), their HMAC, and
    the load's warnings (printed again when the generation is reused)."""
    return {
        "site": inputs.site,
        "env": sorted(inputs.env),
        "files": sorted(inputs.files),
        "hmac": input_key(inputs, key),
        "warnings": [{k: v for k, v in asdict(w).items() if k != "file"} for w in warnings],
    }


@dataclass
class Reused:
    desired: DesiredState
    inputs: SiteInputs  # as read now: the same as the generation's
    warnings: list[Problem]


def reuse(state: StateDir, site: Path) -> Reused | None:
    """The current generation's DesiredState when `site`'s inputs are those it was rendered from;
    None when the site must be loaded. Raises SiteError where a load would (a bad secrets.env)."""
    try:
        current = state.current()
        key = state.inputs_key()
    except (OSError, ValueError):
        return None  # a full load meets the same state directory and says what is wrong with it
    record = current.inputs() if current is not None else None
    if record is None or key is None:
        return None
    try:
        if str(site.resolve()) != record["site"]:
            return None
        inputs = read_inputs(site, record["env"], record["files"])
        warnings = [Problem(str(site), **w) for w in record["warnings"]]
        recorded = str(record["hmac"]).encode()
    except (KeyError, TypeError):
        return None  # a damaged record
    if inputs is None or not hmac.compare_digest(input_key(inputs, key).encode(), recorded):
        return None
    desired = current.readable_desired()
    return Reused(desired, inputs, warnings) if desired is not None else None
