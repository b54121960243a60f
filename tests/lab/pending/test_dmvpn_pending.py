"""Core DMVPN scenarios written but not yet seen passing in the lab VM (see README.md here).

Seen in runs on a loaded machine: the phase-3 test passed its shortcut checks in two runs and
failed in another because nhrpd (FRR 8.4.4) sent no redirect for the spoke whose tunnel neighbour
it had left at lladdr 0.0.0.0 (the supervisor repairs the neighbour, not nhrpd's peer state);
the other three never ran to the end (the machine's load timed the lab out). Move them back into
tests/lab/test_dmvpn.py (which has the `core` fixture) once they pass.
"""

from __future__ import annotations

import re

import pytest
from dmvpn import (
    APPLIANCE,
    appliance,
    cache_entry,
    configure_box,
    get_secret,
    neighbour,
    nft_counter,
    ping,
    pinging,
    route_to,
    run_and_expect,
    sas_with,
    set_secret,
    show,
    spoke_site,
    traceroute_hops,
    wait_ping,
    xfrm_stat,
)
from test_dmvpn import SPOKE2

pytestmark = pytest.mark.lab


def test_phase3_spoke_to_spoke_goes_direct_after_the_first_packets(core):
    wait_ping(core, "host1", "10.0.2.10")
    # the hub redirects, spoke1 resolves spoke2 and installs a shortcut route over the tunnel
    shortcut = run_and_expect(
        pinging(core, "host1", "10.0.2.10", lambda: route_to(core, "spoke1", "10.0.2.0/24")),
        lambda r: r is not None and r.get("protocol") == "nhrp" and r.get("gateway") == "172.16.0.12",
        120,
        what="spoke1 NHRP shortcut to 10.0.2.0/24",
    )
    assert shortcut["dev"] == "dmvpn0"
    neigh = neighbour(core, "spoke1", "dmvpn0", "172.16.0.12")
    assert neigh and neigh["lladdr"] == SPOKE2, neigh
    assert cache_entry(core, "spoke1", "172.16.0.12")["nbma"] == SPOKE2
    # the replies take the hub until the hub redirects spoke2 too
    assert run_and_expect(
        pinging(core, "host1", "10.0.2.10", lambda: cache_entry(core, "spoke2", "172.16.0.11")),
        lambda e: e is not None,
        120,
        what="spoke2 NHRP cache entry for spoke1",
    )
    # the first GRE packet to spoke2 triggers IKE; until the SA is up the kernel holds or drops
    # packets (XfrmOutNoStates): seconds under emulation
    sa = run_and_expect(
        pinging(core, "host1", "10.0.2.10", lambda: sas_with(core, "spoke1", SPOKE2)),
        lambda s: any(c.get("state") == "INSTALLED" for sa in s for c in sa["children"]),
        120,
        what="spoke1-spoke2 SA",
    )[0]
    wait_ping(core, "host1", "10.0.2.10", timeout=60)
    replies, ttls = ping(core, "host1", "10.0.2.10", count=3)
    assert replies == 3 and set(ttls) == {62}, ttls  # host2 <- spoke2 <- spoke1: the hub is not in the path
    hops = traceroute_hops(core, "host1", "10.0.2.10")
    assert "172.16.0.1" not in hops and hops[-1] == "10.0.2.10", hops
    child = sas_with(core, "spoke1", SPOKE2)[0]["children"][0]
    assert child["mode"] == "TRANSPORT" and child["bytes_out"] > 0, sa


def test_tunnel_policy_of_the_site_is_enforced(core, tmp_path_factory):
    """Re-apply the hub with a tunnel rule dropping ICMP from spoke1's LAN to the hub LAN."""
    site = core.check("hub", "cat /work/main/examples/hub.yaml")
    policy = (
        "\n  tunnel:\n    rules:\n      - {action: drop, sources: [10.0.1.0/24], destinations: [10.0.0.0/24], "
        "protocol: icmp}\n"
    )
    assert "firewall:\n" in site
    changed = site.replace("firewall:\n", "firewall:" + policy, 1)
    core.lab.exec("hub", ["sh", "-c", "cat > /tmp/hub-policy.yaml"], stdin=changed)
    try:
        out = appliance(core, "hub", "apply /tmp/hub-policy.yaml")
        assert "applied 1 change" in out, out
        assert ping(core, "host1", "10.0.0.10", count=3)[0] == 0
        assert ping(core, "host2", "10.0.0.10", count=3)[0] == 3
    finally:
        appliance(core, "hub", "apply /work/main/examples/hub.yaml")
    wait_ping(core, "host1", "10.0.0.10", timeout=60)


def test_wrong_md5_key_forms_no_adjacency_and_its_routes_are_not_learned(core):
    good = get_secret(core, "spoke2", "OSPF_KEY")
    set_secret(core, "spoke2", "OSPF_KEY", "wrong-key")
    try:
        appliance(core, "spoke2", "apply /work/main/examples/spoke2.yaml")
        run_and_expect(
            lambda: show(core, "hub", "ospf"),
            lambda d: "10.0.2.1" not in {n["router_id"] for n in d["neighbours"]} and "10.0.2.0/24" not in d["routes"],
            90,
            what="hub drops spoke2's adjacency and route",
        )
        # still not learned a while later: hellos with the wrong key keep being refused
        assert "10.0.2.0/24" not in show(core, "hub", "ospf")["routes"]
        # ospfd says why: "ospf_check_md5 checksum mismatch, Router-ID: 10.0.2.1"
        assert re.search(
            r"md5 checksum mismatch, router-id: 10\.0\.2\.1",
            core.check("hub", "grep -i ospf /var/log/syslog | tail -20").lower(),
        )
    finally:
        set_secret(core, "spoke2", "OSPF_KEY", good)
        appliance(core, "spoke2", "apply /work/main/examples/spoke2.yaml")
    core.expect("hub", f"{APPLIANCE} show ospf --json", lambda d: "10.0.2.0/24" in d["routes"], timeout=180)


ROGUE_SITE = spoke_site("rogue", "198.51.100.14/30", "198.51.100.13", "172.16.0.66", "10.0.66.1/24")


def test_rogue_box_without_the_psk_cannot_register_or_inject_routes(core):
    """Right GRE key, NHRP network-id and even the OSPF key, wrong PSK: nothing gets through;
    with its IPsec policies flushed it sends cleartext GRE, which the hub drops."""
    ospf_key = get_secret(core, "hub", "OSPF_KEY")
    configure_box(core, "rogue", ROGUE_SITE, f"DMVPN_PSK=not-the-psk-0123456789abcdef\nOSPF_KEY={ospf_key}\n")
    mismatch_before = xfrm_stat(core, "hub", "XfrmInTmplMismatch")
    drops_before = nft_counter(core, "hub", "public-drop")
    for _ in range(3):
        ping(core, "rogue", "172.16.0.1", count=3)
    assert not sas_with(core, "hub", "198.51.100.14") or all(
        sa["state"] != "ESTABLISHED" for sa in sas_with(core, "hub", "198.51.100.14")
    )
    hub_log = core.check("hub", "tail -n 400 /var/log/syslog")
    assert re.search(r"MAC mismatched|AUTHENTICATION_FAILED|authentication of .* failed", hub_log), hub_log[-2000:]
    # now without IPsec at all: cleartext GRE carrying NHRP registrations and OSPF
    core.check("rogue", "ip xfrm policy flush; ip xfrm state flush")
    for _ in range(3):
        ping(core, "rogue", "172.16.0.1", count=3)
    assert cache_entry(core, "hub", "172.16.0.66") is None
    assert route_to(core, "hub", "10.0.66.0/24") is None
    assert "10.0.66.0/24" not in show(core, "hub", "ospf")["routes"]
    blocked = (xfrm_stat(core, "hub", "XfrmInTmplMismatch") - mismatch_before) + (
        nft_counter(core, "hub", "public-drop") - drops_before
    )
    assert blocked > 0, "the rogue's cleartext GRE was neither dropped by nftables nor by the kernel"
