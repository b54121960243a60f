"""Dual hub (tests/lab/topologies/dual.yaml): spokes register with both hubs; when one hub stops
(all its links down, as if powered off), spoke-to-spoke and spoke-to-hub-LAN traffic continues
through the other (OSPF reconverges, VRRP moves 10.0.0.254 to hub2)."""

from __future__ import annotations

import time

import pytest
from dmvpn import TOPOLOGIES, cache_entry, ping, run_and_expect, show, wait_ospf_full, wait_ping

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def dual(lab_factory):
    lab = lab_factory(TOPOLOGIES / "dual.yaml")
    for hub in ("hub", "hub2"):
        wait_ospf_full(lab, hub, 2)
    return lab


def test_spokes_register_with_both_hubs(dual):
    for spoke in ("spoke5", "spoke6"):
        nhs = run_and_expect(
            lambda s=spoke: show(dual, s, "dmvpn")["nhs"], lambda n: sum(e["registered"] for e in n) == 2, 120
        )
        assert sorted(e["nbma"] for e in nhs) == ["192.0.2.2", "192.0.2.6"]
    for hub in ("hub", "hub2"):
        for overlay in ("172.16.0.15", "172.16.0.16"):
            assert cache_entry(dual, hub, overlay)["type"] == "dynamic"


def test_hub_lan_gateway_is_the_first_hub(dual):
    vrrp = run_and_expect(lambda: show(dual, "hub", "vrrp")["groups"], lambda g: g and g[0]["state"] == "MASTER", 120)
    assert vrrp[0]["name"] == "hublan"
    assert "10.0.0.254" in dual.check("hub", "ip -4 -o addr show dev eth1")


def test_traffic_continues_through_the_other_hub_when_one_stops(dual):
    wait_ping(dual, "host5", "10.0.0.10")
    wait_ping(dual, "host5", "10.0.6.10")
    dual.check("hub", "ip link set eth0 down; ip link set eth1 down")  # hub is gone
    stopped = time.monotonic()
    try:
        ttls = wait_ping(dual, "host5", "10.0.0.10", timeout=120)
        lan_back = time.monotonic() - stopped
        wait_ping(dual, "host6", "10.0.5.10", timeout=120)
        spokes_back = time.monotonic() - stopped
        print(f"hub LAN reachable again after {lan_back:.0f} s, spoke-to-spoke after {spokes_back:.0f} s")
        assert ttls, ttls
        assert run_and_expect(lambda: show(dual, "hub2", "vrrp")["groups"], lambda g: g[0]["state"] == "MASTER", 60)
        replies, _ = ping(dual, "host5", "10.0.0.10", count=5, interval=0.3)
        assert replies >= 4
        assert ping(dual, "host6", "10.0.5.10", count=5, interval=0.3)[0] >= 4
    finally:
        dual.check("hub", "ip link set eth0 up; ip link set eth1 up")
