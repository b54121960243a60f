"""Spokes behind NAT (tests/lab/topologies/nat.yaml): spoke3 and spoke4 share the private NBMA
address 192.168.100.2 behind two different NAT routers (nat3 = 203.0.113.2, nat4 = 203.0.113.6);
spoke1 is on a public address. NAT-T on UDP 4500 and nhrpd's NAT extension, no NHRP NAT setting."""

from __future__ import annotations

import json

import pytest
from dmvpn import (
    TOPOLOGIES,
    appliance,
    cache_entry,
    configure_box,
    neighbour,
    ping,
    pinging,
    route_to,
    run_and_expect,
    sas_with,
    show,
    spoke_site,
    wait_ospf_full,
    wait_ping,
)

pytestmark = pytest.mark.lab

SPOKE1, NAT3, NAT4 = "198.51.100.2", "203.0.113.2", "203.0.113.6"


@pytest.fixture(scope="module")
def nat(lab_factory):
    lab = lab_factory(TOPOLOGIES / "nat.yaml")
    wait_ospf_full(lab, "hub", 3)
    return lab


def test_spokes_behind_two_nats_with_one_private_address_both_register(nat):
    for overlay, public in (("172.16.0.13", NAT3), ("172.16.0.14", NAT4)):
        entry = run_and_expect(lambda o=overlay: cache_entry(nat, "hub", o), lambda e: e is not None, 120)
        assert (entry["nbma"], entry["claimed_nbma"]) == (public, "192.168.100.2"), entry
        sa = sas_with(nat, "hub", public)[0]
        assert sa["nat_remote"] and sa["remote"] == f"{public}[4500]", sa
        assert sa["children"][0]["encap"], sa
    assert show(nat, "hub", "dmvpn")["warnings"] == []


def shortcut(lab, node: str, prefix: str, via: str, pinger: str, dst: str) -> dict:
    """Wait for node's NHRP shortcut to prefix while pinger keeps sending to dst (redirects and
    resolutions happen only while traffic flows)."""
    return run_and_expect(
        pinging(lab, pinger, dst, lambda: route_to(lab, node, prefix)),
        lambda r: r is not None and r.get("protocol") == "nhrp" and r.get("gateway") == via,
        120,
        what=f"{node} shortcut to {prefix} via {via}",
    )


def test_nat_spoke_and_public_spoke_build_a_direct_shortcut(nat):
    wait_ping(nat, "host3", "10.0.1.10")
    shortcut(nat, "spoke3", "10.0.1.0/24", "172.16.0.11", "host3", "10.0.1.10")
    wait_ping(nat, "host1", "10.0.3.10")
    shortcut(nat, "spoke1", "10.0.3.0/24", "172.16.0.13", "host1", "10.0.3.10")
    assert neighbour(nat, "spoke1", "dmvpn0", "172.16.0.13")["lladdr"] == NAT3
    replies, ttls = ping(nat, "host1", "10.0.3.10")
    assert replies == 3 and set(ttls) == {62}, ttls
    assert sas_with(nat, "spoke1", NAT3), "no direct SA between spoke1 and the NAT'd spoke3"


def test_shortcut_survives_its_sa_being_deleted_while_the_nhrp_entry_remains(nat):
    """spoke1 keeps its NHRP entry for spoke3 (NBMA = nat3) but loses the IPsec SA to it; the next
    packets must still get through (direct again, or through the hub): never a black hole."""
    wait_ping(nat, "host1", "10.0.3.10")
    for sa in sas_with(nat, "spoke1", NAT3):
        nat.check("spoke1", f"swanctl --terminate --ike-id {sa['uniqueid']} --timeout 20 >/dev/null || true")
    run_and_expect(lambda: sas_with(nat, "spoke1", NAT3), [], 60, what="spoke1-spoke3 SA deleted")
    assert cache_entry(nat, "spoke1", "172.16.0.13") is not None, "the NHRP entry should remain"
    ttls = wait_ping(nat, "host1", "10.0.3.10", timeout=120)
    assert set(ttls) <= {61, 62}, ttls
    replies, _ = ping(nat, "host1", "10.0.3.10", count=5, interval=0.3)
    assert replies >= 4


def test_spokes_behind_two_different_nats_never_black_hole(nat):
    """spoke3 <-> spoke4 (both 192.168.100.2, behind nat3 and nat4): nhrpd builds a shortcut to the
    other NAT router, where neither spoke can open IKE (measured); the supervisor of a NATed spoke
    routes such a peer's prefixes through the hub (appliance/nat_pairs.py)."""
    wait_ping(nat, "host3", "10.0.4.10")
    first, _ = ping(nat, "host3", "10.0.4.10", count=40, interval=0.25)  # the shortcut forms meanwhile
    print(f"host3 -> host4, first contact: {first} of 40 pings answered (0.25 s apart)")
    run_and_expect(lambda: ping(nat, "host3", "10.0.4.10", count=5, interval=0.3)[0], 5, 90, what="settled")
    seen = []
    for _ in range(6):
        replies, ttls = ping(nat, "host3", "10.0.4.10", count=5, interval=0.3)
        seen += ttls
        assert replies == 5, f"host3 -> host4 lost {5 - replies} of 5: {ttls}"
    print("host3 -> host4 TTLs:", seen, "(62 direct, 61 via the hub)")
    assert set(seen) <= {61, 62}
    through_hub = json.loads(nat.check("spoke3", "ip -j route show table 142"))
    if 61 in seen:  # through the hub: the supervisor's table says why
        assert any(r["dst"] == "10.0.4.0/24" and r.get("gateway") == "172.16.0.1" for r in through_hub), through_hub


SPOKE5_SITE = spoke_site("spoke5", "192.168.101.2/24", "192.168.101.1", "172.16.0.17", "10.0.7.1/24")


def test_hub_flags_two_spokes_behind_one_pat_address(nat):
    """Last in this module: it breaks spoke3 (both spokes' GRE goes into one SA, measured)."""
    secrets = nat.check("spoke3", "cat /etc/appliance/secrets.env")
    configure_box(nat, "spoke5", SPOKE5_SITE, secrets)
    data = run_and_expect(
        lambda: show(nat, "hub", "dmvpn"), lambda d: d["warnings"] != [], 180, what="hub warns about one PAT address"
    )
    assert data["warnings"] == [
        f"2 spokes registered from NBMA {NAT3}: spokes behind one PAT address cannot all work "
        "(Linux transport-mode IPsec selects SAs by address, not port)"
    ]
    assert f"warning: 2 spokes registered from NBMA {NAT3}" in appliance(nat, "hub", "show dmvpn")
