"""Test doubles shared by the engine and supervisor tests: a fake driver and rendered examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.drivers.base import CHANGE, Change, DriverError
from appliance.model.validate import load_site
from appliance.render import render_site

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "engine-test-psk-0123456789abcdef", "OSPF_KEY": "md5-engine-key"}


def desired_of(example: str = "examples/hub.yaml"):
    return render_site(load_site(ROOT / example, env=ENV, frr_version=(8, 4)).site)


class FakeDriver:
    """A subsystem whose running state is one value; it records every call into a shared journal."""

    def __init__(self, name: str, calls: list, wanted: str = "new", fail_apply: bool = False, claims=()):
        self.name, self.calls, self.wanted, self.fail_apply = name, calls, wanted, fail_apply
        self.running = "old"
        self._claims = set(claims)

    def claims(self, desired) -> set[str]:
        return self._claims

    def diff(self, desired) -> list[Change]:
        self.calls.append(("diff", self.name))
        if self.running == self.wanted:
            return []
        return [Change(self.name, CHANGE, "value", self.name, f"set {self.name} to {self.wanted}", payload=self.wanted)]

    def snapshot(self, desired) -> dict[str, Any]:
        self.calls.append(("snapshot", self.name))
        return {"running": self.running}

    def apply(self, changes) -> None:
        self.calls.append(("apply", self.name))
        self.running = changes[0].payload
        if self.fail_apply:
            raise DriverError(self.name, "daemon refused", "charon: unable to load connection")

    def verify(self, desired) -> None:
        self.calls.append(("verify", self.name))

    def restore(self, snapshot) -> None:
        self.calls.append(("restore", self.name))
        self.running = snapshot["running"]
