"""netlink driver: veth pairs in a fresh netns for the underlay; the GRE paths (this kernel has no GRE) from
recorded observations through the pure plan/restore functions, and pyroute2's own message encoding."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from netns import in_fresh_netns

from appliance.drivers.base import CHANGE, CREATE, REMOVE, Context, DriverError, Ledger
from appliance.drivers.netlink import (
    GRE_KEY,
    NetlinkDriver,
    gre_link_args,
    link_record,
    plan,
    restore_ops,
    tunnel_record,
)
from appliance.model.validate import load_site
from appliance.render import render_site
from appliance.render.spec import Address, LinkSettings, Neighbour, Route

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "nl-test-psk-0123456789abcdef", "OSPF_KEY": "md5-nl-key"}
HUB = render_site(load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site)
SPEC = HUB.netlink  # eth0 192.0.2.2/30 gw .1, eth1 10.0.0.1/24, dmvpn0 172.16.0.1/32 key 42 mtu 1400


def desired_with(**changes):
    return dataclasses.replace(HUB, netlink=dataclasses.replace(SPEC, **changes))


def tunnel_with(**changes):
    return dataclasses.replace(SPEC.tunnel, **changes)


def no_ledger():
    return {"links": [], "addresses": [], "routes": [], "neighbours": []}


# --- helpers in the netns ---------------------------------------------------------------------------


def make_veths(*names: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in names:
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}-peer"})


def kernel():
    from pyroute2 import IPRoute

    return IPRoute()


def addresses(ifname: str) -> list[str]:
    with kernel() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return sorted(f"{a.get('IFA_LOCAL')}/{a['prefixlen']}" for a in ipr.get_addr(family=socket.AF_INET, index=idx))


def routes() -> list[tuple[str, str | None, int]]:
    """(dst, gateway, proto) of the main table's non-kernel routes."""
    with kernel() as ipr:
        return sorted(
            (f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}", r.get("RTA_GATEWAY"), r["proto"])
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
            if r["proto"] != 2
        )


def driver_in(tmp_path: Path) -> NetlinkDriver:
    return NetlinkDriver(Context(ledger=Ledger(tmp_path / "ledger.json"), services=None, root=tmp_path))


def ledger_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "ledger.json").read_text()).get("netlink", {})


def underlay(changes):
    """Everything but the tunnel and its address: the host kernel has no GRE (the lab VM covers them)."""
    return [c for c in changes if SPEC.tunnel.name not in c.name]


# --- against the kernel -------------------------------------------------------------------------------


@in_fresh_netns
def test_first_apply_plan_in_order(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    assert [(c.action, c.description) for c in driver_in(tmp_path).diff(HUB)] == [
        (CREATE, "create tunnel dmvpn0 (gre, local 192.0.2.2 on eth0, key 42, ttl 64, mtu 1400)"),
        (CHANGE, "set eth0 up"),
        (CHANGE, "set eth1 up"),
        (CREATE, "add 192.0.2.2/30 to eth0"),
        (CREATE, "add 10.0.0.1/24 to eth1"),
        (CREATE, "add 172.16.0.1/32 to dmvpn0"),
        (CREATE, "add route 0.0.0.0/0 via 192.0.2.1 dev eth0"),
    ]


@in_fresh_netns
def test_tunnel_on_a_kernel_without_gre_fails_clearly_after_the_ledger_recorded_it(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    drv = driver_in(tmp_path)
    snap = drv.snapshot(HUB)
    with pytest.raises(DriverError) as e:
        drv.apply(drv.diff(HUB))
    assert str(e.value) == (
        "netlink: cannot create tunnel dmvpn0 (gre, local 192.0.2.2 on eth0, key 42, ttl 64, mtu 1400): "
        "Operation not supported (does this kernel have GRE? modprobe ip_gre)"
    )
    assert ledger_of(tmp_path)["links"] == ["dmvpn0"]  # write-ahead: recorded before the attempt
    drv.restore(snap)
    assert ledger_of(tmp_path) == no_ledger()  # it never existed: the restore forgets it


@in_fresh_netns
def test_underlay_is_configured_recorded_and_a_second_diff_has_only_the_tunnel_left(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    drv = driver_in(tmp_path)
    drv.apply(underlay(drv.diff(HUB)))
    assert addresses("eth0") == ["192.0.2.2/30"]
    assert addresses("eth1") == ["10.0.0.1/24"]
    assert routes() == [("0.0.0.0/0", "192.0.2.1", 4)]  # proto static: ours
    assert ledger_of(tmp_path) == {
        "links": [],
        "addresses": [["eth0", "192.0.2.2/30"], ["eth1", "10.0.0.1/24"]],
        "routes": [{"dst": "0.0.0.0/0", "gateway": "192.0.2.1", "ifname": "eth0", "metric": 0, "kind": "unicast"}],
        "neighbours": [],
    }
    assert [c.description for c in drv.diff(HUB)] == [
        "create tunnel dmvpn0 (gre, local 192.0.2.2 on eth0, key 42, ttl 64, mtu 1400)",
        "add 172.16.0.1/32 to dmvpn0",
    ]


@in_fresh_netns
def test_mtu_changes_in_place_and_restore_puts_it_back(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    drv = driver_in(tmp_path)
    drv.apply(underlay(drv.diff(HUB)))
    wider = desired_with(links=(LinkSettings("eth0"), LinkSettings("eth1", mtu=1450)))
    (change,) = underlay(drv.diff(wider))
    assert (change.action, change.description, change.disruptive) == (CHANGE, "set eth1 mtu 1450 (was 1500)", False)
    snap = drv.snapshot(wider)
    drv.apply([change])
    assert underlay(drv.diff(wider)) == []
    drv.restore(snap)
    assert [c.description for c in underlay(drv.diff(wider))] == ["set eth1 mtu 1450 (was 1500)"]


@in_fresh_netns
def test_only_what_the_appliance_added_is_removed(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    with kernel() as ipr:  # the user's own: an address in the LAN's subnet and a route
        eth1 = ipr.link_lookup(ifname="eth1")[0]
        ipr.link("set", index=eth1, state="up")
        ipr.addr("add", index=eth1, address="10.0.0.99", prefixlen=24)
        ipr.route("add", dst="10.77.0.0/16", gateway="10.0.0.254", oif=eth1, proto="boot")
    drv = driver_in(tmp_path)
    drv.apply(underlay(drv.diff(HUB)))
    assert addresses("eth1") == ["10.0.0.1/24", "10.0.0.99/24"]
    # The site moves the LAN address and drops the default route.
    moved = desired_with(addresses=(Address("eth0", "192.0.2.2/30"), Address("eth1", "10.0.0.2/24")), routes=())
    plan_ = underlay(drv.diff(moved))
    assert [(c.action, c.description) for c in plan_] == [
        (REMOVE, "remove 10.0.0.1/24 from eth1"),
        (CREATE, "add 10.0.0.2/24 to eth1"),
        (REMOVE, "remove route 0.0.0.0/0 via 192.0.2.1 dev eth0"),
    ]
    drv.apply(plan_)
    assert addresses("eth1") == ["10.0.0.2/24", "10.0.0.99/24"]
    assert routes() == [("10.77.0.0/16", "10.0.0.254", 3)]
    assert underlay(drv.diff(moved)) == []
    assert ledger_of(tmp_path)["routes"] == []
    # Dropping the LAN address from the site leaves the user's .99 alone.
    assert [c.description for c in underlay(drv.diff(desired_with(addresses=(), routes=())))] == [
        "remove 192.0.2.2/30 from eth0",
        "remove 10.0.0.2/24 from eth1",
    ]


@pytest.mark.parametrize("promote", ["0", "1"])
@in_fresh_netns
def test_removing_our_primary_keeps_the_users_secondary(promote: str, tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    Path("/proc/sys/net/ipv4/conf/eth1/promote_secondaries").write_text(promote)
    drv = driver_in(tmp_path)
    drv.apply(underlay(drv.diff(HUB)))
    with kernel() as ipr:  # added after ours: a secondary of 10.0.0.1/24
        ipr.addr("add", index=ipr.link_lookup(ifname="eth1")[0], address="10.0.0.99", prefixlen=24)
    moved = desired_with(addresses=(Address("eth0", "192.0.2.2/30"), Address("eth1", "10.0.0.2/24")))
    plan_ = underlay(drv.diff(moved))
    assert [c.description for c in plan_] == [
        "remove 10.0.0.1/24 from eth1",
        "add 10.0.0.2/24 to eth1",
        "keep 10.0.0.99/24 on eth1 (the kernel drops secondaries with their primary)",
    ]
    drv.apply(plan_)
    assert addresses("eth1") == ["10.0.0.2/24", "10.0.0.99/24"]
    assert ["eth1", "10.0.0.99/24"] not in ledger_of(tmp_path)["addresses"]  # still the user's
    assert underlay(drv.diff(moved)) == []


@in_fresh_netns
def test_the_users_default_route_is_replaced_and_restored(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    with kernel() as ipr:
        eth1 = ipr.link_lookup(ifname="eth1")[0]
        ipr.link("set", index=eth1, state="up")
        ipr.addr("add", index=eth1, address="10.0.0.1", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="10.0.0.254", oif=eth1, proto="boot")
    drv = driver_in(tmp_path)
    plan_ = underlay(drv.diff(HUB))
    assert (
        plan_[-1].description == "replace route 0.0.0.0/0 via 10.0.0.254 dev eth1 with 0.0.0.0/0 via 192.0.2.1 dev eth0"
    )
    snap = json.loads(json.dumps(drv.snapshot(HUB)))  # as the engine keeps it
    drv.apply(plan_)
    assert routes() == [("0.0.0.0/0", "192.0.2.1", 4)]
    drv.restore(snap)
    assert routes() == [("0.0.0.0/0", "10.0.0.254", 3)]  # the user's, with its protocol
    assert addresses("eth0") == [] and addresses("eth1") == ["10.0.0.1/24"]
    assert ledger_of(tmp_path) == no_ledger()


@in_fresh_netns
def test_a_route_from_frr_in_the_way_is_one_clear_error(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    with kernel() as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=eth0, state="up")
        ipr.addr("add", index=eth0, address="192.0.2.2", prefixlen=30)
        ipr.route("add", dst="0.0.0.0/0", proto=186, type="blackhole")
    with pytest.raises(DriverError) as e:
        driver_in(tmp_path).diff(HUB)
    assert str(e.value) == (
        "netlink: route 0.0.0.0/0 metric 0 exists from protocol bgp (blackhole 0.0.0.0/0), which appliance "
        "does not manage: remove it or choose another metric"
    )


@in_fresh_netns
def test_static_neighbours_are_set_and_only_ours_removed(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    with kernel() as ipr:  # somebody else's permanent entry
        ipr.neigh(
            "add",
            dst="10.0.0.50",
            lladdr="02:00:00:00:00:50",
            ifindex=ipr.link_lookup(ifname="eth1")[0],
            state="permanent",
        )
    drv = driver_in(tmp_path)
    with_neigh = desired_with(neighbours=(Neighbour("eth1", "10.0.0.7", "02:00:00:00:00:07"),))
    changes = underlay(drv.diff(with_neigh))
    assert changes[-1].description == "map 10.0.0.7 to NBMA 02:00:00:00:00:07 on eth1"
    drv.apply(changes)
    assert underlay(drv.diff(with_neigh)) == []
    (removal,) = underlay(drv.diff(HUB))
    assert removal.description == "remove neighbour 10.0.0.7 on eth1"
    drv.apply([removal])
    with kernel() as ipr:
        left = {n.get("NDA_DST") for n in ipr.get_neighbours(family=socket.AF_INET) if n["state"] & 0x80}
    assert left == {"10.0.0.50"}


@in_fresh_netns
def test_ledger_entries_of_objects_that_never_appeared_are_forgotten(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    drv = driver_in(tmp_path)
    drv.ctx.ledger.replace_section("netlink", {"links": ["old0"], "addresses": [["old0", "172.16.9.1/32"]]})
    changes = drv.diff(HUB)
    forgets = [c.description for c in changes if c.kind == "ledger"]
    assert forgets == [
        "forget link old0 (recorded by an interrupted apply; it does not exist)",
        "forget address old0 172.16.9.1/32 (recorded by an interrupted apply; it does not exist)",
    ]
    drv.apply([c for c in changes if c.kind == "ledger"])
    assert ledger_of(tmp_path) == no_ledger()


@in_fresh_netns
def test_dhcp_local_address_is_read_from_the_interface_at_apply_time(tmp_path: Path) -> None:
    make_veths("eth0", "eth1")
    dhcp = desired_with(tunnel=tunnel_with(local=None), addresses=(Address("eth1", "10.0.0.1/24"),), routes=())
    with pytest.raises(DriverError) as e:
        driver_in(tmp_path).diff(dhcp)
    assert str(e.value) == (
        "netlink: eth0 has no IPv4 address yet (DHCP): the tunnel dmvpn0 needs it as its local address; "
        "apply again once the DHCP lease is there"
    )
    with kernel() as ipr:  # what dhclient would have done
        ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address="203.0.113.5", prefixlen=24)
    first = driver_in(tmp_path).diff(dhcp)[0]
    assert (
        first.description == "create tunnel dmvpn0 (gre, local 203.0.113.5 from DHCP on eth0, key 42, ttl 64, mtu 1400)"
    )
    assert first.payload["link"]["local"] == "203.0.113.5"


@in_fresh_netns
def test_a_missing_interface_is_one_line(tmp_path: Path) -> None:
    make_veths("eth0")
    with pytest.raises(DriverError) as e:
        driver_in(tmp_path).diff(HUB)
    assert str(e.value) == "netlink: interface eth1 does not exist (the site names it; check interfaces:)"


# --- the tunnel, from recorded observations -------------------------------------------------------


def observed_with_tunnel(**gre) -> dict:
    """What observe() returns on a hub whose tunnel exists (as recorded in the lab VM's kernel)."""
    tunnel = {"local": "192.0.2.2", "remote": None, "link": "eth0", "key": 42, "ttl": 64} | gre
    return {
        "links": {
            "eth0": {"index": 2, "kind": None, "mtu": 1500, "up": True, "gre": None},
            "eth1": {"index": 3, "kind": None, "mtu": 1500, "up": True, "gre": None},
            "dmvpn0": {"index": 9, "kind": "gre", "mtu": 1400, "up": True, "gre": tunnel},
        },
        "addresses": {
            "eth0": [{"address": "192.0.2.2/30", "secondary": False}],
            "eth1": [{"address": "10.0.0.1/24", "secondary": False}],
            "dmvpn0": [{"address": "172.16.0.1/32", "secondary": False}],
        },
        "routes": [
            route("0.0.0.0/0", "192.0.2.1", "eth0", proto=4),
            route("10.0.2.0/24", "172.16.0.12", "dmvpn0", metric=20, proto=191),  # nhrpd's shortcut
        ],
        "neighbours": [],
    }  # fmt: skip


def route(dst: str, gateway: str | None, ifname: str, metric: int = 0, proto: int = 4) -> dict:
    return {"dst": dst, "gateway": gateway, "ifname": ifname, "metric": metric, "kind": "unicast", "proto": proto}


def owned_tunnel() -> dict:
    return no_ledger() | {"links": ["dmvpn0"], "addresses": [["dmvpn0", "172.16.0.1/32"]]}


def test_a_converged_tunnel_plans_nothing() -> None:
    assert plan(SPEC, observed_with_tunnel(), owned_tunnel()) == []
    assert plan(SPEC, observed_with_tunnel(), no_ledger()) == []  # the user's identical tunnel is fine too


def test_a_new_key_recreates_the_tunnel_and_readds_its_address() -> None:
    changes = plan(SPEC, observed_with_tunnel(key=41), owned_tunnel())
    assert [(c.action, c.description, c.disruptive) for c in changes] == [
        (CHANGE, "recreate tunnel dmvpn0 (key 41 -> 42)", True),
        (CREATE, "add 172.16.0.1/32 to dmvpn0", False),
    ]
    assert changes[0].payload == {"op": "link_recreate", "ifname": "dmvpn0", "link": tunnel_record(SPEC, "192.0.2.2")}


@pytest.mark.parametrize(
    ("gre", "why"),
    [
        ({"local": "192.0.2.9"}, "local 192.0.2.9 -> 192.0.2.2"),
        ({"link": "eth1"}, "link eth1 -> eth0"),
        ({"key": None}, "key none -> 42"),
        ({"key": "42/43"}, "key 42/43 -> 42"),
        ({"remote": "198.51.100.2"}, "remote 198.51.100.2 -> none"),
    ],
)
def test_what_the_kernel_cannot_change_in_place_recreates(gre: dict, why: str) -> None:
    (change, _) = plan(SPEC, observed_with_tunnel(**gre), owned_tunnel())
    assert change.description == f"recreate tunnel dmvpn0 ({why})" and change.disruptive


def test_mtu_and_state_change_in_place() -> None:
    seen = observed_with_tunnel()
    seen["links"]["dmvpn0"] |= {"mtu": 1476, "up": False}
    changes = plan(SPEC, seen, owned_tunnel())
    assert [(c.description, c.disruptive, c.payload) for c in changes] == [
        ("set dmvpn0 mtu 1400 (was 1476)", False, {"op": "link_set", "ifname": "dmvpn0", "mtu": 1400}),
        ("set dmvpn0 up", False, {"op": "link_set", "ifname": "dmvpn0", "state": "up"}),
    ]


def test_someone_elses_tunnel_is_never_recreated() -> None:
    with pytest.raises(DriverError) as e:
        plan(SPEC, observed_with_tunnel(key=7), no_ledger())
    assert str(e.value) == (
        "netlink: link dmvpn0 exists but was not created by appliance and differs (key 7 -> 42): "
        "delete it (ip link del dmvpn0) or give the tunnel another name"
    )


def test_a_renamed_tunnel_deletes_only_our_old_one() -> None:
    renamed = dataclasses.replace(SPEC, tunnel=tunnel_with(name="tun9"))
    changes = plan(renamed, observed_with_tunnel(), owned_tunnel())
    assert [(c.action, c.description) for c in changes] == [
        (REMOVE, "delete tunnel dmvpn0 (no longer in the site)"),
        (CREATE, "create tunnel tun9 (gre, local 192.0.2.2 on eth0, key 42, ttl 64, mtu 1400)"),
        (CREATE, "add 172.16.0.1/32 to tun9"),
    ]
    assert [c.description for c in plan(renamed, observed_with_tunnel(), no_ledger())][0].startswith("create tunnel")


def test_a_new_dhcp_lease_recreates_the_tunnel_with_the_new_local_address() -> None:
    dhcp = dataclasses.replace(SPEC, tunnel=tunnel_with(local=None), addresses=(Address("eth1", "10.0.0.1/24"),))
    seen = observed_with_tunnel(local="203.0.113.5")
    seen["addresses"]["eth0"] = [{"address": "203.0.113.9/24", "secondary": False}]
    (change, _) = plan(dhcp, seen, owned_tunnel())
    assert change.description == "recreate tunnel dmvpn0 (local 203.0.113.5 -> 203.0.113.9 from DHCP on eth0)"


def test_nhrp_routes_on_the_tunnel_are_never_touched() -> None:
    owned = owned_tunnel()
    owned["routes"] = [
        {"dst": "10.0.2.0/24", "gateway": "172.16.0.12", "ifname": "dmvpn0", "metric": 20, "kind": "unicast"}
    ]
    changes = plan(SPEC, observed_with_tunnel(), owned)  # ours once, nhrpd's now: not removed, forgotten
    assert [c.kind for c in changes] == ["ledger"]


def test_recreating_the_tunnel_readds_the_routes_through_it() -> None:
    spec = dataclasses.replace(SPEC, routes=SPEC.routes + (Route("10.99.0.0/16", ifname="dmvpn0", metric=5),))
    seen = observed_with_tunnel(key=41)
    seen["routes"].append(
        {"dst": "10.99.0.0/16", "gateway": None, "ifname": "dmvpn0", "metric": 5, "kind": "unicast", "proto": 4}
    )
    assert [c.description for c in plan(spec, seen, owned_tunnel())][-1] == (
        "re-add route 10.99.0.0/16 dev dmvpn0 metric 5 (its interface's addresses change)"
    )


def test_restore_deletes_a_tunnel_the_apply_created() -> None:
    now = observed_with_tunnel()
    before = json.loads(json.dumps(now))
    del before["links"]["dmvpn0"], before["addresses"]["dmvpn0"]
    assert restore_ops(before, now, no_ledger(), owned_tunnel()) == [{"op": "link_del", "ifname": "dmvpn0"}]


def test_restore_recreates_the_previous_tunnel_with_its_address() -> None:
    before, now = observed_with_tunnel(key=41), observed_with_tunnel()
    before["links"]["dmvpn0"]["mtu"] = 1420
    assert restore_ops(before, now, owned_tunnel(), owned_tunnel()) == [
        {
            "op": "link_recreate",
            "ifname": "dmvpn0",
            "link": tunnel_record(SPEC, "192.0.2.2") | {"key": 41, "mtu": 1420},
        },
        {"op": "addr_add", "ifname": "dmvpn0", "address": "172.16.0.1/32"},
    ]  # fmt: skip


def test_restore_brings_back_a_tunnel_the_apply_deleted() -> None:
    before = observed_with_tunnel()
    now = json.loads(json.dumps(before))
    del now["links"]["dmvpn0"], now["addresses"]["dmvpn0"]
    ops = restore_ops(before, now, owned_tunnel(), no_ledger())
    assert [o["op"] for o in ops] == ["link_add", "addr_add"]


# --- pyroute2's encoding ---------------------------------------------------------------------------


def gre_message(iflags: int, oflags: int, ikey: int, okey: int):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"], msg["flags"] = 9, 1
    data = [
        ("IFLA_GRE_LINK", 2),
        ("IFLA_GRE_IFLAGS", iflags),
        ("IFLA_GRE_OFLAGS", oflags),
        ("IFLA_GRE_IKEY", ikey),
        ("IFLA_GRE_OKEY", okey),
        ("IFLA_GRE_LOCAL", "192.0.2.2"),
        ("IFLA_GRE_REMOTE", "0.0.0.0"),
        ("IFLA_GRE_TTL", 64),
    ]
    info = {"attrs": [("IFLA_INFO_KIND", "gre"), ("IFLA_INFO_DATA", {"attrs": data})]}
    msg["attrs"] = [("IFLA_IFNAME", "dmvpn0"), ("IFLA_MTU", 1400), ("IFLA_LINKINFO", info)]
    msg.encode()
    decoded = ifinfmsg(msg.data)  # as the kernel's answer is parsed
    decoded.decode()
    return decoded, bytes(msg.data)


def test_a_keyed_gre_link_as_the_kernel_reports_it() -> None:
    msg, _ = gre_message(GRE_KEY, GRE_KEY, 42, 42)
    assert link_record(msg, {2: "eth0"}) == {
        "index": 9,
        "kind": "gre",
        "mtu": 1400,
        "up": True,
        "gre": {"local": "192.0.2.2", "remote": None, "link": "eth0", "key": 42, "ttl": 64},
    }
    unkeyed, _ = gre_message(0, 0, 0, 0)
    assert link_record(unkeyed, {2: "eth0"})["gre"]["key"] is None


def test_gre_key_flag_goes_on_the_wire_as_the_kernels_big_endian_gre_key() -> None:
    # The kernel reads IFLA_GRE_IFLAGS as __be16 and tests GRE_KEY = htons(0x2000): bytes 20 00.
    _, wire = gre_message(GRE_KEY, GRE_KEY, 42, 42)
    assert (6).to_bytes(2, "little") + (2).to_bytes(2, "little") + b"\x20\x00" in wire  # IFLA_GRE_IFLAGS
    assert (8).to_bytes(2, "little") + (4).to_bytes(2, "little") + (42).to_bytes(4, "big") in wire  # IFLA_GRE_IKEY


def test_gre_link_arguments() -> None:
    assert gre_link_args("dmvpn0", tunnel_record(SPEC, "192.0.2.2"), 2) == {
        "ifname": "dmvpn0",
        "kind": "gre",
        "gre_local": "192.0.2.2",
        "gre_link": 2,
        "gre_ttl": 64,
        "gre_pmtudisc": 1,
        "mtu": 1400,
        "gre_ikey": 42,
        "gre_okey": 42,
        "gre_iflags": GRE_KEY,
        "gre_oflags": GRE_KEY,
    }
    unkeyed = dataclasses.replace(SPEC, tunnel=tunnel_with(key=None))
    assert "gre_ikey" not in gre_link_args("dmvpn0", tunnel_record(unkeyed, "192.0.2.2"), 2)


def test_the_driver_claims_no_files(tmp_path: Path) -> None:
    assert NetlinkDriver(Context(ledger=Ledger(tmp_path / "l.json"), services=None)).claims(HUB) == set()


# --- importing pyroute2 -----------------------------------------------------------------------------


def test_iproute_comes_without_pyroute2s_whole_namespace_which_still_loads_when_asked_for() -> None:
    # a fresh interpreter: pyroute2/__init__ imports NDB, IPDB, conntrack... (a third of the import)
    code = """
import sys
from appliance.drivers.netlink import iproute_class
narrow = iproute_class()
print("ndb-before", "pyroute2.ndb.main" in sys.modules)
with narrow() as ipr:
    assert ipr.link_lookup(ifname="lo")
from pyroute2 import IPRoute, NDB
import pyroute2
import pyroute2.iproute.linux as linux
print("same", IPRoute is narrow and pyroute2.IPRoute is narrow and pyroute2.iproute.linux is linux)
print("ndb-after", "pyroute2.ndb.main" in sys.modules and NDB is pyroute2.ndb.main.NDB)
try:
    pyroute2.no_such_name
except AttributeError:
    print("unknown-name AttributeError")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.split("\n")[:-1] == [
        "ndb-before False",
        "same True",
        "ndb-after True",
        "unknown-name AttributeError",
    ], r.stderr
