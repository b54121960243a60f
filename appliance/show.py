"""`appliance show dmvpn|ipsec|ospf|bgp|vrrp|firewall`: human tables or --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import status

HEALTH_FRESH_S = 30  # the supervisor writes every few seconds; older means it is not running


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"


def format_dmvpn(d: dict) -> str:
    out = []
    # both spokes behind NAT: the supervisor routes the shortcut's prefix through the hub (nat_pairs.py)
    path = {r["prefix"]: f"via hub {r['via']} (both behind NAT)" for r in d.get("through_hub", [])}
    if d["nhs"]:
        out += [
            "Next-hop servers",
            table(
                ["interface", "nhs", "nbma", "overlay", "state"],
                [
                    (
                        e.get("interface"),
                        e.get("fqdn"),
                        e.get("nbma"),
                        e.get("protocol"),
                        "registered" if e.get("registered") else "not registered",
                    )
                    for e in d["nhs"]
                ],
            ),
            "",
        ]
    out += [
        "NHRP peers",
        table(
            ["interface", "overlay", "nbma", "claimed nbma", "nat", "type", "flags"],
            [
                (
                    e.get("interface"),
                    e.get("protocol"),
                    e.get("nbma"),
                    e.get("claimed_nbma"),
                    "yes" if e.get("claimed_nbma") and e.get("claimed_nbma") != e.get("nbma") else "",
                    e.get("type"),
                    " ".join(f for f in ("used" if e.get("used") else "", e.get("flags", "")) if f),
                )
                for e in d["cache"]
            ],
        ),
    ]
    out += [
        "",
        "Shortcuts",
        table(
            ["type", "prefix", "via", "identity", "path"],
            [
                (e.get("type"), e.get("prefix"), e.get("via"), e.get("identity"), path.get(e.get("prefix"), "direct"))
                for e in d["shortcuts"]
            ],
        ),
    ]
    out += [f"warning: {w}" for w in d["warnings"]]
    return "\n".join(out)


def format_ipsec(d: dict) -> str:
    rows = []
    for sa in d["sas"]:
        nat = ",".join(x for x, on in (("local", sa["nat_local"]), ("remote", sa["nat_remote"])) if on) or "-"
        for c in sa["children"] or [{}]:
            rows.append(
                (
                    sa["remote"],
                    sa["state"],
                    f"IKEv{sa['version']}",
                    sa["encryption"],
                    nat,
                    c.get("state", "-"),
                    c.get("encryption", "-"),
                    human_bytes(c.get("bytes_in", 0)),
                    human_bytes(c.get("bytes_out", 0)),
                )
            )
    return table(["peer", "ike", "ver", "ike cipher", "nat", "child", "esp cipher", "in", "out"], rows)


def format_ospf(d: dict) -> str:
    return (
        table(
            ["neighbour", "state", "address", "interface"],
            [(n["router_id"], n["state"], n["address"], n["interface"]) for n in d["neighbours"]],
        )
        + "\nOSPF routes: "
        + (", ".join(d["routes"]) or "none")
    )


def format_bgp(d: dict) -> str:
    return f"AS {d['as']} router-id {d['router_id']}\n" + table(
        ["peer", "remote as", "state", "prefixes", "uptime", "dynamic"],
        [
            (p["peer"], p["remote_as"], p["state"], p["prefixes_received"], p["uptime"], p["dynamic"])
            for p in d["peers"]
        ],
    )


def format_vrrp(d: dict) -> str:
    if not d["groups"]:
        return "no VRRP state reported (no groups, or keepalived has not started)"
    return table(
        ["group", "state", "priority", "since"],
        [(g.get("name"), g.get("state"), g.get("priority"), g.get("since")) for g in d["groups"]],
    )


def format_firewall(d: dict) -> str:
    return (
        d["table"]
        + "\n"
        + table(
            ["chain", "rule", "packets", "bytes"],
            [(r["chain"], r["comment"], r["packets"], r["bytes"]) for r in d["rules"] if r["comment"]],
        )
    )


def read_health() -> dict:
    """The supervisor's last round when fresh, else one read now."""
    from . import health
    from .generations import StateDir
    from .supervisor import HEALTH_PATH

    try:
        last = json.loads(HEALTH_PATH.read_text())
        if time.time() - last.get("time", 0) < HEALTH_FRESH_S:
            return last
    except (OSError, json.JSONDecodeError):
        pass
    gen = StateDir().current()
    if gen is None:
        raise status.StatusError("no configuration applied yet (appliance apply)")
    desired = gen.desired()
    return health.collect(desired.role, desired.netlink.tunnel.name)


def format_health(d: dict) -> str:
    lines = [f"{'healthy' if d['healthy'] else 'NOT HEALTHY'} ({d['role']}, tunnel {d['tunnel']['name']})"]
    lines += [f"  problem: {p}" for p in d["problems"]]
    frr, ipsec = d["frr"], d["ipsec"]
    if "error" not in frr:
        lines.append(
            f"  NHS registered {frr['nhs_registered']}, NHRP peers {frr['nhrp_peers']}, "
            f"OSPF full {frr['ospf_full']}/{frr['ospf_neighbours']}"
        )
    if "error" not in ipsec:
        lines.append(
            f"  IKE SAs {ipsec['ike_sas']}, CHILD SAs {ipsec['child_sas']}: {', '.join(ipsec['peers']) or '-'}"
        )
    if d.get("repairs_total"):
        lines.append("  drift repairs: " + ", ".join(f"{k} {v}" for k, v in sorted(d["repairs_total"].items())))
    return "\n".join(lines)


VIEWS: dict[str, tuple[Callable[[], dict], Callable[[dict], str]]] = {
    "health": (read_health, format_health),
    "dmvpn": (status.dmvpn, format_dmvpn),
    "ipsec": (status.ipsec, format_ipsec),
    "ospf": (status.ospf, format_ospf),
    "bgp": (status.bgp, format_bgp),
    "vrrp": (status.vrrp, format_vrrp),
    "firewall": (status.firewall, format_firewall),
}


def cmd_show(args: argparse.Namespace) -> int:
    read, fmt = VIEWS[args.view]
    try:
        data = read()
    except status.StatusError as e:
        print(f"appliance show {args.view}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else fmt(data))
    return 0


def add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="show the running DMVPN, IPsec, routing, VRRP or firewall state")
    p.add_argument("view", choices=sorted(VIEWS), help="what to show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)
