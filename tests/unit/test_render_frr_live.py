"""The rendered frr.conf is in FRR 8.4's canonical form: real daemons, empty reload delta.

Runs on this host (root, Debian's frr + frr-pythontools), not in the lab VM: zebra, staticd,
nhrpd, ospfd, bgpd (eigrpd when asked) run inside a private network + mount + UTS namespace,
with tmpfs over /etc/frr, /var/run/frr, /var/lib/frr and /var/log/frr (as FRR's topotests and
munet do), so nothing reaches the host's own FRR.

For every example (and a few variants covering what the examples do not use) the test loads
the rendered frr.conf and asserts
- `frr-reload.py --test` prints no line to add or delete, and
- `show running-config` equals the rendered file line for line, but for 'frr version' and 'end'
  (the lines frr-reload.py ignores).

Measured facts this relies on (FRR 8.4.4):
- No interface is created: FRR keeps and prints interface config for an interface that does
  not exist yet, and prints exactly the same running-config once it exists (checked with veths
  named eth0/eth1/dmvpn0 carrying the addresses). The host kernel has no GRE, and an mGRE link
  would not change what is printed: the OSPF network type is always written explicitly except
  for broadcast, which is ospfd's default for a non-point-to-point link (mGRE has no peer).
- The daemons print the hostname the kernel had when they started, so a box restarts FRR when
  its hostname changes; here, as on a box, the daemons restart when the hostname or the daemon
  set changes. The first site after a restart is loaded as at boot (`vtysh -b`), the following
  ones as an apply does it (`frr-reload.py --reload`).
- Net sysctls print as 'no ip forwarding'/'no ipv6 forwarding': the netns gets the rendered ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from example_sites import EXAMPLES, FAKE_SECRETS, FRR_VERSION, example_id

from appliance.model.validate import load_site
from appliance.render.frr import VTYSH_CONF_PATH, render_frr
from appliance.render.sysctl import interface_key, render_sysctl

FRR_LIB = Path("/usr/lib/frr")
FRR_RELOAD = FRR_LIB / "frr-reload.py"
PRIVATE_DIRS = ("/etc/frr", "/var/run/frr", "/var/lib/frr", "/var/log/frr")
IGNORED_RUNNING_LINES = ("frr version ", "end")  # frr-reload.py drops these; the renderer never writes them
TIMEOUT = 30
# Where FRR's sockets live: /var/run is a symlink to /run, and a path read through /proc/PID/root
# must not follow that absolute link out of the namespace.
RUN_DIR = "/run/frr"
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """One site to load: an example as it is, or an example with a few lines changed."""

    id: str
    source: Path
    edits: tuple[tuple[str, str], ...] = ()

    def write(self, directory: Path) -> Path:
        text = self.source.read_text()
        for old, new in self.edits:
            assert old in text, f"{self.id}: {old!r} not in {self.source.name}"
            text = text.replace(old, new)
        path = directory / f"{self.id.replace('/', '-')}.yaml"
        path.write_text(text)
        return path


def _example(name: str) -> Path:
    return next(p for p in EXAMPLES if example_id(p) == name)


OSPF_AUTH = "    authentication:\n      key_id: 1\n      key: {env: OSPF_KEY}\n"
# What the examples do not show: phase 1 and 2, no multicast, hub by name, default holdtime,
# explicit OSPF knobs, static routes, eBGP with a password, EIGRP. Each shares the hostname and
# daemons of the example before it, so it is applied with frr-reload.py --reload.
VARIANTS = [
    Case(
        "variant/spoke1-phase2",
        _example("spoke1"),
        (("    phase: 3\n", "    phase: 2\n"),),
    ),
    Case(
        "variant/spoke1-phase1-knobs",
        _example("spoke1"),
        (
            ("    phase: 3\n", "    phase: 1\n    multicast: false\n    registration_no_unique: false\n"),
            ("    network_id: 42\n", "    network_id: 42\n    holdtime: 7200\n"),
            ("nbma: 192.0.2.2}", "nbma: hub.example.net}"),
            (
                "    hello_interval: 2\n",
                "    area: 0.0.0.1\n    network_type: point-to-multipoint\n    cost: 30\n    priority: 5\n"
                "    passive: []\n    hello_interval: 2\n",
            ),
            (
                "      key: {env: OSPF_KEY}\n",
                "      key: {env: OSPF_KEY}\n"
                "  static:\n"
                "    - {prefix: 10.20.0.0/16, via: 10.0.1.254}\n"
                "    - {prefix: 10.21.0.0/16, via: 10.0.1.254, distance: 200}\n"
                "    - {prefix: 10.22.0.0/16, interface: eth1}\n"
                "    - {prefix: 10.23.0.0/16, blackhole: true}\n"
                "    - {prefix: 10.21.0.0/16, via: 10.0.1.253}\n",
            ),
        ),
    ),
    Case(
        "variant/hub-phase2",
        _example("hub"),
        (("    phase: 3\n", "    phase: 2\n"), ("    holdtime: 300\n", "")),
    ),
    Case(
        "variant/bgp-spoke1-ebgp-password",
        _example("bgp/spoke1"),
        (
            (
                "    asn: 65000\n",
                "    asn: 65011\n    hub_asn: 65000\n    keepalive: 5\n    holdtime: 15\n"
                "    networks: [10.0.1.0/24, 10.1.1.0/24]\n    password: {env: BGP_PASSWORD}\n",
            ),
        ),
    ),
    Case(
        "variant/bgp-hub-password",
        _example("bgp/hub"),
        (("    summary_only: [10.0.0.0/16]\n", "    password: {env: BGP_PASSWORD}\n    networks: []\n"),),
    ),
    Case(
        "variant/spoke2-eigrp",
        _example("spoke2"),
        (("  ospf:\n", "  eigrp:\n    experimental: true\n    asn: 100\n    router_id: 10.0.2.1\n  ospf:\n"),),
    ),
]


def _cases() -> list[Case]:
    """Examples and variants, ordered so that sites sharing hostname and daemons are adjacent."""
    examples = [Case(f"examples/{example_id(p)}", p) for p in EXAMPLES]
    by_host: dict[str, list[Case]] = {}
    for case in examples:
        hostname = case.source.read_text().split("hostname:", 1)[1].split()[0]
        by_host.setdefault(hostname, []).append(case)
    for variant in VARIANTS:
        base = next(c for c in examples if c.source == variant.source)
        host = next(h for h, cs in by_host.items() if base in cs)
        group = by_host[host]
        group.insert(group.index(base) + 1, variant)
    return [case for group in by_host.values() for case in group]


CASES = _cases()


class FrrNode:
    """FRR in its own network, mount and UTS namespaces; the holder process keeps them alive."""

    SETUP = """
set -e
for dir in {dirs}; do
    [ -d "$dir" ] || continue  # Debian 12's frr has no /var/lib/frr: nothing to hide there
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
    chown frr:frr "$dir"
done
ip link set lo up
echo ready
exec sleep infinity
"""

    def __init__(self) -> None:
        missing = [str(p) for p in (FRR_LIB / "zebra", FRR_RELOAD) if not p.exists()]
        missing += [tool for tool in ("vtysh", "unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            pytest.fail(f"FRR live test needs {', '.join(missing)} (apt-get install frr frr-pythontools util-linux)")
        if os.geteuid() != 0:
            pytest.fail("the FRR live test runs as root (it creates network and mount namespaces)")
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--uts", "--propagation", "private", "sh", "-c"]
            + [self.SETUP.format(dirs=" ".join(PRIVATE_DIRS))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self.holder.stdout.readline() != "ready\n":
            self.holder.wait(TIMEOUT)
            pytest.fail(f"FRR namespace setup failed: {self.holder.stderr.read().strip()}")
        self.hostname: str | None = None
        self.daemons: frozenset[str] = frozenset()

    def path(self, inside: str) -> Path:
        """A path as the namespace's processes see it (their mount namespace, through /proc); no symlinks."""
        return Path(f"/proc/{self.holder.pid}/root") / inside.lstrip("/")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-u", "--", *argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def check(self, *argv: str) -> str:
        r = self.run(*argv)
        assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}"
        return r.stdout

    def boot(self, hostname: str, daemons: frozenset[str], sysctl: dict[str, str], config: str) -> None:
        """(Re)start the daemons as a box does after a reboot: kernel settings, frr.conf, `vtysh -b`."""
        self.stop_daemons()
        self.check("hostname", hostname)
        for key, value in sysctl.items():
            self.check("sysctl", "-qw", f"{key}={value}")
        self.path(VTYSH_CONF_PATH).write_text("service integrated-vtysh-config\n")
        self.write_config(config)
        for daemon in sorted(daemons, key=lambda d: (d != "zebra", d)):  # zebra first, as watchfrr does
            self.check(str(FRR_LIB / daemon), "-d", "-u", "frr", "-g", "frr", "-A", "127.0.0.1")
        for daemon in daemons:
            _wait_for(self.path(f"{RUN_DIR}/{daemon}.vty").exists, f"{daemon}.vty")
        self.hostname, self.daemons = hostname, daemons
        out = self.check("vtysh", "-b")
        assert "%" not in out, f"vtysh -b reported: {out.strip()}"

    def write_config(self, config: str) -> None:
        target = self.path("/etc/frr/frr.conf")
        target.write_text(config)
        os.chmod(target, 0o640)
        shutil.chown(target, "frr", "frr")

    def daemon_pids(self) -> list[int]:
        """Every process in this node's network namespace but the holder: the daemons it started."""
        netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.holder.pid:
                continue
            try:
                if os.readlink(entry / "ns" / "net") == netns:
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or a kernel thread
                continue
        return pids

    def stop_daemons(self) -> None:
        pids = self.daemon_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)  # the node's state is throw-away: no graceful shutdown to wait for
            except ProcessLookupError:
                continue
        for pid in pids:
            _wait_for(lambda p=pid: _exited(p), f"FRR daemon {pid} to exit")
        for leftover in self.path(RUN_DIR).iterdir():
            leftover.unlink()

    def close(self) -> None:
        if self.holder.poll() is None:
            self.stop_daemons()
        self.holder.kill()
        self.holder.wait(TIMEOUT)


def _exited(pid: int) -> bool:
    """Gone, or a zombie (its sockets and locks are released; reaping is up to init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_for(condition: Callable[[], T], what: str) -> T:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def frr_node() -> Iterator[FrrNode]:
    node = FrrNode()
    yield node
    node.close()


def delta_lines(reload_test_output: str) -> list[str]:
    """The lines under frr-reload.py --test's 'Lines To Delete' / 'Lines To Add' headings (none: no change)."""
    out, in_section = [], False
    for line in reload_test_output.splitlines():
        if line in ("Lines To Delete", "Lines To Add"):
            in_section = True
            out.append(line)
        elif in_section and line and not set(line) <= {"="}:
            out.append(line)
    return out


def running_config_lines(node: FrrNode) -> list[str]:
    text = node.check("vtysh", "-c", "show running-config no-header")
    return [line for line in text.splitlines() if not line.startswith(IGNORED_RUNNING_LINES)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rendered_frr_conf_is_what_frr_runs(case: Case, frr_node: FrrNode, tmp_path: Path) -> None:
    site = load_site(case.write(tmp_path), env=FAKE_SECRETS, frr_version=FRR_VERSION).site
    spec = render_frr(site)
    hostname = site.system.hostname
    if (frr_node.hostname, frr_node.daemons) != (hostname, spec.daemons):
        tunnel_keys = interface_key(site.dmvpn.tunnel.name, "")  # the tunnel does not exist here
        sysctl = {k: v for k, v in render_sysctl(site).items() if not k.startswith(tunnel_keys)}
        frr_node.boot(hostname, spec.daemons, sysctl, spec.config)
        how = "boot (vtysh -b)"
    else:
        frr_node.write_config(spec.config)
        r = frr_node.run(str(FRR_RELOAD), "--reload", "--stdout", "/etc/frr/frr.conf")
        how = f"frr-reload.py --reload (exit {r.returncode}):\n{r.stdout}{r.stderr}"

    test = frr_node.run(str(FRR_RELOAD), "--test", "/etc/frr/frr.conf")
    assert test.returncode == 0, f"frr-reload.py --test failed: {test.stdout}{test.stderr}"
    assert delta_lines(test.stdout) == [], f"after {how}\nfrr-reload.py --test:\n{test.stdout}"
    rendered = spec.config.splitlines()
    assert running_config_lines(frr_node) == rendered, f"after {how}"


def test_delta_parser_sees_changes() -> None:
    """The helper above must not hide a delta (it is what makes the live test able to fail)."""
    sample = (
        "\nLines To Delete\n===============\nno hostname vm\n\nLines To Add\n============\nip route 1.0.0.0/8 eth0\n"
    )
    assert delta_lines(sample) == ["Lines To Delete", "no hostname vm", "Lines To Add", "ip route 1.0.0.0/8 eth0"]
    assert delta_lines("2024 INFO: Called via ...\n") == []
