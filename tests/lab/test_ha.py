"""High availability (tests/lab/topologies/ha.yaml): VRRP failover on the hub LAN and on a spoke
pair's LAN within the bound the configured intervals give, a spoke that loses its tunnel giving up
mastership, one of two hubs stopped (issue 5's dual hub: spokes register with both, traffic
continues through the other), forged VRRP dropped and counted, drift repaired by `appliance
supervise`, and its metrics reachable only from the box itself."""

from __future__ import annotations

import json
import math

import pytest
from dmvpn import TOPOLOGIES, cache_entry, ping, show, wait_ping
from ha import (
    APPLIANCE,
    DRIFTS,
    health,
    holds_address,
    master_down_interval,
    ping_outage,
    repair_time,
    start_supervisor,
    stop_supervisor,
    vrrp_group,
    vrrp_state,
    wait_master,
    wait_tunnel_ping,
)

from appliance.lab.expect import run_and_expect

pytestmark = pytest.mark.lab

HUB_VIP, SPOKE_VIP = "10.0.0.254", "10.0.7.254"
SPOKEA_TUNNEL, SPOKEB_TUNNEL = "172.16.0.21", "172.16.0.22"
SPOKEB_PUBLIC = "198.51.100.18"
# TCG on two shared cores delays keepalived's timers and the gratuitous ARP: seconds, not ms.
TCG_MARGIN_S = 2.5
METRICS_PORT = 9469


@pytest.fixture(scope="module")
def ha(lab_factory):
    lab = lab_factory(TOPOLOGIES / "ha.yaml")
    wait_master(lab, "hub", "eth1", HUB_VIP, timeout=300)
    wait_master(lab, "spokea", "eth1", SPOKE_VIP, timeout=300)
    for spoke in ("spokea", "spokeb"):
        run_and_expect(
            lambda s=spoke: show(lab, s, "dmvpn")["nhs"], lambda n: sum(e["registered"] for e in n) == 2, 300
        )
    return lab


def test_the_preferred_routers_hold_the_virtual_addresses(ha):
    assert vrrp_state(ha, "hub2") == "BACKUP" and not holds_address(ha, "hub2", "eth1", HUB_VIP)
    assert vrrp_state(ha, "spokeb") == "BACKUP" and not holds_address(ha, "spokeb", "eth1", SPOKE_VIP)
    wait_ping(ha, "host7", "10.0.0.10")  # spoke pair LAN -> hub LAN, both through a VIP
    wait_tunnel_ping(ha, "spokeb", SPOKEB_TUNNEL, SPOKEA_TUNNEL)  # spoke to spoke


# --- forged VRRP ----------------------------------------------------------------------------------

# A VRRPv3 advertisement claiming priority 254 for a group, sent from a LAN host with a source
# address the router must not trust. Accepted, it would take mastership away from the master.
FORGE = r"""
import socket, struct, sys, time
src, dst, vrid, vip, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b)//2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
body = struct.pack("!BBBBHH4s", 0x31, vrid, 254, 1, 100, 0, socket.inet_aton(vip))
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 112, len(body))
body = body[:6] + struct.pack("!H", csum(pseudo + body)) + body[8:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(body), 0, 0, 255, 112, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
for _ in range(count):
    s.sendto(ip + body, (dst, 0))
    time.sleep(0.05)
"""


def vrrp_drops(lab, node: str) -> int:
    data = json.loads(lab.check(node, "nft -j list counter inet appliance vrrp-drop"))
    return next(o["counter"]["packets"] for o in data["nftables"] if "counter" in o)


@pytest.mark.parametrize(
    "master, backup, host, source, destination, vip",
    [
        # unicast pair: a LAN address that is not the configured peer
        ("spokea", "spokeb", "host7", "10.0.7.10", "10.0.7.1", SPOKE_VIP),
        # multicast group: an address outside the LAN's subnet
        ("hub", "hub2", "host0", "10.0.9.9", "224.0.0.18", HUB_VIP),
    ],
    ids=["unicast-non-peer", "multicast-off-subnet"],
)
def test_forged_vrrp_is_dropped_and_counted(ha, master, backup, host, source, destination, vip):
    count = 40
    vrid = vrrp_group(master)["vrid"]
    before = vrrp_drops(ha, master)
    ha.lab.exec(host, ["python3", "-c", FORGE, source, destination, str(vrid), vip, str(count)])
    dropped = vrrp_drops(ha, master) - before
    assert dropped >= count, f"{master}: vrrp-drop counted {dropped} of {count} forged advertisements"
    # still the master (the forged priority 254 beats its own): nothing reached keepalived
    assert vrrp_state(ha, master) == "MASTER" and holds_address(ha, master, "eth1", vip)
    assert vrrp_state(ha, backup) == "BACKUP" and not holds_address(ha, backup, "eth1", vip)


# --- failover -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "master, backup, host, vip, where, failure, repair, silent",
    [
        # the spoke pair's master drops off its LAN (sub-second advertisements): it falls silent,
        # the backup waits out the master-down interval
        ("spokea", "spokeb", "host7", SPOKE_VIP, "spokea", "ip link set eth1 down", "ip link set eth1 up", True),
        # the first hub's public link loses its carrier (the provider's side goes down; tracked
        # interface), one-second advertisements: the hub is still on the LAN and resigns with a
        # priority-0 advertisement, so the backup takes over at once (measured: no ping lost).
        # Carrier loss, not `ip link set eth0 down` on the hub: that deletes its default route.
        ("hub", "hub2", "host0", HUB_VIP, "inet", "ip link set eth1 down", "ip link set eth1 up", False),
    ],
    ids=["spoke-pair-lan-down", "hub-public-link-down"],
)
def test_backup_takes_the_virtual_address_within_the_master_down_interval(
    ha, master, backup, host, vip, where, failure, repair, silent
):
    bound = (master_down_interval(backup) if silent else vrrp_group(backup)["advert_interval"]) + TCG_MARGIN_S
    try:
        outage = ping_outage(ha, host, vip, lambda: ha.check(where, failure))
        print(f"{master} -> {backup}: {outage} (bound {bound:.2f} s)")
        wait_master(ha, backup, "eth1", vip, timeout=30)
        if silent:  # a silent master costs pings, or the ping did not watch the failover
            assert 0 < outage.lost, f"the failure cost no ping at all: not measured\n{outage.output[-1500:]}"
        assert outage.seconds <= bound, f"{outage}, more than {bound:.2f} s"
        assert outage.lost <= math.ceil(bound / outage.interval), str(outage)
    finally:
        ha.check(where, repair)
    wait_master(ha, master, "eth1", vip, timeout=120)  # preempts back
    assert not holds_address(ha, backup, "eth1", vip)


# --- tunnel tracking ------------------------------------------------------------------------------


def test_spoke_without_its_tunnel_gives_up_mastership(ha):
    """charon stops on the spoke pair's master: its LAN is up, but `appliance check-tunnel` fails."""
    ha.check("spokea", "kill $(cat /run/charon.pid)")
    try:
        wait_master(ha, "spokeb", "eth1", SPOKE_VIP, timeout=60)
        assert not holds_address(ha, "spokea", "eth1", SPOKE_VIP)
        assert vrrp_state(ha, "spokea") == "FAULT"
        assert "state UP" in ha.check("spokea", "ip link show eth1")
        wait_ping(ha, "host7", "10.0.0.10", timeout=120)  # through spokeb now
    finally:
        ha.check("spokea", f"{APPLIANCE} supervise --once >/dev/null", timeout=900)  # starts charon again
    wait_master(ha, "spokea", "eth1", SPOKE_VIP, timeout=180)


# --- dual hub -------------------------------------------------------------------------------------


def test_spokes_register_with_both_hubs(ha):
    both_hubs_serve(ha)  # the failover tests before this one took a hub's public link down
    for spoke in ("spokea", "spokeb"):
        nhs = show(ha, spoke, "dmvpn")["nhs"]
        assert sorted((e["nbma"], e["registered"]) for e in nhs) == [("192.0.2.2", True), ("192.0.2.6", True)]
    for hub in ("hub", "hub2"):
        for overlay in (SPOKEA_TUNNEL, SPOKEB_TUNNEL):
            assert cache_entry(ha, hub, overlay)["type"] == "dynamic", (hub, overlay)


def both_hubs_serve(lab) -> None:
    """Until both spokes are registered with both hubs again and the first hub is the LAN's master."""
    for spoke in ("spokea", "spokeb"):
        run_and_expect(
            lambda s=spoke: show(lab, s, "dmvpn")["nhs"],
            lambda n: sum(e["registered"] for e in n) == 2,
            300,
            what=f"{spoke} registered with both hubs",
        )
    wait_master(lab, "hub", "eth1", HUB_VIP, timeout=120)


def test_traffic_continues_through_the_other_hub_when_one_stops(ha):
    """The first hub is gone (its provider link loses carrier, its LAN port goes down): OSPF
    reconverges over hub2, VRRP moves the hub LAN's gateway to hub2; the spoke LAN reaches the hub
    LAN and the spokes reach each other through the tunnel."""
    wait_ping(ha, "host7", "10.0.0.10")
    wait_tunnel_ping(ha, "spokeb", SPOKEB_TUNNEL, SPOKEA_TUNNEL)

    def stop_hub() -> None:
        ha.check("inet", "ip link set eth1 down")
        ha.check("hub", "ip link set eth1 down")

    try:
        # spokea notices after OSPF's dead interval, hub2 takes 10.0.0.254 after VRRP's
        outage = ping_outage(ha, "host7", "10.0.0.10", stop_hub, seconds=60, interval=0.2)
        print(f"hub stopped: host7 -> host0 {outage}")
        assert math.isfinite(outage.seconds) and outage.lost > 0, str(outage)
        wait_master(ha, "hub2", "eth1", HUB_VIP, timeout=60)
        assert ping(ha, "host7", "10.0.0.10", count=5, interval=0.3)[0] >= 4
        wait_tunnel_ping(ha, "spokeb", SPOKEB_TUNNEL, SPOKEA_TUNNEL, timeout=120)
        for spoke in ("spokea", "spokeb"):  # the second hub kept them registered all along
            nhs = {e["nbma"]: e["registered"] for e in show(ha, spoke, "dmvpn")["nhs"]}
            assert nhs["192.0.2.6"], (spoke, nhs)
    finally:
        ha.check("hub", "ip link set eth1 up")
        ha.check("inet", "ip link set eth1 up")
    both_hubs_serve(ha)


# --- supervisor -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def supervised(ha):
    """spokeb with `appliance supervise --interval 2` running, after one round without drift."""
    pid = start_supervisor(ha, "spokeb", interval=2)
    try:
        run_and_expect(
            lambda: health(ha, "spokeb") or {},
            lambda h: h.get("healthy") is True and h.get("repaired") == [],
            300,
            what="spokeb: supervisor's first healthy round",
        )
        yield ha
    finally:
        stop_supervisor(ha, "spokeb", pid)


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_supervisor_repairs_drift(supervised, drift):
    ha = supervised
    wait_tunnel_ping(ha, "spokeb", SPOKEB_TUNNEL, SPOKEA_TUNNEL)
    repair = repair_time(ha, "spokeb", drift)
    print(f"spokeb: {drift} seen after {repair.detected:.1f} s, repaired after {repair.seconds:.1f} s")
    ha.check("spokeb", DRIFTS[drift][2])
    wait_tunnel_ping(ha, "spokeb", SPOKEB_TUNNEL, SPOKEA_TUNNEL)  # spoke to spoke again
    # 10 s is the goal on hardware; TCG on two shared cores runs several times slower
    assert repair.seconds <= 60, repair


def test_metrics_answer_only_on_the_loopback(supervised):
    ha = supervised
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    fetch = f"import urllib.request as u; print(u.urlopen('{url}', timeout=10).read().decode())"
    body = ha.check("spokeb", ["python3", "-c", fetch])
    assert "appliance_healthy 1" in body and "appliance_tunnel_up" in body
    listening = ha.check("spokeb", f"ss -Hltn 'sport = :{METRICS_PORT}'")
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{METRICS_PORT}"]
    connect = (
        'python3 -c "import socket,sys; s=socket.socket(); s.settimeout(5);'
        f" sys.exit(s.connect_ex(('{SPOKEB_PUBLIC}', {METRICS_PORT})))\""
    )
    assert ha.exec("inet", connect).rc != 0  # from the internet side
    assert ha.exec("spokeb", connect).rc != 0  # not even the box's own public address
