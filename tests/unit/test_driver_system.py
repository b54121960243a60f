"""System drivers against a fake root: hostname, sysctl keys in a fake /proc/sys, the sysctl.d file, services."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from appliance.drivers.base import CHANGE, CREATE, Context, DriverError, Ledger
from appliance.drivers.system import (
    HOSTNAME_PATH,
    KERNEL_HOSTNAME,
    InterfaceSysctlDriver,
    ServicesDriver,
    SystemDriver,
    is_interface_key,
    proc_path,
)
from appliance.model.validate import load_site
from appliance.render import render_site
from appliance.render.spec import VrrpSpec
from appliance.render.sysctl import SYSCTL_PATH

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "sys-test-psk-0123456789abcdef", "OSPF_KEY": "md5-sys-key"}
HUB = render_site(load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site)

# A Debian 12 box before the first apply (the tunnel, dmvpn0, does not exist yet).
PROC = {
    "kernel/hostname": "debian\n",
    "net/ipv4/ip_forward": "0\n",
    "net/ipv4/ip_forward_use_pmtu": "0\n",
    "net/ipv4/conf/all/rp_filter": "2\n",
    "net/ipv4/conf/default/rp_filter": "2\n",
    "net/ipv4/conf/all/send_redirects": "1\n",
    "net/ipv4/conf/eth0/rp_filter": "2\n",
    "net/ipv6/conf/all/forwarding": "0\n",
    "net/ipv4/ip_local_port_range": "32768\t60999\n",
}


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for rel, value in PROC.items():
        p = root / "proc/sys" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value)
    return root


def proc(root: Path, rel: str) -> str:
    return (root / "proc/sys" / rel).read_text().strip()


def context(root: Path, services=None) -> Context:
    return Context(ledger=Ledger(root.parent / "ledger.json"), services=services, root=root)


class FakeHostname:
    """The kernel's hostname, kept in memory: records every set."""

    def __init__(self, name: str = "debian") -> None:
        self.name, self.sets = name, []

    def set(self, name: str) -> None:
        self.sets.append(name)
        self.name = name

    def get(self) -> str:
        return self.name


# --- SystemDriver -----------------------------------------------------------------------------------


def test_first_apply_sets_hostname_files_and_global_keys(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    host = FakeHostname()
    drv = SystemDriver(context(root), hostname_setter=host.set, hostname_getter=host.get)
    plan = drv.diff(HUB)
    assert [(c.action, c.kind, c.description) for c in plan] == [
        (CHANGE, "hostname", "set hostname hub (was debian)"),
        (CREATE, "file", f"write {HOSTNAME_PATH}"),
        (CREATE, "file", f"write {SYSCTL_PATH}"),
        (CHANGE, "sysctl", "set net.ipv4.conf.all.rp_filter = 0 (was 2)"),
        (CHANGE, "sysctl", "set net.ipv4.conf.all.send_redirects = 0 (was 1)"),
        (CHANGE, "sysctl", "set net.ipv4.conf.default.rp_filter = 0 (was 2)"),
        (CHANGE, "sysctl", "set net.ipv4.ip_forward = 1 (was 0)"),
    ]
    drv.apply(plan)
    assert host.sets == ["hub"]
    assert (root / "etc/hostname").read_text() == "hub\n"
    rendered = next(f for f in HUB.files if f.path == SYSCTL_PATH)
    assert (root / SYSCTL_PATH.lstrip("/")).read_text() == rendered.content
    assert proc(root, "net/ipv4/ip_forward") == "1"
    assert proc(root, "net/ipv4/conf/all/rp_filter") == "0"
    assert proc(root, "net/ipv4/conf/eth0/rp_filter") == "2"  # not a key of the site
    assert not (root / "proc/sys/net/ipv4/conf/dmvpn0").exists()  # the tunnel's keys wait for the tunnel
    drv.verify(HUB)
    assert drv.diff(HUB) == []


def test_the_kernel_hostname_goes_through_the_root_not_the_running_machine(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    drv = SystemDriver(context(root))
    (change,) = [c for c in drv.diff(HUB) if c.kind == "hostname"]
    assert change.description == "set hostname hub (was debian)"
    drv.apply([change])
    assert (root / KERNEL_HOSTNAME.lstrip("/")).read_text() == "hub"
    assert [c for c in drv.diff(HUB) if c.kind == "hostname"] == []


def test_restore_puts_back_hostname_files_and_keys(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("debian\n")
    host = FakeHostname()
    drv = SystemDriver(context(root), hostname_setter=host.set, hostname_getter=host.get)
    snap = json.loads(json.dumps(drv.snapshot(HUB)))
    drv.apply(drv.diff(HUB))
    drv.restore(snap)
    assert host.name == "debian"
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert not (root / SYSCTL_PATH.lstrip("/")).exists()
    assert {rel: " ".join(proc(root, rel).split()) for rel in PROC if rel != "kernel/hostname"} == {
        rel: " ".join(v.split()) for rel, v in PROC.items() if rel != "kernel/hostname"
    }


def test_a_key_the_kernel_refuses_names_the_key(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    host = FakeHostname("hub")
    drv = SystemDriver(context(root), hostname_setter=host.set, hostname_getter=host.get)
    plan = [c for c in drv.diff(HUB) if c.kind == "sysctl"]
    target = root / "proc/sys/net/ipv4/ip_forward"
    target.unlink()
    target.mkdir()  # neither readable nor writable as a key: what a refusing kernel looks like here
    with pytest.raises(DriverError) as e:
        drv.apply(plan)
    assert str(e.value) == "system: cannot set net.ipv4.ip_forward = 1: Is a directory"
    with pytest.raises(DriverError) as e:
        drv.diff(HUB)
    assert str(e.value) == "system: cannot read net.ipv4.ip_forward: Is a directory"


def test_a_state_without_the_sysctl_file_writes_only_the_hostname_file(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    bare = dataclasses.replace(HUB, files=tuple(f for f in HUB.files if f.path != SYSCTL_PATH))
    host = FakeHostname("hub")
    files = [c.name for c in SystemDriver(context(root), host.set, host.get).diff(bare) if c.kind == "file"]
    assert files == [HOSTNAME_PATH]


def test_values_compare_with_whitespace_normalised(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    ranged = dataclasses.replace(HUB, sysctl={"net.ipv4.ip_local_port_range": "32768 60999"})
    host = FakeHostname("hub")
    assert [c for c in SystemDriver(context(root), host.set, host.get).diff(ranged) if c.kind == "sysctl"] == []


# --- InterfaceSysctlDriver -----------------------------------------------------------------------------


def test_interface_keys_wait_for_the_interface_then_apply(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    drv = InterfaceSysctlDriver(context(root))
    plan = drv.diff(HUB)
    assert [c.description for c in plan] == [
        "set net.ipv4.conf.dmvpn0.rp_filter = 0 (after the interface exists)",
        "set net.ipv4.conf.dmvpn0.send_redirects = 0 (after the interface exists)",
    ]
    with pytest.raises(DriverError) as e:
        drv.apply(plan)
    assert str(e.value) == "sysctl: cannot set net.ipv4.conf.dmvpn0.rp_filter = 0: No such file or directory"
    tunnel = root / "proc/sys/net/ipv4/conf/dmvpn0"  # netlink created the tunnel: the kernel's defaults
    tunnel.mkdir()
    (tunnel / "rp_filter").write_text("2\n")
    (tunnel / "send_redirects").write_text("1\n")
    snap = drv.snapshot(HUB)
    drv.apply(drv.diff(HUB))
    assert proc(root, "net/ipv4/conf/dmvpn0/rp_filter") == "0"
    drv.verify(HUB)
    drv.restore(snap)
    assert proc(root, "net/ipv4/conf/dmvpn0/rp_filter") == "2"
    assert proc(root, "net/ipv4/conf/dmvpn0/send_redirects") == "1"


def test_restore_after_the_tunnel_went_away_is_quiet(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    drv = InterfaceSysctlDriver(context(root))
    drv.restore({"sysctl": {"net.ipv4.conf.dmvpn0.rp_filter": "2"}})  # netlink's restore deleted it
    assert not (root / "proc/sys/net/ipv4/conf/dmvpn0").exists()


def test_key_names() -> None:
    assert proc_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert is_interface_key("net.ipv4.conf.dmvpn0.rp_filter")
    assert is_interface_key("net.ipv6.conf.eth1.disable_ipv6")
    assert not is_interface_key("net.ipv4.conf.all.rp_filter")
    assert not is_interface_key("net.ipv6.conf.default.forwarding")
    assert not is_interface_key("net.ipv4.ip_forward")
    # Keys split as render/sysctl.py renders them: the tunnel's go after netlink, the rest first.
    assert {k for k in HUB.sysctl if is_interface_key(k)} == {
        "net.ipv4.conf.dmvpn0.rp_filter",
        "net.ipv4.conf.dmvpn0.send_redirects",
    }


# --- ServicesDriver ------------------------------------------------------------------------------------


class FakeServices:
    def __init__(self, enabled=(), active=(), refuse=()) -> None:
        self.enabled, self.active, self.refuse = set(enabled), set(active), set(refuse)

    def enable(self, name: str) -> None:
        if name in self.refuse:
            raise RuntimeError(f"Failed to enable unit: Unit file {name}.service does not exist.")
        self.enabled.add(name)

    def is_enabled(self, name: str) -> bool:
        return name in self.enabled

    def is_active(self, name: str) -> bool:
        return name in self.active


def test_services_the_site_uses_are_enabled_at_boot(tmp_path: Path) -> None:
    services = FakeServices(enabled={"frr"}, active={"frr", "strongswan"})
    drv = ServicesDriver(context(tmp_path, services))
    plan = drv.diff(HUB)
    assert [(c.action, c.description) for c in plan] == [(CREATE, "enable strongswan at boot")]
    drv.apply(plan)
    assert services.enabled == {"frr", "strongswan"}
    drv.verify(HUB)
    assert drv.diff(HUB) == []


def test_keepalived_only_with_vrrp(tmp_path: Path) -> None:
    with_vrrp = dataclasses.replace(HUB, vrrp=VrrpSpec(config="vrrp_instance lan {}\n"))
    assert ServicesDriver.wanted(HUB) == ["frr", "strongswan"]
    assert ServicesDriver.wanted(with_vrrp) == ["frr", "strongswan", "keepalived"]


def test_a_daemon_that_is_not_running_fails_verify(tmp_path: Path) -> None:
    drv = ServicesDriver(context(tmp_path, FakeServices(active={"frr"})))
    with pytest.raises(DriverError) as e:
        drv.verify(HUB)
    assert str(e.value) == "services: not running after apply: strongswan"


def test_enable_failure_keeps_systemctls_words(tmp_path: Path) -> None:
    drv = ServicesDriver(context(tmp_path, FakeServices(refuse={"frr"})))
    with pytest.raises(DriverError) as e:
        drv.apply(drv.diff(HUB))
    assert str(e.value) == ("services: cannot enable frr: Failed to enable unit: Unit file frr.service does not exist.")


# --- NTP (systemd-timesyncd drop-in) --------------------------------------------------------------


class RestartRecorder(FakeServices):
    kind = "systemd"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.restarted: list[str] = []

    def restart(self, name: str) -> None:
        self.restarted.append(name)


def test_ntp_servers_become_a_timesyncd_drop_in_and_go_away_with_them(tmp_path: Path) -> None:
    from appliance.render.timesync import TIMESYNCD_PATH

    site = load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site
    with_ntp = render_site(site.model_copy(update={"system": site.system.model_copy(update={"ntp": ["192.0.2.123"]})}))
    root = fake_root(tmp_path)
    services = RestartRecorder(active={"systemd-timesyncd"})
    drv = SystemDriver(context(root, services))
    drv.apply(drv.diff(with_ntp))
    assert (root / TIMESYNCD_PATH.lstrip("/")).read_text() == (
        "# Written by appliance from the site file.\n[Time]\nNTP=192.0.2.123\n"
    )
    assert services.restarted == ["systemd-timesyncd"]
    assert drv.diff(with_ntp) == []
    plan = drv.diff(HUB)  # the site names no NTP server any more
    assert [(c.action, c.name) for c in plan] == [("remove", TIMESYNCD_PATH)]
    drv.apply(plan)
    assert not (root / TIMESYNCD_PATH.lstrip("/")).exists()
    assert services.restarted == ["systemd-timesyncd", "systemd-timesyncd"]


def test_a_second_charon_from_strongswan_starter_is_disabled_on_systemd(tmp_path: Path) -> None:
    class SystemdServices(FakeServices):
        kind = "systemd"

        def disable(self, name: str) -> None:
            self.enabled.discard(name)
            self.active.discard(name)

    services = SystemdServices(enabled={"frr", "strongswan", "strongswan-starter"}, active={"strongswan-starter"})
    drv = ServicesDriver(context(tmp_path, services))
    plan = drv.diff(HUB)
    assert [(c.action, c.description) for c in plan] == [
        ("remove", "disable and stop strongswan-starter (a second charon)")
    ]
    drv.apply(plan)
    assert "strongswan-starter" not in services.enabled | services.active
    assert drv.diff(HUB) == []
