"""What every driver shares: the protocol, `Change` records, `DriverError`, the ledger, files.

A driver owns one subsystem. It observes the running state, diffs it against the desired state
(spec.py), applies a list of changes, verifies, and can snapshot/restore what it touches. The
engine alone knows the order; drivers never import each other.
"""

from __future__ import annotations

import base64
import difflib
import grp
import json
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import boxkey
from ..files import atomic_write
from ..render.spec import DesiredState, RenderedFile

CREATE, CHANGE, REMOVE = "create", "change", "remove"


class DriverError(Exception):
    """One error type for every driver: which subsystem, what failed, and the daemon's own words."""

    def __init__(self, subsystem: str, message: str, output: str = "") -> None:
        self.subsystem, self.message, self.output = subsystem, message, output.strip()
        super().__init__(f"{subsystem}: {message}" + (f": {self.output}" if self.output else ""))


@dataclass
class Change:
    """One planned change. `detail` may hold secrets: every output goes through redact.py."""

    subsystem: str
    action: str  # create | change | remove
    kind: str  # link, address, route, file, connection, daemon, ...
    name: str
    description: str
    detail: str = ""
    disruptive: bool = False  # restarts a daemon, recreates a link or reloads an IPsec connection
    payload: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subsystem": self.subsystem,
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
            "detail": self.detail,
            "disruptive": self.disruptive,
        }


class ServiceControl(Protocol):
    """The part of appliance.services.ServiceManager drivers use."""

    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def reload(self, name: str) -> None: ...
    def is_active(self, name: str) -> bool: ...
    def main_pid(self, name: str) -> int | None: ...
    def enable(self, name: str) -> None: ...
    def disable(self, name: str) -> None: ...
    def is_enabled(self, name: str) -> bool: ...


def service_call(services: ServiceControl, subsystem: str, verb: str, unit: str) -> None:
    """services.<verb>(unit); a failure becomes a DriverError carrying the service manager's words."""
    try:
        getattr(services, verb)(unit)
    except Exception as e:
        raise DriverError(subsystem, f"cannot {verb} {unit}", str(e)) from None


class Ledger:
    """What the appliance created (`/var/lib/appliance/ledger.json`, 0600): one section per driver.

    Drivers record an object *before* creating it (write-ahead), so a kill -9 between the two
    leaves an entry for an object that may not exist, never an object nobody owns.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.data = {}
        except json.JSONDecodeError as e:
            raise DriverError("ledger", f"{self.path} is not valid JSON ({e}); move it aside to start over") from None

    def fingerprint(self, data: bytes, create: bool = False) -> str | None:
        """What the ledger records of a secret it must recognise but not hold: an HMAC under the
        box's key (boxkey.py) in the ledger's directory; None without a key (it then matches
        nothing: the secret is loaded again). `create` is for a writer holding the apply lock."""
        key = boxkey.read_key(self.path.parent, create)
        return None if key is None else boxkey.fingerprint(key, data)

    def section(self, name: str) -> dict[str, Any]:
        return self.data.setdefault(name, {})

    def replace_section(self, name: str, value: dict[str, Any]) -> None:
        self.data[name] = json.loads(json.dumps(value))
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n", mode=0o600)


@dataclass
class Context:
    """What a driver gets from the engine: where files live, the ledger, services, a logger."""

    ledger: Ledger
    services: ServiceControl
    root: Path = Path("/")  # standing for /; tests point it at a temp dir
    log: Callable[[str], None] = lambda msg: None

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")


class Driver(Protocol):
    """One subsystem. Constructed as `Driver(ctx)`; the engine calls, in this order:
    diff (observe + compare, read-only), snapshot (before anything changes), apply, verify;
    restore(snapshot) when this or a later step failed."""

    name: str

    def claims(self, desired: DesiredState) -> set[str]:
        """Paths of DesiredState.files this driver writes (each file has exactly one owner)."""
        ...

    def diff(self, desired: DesiredState) -> list[Change]: ...
    def apply(self, changes: list[Change]) -> None: ...
    def verify(self, desired: DesiredState) -> None: ...
    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        """JSON-able record of what apply(desired) may touch, enough for restore()."""
        ...

    def restore(self, snapshot: dict[str, Any]) -> None: ...


# --- files ------------------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def file_snapshot(ctx: Context, paths: Iterable[str]) -> dict[str, Any]:
    """Content, mode and owner of each path (None when absent), JSON-able for a 0600 record."""
    snap: dict[str, Any] = {}
    for p in paths:
        target = ctx.path(p)
        try:
            st = target.stat()
        except FileNotFoundError:
            snap[p] = None
            continue
        snap[p] = {
            "content": base64.b64encode(target.read_bytes()).decode(),
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
    return snap


def file_restore(ctx: Context, snap: dict[str, Any]) -> None:
    for p, state in snap.items():
        target = ctx.path(p)
        if state is None:
            target.unlink(missing_ok=True)
            continue
        content = base64.b64decode(state["content"])
        if read_bytes(target) == content and stat.S_IMODE(target.stat().st_mode) == state["mode"]:
            continue
        atomic_write(target, content, state["mode"])
        if os.geteuid() == 0:
            os.chown(target, state["uid"], state["gid"])


def owner_ids(owner: str, group: str) -> tuple[int, int] | None:
    """uid/gid when both exist and we may chown (root), else None (tests as a user, no frr user)."""
    if os.geteuid() != 0:
        return None
    if (owner, group) not in _OWNER_IDS:
        try:
            _OWNER_IDS[owner, group] = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
        except KeyError:
            return None  # not remembered: the package that creates the user may be installed later
    return _OWNER_IDS[owner, group]


# Found users and groups (NSS lookups cost ~70 ms each under emulation; the supervisor asks each round).
_OWNER_IDS: dict[tuple[str, str], tuple[int, int]] = {}


def file_differs(ctx: Context, f: RenderedFile) -> str | None:
    """Why the file on disk is not `f` ('content', 'mode', 'owner', 'missing') or None."""
    target = ctx.path(f.path)
    current = read_bytes(target)
    if current is None:
        return "missing"
    if current != f.content.encode():
        return "content"
    st = target.stat()
    if stat.S_IMODE(st.st_mode) != f.mode:
        return "mode"
    ids = owner_ids(f.owner, f.group)
    if ids is not None and (st.st_uid, st.st_gid) != ids:
        return "owner"
    return None


def write_rendered(ctx: Context, f: RenderedFile) -> None:
    ids = owner_ids(f.owner, f.group)
    atomic_write(ctx.path(f.path), f.content, f.mode, f.owner if ids else None, f.group if ids else None)


def text_diff(old: str | None, new: str | None, name: str) -> str:
    """Unified diff of two texts (may contain secrets: redact before printing)."""
    a = [] if old is None else old.splitlines(keepends=True)
    b = [] if new is None else new.splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, f"{name} (running)", f"{name} (desired)", n=1)).rstrip("\n")


def file_change(ctx: Context, subsystem: str, f: RenderedFile, **extra: Any) -> Change | None:
    """A Change writing `f`, or None when the file on disk is already exactly `f`."""
    why = file_differs(ctx, f)
    if why is None:
        return None
    current = read_bytes(ctx.path(f.path))
    old = None if current is None else current.decode(errors="replace")
    action = CREATE if why == "missing" else CHANGE
    detail = text_diff(old, f.content, f.path) if why in ("missing", "content") else f"{why} differs"
    desc = f"write {f.path}" + ("" if why in ("missing", "content") else f" ({why})")
    return Change(subsystem, action, "file", f.path, desc, detail, payload=f, **extra)


def find_file(desired: DesiredState, path: str) -> RenderedFile | None:
    return next((f for f in desired.files if f.path == path), None)
