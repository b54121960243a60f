"""Links, addresses, routes and neighbours: the mGRE tunnel and the underlay.

Three rooms: `observe()` reads the kernel (RTNL dumps on a bare socket, decoded by pyroute2's message
classes) into plain JSON-able dicts, `plan()` and `restore_ops()` are pure functions of (desired,
observed, ledger) that return operations, and `NetlinkDriver` runs operations with pyroute2's
IPRoute. So every decision, including the GRE paths this host's kernel cannot run, is tested on
recorded observations.

Ownership (netplan's rule, kept in the ledger section "netlink"): the appliance deletes only
links, addresses, routes and neighbours it recorded as created, and records each one *before*
creating it. Interfaces it did not create (public, LANs) get mtu/up only. Routes installed by
FRR, nhrpd or the kernel (any protocol but boot/static) are never touched.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import os
import socket
import struct
import sys
import types
from ipaddress import IPv4Interface
from typing import Any

from ..render.spec import DesiredState, NetlinkSpec, Route
from .base import CHANGE, CREATE, REMOVE, Change, Context, DriverError

SUBSYSTEM = "netlink"
GRE_KEY = 0x2000  # GRE_KEY flag; pyroute2 >= 0.5 encodes gre_[io]flags big-endian, as the kernel reads them
IFF_UP = 0x1
IFA_F_SECONDARY = 0x1
MAIN_TABLE = 254
# Route protocols the appliance may replace or delete: boot (iproute2's default) and static (ours).
MANAGED_PROTOS = frozenset({3, 4})
OUR_PROTO = "static"
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
NUD_PERMANENT = 0x80
# A removal that finds nothing (ENOENT, ESRCH, ENODEV, EADDRNOTAVAIL): the kernel flushed it already.
ALREADY_GONE = frozenset({2, 3, 19, 99})
EEXIST = 17
# RTNL dump requests and replies (linux/netlink.h, linux/rtnetlink.h)
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH = 18, 22, 26, 30
# The kernel fills dump datagrams up to 32 KiB (netlink_dump); a single larger message is reported (MSG_TRUNC).
DUMP_RECV_BYTES = 65536
DUMP_ATTEMPTS = 3  # a dump the kernel flags as interrupted (NLM_F_DUMP_INTR) by a concurrent change is redone
# What the kernel refuses to change on a live GRE link: a change recreates the tunnel.
RECREATE_FIELDS = ("kind", "local", "remote", "link", "key", "ttl")


def _empty_ledger() -> dict[str, list[Any]]:
    return {"links": [], "addresses": [], "routes": [], "neighbours": []}


def owned_of(section: dict[str, Any]) -> dict[str, list[Any]]:
    """The ledger section with every list present (an old or empty section is valid)."""
    owned = _empty_ledger()
    for key in owned:
        owned[key] = copy.deepcopy(list(section.get(key, [])))
    return owned


# --- desired values ------------------------------------------------------------------------------


def route_record(route: Route) -> dict[str, Any]:
    return {
        "dst": route.dst,
        "gateway": route.gateway,
        "ifname": route.ifname,
        "metric": route.metric or 0,
        "kind": route.kind,
    }


def route_matches(want: dict[str, Any], seen: dict[str, Any]) -> bool:
    """`seen` (observed) is the route `want` describes (an unset ifname matches any device)."""
    return (
        seen["dst"] == want["dst"]
        and seen["metric"] == want["metric"]
        and seen["kind"] == want["kind"]
        and seen["gateway"] == want["gateway"]
        and (want["ifname"] is None or seen["ifname"] == want["ifname"])
    )


def route_text(r: dict[str, Any]) -> str:
    text = r["dst"] if r["kind"] == "unicast" else f"{r['kind']} {r['dst']}"
    if r.get("gateway"):
        text += f" via {r['gateway']}"
    if r.get("ifname"):
        text += f" dev {r['ifname']}"
    if r.get("metric"):
        text += f" metric {r['metric']}"
    return text


def tunnel_record(spec: NetlinkSpec, local: str) -> dict[str, Any]:
    t = spec.tunnel
    return {
        "kind": "gre",
        "local": local,
        "remote": None,  # multipoint: nhrpd's neighbour entries give each peer's NBMA address
        "link": t.link,
        "key": t.key,
        "ttl": t.ttl,
        "mtu": t.mtu,
        "up": True,
    }


def tunnel_text(rec: dict[str, Any], dhcp: bool = False) -> str:
    key = f", key {rec['key']}" if rec["key"] is not None else ""
    source = " from DHCP" if dhcp else ""
    return f"gre, local {rec['local']}{source} on {rec['link']}{key}, ttl {rec['ttl']}, mtu {rec['mtu']}"


# --- plan (pure) ----------------------------------------------------------------------------------


def _change(action: str, kind: str, name: str, description: str, op: dict[str, Any], **extra: Any) -> Change:
    return Change(SUBSYSTEM, action, kind, name, description, payload=op, **extra)


def _tunnel_local(spec: NetlinkSpec, observed: dict[str, Any]) -> tuple[str, str]:
    """The tunnel's local address and, with DHCP, where it came from."""
    t = spec.tunnel
    if t.local is not None:
        return t.local, ""
    primary = [a for a in observed["addresses"].get(t.link, []) if not a.get("secondary")]
    if not primary:
        raise DriverError(
            SUBSYSTEM,
            f"{t.link} has no IPv4 address yet (DHCP): the tunnel {t.name} needs it as its local address; "
            "apply again once the DHCP lease is there",
        )
    return primary[0]["address"].split("/")[0], f" from DHCP on {t.link}"


def _differences(current: dict[str, Any], wanted: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    def show(v: Any) -> str:
        return "none" if v is None else str(v)

    return [f"{f} {show(current.get(f))} -> {show(wanted[f])}" for f in fields if current.get(f) != wanted[f]]


def plan(spec: NetlinkSpec, observed: dict[str, Any], owned: dict[str, list[Any]]) -> list[Change]:
    """Changes that make `observed` what `spec` asks for, touching only what `owned` says is ours.

    In apply order: link removals, the tunnel, link settings, address removals, address additions,
    routes, neighbours, then ledger entries of objects that are gone (an interrupted apply)."""
    links = observed["links"]
    t = spec.tunnel
    owned_links = set(owned["links"])
    removals, tunnel_ops, settings = [], [], []
    fresh: set[str] = set()  # links created or recreated now: none of their addresses/routes survive

    for name in sorted(owned_links - {t.name}):
        if name in links:
            op = {"op": "link_del", "ifname": name}
            desc = f"delete tunnel {name} (no longer in the site)"
            removals.append(_change(REMOVE, "link", name, desc, op, disruptive=True))

    for ls in spec.links:
        if ls.name not in links:
            raise DriverError(SUBSYSTEM, f"interface {ls.name} does not exist (the site names it; check interfaces:)")
    if t.link not in links:
        raise DriverError(SUBSYSTEM, f"interface {t.link} does not exist (the source of tunnel {t.name})")

    local, source_note = _tunnel_local(spec, observed)
    want = tunnel_record(spec, local)
    have = links.get(t.name)
    if have is None:
        fresh.add(t.name)
        op = {"op": "link_add", "ifname": t.name, "link": want}
        tunnel_ops.append(
            _change(CREATE, "link", t.name, f"create tunnel {t.name} ({tunnel_text(want, t.local is None)})", op)
        )
    else:
        current = {"kind": have.get("kind"), **(have.get("gre") or {})}
        recreate = _differences(current, want, RECREATE_FIELDS)
        if recreate:
            if t.name not in owned_links:
                raise DriverError(
                    SUBSYSTEM,
                    f"link {t.name} exists but was not created by appliance and differs ({', '.join(recreate)}): "
                    f"delete it (ip link del {t.name}) or give the tunnel another name",
                )
            fresh.add(t.name)
            op = {"op": "link_recreate", "ifname": t.name, "link": want}
            desc = f"recreate tunnel {t.name} ({', '.join(recreate)}{source_note})"
            tunnel_ops.append(_change(CHANGE, "link", t.name, desc, op, disruptive=True))
        else:
            settings += _link_settings(t.name, have, want["mtu"], True)
    for ls in spec.links:
        settings += _link_settings(ls.name, links[ls.name], ls.mtu, ls.up)

    deleted = {c.name for c in removals}
    addr_del, addr_add = _address_changes(spec, observed, owned, fresh | deleted)
    touched = {c.payload["ifname"] for c in addr_del} | fresh
    route_ops = _route_changes(spec, observed, owned, touched, deleted)
    neigh_ops = _neighbour_changes(spec, observed, owned, fresh | deleted)
    forget = _stale_entries(spec, observed, owned)
    return removals + tunnel_ops + settings + addr_del + addr_add + route_ops + neigh_ops + forget


def _link_settings(name: str, have: dict[str, Any], mtu: int | None, up: bool) -> list[Change]:
    out = []
    if mtu is not None and have.get("mtu") != mtu:
        op = {"op": "link_set", "ifname": name, "mtu": mtu}
        out.append(_change(CHANGE, "link", name, f"set {name} mtu {mtu} (was {have.get('mtu')})", op))
    if have.get("up") != up:
        op = {"op": "link_set", "ifname": name, "state": "up" if up else "down"}
        out.append(_change(CHANGE, "link", name, f"set {name} {'up' if up else 'down'}", op))
    return out


def secondaries_dropped_with(entries: list[dict[str, Any]], removed: list[str]) -> list[str]:
    """Addresses the kernel deletes along with `removed` on one interface: removing a primary address
    takes the secondaries of its subnet with it (unless promote_secondaries is set)."""
    primaries = [IPv4Interface(a["address"]).network for a in entries if a["address"] in removed and not a["secondary"]]
    return [
        a["address"]
        for a in entries
        if a["secondary"] and a["address"] not in removed and IPv4Interface(a["address"]).network in primaries
    ]


def _address_changes(
    spec: NetlinkSpec, observed: dict[str, Any], owned: dict[str, list[Any]], fresh: set[str]
) -> tuple[list[Change], list[Change]]:
    wanted = [(a.ifname, str(IPv4Interface(a.address))) for a in spec.addresses]
    wanted.append((spec.tunnel.name, str(IPv4Interface(spec.tunnel.address))))

    def present(ifname: str) -> list[dict[str, Any]]:
        return [] if ifname in fresh else observed["addresses"].get(ifname, [])

    removes: list[Change] = []
    removed: dict[str, list[str]] = {}
    for ifname, address in sorted(map(tuple, owned["addresses"])):
        here = {a["address"] for a in present(ifname)}
        if (ifname, address) not in wanted and address in here and ifname in observed["links"]:
            removed.setdefault(ifname, []).append(address)
            op = {"op": "addr_del", "ifname": ifname, "address": address}
            removes.append(_change(REMOVE, "address", f"{ifname} {address}", f"remove {address} from {ifname}", op))
    adds: list[Change] = []
    for ifname, address in wanted:
        if address not in {a["address"] for a in present(ifname)}:
            op = {"op": "addr_add", "ifname": ifname, "address": address}
            adds.append(_change(CREATE, "address", f"{ifname} {address}", f"add {address} to {ifname}", op))
    for ifname, gone in sorted(removed.items()):
        for address in secondaries_dropped_with(present(ifname), gone):
            # It exists now and may survive (promote_secondaries): adding it again is then a no-op.
            op = {"op": "addr_add", "ifname": ifname, "address": address, "again": True, "claim": False}
            desc = f"keep {address} on {ifname} (the kernel drops secondaries with their primary)"
            adds.append(_change(CHANGE, "address", f"{ifname} {address}", desc, op))
    return removes, adds


def _route_changes(
    spec: NetlinkSpec, observed: dict[str, Any], owned: dict[str, list[Any]], touched: set[str], deleted: set[str]
) -> list[Change]:
    seen = observed["routes"]
    wanted = [route_record(r) for r in spec.routes]
    out = []
    for r in owned["routes"]:
        if r["ifname"] in deleted or any(route_matches(r, w) and route_matches(w, r) for w in wanted):
            continue
        match = next((s for s in seen if route_matches(r, s) and s["proto"] in MANAGED_PROTOS), None)
        if match is not None:
            op = {"op": "route_del", "route": r}
            out.append(_change(REMOVE, "route", route_text(r), f"remove route {route_text(r)}", op))
    for w in wanted:
        same_key = [s for s in seen if s["dst"] == w["dst"] and s["metric"] == w["metric"]]
        exact = next((s for s in same_key if route_matches(w, s)), None)
        # A route through an interface that loses an address (or is recreated) may be flushed with it.
        at_risk = exact is not None and exact["ifname"] in touched
        if exact is not None and not at_risk:
            continue
        other = next((s for s in same_key if s is not exact), None) if exact is None else None
        if other is not None and other["proto"] not in MANAGED_PROTOS:
            raise DriverError(
                SUBSYSTEM,
                f"route {w['dst']} metric {w['metric']} exists from protocol {proto_name(other['proto'])} "
                f"({route_text(other)}), which appliance does not manage: remove it or choose another metric",
            )
        op = {"op": "route_replace", "route": w}
        if other is not None:
            desc = f"replace route {route_text(other)} with {route_text(w)}"
            out.append(_change(CHANGE, "route", route_text(w), desc, op))
        elif at_risk:
            desc = f"re-add route {route_text(w)} (its interface's addresses change)"
            op["claim"] = False  # it existed: whoever made it still owns it
            out.append(_change(CHANGE, "route", route_text(w), desc, op))
        else:
            out.append(_change(CREATE, "route", route_text(w), f"add route {route_text(w)}", op))
    return out


def _neighbour_changes(
    spec: NetlinkSpec, observed: dict[str, Any], owned: dict[str, list[Any]], fresh: set[str]
) -> list[Change]:
    seen = {(n["ifname"], n["dst"]): n for n in observed["neighbours"] if n["ifname"] not in fresh}
    wanted = {(n.ifname, n.dst): n.lladdr for n in spec.neighbours}
    out = []
    for ifname, dst in sorted(map(tuple, owned["neighbours"])):
        if (ifname, dst) not in wanted and (ifname, dst) in seen:
            op = {"op": "neigh_del", "ifname": ifname, "dst": dst}
            out.append(_change(REMOVE, "neighbour", f"{ifname} {dst}", f"remove neighbour {dst} on {ifname}", op))
    for (ifname, dst), lladdr in wanted.items():
        have = seen.get((ifname, dst))
        if have is not None and have["lladdr"] == lladdr and have["permanent"]:
            continue
        op = {"op": "neigh_replace", "ifname": ifname, "dst": dst, "lladdr": lladdr}
        action = CREATE if have is None else CHANGE
        desc = f"map {dst} to NBMA {lladdr} on {ifname}" + ("" if have is None else f" (was {have['lladdr']})")
        out.append(_change(action, "neighbour", f"{ifname} {dst}", desc, op))
    return out


def _stale_entries(spec: NetlinkSpec, observed: dict[str, Any], owned: dict[str, list[Any]]) -> list[Change]:
    """Ledger entries for objects that do not exist and are not wanted: forget them, or one day the
    appliance would delete a same-named object somebody else made."""
    out = []
    links = observed["links"]
    for name in owned["links"]:
        if name not in links and name != spec.tunnel.name:
            out.append(_forget("link", name, {"links": name}))
    wanted_addresses = {(a.ifname, str(IPv4Interface(a.address))) for a in spec.addresses}
    wanted_addresses.add((spec.tunnel.name, str(IPv4Interface(spec.tunnel.address))))
    for ifname, address in map(tuple, owned["addresses"]):
        present = {a["address"] for a in observed["addresses"].get(ifname, [])}
        if (ifname, address) not in wanted_addresses and address not in present:
            out.append(_forget("address", f"{ifname} {address}", {"addresses": [ifname, address]}))
    wanted_routes = [route_record(r) for r in spec.routes]
    for r in owned["routes"]:
        if any(route_matches(r, w) and route_matches(w, r) for w in wanted_routes):
            continue
        if not any(route_matches(r, s) and s["proto"] in MANAGED_PROTOS for s in observed["routes"]):
            out.append(_forget("route", route_text(r), {"routes": r}))
    wanted_neigh = {(n.ifname, n.dst) for n in spec.neighbours}
    seen_neigh = {(n["ifname"], n["dst"]) for n in observed["neighbours"]}
    for ifname, dst in map(tuple, owned["neighbours"]):
        if (ifname, dst) not in wanted_neigh and (ifname, dst) not in seen_neigh:
            out.append(_forget("neighbour", f"{ifname} {dst}", {"neighbours": [ifname, dst]}))
    return out


def _forget(kind: str, name: str, entry: dict[str, Any]) -> Change:
    desc = f"forget {kind} {name} (recorded by an interrupted apply; it does not exist)"
    return _change(REMOVE, "ledger", name, desc, {"op": "forget", "entry": entry})


# --- restore (pure) ----------------------------------------------------------------------------


def restore_ops(
    before: dict[str, Any], now: dict[str, Any], owned_before: dict[str, list[Any]], owned_now: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """Operations that bring `now` back to `before` (both observations): links we made or recreated,
    their settings, addresses, routes and neighbours we added or removed.

    Removals first (routes, neighbours, then what they hang on), then links, then additions."""
    link_ops: list[dict[str, Any]] = []
    ours = set(owned_before["links"]) | set(owned_now["links"])
    fresh: set[str] = set()  # recreated or created again: everything on them must be added back
    deleted: set[str] = set()
    for name in sorted(set(before["links"]) | set(now["links"])):
        old, cur = before["links"].get(name), now["links"].get(name)
        if old is None:
            if cur is not None and name in ours:
                link_ops.append({"op": "link_del", "ifname": name})
                deleted.add(name)
            continue
        if name in ours and old.get("kind") == "gre" and old.get("gre"):
            old_gre = {"kind": "gre", **old["gre"]}
            cur_gre = {"kind": cur.get("kind"), **(cur.get("gre") or {})} if cur is not None else None
            if cur_gre is None or _differences(cur_gre, old_gre, RECREATE_FIELDS):
                rec = {**old_gre, "mtu": old["mtu"], "up": old["up"]}
                link_ops.append({"op": "link_recreate" if cur is not None else "link_add", "ifname": name, "link": rec})
                fresh.add(name)
                continue
        if cur is None:
            continue  # not ours to create again
        if cur.get("mtu") != old.get("mtu"):
            link_ops.append({"op": "link_set", "ifname": name, "mtu": old["mtu"]})
        if cur.get("up") != old.get("up"):
            link_ops.append({"op": "link_set", "ifname": name, "state": "up" if old["up"] else "down"})

    addr_del, addr_add = [], []
    added = {tuple(a) for a in owned_now["addresses"]}
    for ifname in sorted(set(before["addresses"]) | set(now["addresses"])):
        if ifname in deleted or (ifname not in now["links"] and ifname not in fresh):
            continue
        old = [a["address"] for a in before["addresses"].get(ifname, [])]
        cur = [] if ifname in fresh else [a["address"] for a in now["addresses"].get(ifname, [])]
        gone = [a for a in cur if a not in old and (ifname, a) in added]
        addr_del += [{"op": "addr_del", "ifname": ifname, "address": a} for a in gone]
        addr_add += [{"op": "addr_add", "ifname": ifname, "address": a} for a in old if a not in cur]
        entries = [] if ifname in fresh else now["addresses"].get(ifname, [])
        addr_add += [
            {"op": "addr_add", "ifname": ifname, "address": a, "again": True}
            for a in secondaries_dropped_with(entries, gone)
            if a in old
        ]

    route_del, route_add = [], []
    managed_before = [r for r in before["routes"] if r["proto"] in MANAGED_PROTOS]
    for r in now["routes"]:
        ours_now = any(route_matches(o, r) for o in owned_now["routes"])
        if r["proto"] in MANAGED_PROTOS and ours_now and not any(_same_route(r, b) for b in managed_before):
            route_del.append({"op": "route_del", "route": _bare_route(r)})
    for b in managed_before:
        if b["ifname"] in fresh or not any(_same_route(b, r) for r in now["routes"]):
            route_add.append({"op": "route_replace", "route": _bare_route(b), "proto": b["proto"]})

    neigh_del, neigh_add = [], []
    old_neigh = {(n["ifname"], n["dst"]): n for n in before["neighbours"]}
    owned_neigh = {tuple(n) for n in owned_now["neighbours"]}
    for n in now["neighbours"]:
        key = (n["ifname"], n["dst"])
        if key not in old_neigh and key in owned_neigh:
            neigh_del.append({"op": "neigh_del", "ifname": n["ifname"], "dst": n["dst"]})
    now_neigh = {(n["ifname"], n["dst"]): n for n in now["neighbours"]}
    for key, n in old_neigh.items():
        cur = now_neigh.get(key)
        if n["permanent"] and (cur is None or cur["lladdr"] != n["lladdr"] or key[0] in fresh):
            neigh_add.append({"op": "neigh_replace", "ifname": n["ifname"], "dst": n["dst"], "lladdr": n["lladdr"]})
    return route_del + neigh_del + link_ops + addr_del + addr_add + route_add + neigh_add


def _same_route(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return route_matches(_bare_route(a), b) and route_matches(_bare_route(b), a)


def _bare_route(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("dst", "gateway", "ifname", "metric", "kind")}


# --- observation (pyroute2 messages -> plain dicts) ----------------------------------------------


def proto_name(proto: int) -> str:
    names = {2: "kernel", 3: "boot", 4: "static", 11: "zebra", 16: "dhcp", 186: "bgp", 188: "ospf", 191: "nhrp"}
    return names.get(proto, str(proto))


def link_record(msg: Any, names: dict[int, str]) -> dict[str, Any]:
    """One RTM_NEWLINK message -> {kind, mtu, up, gre: {...} | None}."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    rec: dict[str, Any] = {
        "index": msg["index"],
        "kind": kind,
        "mtu": msg.get("IFLA_MTU"),
        "up": bool(msg["flags"] & IFF_UP),
    }
    rec["gre"] = None
    if kind == "gre":
        data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")

        def attr(name: str) -> Any:
            return data.get(name) if data is not None else None

        ikey = attr("IFLA_GRE_IKEY") if (attr("IFLA_GRE_IFLAGS") or 0) & GRE_KEY else None
        okey = attr("IFLA_GRE_OKEY") if (attr("IFLA_GRE_OFLAGS") or 0) & GRE_KEY else None
        remote = attr("IFLA_GRE_REMOTE")
        rec["gre"] = {
            "local": attr("IFLA_GRE_LOCAL"),
            "remote": None if remote in (None, "0.0.0.0") else remote,
            "link": names.get(attr("IFLA_GRE_LINK") or 0),
            # one key both ways is what the appliance makes; anything else reads as "ikey/okey"
            "key": ikey if ikey == okey else f"{ikey}/{okey}",
            "ttl": attr("IFLA_GRE_TTL"),
        }
    return rec


def observe(kernel: Any, neighbour_links: set[str] | None = None) -> dict[str, Any]:
    """What the kernel holds (IPv4, main table): links, addresses, routes; neighbours on `neighbour_links`.

    `kernel` answers get_links(), get_addr(family), get_routes(family) and get_neighbours(family) with
    pyroute2 messages: a KernelReader, or an IPRoute (which returns the same records)."""
    messages = kernel.get_links()
    names = {m["index"]: m.get("IFLA_IFNAME") for m in messages}
    links = {names[m["index"]]: link_record(m, names) for m in messages}
    addresses: dict[str, list[dict[str, Any]]] = {}
    for a in kernel.get_addr(family=socket.AF_INET):
        ifname = names.get(a["index"])
        local = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
        if ifname is None or local is None:
            continue
        entry = {"address": f"{local}/{a['prefixlen']}", "secondary": bool(a["flags"] & IFA_F_SECONDARY)}
        addresses.setdefault(ifname, []).append(entry)
    routes = []
    for r in kernel.get_routes(family=socket.AF_INET):
        if (r.get("RTA_TABLE") or r["table"]) != MAIN_TABLE:
            continue
        dst = r.get("RTA_DST") or "0.0.0.0"
        routes.append(
            {
                "dst": f"{dst}/{r['dst_len']}",
                "gateway": r.get("RTA_GATEWAY"),
                "ifname": names.get(r.get("RTA_OIF") or 0),
                "metric": r.get("RTA_PRIORITY") or 0,
                "kind": ROUTE_TYPES.get(r["type"], str(r["type"])),
                "proto": r["proto"],
            }
        )
    neighbours = []
    if neighbour_links:
        for n in kernel.get_neighbours(family=socket.AF_INET):
            ifname = names.get(n["ifindex"])
            if ifname in neighbour_links and n.get("NDA_DST"):
                neighbours.append(
                    {
                        "ifname": ifname,
                        "dst": n.get("NDA_DST"),
                        "lladdr": n.get("NDA_LLADDR"),
                        "permanent": bool(n["state"] & NUD_PERMANENT),
                    }
                )
    return {"links": links, "addresses": addresses, "routes": routes, "neighbours": neighbours}


# --- reading the kernel: RTNL dumps on a bare socket ---------------------------------------------


class KernelReader:
    """Dumps of links and IPv4 addresses, routes (every table) and neighbours over a bare
    NETLINK_ROUTE socket, each reply decoded by pyroute2's own message classes: the records IPRoute
    returns (same fields, get(), get_nested(), GRE IFLA_INFO_DATA decoding) without importing IPRoute,
    which pulls asyncio, ssl and ~240 modules: seconds of a no-op apply on the lab VM's emulated CPU."""

    def __init__(self) -> None:
        self._decoders = rtnl_decoders()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._seq = 0

    def __enter__(self) -> KernelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def get_links(self) -> list[Any]:
        return self._dump("links", RTM_GETLINK, socket.AF_UNSPEC)

    def get_addr(self, family: int) -> list[Any]:
        return self._dump("addresses", RTM_GETADDR, family)

    def get_routes(self, family: int) -> list[Any]:
        return self._dump("routes", RTM_GETROUTE, family)

    def get_neighbours(self, family: int) -> list[Any]:
        return self._dump("neighbours", RTM_GETNEIGH, family)

    def _dump(self, what: str, request_type: int, family: int) -> list[Any]:
        for _ in range(DUMP_ATTEMPTS):
            messages, interrupted = self._dump_once(what, request_type, family)
            if not interrupted:
                return messages
        raise DriverError(SUBSYSTEM, f"cannot read {what}", f"{DUMP_ATTEMPTS} dumps in a row changed while read")

    def _dump_once(self, what: str, request_type: int, family: int) -> tuple[list[Any], bool]:
        """The dump's messages, and whether the kernel flagged it as interrupted by a change."""
        decoder = self._decoders[request_type]
        self._seq += 1
        request = decoder()
        request["family"] = family
        request["header"].update(type=request_type, flags=NLM_F_REQUEST | NLM_F_DUMP, sequence_number=self._seq)
        request.encode()
        self._sock.send(request.data)
        messages: list[Any] = []
        interrupted = False
        while True:  # a dump spans datagrams until NLMSG_DONE; recvmsg itself retries on EINTR (PEP 475)
            data, _, flags, _ = self._sock.recvmsg(DUMP_RECV_BYTES)
            if flags & socket.MSG_TRUNC:
                raise DriverError(SUBSYSTEM, f"cannot read {what}", f"a reply exceeds {DUMP_RECV_BYTES} bytes")
            offset = 0
            while offset + 16 <= len(data):
                length, kind, msg_flags, seq = struct.unpack_from("=IHHI", data, offset)
                if length < 16:
                    raise DriverError(SUBSYSTEM, f"cannot read {what}", f"malformed netlink header (length {length})")
                if seq == self._seq:
                    interrupted |= bool(msg_flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_DONE:
                        return messages, interrupted
                    if kind == NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", data, offset + 16)
                        raise DriverError(SUBSYSTEM, f"cannot read {what}", os.strerror(-error))
                    message = decoder(data, offset=offset)
                    message.decode()
                    messages.append(message)
                offset += (length + 3) & ~3


@functools.cache
def rtnl_decoders() -> dict[int, type]:
    """pyroute2's message classes by dump request type: ~45 modules, none of IPRoute's asyncio."""
    _pyroute2_without_its_init()
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return {RTM_GETLINK: ifinfmsg, RTM_GETADDR: ifaddrmsg, RTM_GETROUTE: rtmsg, RTM_GETNEIGH: ndmsg}


# --- the driver ----------------------------------------------------------------------------------


class NetlinkDriver:
    name = SUBSYSTEM

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def claims(self, desired: DesiredState) -> set[str]:
        return set()

    # ledger --------------------------------------------------------------------------------------

    def owned(self) -> dict[str, list[Any]]:
        return owned_of(self.ctx.ledger.section(self.name))

    def _save_owned(self, owned: dict[str, list[Any]]) -> None:
        self.ctx.ledger.replace_section(self.name, owned)

    @staticmethod
    def _neighbour_links(spec: NetlinkSpec | None, owned: dict[str, list[Any]]) -> set[str]:
        links = {n[0] for n in owned["neighbours"]}
        if spec is not None:
            links |= {n.ifname for n in spec.neighbours}
        return links

    def _observe(self, spec: NetlinkSpec | None, owned: dict[str, list[Any]]) -> dict[str, Any]:
        with KernelReader() as kernel:
            return observe(kernel, self._neighbour_links(spec, owned))

    # protocol ------------------------------------------------------------------------------------

    def diff(self, desired: DesiredState) -> list[Change]:
        owned = self.owned()
        return plan(desired.netlink, self._observe(desired.netlink, owned), owned)

    def apply(self, changes: list[Change]) -> None:
        owned = self.owned()
        with _iproute() as ipr:
            for c in changes:
                self._run(ipr, c.payload, owned, record=True)

    def verify(self, desired: DesiredState) -> None:
        left = [c.description for c in self.diff(desired) if c.kind != "ledger"]
        if left:
            raise DriverError(self.name, "still differs after apply", "; ".join(left))

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        owned = self.owned()
        seen = self._observe(desired.netlink, owned)
        keep = {desired.netlink.tunnel.name, desired.netlink.tunnel.link, *owned["links"]}
        keep |= {ls.name for ls in desired.netlink.links} | {a.ifname for a in desired.netlink.addresses}
        return {
            "observed": {
                "links": {k: v for k, v in seen["links"].items() if k in keep},
                "addresses": {k: v for k, v in seen["addresses"].items() if k in keep},
                "routes": [r for r in seen["routes"] if r["proto"] in MANAGED_PROTOS],
                "neighbours": seen["neighbours"],
            },
            "owned": owned,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        before, owned_before = snapshot["observed"], owned_of(snapshot["owned"])
        owned_now = self.owned()
        union = _union(owned_before, owned_now)
        self._save_owned(union)  # write-ahead: whatever exists during the restore is recorded
        errors = []
        with KernelReader() as kernel, _iproute() as ipr:
            now = observe(kernel, self._neighbour_links(None, union) | {n["ifname"] for n in before["neighbours"]})
            for op in restore_ops(before, now, owned_before, owned_now):
                try:
                    self._run(ipr, op, union, record=False)
                except DriverError as e:  # undo as much as possible, then say what is left
                    errors.append(str(e))
            after = observe(kernel, self._neighbour_links(None, union))
        self._save_owned(_union(owned_before, _existing(owned_now, after)))
        if errors:
            raise DriverError(self.name, "restore incomplete", "; ".join(errors))

    # operations ----------------------------------------------------------------------------------

    def _run(self, ipr: Any, op: dict[str, Any], owned: dict[str, list[Any]], record: bool) -> None:
        kind = op["op"]
        if kind == "forget":
            ((key, entry),) = op["entry"].items()
            if entry in owned[key]:
                owned[key].remove(entry)
                self._save_owned(owned)
            return
        if record and op.get("claim", True) and kind in ("link_add", "addr_add", "route_replace", "neigh_replace"):
            entry_key, entry = _ledger_entry(op)
            if entry not in owned[entry_key]:
                owned[entry_key].append(entry)
                self._save_owned(owned)  # before the object exists (write-ahead)
        try:
            _execute(ipr, op)
        except DriverError:
            raise
        except Exception as e:  # NetlinkError and friends: the kernel's own words
            code = getattr(e, "code", None)
            done = (kind.endswith("_del") and code in ALREADY_GONE) or (op.get("again") and code == EEXIST)
            if not done:
                raise DriverError(self.name, f"cannot {_op_text(op)}", _kernel_words(e, op)) from None
        if record and kind in ("link_del", "link_recreate", "addr_del", "route_del", "neigh_del"):
            entry_key, entry = _ledger_entry(op)
            if kind != "link_recreate" and entry in owned[entry_key]:
                owned[entry_key].remove(entry)
            if kind in ("link_del", "link_recreate"):  # what lived on the link went with it
                name = op["ifname"]
                owned["addresses"] = [a for a in owned["addresses"] if a[0] != name]
                owned["neighbours"] = [n for n in owned["neighbours"] if n[0] != name]
                owned["routes"] = [r for r in owned["routes"] if r["ifname"] != name]
            self._save_owned(owned)


def _union(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out = owned_of(a)
    for key, entries in b.items():
        out[key] += [e for e in entries if e not in out[key]]
    return out


def _existing(owned: dict[str, list[Any]], seen: dict[str, Any]) -> dict[str, list[Any]]:
    """The entries of `owned` whose object exists in `seen`."""
    addresses = {(i, a["address"]) for i, entries in seen["addresses"].items() for a in entries}
    neighbours = {(n["ifname"], n["dst"]) for n in seen["neighbours"]}
    return {
        "links": [n for n in owned["links"] if n in seen["links"]],
        "addresses": [a for a in owned["addresses"] if tuple(a) in addresses],
        "routes": [r for r in owned["routes"] if any(route_matches(r, s) for s in seen["routes"])],
        "neighbours": [n for n in owned["neighbours"] if tuple(n) in neighbours],
    }


def _ledger_entry(op: dict[str, Any]) -> tuple[str, Any]:
    kind = op["op"]
    if kind.startswith("link"):
        return "links", op["ifname"]
    if kind.startswith("addr"):
        return "addresses", [op["ifname"], op["address"]]
    if kind.startswith("route"):
        return "routes", op["route"]
    return "neighbours", [op["ifname"], op["dst"]]


def _op_text(op: dict[str, Any]) -> str:
    kind = op["op"]
    if kind in ("link_add", "link_recreate"):
        return f"{'create' if kind == 'link_add' else 'recreate'} tunnel {op['ifname']} ({tunnel_text(op['link'])})"
    if kind == "link_del":
        return f"delete link {op['ifname']}"
    if kind == "link_set":
        what = f"mtu {op['mtu']}" if "mtu" in op else op["state"]
        return f"set {op['ifname']} {what}"
    if kind in ("addr_add", "addr_del"):
        return f"{'add' if kind == 'addr_add' else 'remove'} {op['address']} on {op['ifname']}"
    if kind in ("route_replace", "route_del"):
        return f"{'set' if kind == 'route_replace' else 'remove'} route {route_text(op['route'])}"
    return f"{'set' if kind == 'neigh_replace' else 'remove'} neighbour {op['dst']} on {op['ifname']}"


def _kernel_words(e: Exception, op: dict[str, Any]) -> str:
    code = getattr(e, "code", None)
    words = str(e.args[1]) if len(e.args) > 1 else str(e)
    if op["op"] in ("link_add", "link_recreate") and code in (95, 22):  # EOPNOTSUPP/EINVAL from a kernel without GRE
        words += " (does this kernel have GRE? modprobe ip_gre)"
    return words


# --- pyroute2 imports, IPRoute calls -------------------------------------------------------------


def _iproute() -> Any:
    return iproute_class()()


@functools.cache
def iproute_class() -> type:
    """pyroute2.iproute.linux.IPRoute, imported without running pyroute2/__init__.py first."""
    _pyroute2_without_its_init()
    from pyroute2.iproute.linux import IPRoute

    return IPRoute


def _pyroute2_without_its_init() -> None:
    """Make `import pyroute2.<submodule>` skip pyroute2/__init__.py.

    That __init__ imports every part of pyroute2 (NDB, IPDB, conntrack, WireGuard, ...) for its flat
    namespace: pyroute2 0.9.7's IPRoute takes 90 ms to import with it, 64 ms without (native), and
    the import is most of the netlink step of a no-op apply. So the package module is created
    without running its __init__, which runs, into the same module, the first time anyone asks
    the package for a name that is not a submodule (`from pyroute2 import IPRoute` still works)."""
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.loader is not None and spec.submodule_search_locations is not None:
            package = importlib.util.module_from_spec(spec)
            package.__getattr__ = functools.partial(_complete_package, package)
            sys.modules["pyroute2"] = package


def _complete_package(package: types.ModuleType, name: str) -> Any:
    """The pyroute2 package's __getattr__ until its __init__ has run: a submodule, else run __init__."""
    try:
        return importlib.import_module(f"{package.__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{package.__name__}.{name}":
            raise
    del package.__getattr__
    package.__spec__.loader.exec_module(package)
    return getattr(package, name)


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise DriverError(SUBSYSTEM, f"interface {ifname} does not exist")
    return found[0]


def gre_link_args(ifname: str, rec: dict[str, Any], link_index: int) -> dict[str, Any]:
    """IPRoute.link('add', ...) arguments for the mGRE tunnel `rec` (a tunnel_record)."""
    args: dict[str, Any] = {
        "ifname": ifname,
        "kind": "gre",
        "gre_local": rec["local"],
        "gre_link": link_index,
        "gre_ttl": rec["ttl"],
        "gre_pmtudisc": 1,  # with a fixed TTL the tunnel sets DF: PMTU discovery works through it
        "mtu": rec["mtu"],
    }
    if rec.get("remote"):
        args["gre_remote"] = rec["remote"]
    if rec.get("key") is not None:
        args.update(gre_ikey=rec["key"], gre_okey=rec["key"], gre_iflags=GRE_KEY, gre_oflags=GRE_KEY)
    return args


def route_args(route: dict[str, Any], oif: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": route["dst"], "table": MAIN_TABLE, "priority": route["metric"], "proto": OUR_PROTO}
    if route["kind"] == "blackhole":
        args["type"] = "blackhole"
        return args
    if route["gateway"]:
        args["gateway"] = route["gateway"]
    if oif is not None:
        args["oif"] = oif
    return args


def _execute(ipr: Any, op: dict[str, Any]) -> None:
    kind = op["op"]
    if kind in ("link_add", "link_recreate"):
        rec = op["link"]
        if kind == "link_recreate":
            ipr.link("del", index=_index(ipr, op["ifname"]))
        ipr.link("add", **gre_link_args(op["ifname"], rec, _index(ipr, rec["link"])))
        if rec.get("up", True):
            ipr.link("set", index=_index(ipr, op["ifname"]), state="up")
    elif kind == "link_del":
        ipr.link("del", index=_index(ipr, op["ifname"]))
    elif kind == "link_set":
        settings = {k: op[k] for k in ("mtu", "state") if k in op}
        ipr.link("set", index=_index(ipr, op["ifname"]), **settings)
    elif kind in ("addr_add", "addr_del"):
        address = IPv4Interface(op["address"])
        ipr.addr(
            "add" if kind == "addr_add" else "del",
            index=_index(ipr, op["ifname"]),
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
        )
    elif kind in ("route_replace", "route_del"):
        route = op["route"]
        oif = _index(ipr, route["ifname"]) if route.get("ifname") else None
        args = route_args(route, oif)
        if "proto" in op:
            args["proto"] = op["proto"]
        if kind == "route_del":
            args.pop("proto")  # delete whichever protocol installed it (the plan checked it is boot/static)
        ipr.route("replace" if kind == "route_replace" else "del", **args)
    elif kind in ("neigh_replace", "neigh_del"):
        args = {"dst": op["dst"], "ifindex": _index(ipr, op["ifname"])}
        if kind == "neigh_replace":
            args.update(lladdr=op["lladdr"], state="permanent")
        ipr.neigh("replace" if kind == "neigh_replace" else "del", **args)
    else:
        raise DriverError(SUBSYSTEM, f"unknown operation {kind}")
