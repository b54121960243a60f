"""BGP over the overlay (tests/lab/topologies/bgp.yaml, examples/bgp/): the hub is a route
reflector with a listen range; first it advertises only the summary 10.0.0.0/16 and phase-3
shortcuts carry spoke-to-spoke traffic; then, without the summary, spokes learn each other's LANs."""

from __future__ import annotations

import json

import pytest
from dmvpn import (
    APPLIANCE,
    REPO,
    TOPOLOGIES,
    appliance,
    ping,
    pinging,
    route_to,
    run_and_expect,
    show,
    wait_direct_path,
    wait_ping,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def bgp(lab_factory):
    lab = lab_factory(TOPOLOGIES / "bgp.yaml")
    lab.expect(
        "hub",
        f"{APPLIANCE} show bgp --json",
        lambda d: sum(p["state"] == "Established" and p["dynamic"] for p in d["peers"]) >= 2,
        timeout=300,
    )
    return lab


def bgp_routes(lab, node: str) -> dict:
    return json.loads(lab.check(node, "vtysh -c 'show ip route bgp json'"))


def test_hub_reflects_to_dynamic_peers_from_the_listen_range(bgp):
    peers = {p["peer"]: p for p in show(bgp, "hub", "bgp")["peers"]}
    assert {"172.16.0.11", "172.16.0.12"} <= set(peers)
    assert all(peers[p]["dynamic"] and peers[p]["state"] == "Established" for p in ("172.16.0.11", "172.16.0.12"))


def test_summary_only_then_shortcut_between_spokes(bgp):
    learned = run_and_expect(lambda: bgp_routes(bgp, "spoke1"), lambda r: "10.0.0.0/16" in r, 120)
    assert "10.0.2.0/24" not in learned  # the hub advertises only the summary
    wait_ping(bgp, "host1", "10.0.2.10")
    run_and_expect(
        pinging(bgp, "host1", "10.0.2.10", lambda: route_to(bgp, "spoke1", "10.0.2.0/24")),
        lambda r: r is not None and r.get("protocol") == "nhrp" and r.get("gateway") == "172.16.0.12",
        120,
        what="spoke1 shortcut to 10.0.2.0/24 under a summary route",
    )
    wait_direct_path(bgp, "host1", "10.0.2.10", "spoke1", "spoke2", "172.16.0.11", "198.51.100.6")
    replies, ttls = ping(bgp, "host1", "10.0.2.10")
    assert replies == 3 and set(ttls) == {62}, ttls


def test_without_the_summary_spokes_learn_each_others_lans(bgp):
    site = bgp.check("hub", f"cat {REPO}/examples/bgp/hub.yaml")
    assert "summary_only: [10.0.0.0/16]" in site
    bgp.lab.exec(
        "hub",
        ["sh", "-c", "cat > /tmp/hub-no-summary.yaml"],
        stdin=site.replace("    summary_only: [10.0.0.0/16]\n", ""),
    )
    try:
        appliance(bgp, "hub", "apply /tmp/hub-no-summary.yaml")
        learned = run_and_expect(
            lambda: bgp_routes(bgp, "spoke1"), lambda r: "10.0.2.0/24" in r, 120, what="spoke1 learns 10.0.2.0/24"
        )
        nexthops = [nh.get("ip") for route in learned["10.0.2.0/24"] for nh in route.get("nexthops", [])]
        assert "172.16.0.12" in nexthops, learned["10.0.2.0/24"]  # the reflector keeps spoke2 as next hop
        wait_ping(bgp, "host1", "10.0.2.10")
    finally:
        appliance(bgp, "hub", f"apply {REPO}/examples/bgp/hub.yaml")
