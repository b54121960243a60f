"""keepalived driver: checked config, start/reload/stop through the service manager, ledger, restore."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.drivers.base import CHANGE, CREATE, REMOVE, Context, DriverError, Ledger
from appliance.drivers.vrrp import VrrpDriver, config_hash, keepalived_config_test
from appliance.model.schema import Vrrp, VrrpGroup
from appliance.model.validate import load_site
from appliance.render import render_site
from appliance.render.vrrp import (
    KEEPALIVED_CONF_PATH,
    STATES_SCRIPT_PATH,
    TUNNEL_CHECK_PATH,
    render_vrrp_files,
    vrrp_paths,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "vrrp-test-psk-0123456789abcdef", "OSPF_KEY": "md5-vrrp-key", "BGP_PASSWORD": "bgp-vrrp-pw"}
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if not p.name.startswith("lab"))


def site_with_vrrp(example: Path, variant: int = 0, priority: int = 100):
    """The example's site plus VRRP groups on its first LAN (variants cover the template's branches)."""
    site = load_site(example, env={**os.environ, **ENV}, frr_version=(8, 4)).site
    lan = site.interfaces.lan[0]
    hosts = list(lan.address.network.hosts())
    vip = f"{hosts[-1]}/{lan.address.network.prefixlen}"
    groups = [
        {"name": "lan", "interface": lan.name, "vrid": 10, "priority": priority, "virtual_addresses": [vip]},
    ]
    if variant % 2:
        groups[0] |= {"track_tunnel": True, "preempt_delay": 30, "advert_interval": 0.5}
        groups.append(
            {
                "name": "lan-v2",
                "interface": lan.name,
                "vrid": 11,
                "version": 2,
                "preempt": False,
                "virtual_addresses": [f"{hosts[-2]}/32"],
                "unicast_peers": [str(hosts[-3])],
                # not its own interface: keepalived -t rejects that ("Ignoring track_interface ... since own")
                "track_interfaces": [site.interfaces.public.name],
            }
        )
    vrrp = Vrrp(groups=[VrrpGroup.model_validate(g) for g in groups])
    return site.model_copy(update={"vrrp": vrrp})


def desired(priority: int = 100):
    return render_site(site_with_vrrp(ROOT / "examples/hub.yaml", priority=priority))


def without_vrrp():
    return render_site(load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site)


class FakeServices:
    """A service manager that records every call and keeps each daemon's running state."""

    def __init__(self, active: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.active = set(active)

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.active.add(name)

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.active.discard(name)

    def restart(self, name: str) -> None:
        self.calls.append(("restart", name))
        self.active.add(name)

    def reload(self, name: str) -> None:
        self.calls.append(("reload", name))

    def is_active(self, name: str) -> bool:
        return name in self.active

    def main_pid(self, name: str) -> int | None:
        return 4242 if name in self.active else None


class RecordingConfigTest:
    """Stands in for `keepalived -t` where the LAN interfaces do not exist (the real one is tested below)."""

    def __init__(self, reject: bool = False) -> None:
        self.seen: list[str] = []
        self.reject = reject

    def __call__(self, config: str) -> None:
        self.seen.append(config)
        if self.reject:
            raise DriverError("vrrp", "keepalived -t rejects the configuration (exit 5)", "Unknown keyword 'x'")


@pytest.fixture
def ctx(tmp_path):
    return Context(ledger=Ledger(tmp_path / "state" / "ledger.json"), services=FakeServices(), root=tmp_path / "root")


def conf(ctx) -> Path:
    return ctx.path(KEEPALIVED_CONF_PATH)


def apply_all(driver, state):
    changes = driver.diff(state)
    driver.apply(changes)
    driver.verify(state)
    return changes


def test_first_apply_installs_checked_config_and_starts_keepalived(ctx):
    check = RecordingConfigTest()
    driver = VrrpDriver(ctx, config_test=check)
    state = desired()
    changes = driver.diff(state)
    assert [(c.action, c.kind, c.description) for c in changes] == [
        (CREATE, "file", f"write {KEEPALIVED_CONF_PATH}"),
        (CREATE, "file", f"write {STATES_SCRIPT_PATH}"),
        (CREATE, "daemon", "start keepalived"),
    ]
    driver.apply(changes)
    assert check.seen == [state.vrrp.config]
    assert conf(ctx).read_text() == state.vrrp.config
    assert "vrrp_instance lan {" in state.vrrp.config
    assert stat.S_IMODE(conf(ctx).stat().st_mode) == 0o644
    assert ctx.services.calls == [("start", "keepalived")]
    assert Ledger(ctx.ledger.path).section("vrrp") == {"configured": True, "loaded": config_hash(state.vrrp.config)}
    driver.verify(state)


def test_second_apply_changes_nothing(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, desired())
    ctx.services.calls.clear()
    assert driver.diff(desired()) == []
    assert ctx.services.calls == []


def test_a_second_apply_renders_no_template(ctx, monkeypatch):
    # a no-op apply takes the files from the desired state; rendering them would load jinja2
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    state = desired()
    apply_all(driver, state)

    def no_rendering(spec):
        raise AssertionError("rendered although the desired state has the files")

    monkeypatch.setattr("appliance.drivers.vrrp.render_vrrp_files", no_rendering)
    assert driver.diff(state) == []


@pytest.mark.parametrize("variant", [0, 1])
def test_the_driver_knows_the_paths_the_renderer_writes_in_its_order(variant):
    spec = render_site(site_with_vrrp(ROOT / "examples/hub.yaml", variant)).vrrp
    assert vrrp_paths(spec) == tuple(f.path for f in render_vrrp_files(spec))
    assert vrrp_paths(without_vrrp().vrrp) == render_vrrp_files(without_vrrp().vrrp) == ()


def test_changed_group_rewrites_file_and_reloads_running_keepalived(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, desired())
    ctx.services.calls.clear()
    changed = desired(priority=150)
    changes = driver.diff(changed)
    assert [(c.action, c.kind, c.description) for c in changes] == [
        (CHANGE, "file", f"write {KEEPALIVED_CONF_PATH}"),
        (CHANGE, "daemon", "reload keepalived (SIGHUP)"),
    ]
    assert "-    priority 100\n+    priority 150" in changes[0].detail
    driver.apply(changes)
    assert ctx.services.calls == [("reload", "keepalived")]
    assert "priority 150" in conf(ctx).read_text()
    driver.verify(changed)


def test_config_written_but_never_loaded_is_reloaded(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, desired())
    ctx.ledger.replace_section("vrrp", {"configured": True, "loaded": "an older text"})
    changes = driver.diff(desired())
    assert [c.description for c in changes] == ["reload keepalived (SIGHUP)"]


def test_rejected_config_installs_nothing_and_starts_nothing(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest(reject=True))
    with pytest.raises(DriverError, match="keepalived -t rejects.*Unknown keyword"):
        driver.apply(driver.diff(desired()))
    assert not conf(ctx).exists()
    assert ctx.services.calls == []


def test_site_without_groups_stops_the_keepalived_the_appliance_configured(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, desired())
    ctx.services.calls.clear()
    bare = without_vrrp()
    assert bare.vrrp.config is None
    changes = driver.diff(bare)
    assert [(c.action, c.kind, c.disruptive) for c in changes] == [
        (REMOVE, "daemon", True),
        (REMOVE, "file", False),
        (REMOVE, "file", False),
    ]
    driver.apply(changes)
    driver.verify(bare)
    assert ctx.services.calls == [("stop", "keepalived")]
    assert not conf(ctx).exists()
    assert Ledger(ctx.ledger.path).section("vrrp") == {}
    assert driver.diff(bare) == []


def test_site_without_groups_leaves_a_foreign_keepalived_alone(ctx):
    ctx.services.active.add("keepalived")
    conf(ctx).parent.mkdir(parents=True)
    conf(ctx).write_text("vrrp_instance theirs {}\n")
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    assert driver.diff(without_vrrp()) == []


def test_claims_the_keepalived_file_and_the_tunnel_check(ctx):
    assert VrrpDriver(ctx).claims(desired()) == {KEEPALIVED_CONF_PATH, STATES_SCRIPT_PATH, TUNNEL_CHECK_PATH}


def test_tunnel_check_is_installed_while_a_group_tracks_the_tunnel(ctx):
    tracked = render_site(site_with_vrrp(ROOT / "examples/hub.yaml", variant=1))
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, tracked)
    script = ctx.path(TUNNEL_CHECK_PATH)
    assert script.read_text() == tracked.vrrp.tunnel_check
    assert stat.S_IMODE(script.stat().st_mode) == 0o755  # keepalived runs it; script security: root-writable only
    assert f'script "{TUNNEL_CHECK_PATH}"' in conf(ctx).read_text()
    apply_all(driver, desired())  # tracking turned off: the script goes, keepalived stays configured
    assert not script.exists()
    assert Ledger(ctx.ledger.path).section("vrrp")["configured"] is True
    assert driver.diff(desired()) == []


def test_restore_brings_back_the_previous_file_and_reloads(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    apply_all(driver, desired())
    before = conf(ctx).read_text()
    snap = driver.snapshot(desired(priority=150))
    apply_all(driver, desired(priority=150))
    ctx.services.calls.clear()
    driver.restore(snap)
    assert conf(ctx).read_text() == before
    assert ctx.services.calls == [("reload", "keepalived")]
    assert driver.diff(desired()) == []


def test_restore_after_first_apply_stops_keepalived_and_removes_the_file(ctx):
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    snap = driver.snapshot(desired())
    apply_all(driver, desired())
    ctx.services.calls.clear()
    driver.restore(snap)
    assert not conf(ctx).exists()
    assert ctx.services.calls == [("stop", "keepalived")]
    assert Ledger(ctx.ledger.path).section("vrrp") == {}


def test_service_failure_names_keepalived_and_its_words(ctx):
    class Failing(FakeServices):
        def start(self, name: str) -> None:
            raise RuntimeError("keepalived did not come up within 60 s")

    ctx.services = Failing()
    driver = VrrpDriver(ctx, config_test=RecordingConfigTest())
    with pytest.raises(DriverError, match="vrrp: cannot start keepalived: keepalived did not come up"):
        driver.apply(driver.diff(desired()))


# --- the real `keepalived -t` -----------------------------------------------------------------

needs_keepalived = pytest.mark.skipif(
    shutil.which("keepalived", path="/usr/sbin:/sbin:/usr/bin") is None or os.geteuid() != 0,
    reason="needs keepalived and root (a private network namespace holds the LAN interfaces)",
)
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000


def config_test_in_netns(config: str, interfaces: list[str], tunnel_check: str | None = None) -> str:
    """Run keepalived_config_test in a child in a new network namespace holding `interfaces`.

    keepalived -t fails on an interface that does not exist; the host has no eth1, a box has. It
    also disables a track script it cannot find: `tunnel_check` is installed in a private mount
    namespace, as the driver installs it before the test.
    Returns "" when keepalived accepts the config, else the DriverError text.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = b"internal error"
        try:
            os.close(r)
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET | CLONE_NEWNS)")
            if tunnel_check is not None:
                subprocess.run(["mount", "--make-rprivate", "/"], check=True)
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(Path(TUNNEL_CHECK_PATH).parent)], check=True)
                Path(TUNNEL_CHECK_PATH).write_text(tunnel_check)
                Path(TUNNEL_CHECK_PATH).chmod(0o755)
            for name in sorted(set(interfaces)):
                subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
                subprocess.run(["ip", "link", "set", name, "up"], check=True)
            try:
                keepalived_config_test(config)
                result = b""
            except DriverError as e:
                result = str(e).encode()
        except BaseException as e:  # report, never return into pytest from the child
            result = f"child failed: {e!r}".encode()
        finally:
            os.write(w, result)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@needs_keepalived
@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_keepalived_accepts_each_example_with_vrrp_groups(example, variant):
    site = site_with_vrrp(example, variant)
    spec = render_site(site).vrrp
    assert spec.config is not None and spec.config.count("vrrp_instance ") == 1 + variant % 2
    interfaces = [site.interfaces.public.name, *(lan.name for lan in site.interfaces.lan)]
    assert config_test_in_netns(spec.config, interfaces, spec.tunnel_check) == ""


@needs_keepalived
def test_keepalived_rejection_carries_its_own_words_and_the_real_path():
    state = desired()
    broken = state.vrrp.config.replace("virtual_router_id 10", "virtual_router_id 300")
    out = config_test_in_netns(broken, ["eth1"])
    assert out.startswith("vrrp: keepalived -t rejects the configuration (exit ")
    assert "VRID '300' not valid" in out
    assert f"({KEEPALIVED_CONF_PATH}: Line " in out and "/tmp/" not in out


@needs_keepalived
def test_missing_interface_is_an_error_keepalived_reports():
    out = config_test_in_netns(desired().vrrp.config, [])
    assert "interface eth1 for vrrp_instance lan doesn't exist" in out
