"""keepalived: /etc/keepalived/keepalived.conf, checked with `keepalived -t` before it is installed.

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
from ..render.vrrp import KEEPALIVED_CONF_PATH
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
    write_rendered,
)

SERVICE = "keepalived"
SUBSYSTEM = "vrrp"


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
        return {KEEPALIVED_CONF_PATH}

    @staticmethod
    def _file(desired: DesiredState) -> RenderedFile | None:
        if desired.vrrp.config is None:
            return None
        return find_file(desired, KEEPALIVED_CONF_PATH) or RenderedFile(KEEPALIVED_CONF_PATH, desired.vrrp.config)

    def _ledger(self) -> dict[str, Any]:
        return self.ctx.ledger.section(SUBSYSTEM)

    def diff(self, desired: DesiredState) -> list[Change]:
        wanted = self._file(desired)
        active = self.services.is_active(SERVICE)
        if wanted is None:
            return self._removal(active)
        changes: list[Change] = []
        write = file_change(self.ctx, self.name, wanted)
        if write is not None:
            changes.append(write)
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
        if self.ctx.path(KEEPALIVED_CONF_PATH).exists():
            changes.append(
                Change(self.name, REMOVE, "file", KEEPALIVED_CONF_PATH, f"remove {KEEPALIVED_CONF_PATH}", payload=None)
            )
        if not changes:  # nothing left but the ledger entry
            changes.append(Change(self.name, REMOVE, "ledger", SERVICE, "forget keepalived", payload=("forget", None)))
        return changes

    def apply(self, changes: list[Change]) -> None:
        for c in changes:
            if c.kind == "file" and c.action != REMOVE:
                self.config_test(c.payload.content)  # nothing is installed when keepalived rejects it
                self.ctx.ledger.section(SUBSYSTEM)["configured"] = True  # write-ahead
                self.ctx.ledger.save()
                write_rendered(self.ctx, c.payload)
        for c in changes:
            if c.kind == "daemon":
                self._daemon(c.payload[0], c.payload[1])
        for c in changes:
            if c.kind == "file" and c.action == REMOVE:
                self.ctx.path(KEEPALIVED_CONF_PATH).unlink(missing_ok=True)
        if any(c.action == REMOVE for c in changes):
            self.ctx.ledger.replace_section(SUBSYSTEM, {})

    def _daemon(self, verb: str, wanted: RenderedFile | None) -> None:
        try:
            getattr(self.services, verb)(SERVICE)
        except Exception as e:
            raise DriverError(self.name, f"cannot {verb} keepalived", str(e)) from None
        if wanted is not None:
            self.ctx.ledger.replace_section(SUBSYSTEM, {"configured": True, "loaded": config_hash(wanted.content)})

    def verify(self, desired: DesiredState) -> None:
        left = [c.description for c in self.diff(desired)]
        if left:
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {
            "files": file_snapshot(self.ctx, [KEEPALIVED_CONF_PATH]),
            "active": self.services.is_active(SERVICE),
            "ledger": dict(self._ledger()),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        changed = file_snapshot(self.ctx, [KEEPALIVED_CONF_PATH]) != snapshot["files"]
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
