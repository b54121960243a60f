"""Hostname, sysctls (live in /proc/sys and persistent in /etc/sysctl.d), daemons enabled at boot.

Three drivers, because they run at three points of the order: `SystemDriver` first (hostname,
global keys), `InterfaceSysctlDriver` after netlink (per-interface keys exist only once the
interface does), `ServicesDriver` last (enable the daemons the site uses at boot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..render.spec import DesiredState, RenderedFile
from ..render.sysctl import SYSCTL_PATH
from ..render.timesync import TIMESYNCD_PATH
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

HOSTNAME_PATH = "/etc/hostname"
TIMESYNCD_UNIT = "systemd-timesyncd"
STARTER_UNIT = "strongswan-starter"
# The running hostname (of this UTS namespace): what sethostname(2) sets, read and written through
# ctx.root so that an apply into a root directory never renames the machine it runs on.
KERNEL_HOSTNAME = "/proc/sys/kernel/hostname"
_IFACE_PREFIXES = ("net.ipv4.conf.", "net.ipv6.conf.")
_NOT_INTERFACES = ("all", "default")


def is_interface_key(key: str) -> bool:
    """net.ipv4.conf.<ifname>.* (not all/default): it exists only once the interface does."""
    for prefix in _IFACE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :].split(".", 1)[0] not in _NOT_INTERFACES
    return False


def proc_path(key: str) -> str:
    """net.ipv4.conf.eth0/1.rp_filter -> /proc/sys/net/ipv4/conf/eth0.1/rp_filter."""
    return "/proc/sys/" + "/".join(part.replace("/", ".") for part in key.split("."))


class _SysctlKeys:
    """Reading and writing keys under /proc/sys (through ctx.root so tests can fake /proc/sys)."""

    def __init__(self, ctx: Context, subsystem: str) -> None:
        self.ctx, self.subsystem = ctx, subsystem

    def read(self, key: str) -> str | None:
        """The key's value, whitespace normalised; None when it does not exist (yet)."""
        try:
            return " ".join(self.ctx.path(proc_path(key)).read_text().split())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DriverError(self.subsystem, f"cannot read {key}", e.strerror or str(e)) from None

    def write(self, key: str, value: str) -> None:
        p = self.ctx.path(proc_path(key))
        try:
            p.write_text(value + "\n")
        except OSError as e:
            raise DriverError(self.subsystem, f"cannot set {key} = {value}", e.strerror or str(e)) from None

    def changes(self, wanted: dict[str, str]) -> list[Change]:
        out = []
        for key, value in sorted(wanted.items()):
            current = self.read(key)
            if current == " ".join(value.split()):
                continue
            note = " (after the interface exists)" if current is None else f" (was {current})"
            out.append(
                Change(
                    self.subsystem, CHANGE, "sysctl", key, f"set {key} = {value}{note}", payload=("sysctl", key, value)
                )
            )
        return out


class SystemDriver:
    name = "system"

    def __init__(
        self,
        ctx: Context,
        hostname_setter: Callable[[str], None] | None = None,
        hostname_getter: Callable[[], str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.keys = _SysctlKeys(ctx, self.name)
        self._set_hostname = hostname_setter or self._write_kernel_hostname
        self._get_hostname = hostname_getter or self._read_kernel_hostname

    def _read_kernel_hostname(self) -> str:
        return self.ctx.path(KERNEL_HOSTNAME).read_text().strip()

    def _write_kernel_hostname(self, name: str) -> None:
        try:
            self.ctx.path(KERNEL_HOSTNAME).write_text(name)
        except OSError as e:
            raise DriverError(self.name, f"cannot set the hostname to {name}", e.strerror or str(e)) from None

    def claims(self, desired: DesiredState) -> set[str]:
        return {HOSTNAME_PATH, SYSCTL_PATH, TIMESYNCD_PATH}

    def _files(self, desired: DesiredState) -> list[RenderedFile]:
        # The sysctl.d file and the timesyncd drop-in are rendered: written only when the state has them.
        rendered = [f for f in (find_file(desired, SYSCTL_PATH), find_file(desired, TIMESYNCD_PATH)) if f]
        return [RenderedFile(HOSTNAME_PATH, desired.hostname + "\n"), *rendered]

    def diff(self, desired: DesiredState) -> list[Change]:
        changes = []
        current = self._get_hostname()
        if current != desired.hostname:
            changes.append(
                Change(
                    self.name,
                    CHANGE,
                    "hostname",
                    desired.hostname,
                    f"set hostname {desired.hostname} (was {current})",
                    payload=("hostname", desired.hostname),
                )  # fmt: skip
            )
        for f in self._files(desired):
            c = file_change(self.ctx, self.name, f)
            if c:
                changes.append(c)
        if find_file(desired, TIMESYNCD_PATH) is None and self.ctx.path(TIMESYNCD_PATH).exists():
            # the drop-in's name is ours: the site no longer names NTP servers
            changes.append(Change(self.name, REMOVE, "file", TIMESYNCD_PATH, f"remove {TIMESYNCD_PATH}"))
        changes += self.keys.changes({k: v for k, v in desired.sysctl.items() if not is_interface_key(k)})
        return changes

    def apply(self, changes: list[Change]) -> None:
        for c in changes:
            if c.kind == "file" and c.action == REMOVE:
                self.ctx.path(c.name).unlink(missing_ok=True)
            elif c.kind == "file":
                write_rendered(self.ctx, c.payload)
            elif c.kind == "hostname":
                self._set_hostname(c.payload[1])
            elif c.kind == "sysctl":
                self.keys.write(c.payload[1], c.payload[2])
            else:
                raise DriverError(self.name, f"unknown change kind {c.kind}")
        if any(c.name == TIMESYNCD_PATH for c in changes):
            self._restart_timesyncd()

    def _restart_timesyncd(self) -> None:
        """timesyncd reads its drop-ins at start; a box without it (or a lab node) has nothing to restart."""
        if getattr(self.ctx.services, "kind", "") != "systemd" or not self.ctx.services.is_active(TIMESYNCD_UNIT):
            return
        try:
            self.ctx.services.restart(TIMESYNCD_UNIT)
        except Exception as e:
            raise DriverError(self.name, f"cannot restart {TIMESYNCD_UNIT}", str(e)) from None

    def verify(self, desired: DesiredState) -> None:
        left = [c.name for c in self.diff(desired)]
        if left:
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        keys = [k for k in desired.sysctl if not is_interface_key(k)]
        return {
            "hostname": self._get_hostname(),
            "files": file_snapshot(self.ctx, [HOSTNAME_PATH, SYSCTL_PATH, TIMESYNCD_PATH]),
            "sysctl": {k: self.keys.read(k) for k in keys},
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        file_restore(self.ctx, snapshot["files"])
        for key, value in snapshot.get("sysctl", {}).items():
            if value is not None and self.keys.read(key) != value:
                self.keys.write(key, value)
        if self._get_hostname() != snapshot["hostname"]:
            self._set_hostname(snapshot["hostname"])


class InterfaceSysctlDriver:
    """Per-interface keys (net.ipv4.conf.<ifname>.*), applied once netlink created the interfaces."""

    name = "sysctl"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.keys = _SysctlKeys(ctx, self.name)

    def claims(self, desired: DesiredState) -> set[str]:
        return set()

    def _wanted(self, desired: DesiredState) -> dict[str, str]:
        return {k: v for k, v in desired.sysctl.items() if is_interface_key(k)}

    def diff(self, desired: DesiredState) -> list[Change]:
        return self.keys.changes(self._wanted(desired))

    def apply(self, changes: list[Change]) -> None:
        for c in changes:
            self.keys.write(c.payload[1], c.payload[2])

    def verify(self, desired: DesiredState) -> None:
        left = [c.name for c in self.diff(desired)]
        if left:
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {"sysctl": {k: self.keys.read(k) for k in self._wanted(desired)}}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for key, value in snapshot["sysctl"].items():
            if value is not None and self.keys.read(key) not in (None, value):
                self.keys.write(key, value)


class ServicesDriver:
    """The daemons a site uses start at boot too (systemd enable); on a lab node this is a no-op."""

    name = "services"

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.manager = ctx, ctx.services

    def claims(self, desired: DesiredState) -> set[str]:
        return set()

    @staticmethod
    def wanted(desired: DesiredState) -> list[str]:
        units = ["frr", "strongswan"]
        if desired.vrrp.config is not None:
            units.append("keepalived")
        return units

    def diff(self, desired: DesiredState) -> list[Change]:
        changes = [
            Change(self.name, CREATE, "unit", u, f"enable {u} at boot", payload=u)
            for u in self.wanted(desired)
            if not self.manager.is_enabled(u)
        ]
        # Debian's strongswan-charon pulls in strongswan-starter, enabled: a second charon beside
        # strongswan.service, fighting over UDP 500/4500 and the kernel's policies.
        if getattr(self.manager, "kind", "") == "systemd" and (
            self.manager.is_enabled(STARTER_UNIT) or self.manager.is_active(STARTER_UNIT)
        ):
            changes.append(
                Change(
                    self.name,
                    REMOVE,
                    "unit",
                    STARTER_UNIT,
                    f"disable and stop {STARTER_UNIT} (a second charon)",
                    payload=STARTER_UNIT,
                )  # fmt: skip
            )
        return changes

    def apply(self, changes: list[Change]) -> None:
        for c in changes:
            service_call(self.manager, self.name, "disable" if c.action == REMOVE else "enable", c.payload)

    def verify(self, desired: DesiredState) -> None:
        down = [u for u in self.wanted(desired) if not self.manager.is_active(u)]
        if down:
            raise DriverError(self.name, "not running after apply: " + ", ".join(down))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        return {}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Enabling a unit at boot is left in place: harmless, and the previous state may want it."""
