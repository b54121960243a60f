"""The core DMVPN, built only by `appliance apply`: phase 3 with OSPF-MD5 and a PSK, a spoke behind
NAT, every GRE packet inside ESP, the firewall, and a rogue box (tests/lab/topologies/core.yaml).

Addresses: hub 192.0.2.2 (overlay 172.16.0.1, LAN 10.0.0.0/24, host0 10.0.0.10), spoke1
198.51.100.2 (.11, 10.0.1.0/24, host1), spoke2 198.51.100.6 (.12, 10.0.2.0/24, host2), spoke3
192.168.100.2 behind nat3 = 203.0.113.2 (.13, 10.0.3.0/24, host3), inet on every public link.
"""

from __future__ import annotations

import json
import re

import pytest
from dmvpn import (
    APPLIANCE,
    REPO,
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
    wait_direct_path,
    wait_ping,
    xfrm_stat,
)

pytestmark = pytest.mark.lab("core")  # one boot of core for every module on it

HUB, SPOKE1, SPOKE2, NAT3 = "192.0.2.2", "198.51.100.2", "198.51.100.6", "203.0.113.2"


def test_spokes_register_with_the_hub(core):
    for overlay, nbma in (("172.16.0.11", SPOKE1), ("172.16.0.12", SPOKE2), ("172.16.0.13", NAT3)):
        entry = run_and_expect(lambda o=overlay: cache_entry(core, "hub", o), lambda e: e is not None, 120)
        assert (entry["type"], entry["nbma"]) == ("dynamic", nbma), entry
    nhs = show(core, "spoke1", "dmvpn")["nhs"]
    assert [(n["nbma"], n["registered"]) for n in nhs] == [(HUB, True)]


def test_lan_host_behind_a_spoke_reaches_the_hub_lan(core):
    wait_ping(core, "host1", "10.0.0.10")
    replies, ttls = ping(core, "host1", "10.0.0.10", count=3)
    assert replies == 3 and set(ttls) == {62}, ttls  # host0 <- hub <- spoke1: two routers


def test_ospf_with_md5_is_full_and_carries_the_lans(core):
    data = show(core, "hub", "ospf")
    full = {n["router_id"] for n in data["neighbours"] if n["state"].startswith("Full")}
    assert {"10.0.1.1", "10.0.2.1", "10.0.3.1"} <= full
    assert {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"} <= set(data["routes"])
    conf = core.check("hub", "vtysh -c 'show running-config' | grep -c 'message-digest-key 1 md5'")
    assert conf.strip() == "1"


def test_ikev2_with_aes256_gcm_is_negotiated(core):
    sa = run_and_expect(lambda: sas_with(core, "spoke1", HUB), lambda s: len(s) > 0, 60)[0]
    assert (sa["state"], sa["version"], sa["encryption"]) == ("ESTABLISHED", 2, "AES_GCM_16-256"), sa
    assert sa["dh_group"] == "ECP_384", sa
    child = sa["children"][0]
    assert (child["state"], child["protocol"], child["encryption"]) == ("INSTALLED", "ESP", "AES_GCM_16-256")


def test_every_gre_packet_on_the_underlay_is_inside_esp(core):
    """Capture on every public link of the internet router while LANs talk: never IP protocol 47."""
    core.check("inet", "rm -f /tmp/gre.pcap /tmp/esp.pcap")
    core.check("inet", "(timeout 20 tcpdump -n -i any -w /tmp/gre.pcap 'ip proto 47' >/dev/null 2>&1 &)")
    core.check("inet", "(timeout 20 tcpdump -n -i any -w /tmp/esp.pcap 'esp or udp port 4500' >/dev/null 2>&1 &)")
    run_and_expect(lambda: core.check("inet", "pgrep -c tcpdump").strip(), "2", 30, interval=1)
    for host, dst in (("host1", "10.0.2.10"), ("host1", "10.0.0.10"), ("host3", "10.0.1.10"), ("host2", "10.0.3.10")):
        ping(core, host, dst, count=5, interval=0.3)
    run_and_expect(lambda: core.exec("inet", "pgrep tcpdump").rc, 1, 60, interval=2)  # both captures ended
    gre = core.check("inet", "tcpdump -n -r /tmp/gre.pcap 2>/dev/null | wc -l").strip()
    esp = int(core.check("inet", "tcpdump -n -r /tmp/esp.pcap 2>/dev/null | wc -l").strip())
    assert gre == "0", f"{gre} cleartext GRE packets crossed the underlay"
    assert esp >= 20, f"only {esp} ESP/NAT-T packets seen: was there traffic?"


def test_cleartext_gre_sent_at_a_box_is_dropped(core):
    """inet builds its own GRE tunnel (right key) to spoke1 and sends through it: nothing gets in."""
    drops_before = nft_counter(core, "spoke1", "public-drop")
    mismatch_before = xfrm_stat(core, "spoke1", "XfrmInTmplMismatch")
    core.check(
        "inet",
        "ip link add gre-test type gre local 198.51.100.1 remote 198.51.100.2 key 42 ttl 64; "
        "ip addr add 172.16.0.250/32 dev gre-test; ip link set gre-test up; "
        "ip route add 172.16.0.11/32 dev gre-test",
    )
    try:
        replies, _ = ping(core, "inet", "172.16.0.11", count=4, interval=0.3)
    finally:
        core.exec("inet", "ip link del gre-test")
    assert replies == 0
    dropped = nft_counter(core, "spoke1", "public-drop") - drops_before
    mismatched = xfrm_stat(core, "spoke1", "XfrmInTmplMismatch") - mismatch_before
    assert dropped + mismatched >= 4, (dropped, mismatched)


def test_only_ike_and_esp_are_answered_on_the_public_address(core):
    """A TCP/UDP scan of the hub from the underlay gets nothing back; ICMP echo is answered."""
    scan = r"""
import socket
tcp_answered = []
for port in (22, 80, 179, 443, 2601, 2604, 8080, 9469):
    s = socket.socket(); s.settimeout(1.5)
    try:
        s.connect(("192.0.2.2", port)); tcp_answered.append(port)
    except ConnectionRefusedError:
        tcp_answered.append(port)  # an RST is an answer too
    except OSError:
        pass
    s.close()
udp_answered = []
for port in (53, 123, 161, 1701, 4789):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5)
    s.connect(("192.0.2.2", port)); s.send(b"probe")
    try:
        s.recv(100); udp_answered.append(port)
    except ConnectionRefusedError:
        udp_answered.append(port)  # ICMP port unreachable came back
    except OSError:
        pass
    s.close()
print(tcp_answered, udp_answered)
"""
    before = nft_counter(core, "hub", "public-drop")
    out = core.lab.exec("inet", ["python3", "-c", scan], timeout=120)
    assert out.rc == 0, out.output
    assert out.stdout.strip() == "[] []", out.stdout
    assert nft_counter(core, "hub", "public-drop") - before >= 13
    assert ping(core, "inet", HUB, count=2)[0] == 2
    # IKE is answered: the spokes' SAs with the hub exist (see the IKE test); ESP carries the tunnel
    assert sas_with(core, "hub", SPOKE1)


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
    sa = wait_direct_path(core, "host1", "10.0.2.10", "spoke1", "spoke2", "172.16.0.11", SPOKE2)
    replies, ttls = ping(core, "host1", "10.0.2.10", count=3)
    assert replies == 3 and set(ttls) == {62}, ttls  # host2 <- spoke2 <- spoke1: the hub is not in the path
    hops = traceroute_hops(core, "host1", "10.0.2.10")
    assert "172.16.0.1" not in hops and hops[-1] == "10.0.2.10", hops
    child = sas_with(core, "spoke1", SPOKE2)[0]["children"][0]
    assert child["mode"] == "TRANSPORT" and child["bytes_out"] > 0, sa


def test_tunnel_policy_of_the_site_is_enforced(core, tmp_path_factory):
    """Re-apply the hub with a tunnel rule dropping ICMP from spoke1's LAN to the hub LAN."""
    site = core.check("hub", f"cat {REPO}/examples/hub.yaml")
    policy = (
        "\n  tunnel:\n    rules:\n      - {action: drop, sources: [10.0.1.0/24], destinations: [10.0.0.0/24], "
        "protocol: icmp}\n"
    )
    assert "firewall:\n" in site
    changed = site.replace("firewall:\n", "firewall:" + policy, 1)
    core.lab.exec("hub", ["sh", "-c", "cat > /tmp/hub-policy.yaml"], stdin=changed)
    try:
        plan = json.loads(appliance(core, "hub", "plan --json /tmp/hub-policy.yaml"))
        assert set(plan["subsystems"]) == {"firewall"}, plan  # the ruleset and its boot-time copy
        appliance(core, "hub", "apply /tmp/hub-policy.yaml")
        assert ping(core, "host1", "10.0.0.10", count=3)[0] == 0
        assert ping(core, "host2", "10.0.0.10", count=3)[0] == 3
    finally:
        appliance(core, "hub", f"apply {REPO}/examples/hub.yaml")
    wait_ping(core, "host1", "10.0.0.10", timeout=60)


def test_wrong_md5_key_forms_no_adjacency_and_its_routes_are_not_learned(core):
    good = get_secret(core, "spoke2", "OSPF_KEY")
    set_secret(core, "spoke2", "OSPF_KEY", "wrong-key")
    try:
        appliance(core, "spoke2", f"apply {REPO}/examples/spoke2.yaml")
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
        appliance(core, "spoke2", f"apply {REPO}/examples/spoke2.yaml")
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
