"""Supervisor rounds: drift found and repaired by subsystem, never during an apply; health verdicts."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
from fakes import FakeDriver, desired_of

from appliance import health
from appliance.drivers.base import Ledger
from appliance.generations import StateDir
from appliance.supervisor import Supervisor, sd_notify, serve_metrics


def healthy_snapshot(desired) -> dict:
    return health.collect(
        desired.role,
        desired.netlink.tunnel.name,
        link=lambda name: {"exists": True, "up": True},
        frr=lambda role: {"nhs": [], "nhs_registered": 1, "nhrp_peers": 0, "ospf_neighbours": 1, "ospf_full": 1},
        ipsec=lambda: {"ike_sas": 1, "child_sas": 1, "peers": ["192.0.2.2"]},
        vrrp=lambda: {"groups": [{"name": "lan", "state": "MASTER"}]},
    )


def setup(tmp_path: Path, example: str = "examples/spoke1.yaml"):
    desired, calls = desired_of(example), []
    drivers = [FakeDriver(n, calls) for n in ("netlink", "firewall", "ipsec")]
    drivers[0]._claims = {f.path for f in desired.files}
    for d in drivers:
        d.running = "new"  # as applied
    state = StateDir(tmp_path / "state")
    state.record(desired, {}, "site: 1\n", {"what": "apply"})
    logged: list[str] = []
    sup = Supervisor(state, lambda ledger: drivers, healthy_snapshot, logged.append, tmp_path / "run" / "health.json")
    return sup, drivers, calls, logged, state


def test_a_round_without_drift_touches_nothing_and_publishes_health(tmp_path: Path) -> None:
    sup, drivers, calls, logged, _ = setup(tmp_path)
    snap = sup.tick()
    assert snap["repaired"] == [] and snap["healthy"] is True
    assert {kind for kind, _ in calls} == {"diff"}
    assert json.loads((tmp_path / "run" / "health.json").read_text())["healthy"] is True
    assert logged == []


def test_drift_in_one_subsystem_is_repaired_there_only(tmp_path: Path) -> None:
    sup, drivers, calls, logged, state = setup(tmp_path)
    drivers[1].running = "flushed"  # someone ran `nft flush table inet appliance`
    snap = sup.tick()
    assert snap["repaired"] == ["firewall"]
    assert ("apply", "firewall") in calls
    assert ("apply", "netlink") not in calls and ("apply", "ipsec") not in calls
    assert drivers[1].running == "new"
    assert "drift in firewall: set firewall to new" in logged
    assert sup.repairs == {"firewall": 1}
    assert [g.number for g in state.generations()] == [1]  # a repair is no new generation
    times = snap["last_repair"]["firewall"]
    assert set(snap["last_repair"]) == {"firewall"} and times["detected"] <= times["repaired"]
    text = health.prometheus(snap, sup.repairs)
    assert f'appliance_drift_last_repair_timestamp_seconds{{subsystem="firewall"}} {times["repaired"]:.3f}' in text


def test_no_repair_while_an_apply_holds_the_lock(tmp_path: Path) -> None:
    sup, drivers, calls, logged, state = setup(tmp_path)
    drivers[0].running = "deleted"
    with StateDir(state.root).locked("apply"):
        snap = sup.tick()
    assert snap["note"] == "an apply is running: drift repair skipped"
    assert drivers[0].running == "deleted"
    assert sup.tick()["repaired"] == ["netlink"]


def test_a_round_without_drift_does_not_need_the_lock(tmp_path: Path) -> None:
    """The drift check runs unlocked, so that it never makes the engineer's apply wait or fail."""
    sup, drivers, calls, logged, state = setup(tmp_path)
    with StateDir(state.root).locked("apply"):
        snap = sup.tick()
    assert snap["note"] is None and snap["repaired"] == []


def test_a_repair_goes_to_the_generation_an_apply_recorded_meanwhile(tmp_path: Path) -> None:
    sup, drivers, calls, logged, state = setup(tmp_path)
    drivers[1].running = "changed by an apply"
    newer = desired_of("examples/spoke2.yaml")
    looked_at = []
    first_diff = drivers[0].diff

    def diff_while_an_apply_records(desired):
        looked_at.append(desired)
        if len(looked_at) == 1:  # the unlocked look: an apply records generation 2 right now
            state.record(newer, {}, "site: 2\n", {"what": "apply"})
        return first_diff(desired)

    drivers[0].diff = diff_while_an_apply_records
    sup.tick()
    assert len(looked_at) >= 2 and all(d == newer for d in looked_at[1:])  # the locked look and the repair: gen 2


def test_spoke_without_registration_or_sa_is_unhealthy() -> None:
    desired = desired_of("examples/spoke1.yaml")
    h = health.collect(
        desired.role,
        "dmvpn0",
        link=lambda name: {"exists": False, "up": False},
        frr=lambda role: {"nhs": [], "nhs_registered": 0, "nhrp_peers": 0, "ospf_neighbours": 0, "ospf_full": 0},
        ipsec=lambda: {"error": "charon not reachable on /var/run/charon.vici: No such file or directory"},
        vrrp=lambda: {"groups": []},
    )
    assert h["problems"] == [
        "tunnel dmvpn0 does not exist",
        "not registered with any NHS",
        "IPsec: charon not reachable on /var/run/charon.vici: No such file or directory",
    ]
    assert h["healthy"] is False


def test_metrics_endpoint_serves_prometheus_text_on_loopback(tmp_path: Path) -> None:
    sup, *_ = setup(tmp_path)
    sup.tick()
    sup.repairs["netlink"] = 2
    server = serve_metrics(sup, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    assert "appliance_healthy 1\n" in body
    assert 'appliance_tunnel_up{tunnel="dmvpn0"} 1\n' in body
    assert 'appliance_vrrp_master{group="lan"} 1\n' in body
    assert 'appliance_drift_repairs_total{subsystem="netlink"} 2\n' in body


def test_sd_notify_speaks_to_systemds_socket(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("WATCHDOG=1")
        assert s.recv(64) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sd_notify("READY=1") is False


def test_ledger_is_what_drivers_get(tmp_path: Path) -> None:
    seen = []
    sup, drivers, *_ = setup(tmp_path)
    sup.make_drivers = lambda ledger: seen.append(ledger) or drivers
    sup.tick()
    assert isinstance(seen[0], Ledger)


class FakeNeighbourTable:
    """pyroute2 IPRoute's neighbour calls, on a dict {overlay: lladdr}."""

    class Msg(dict):
        def get_attr(self, name):
            return self.get(name)

    def __init__(self, entries: dict[str, str]) -> None:
        self.entries, self.calls = dict(entries), []

    def link_lookup(self, ifname):
        return [7] if ifname == "dmvpn0" else []

    def get_neighbours(self, ifindex):
        return [self.Msg(NDA_DST=dst, NDA_LLADDR=ll) for dst, ll in self.entries.items()]

    def neigh(self, command, **kw):
        self.calls.append((command, kw))
        self.entries[kw["dst"]] = kw["lladdr"]


def test_neighbours_nhrpd_left_at_0000_are_rewritten_from_its_cache() -> None:
    from appliance.nhrp_repair import repair_neighbours

    table = FakeNeighbourTable({"172.16.0.11": "0.0.0.0", "172.16.0.12": "198.51.100.6", "ff02::16": "0.0.0.0"})
    cache = [
        {"type": "dynamic", "protocol": "172.16.0.11", "nbma": "198.51.100.2"},
        {"type": "dynamic", "protocol": "172.16.0.12", "nbma": "198.51.100.6"},
        {"type": "local", "protocol": "172.16.0.1", "nbma": "192.0.2.2"},
    ]
    asked = []
    fixed = repair_neighbours("dmvpn0", lambda: asked.append(1) or cache, table)
    assert fixed == ["172.16.0.11 -> 198.51.100.2"]
    assert table.calls == [("replace", {"dst": "172.16.0.11", "lladdr": "198.51.100.2", "ifindex": 7, "state": 2})]
    # a healthy table costs no question to nhrpd
    assert repair_neighbours("dmvpn0", lambda: asked.append(1) or cache, table) == [] and len(asked) == 1


def test_a_round_reports_the_neighbour_repair(tmp_path: Path) -> None:
    sup, *_ = setup(tmp_path)
    sup.runtime_fixes = {"nhrp-neighbours": lambda desired: ["172.16.0.11 -> 198.51.100.2"], "nat-pairs": lambda d: []}
    snap = sup.tick()
    assert snap["repaired"] == ["nhrp-neighbours"] and sup.repairs == {"nhrp-neighbours": 1}


def test_a_runtime_fix_that_fails_does_not_stop_the_drift_repair(tmp_path: Path) -> None:
    """nhrpd killed: the NAT-pair fix cannot ask it, and the repair must still restart FRR."""
    sup, *_ = setup(tmp_path)
    repaired = []

    def dead_daemon(desired):
        raise RuntimeError("vtysh: nhrpd is not running")

    sup.runtime_fixes = {"nat-pairs": dead_daemon}
    sup.repair = lambda desired: repaired.append(desired) or ["frr"]
    snap = sup.tick()
    assert snap["repaired"] == ["frr"] and len(repaired) == 1


def test_a_slow_round_is_followed_by_as_long_a_pause(tmp_path: Path, monkeypatch) -> None:
    """Supervision never takes more than half a CPU from the daemons it watches (a loaded box)."""
    sup, *_ = setup(tmp_path)
    clock = iter([0.0, 3.0, 10.0, 10.2])  # round 1 takes 3 s, round 2 takes 0.2 s
    monkeypatch.setattr("appliance.supervisor.time.monotonic", lambda: next(clock))
    monkeypatch.setattr(sup, "tick", lambda: None)
    pauses: list[float] = []

    class Stop:
        def is_set(self) -> bool:
            return len(pauses) == 2

        def wait(self, seconds: float) -> None:
            pauses.append(seconds)

    sup.run(1.0, Stop())
    assert pauses == pytest.approx([3.0, 0.8])
