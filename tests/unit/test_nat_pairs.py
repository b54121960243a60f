"""A NATed spoke routes shortcuts to NATed peers through its NHS (appliance/nat_pairs.py)."""

from __future__ import annotations

import socket
import subprocess

from netns import in_fresh_netns

from appliance import status
from appliance.nat_pairs import FALLBACK_TABLE, RULE_PRIORITY, routes_through_hub, sync

NHS = {"protocol": "172.16.0.1", "nbma": "192.0.2.2", "registered": True}


def dmvpn(own_claimed: str, shortcuts: list[tuple[str, str]], peers: list[tuple[str, str, str]]) -> dict:
    """status.dmvpn() of spoke3 (NBMA 203.0.113.2 as the hub sees it)."""
    cache = [
        {"type": "nhs", "protocol": "172.16.0.1", "nbma": "192.0.2.2", "claimed_nbma": "192.0.2.2"},
        {"type": "local", "protocol": "172.16.0.13", "nbma": "203.0.113.2", "claimed_nbma": own_claimed},
    ]
    cache += [{"type": "dynamic", "protocol": p, "nbma": n, "claimed_nbma": c} for p, n, c in peers]
    return {
        "nhs": [NHS],
        "cache": cache,
        "shortcuts": [{"type": "dynamic", "prefix": p, "via": v} for p, v in shortcuts],
    }


PEERS = [
    ("172.16.0.11", "198.51.100.2", "198.51.100.2"),  # spoke1, public
    ("172.16.0.14", "203.0.113.6", "192.168.100.2"),  # spoke4, behind nat4
]
SHORTCUTS = [("10.0.1.0/24", "172.16.0.11"), ("10.0.4.0/24", "172.16.0.14")]


def test_a_natted_spoke_sends_traffic_for_a_natted_peer_through_the_hub_and_keeps_public_ones_direct() -> None:
    routes = routes_through_hub(dmvpn("192.168.100.2", SHORTCUTS, PEERS))
    assert routes == {"10.0.4.0/24": "172.16.0.1", "172.16.0.14/32": "172.16.0.1"}


def test_a_spoke_on_a_public_address_keeps_every_shortcut() -> None:
    assert routes_through_hub(dmvpn("203.0.113.2", SHORTCUTS, PEERS)) == {}


def test_nothing_is_rerouted_before_the_nhs_answered() -> None:
    state = dmvpn("192.168.100.2", SHORTCUTS, PEERS)
    state["nhs"] = [{**NHS, "registered": False}]
    assert routes_through_hub(state) == {}


class Msg(dict):
    def __init__(self, attrs: dict, **fields) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str):
        return self.attrs.get(name)


class FakeIPRoute:
    """The part of pyroute2's IPRoute sync() uses, over an in-memory table 142 (and a main-table route
    to ignore: route dumps hold every table) and rule list."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.rules: list[int] = []
        self.calls: list[tuple] = []

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "dmvpn0" else []

    def get_routes(self, family: int) -> list[Msg]:
        assert family == socket.AF_INET
        out = [Msg({"RTA_TABLE": 254, "RTA_DST": "10.0.9.0", "RTA_GATEWAY": "192.0.2.1"}, dst_len=24, table=254)]
        for prefix, via in self.routes.items():
            dst, length = prefix.split("/")
            attrs = {"RTA_TABLE": FALLBACK_TABLE, "RTA_DST": dst, "RTA_GATEWAY": via}
            out.append(Msg(attrs, dst_len=int(length), table=FALLBACK_TABLE))
        return out

    def route(self, command: str, **kw) -> None:
        self.calls.append(("route", command, kw["dst"]))
        assert kw["table"] == FALLBACK_TABLE
        if command == "replace":
            assert kw["oif"] == 7 and kw["flags"] == 4  # onlink over the tunnel
            self.routes[kw["dst"]] = kw["gateway"]
        else:
            del self.routes[kw["dst"]]

    def get_rules(self, family: int) -> list[Msg]:
        return [Msg({"FRA_TABLE": FALLBACK_TABLE}, priority=p) for p in self.rules]

    def rule(self, command: str, table: int, priority: int) -> None:
        assert (table, priority) == (FALLBACK_TABLE, RULE_PRIORITY)
        self.calls.append(("rule", command))
        if command == "add":
            self.rules.append(priority)
        else:
            self.rules.remove(priority)


def test_sync_installs_the_table_and_its_rule_then_changes_nothing_then_removes_both() -> None:
    ipr = FakeIPRoute()
    wanted = {"10.0.4.0/24": "172.16.0.1", "172.16.0.14/32": "172.16.0.1"}
    changes = sync("dmvpn0", wanted, ipr)
    assert changes == [
        "10.0.4.0/24 via 172.16.0.1 (both spokes behind NAT)",
        "172.16.0.14/32 via 172.16.0.1 (both spokes behind NAT)",
    ]
    assert ipr.routes == wanted and ipr.rules == [RULE_PRIORITY]
    ipr.calls.clear()
    assert sync("dmvpn0", wanted, ipr) == [] and ipr.calls == []  # a steady state writes nothing
    assert sync("dmvpn0", {}, ipr) == ["10.0.4.0/24: direct again", "172.16.0.14/32: direct again"]
    assert ipr.routes == {} and ipr.rules == []


@in_fresh_netns
def test_show_reads_the_routes_of_table_142_from_the_kernel() -> None:
    for args in (
        ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"],
        ["link", "set", "eth0", "up"],
        ["addr", "add", "192.0.2.2/24", "dev", "eth0"],
        ["route", "add", "10.0.4.0/24", "via", "192.0.2.1", "table", str(FALLBACK_TABLE)],
        ["route", "add", "10.0.9.0/24", "via", "192.0.2.1"],
    ):
        subprocess.run(["ip", *args], check=True)
    assert status._nat_pair_routes() == {"10.0.4.0/24": "192.0.2.1"}
