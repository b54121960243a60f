"""Phase 1: hub-and-spoke only (tests/lab/topologies/phase1.yaml). Spokes register with the hub and
reach its LAN; spoke-to-spoke traffic always crosses the hub: no shortcut, no spoke-to-spoke SA."""

from __future__ import annotations

import pytest
from dmvpn import TOPOLOGIES, cache_entry, ping, routes, run_and_expect, sas_with, wait_ospf_full, wait_ping

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def phase1(lab_factory):
    lab = lab_factory(TOPOLOGIES / "phase1.yaml")
    wait_ospf_full(lab, "hub", 2)
    return lab


def test_both_spokes_register_with_the_hub(phase1):
    for overlay, nbma in (("172.16.0.11", "198.51.100.2"), ("172.16.0.12", "198.51.100.6")):
        entry = run_and_expect(lambda o=overlay: cache_entry(phase1, "hub", o), lambda e: e is not None, 120)
        assert (entry["type"], entry["nbma"]) == ("dynamic", nbma)


def test_spoke_lan_reaches_hub_lan(phase1):
    wait_ping(phase1, "host1", "10.0.0.10")
    assert ping(phase1, "host1", "10.0.0.10")[0] == 3


def test_spoke_to_spoke_always_crosses_the_hub(phase1):
    wait_ping(phase1, "host1", "10.0.2.10")
    for _ in range(3):  # keep traffic flowing long enough for a redirect/shortcut, were there one
        replies, ttls = ping(phase1, "host1", "10.0.2.10", count=5, interval=0.3)
        assert replies == 5 and set(ttls) == {61}, ttls  # host2 <- spoke2 <- hub <- spoke1
    # nhrpd routes its NHS (the hub's /32); a shortcut would be a second nhrp route
    nhrp_routes = [r["dst"] for r in routes(phase1, "spoke1") if r.get("protocol") == "nhrp"]
    assert nhrp_routes == ["172.16.0.1"], nhrp_routes
    assert cache_entry(phase1, "spoke1", "172.16.0.12") is None
    assert sas_with(phase1, "spoke1", "198.51.100.6") == []
    conf = phase1.check("spoke1", "vtysh -c 'show running-config' | grep -c 'ip nhrp shortcut' || true")
    assert conf.strip() == "0"
