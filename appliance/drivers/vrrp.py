"""keepalived: /etc/keepalived/keepalived.conf, checked with `keepalived -t` before it is installed,
and the tunnel check script its groups with `track_tunnel` run.

keepalived re-reads its file on SIGHUP (`ctx.services.reload`), keeping the state of instances
whose configuration did not change. The ledger remembers that the appliance configured keepalived
and the hash of the config keepalived last loaded: a site without VRRP groups stops only a
keepalived the appliance started, and a file written but never loaded (a crash between the two)
is still reloaded by the next apply.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from ..render.spec import DesiredState, RenderedFile
from ..render.vrrp import (
    KEEPALIVED_CONF_PATH,
    STATES_SCRIPT_PATH,
    TUNNEL_CHECK_PATH,
    render_vrrp_files,
    vrrp_paths,
)
from .base import (
    CHANGE,
    CREATE,
    REMOVE,
    Change,
    Context,
    DriverError,
    file_change,
    file_restore,
    file_snapshot,
    find_file,
    service_call,
    write_rendered,
)

SERVICE = "keepalived"
SUBSYSTEM = "vrrp"
PATHS = (KEEPALIVED_CONF_PATH, STATES_SCRIPT_PATH, TUNNEL_CHECK_PATH)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keepalived_config_test(config: str) -> None:
    """Raise DriverError with keepalived's own words when `keepalived -t` rejects `config`.

    keepalived >= 2.0 exits non-zero on any error, including an interface that does not exist.
    """
    binary = shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")
    if binary is None:
        raise DriverError(SUBSYSTEM, "keepalived is not installed (apt-get install keepalived)")
    fd, candidate = tempfile.mkstemp(prefix="keepalived-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(config)
        # keepalived exits 0 on a missing file: the candidate always exists here.
        proc = subprocess.run([binary, "-t", "-f", candidate], capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.unlink(candidate)
    if proc.returncode != 0:
        out = (proc.stderr + proc.stdout).replace(candidate, KEEPALIVED_CONF_PATH)
        raise DriverError(SUBSYSTEM, f"keepalived -t rejects the configuration (exit {proc.returncode})", out)


class VrrpDriver:
    name = SUBSYSTEM

    def __init__(self, ctx: Context, config_test: Callable[[str], None] = keepalived_config_test) -> None:
        self.ctx, self.services, self.config_test = ctx, ctx.services, config_test

    def claims(self, desired: DesiredState) -> set[str]:
        return set(PATHS)

    @staticmethod
    def _files(desired: DesiredState) -> list[RenderedFile]:
        """keepalived.conf first, then its state reader, then the tunnel check when a group tracks the tunnel."""
        files = [find_file(desired, path) for path in vrrp_paths(desired.vrrp)]
        if None in files:  # a desired state without them: render them (templates, so only then jinja2)
            files = [f or rendered for f, rendered in zip(files, render_vrrp_files(desired.vrrp), strict=True)]
        return files

    def _ledger(self) -> dict[str, Any]:
        return self.ctx.ledger.section(SUBSYSTEM)

    def diff(self, desired: DesiredState) -> list[Change]:
        files = self._files(desired)
        active = self.services.is_active(SERVICE)
        if not files:
            return self._removal(active)
        wanted = files[0]
        changes: list[Change] = [c for c in (file_change(self.ctx, self.name, f) for f in files) if c is not None]
        write = next((c for c in changes if c.name == KEEPALIVED_CONF_PATH), None)
        tracked = any(f.path == TUNNEL_CHECK_PATH for f in files)
        if not tracked and self._ledger().get("configured") and self.ctx.path(TUNNEL_CHECK_PATH).exists():
            changes.append(
                Change(self.name, REMOVE, "file", TUNNEL_CHECK_PATH, f"remove {TUNNEL_CHECK_PATH}", payload=None)
            )
        if not active:
            changes.append(Change(self.name, CREATE, "daemon", SERVICE, "start keepalived", payload=("start", wanted)))
        elif write is not None or self._ledger().get("loaded") != config_hash(wanted.content):
            changes.append(
                Change(self.name, CHANGE, "daemon", SERVICE, "reload keepalived (SIGHUP)", payload=("reload", wanted))
            )
        return changes

    def _removal(self, active: bool) -> list[Change]:
        """The site has no VRRP group: undo only what the ledger says the appliance did."""
        if not self._ledger().get("configured"):
            return []
        changes = []
        if active:
            changes.append(
                Change(
                    self.name,
                    REMOVE,
                    "daemon",
                    SERVICE,
                    "stop keepalived (the site has no VRRP group)",
                    disruptive=True,
                    payload=("stop", None),
                )  # fmt: skip
            )
        for path in PATHS:
            if self.ctx.path(path).exists():
                changes.append(Change(self.name, REMOVE, "file", path, f"remove {path}", payload=None))
        if not changes:  # nothing left but the ledger entry
            changes.append(Change(self.name, REMOVE, "ledger", SERVICE, "forget keepalived", payload=("forget", None)))
        return changes

    def apply(self, changes: list[Change]) -> None:
        writes = [c for c in changes if c.kind == "file" and c.action != REMOVE]
        if writes:
            self.ctx.ledger.section(SUBSYSTEM)["configured"] = True  # write-ahead
            self.ctx.ledger.save()
        # The scripts first: keepalived -t disables a script it cannot find. Then keepalived.conf,
        # only once keepalived accepts it.
        for c in sorted(writes, key=lambda c: c.name == KEEPALIVED_CONF_PATH):
            if c.name == KEEPALIVED_CONF_PATH:
                self.config_test(c.payload.content)  # nothing of it is installed when keepalived rejects it
            write_rendered(self.ctx, c.payload)
        for c in changes:
            if c.kind == "daemon":
                self._daemon(c.payload[0], c.payload[1])
        for c in changes:
            if c.kind == "file" and c.action == REMOVE:
                self.ctx.path(c.name).unlink(missing_ok=True)
        if any(c.action == REMOVE and c.name != TUNNEL_CHECK_PATH for c in changes):  # keepalived is gone
            self.ctx.ledger.replace_section(SUBSYSTEM, {})

    def _daemon(self, verb: str, wanted: RenderedFile | None) -> None:
        service_call(self.services, self.name, verb, SERVICE)
        if wanted is not None:
            self.ctx.ledger.replace_section(SUBSYSTEM, {"configured": True, "loaded": config_hash(wanted.content)})

    def verify(self, desired: DesiredState) -> None:
        left = [c.description for c in self.diff(desired)]
        if left:
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {
            "files": file_snapshot(self.ctx, PATHS),
            "active": self.services.is_active(SERVICE),
            "ledger": dict(self._ledger()),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        changed = file_snapshot(self.ctx, [KEEPALIVED_CONF_PATH]) != {
            KEEPALIVED_CONF_PATH: snapshot["files"].get(KEEPALIVED_CONF_PATH)
        }
        file_restore(self.ctx, snapshot["files"])
        active = self.services.is_active(SERVICE)
        try:
            if not snapshot["active"]:
                if active:
                    self.services.stop(SERVICE)
            elif not active:
                self.services.start(SERVICE)
            elif changed:
                self.services.reload(SERVICE)
        except Exception as e:
            raise DriverError(self.name, "cannot restore keepalived", str(e)) from None
        self.ctx.ledger.replace_section(SUBSYSTEM, snapshot["ledger"])
