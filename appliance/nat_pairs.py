"""Between two spokes that are both behind NAT, spoke-to-spoke traffic goes through the hub.

Measured in the lab (two spokes behind two Linux masquerade NAT routers): nhrpd resolves the other
spoke, gets its NAT router's address (NAT extension) and installs a shortcut there, but neither
spoke can open IKE to the other: each NAT drops the other's unsolicited IKE packets (the IKE_SA
stays CONNECTING), so the shortcut dropped every packet. nhrpd cannot be told to skip such peers.
So on a spoke that is itself behind NAT, the supervisor routes the prefixes of shortcuts whose peer
is also behind NAT through its NHS, in a table of its own that the kernel consults before `main`
(rule priority 100, table 142). Shortcuts to spokes on public addresses stay direct. A spoke knows
it is behind NAT when nhrpd's own entry has an NBMA address other than the claimed one (the
NHS's NAT extension told it), and a peer likewise.
"""

from __future__ import annotations

import socket
from typing import Any

FALLBACK_TABLE = 142
RULE_PRIORITY = 100
ROUTE_PROTO = "static"  # as the netlink driver's routes (drivers/netlink.py OUR_PROTO)
RTNH_F_ONLINK = 4  # the NHS is reached over the tunnel, as zebra installs its routes


def _behind_nat(entry: dict[str, Any]) -> bool:
    nbma, claimed = entry.get("nbma"), entry.get("claimed_nbma")
    return bool(nbma and claimed) and nbma != claimed


def routes_through_hub(dmvpn: dict[str, Any]) -> dict[str, str]:
    """{prefix: NHS overlay address} for shortcuts that lead from a NATed spoke to a NATed peer.

    `dmvpn` is status.nhrp(): nhrpd's NHS, cache and shortcut tables."""
    nhs = [e["protocol"] for e in dmvpn["nhs"] if e.get("registered")]
    cache = {e.get("protocol"): e for e in dmvpn["cache"]}
    own = [e for e in dmvpn["cache"] if e.get("type") == "local"]
    if not nhs or not any(_behind_nat(e) for e in own):
        return {}
    routes = {}
    for shortcut in dmvpn["shortcuts"]:
        peer = cache.get(shortcut.get("via"))
        if peer is not None and peer.get("type") not in ("local", "nhs") and _behind_nat(peer):
            routes[shortcut["prefix"]] = nhs[0]
            routes[f"{shortcut['via']}/32"] = nhs[0]
    return routes


def installed(kernel: Any) -> dict[str, str]:
    """{prefix: via} in table 142: what `show dmvpn` reports as going through the hub.

    `kernel` is an IPRoute or the netlink driver's KernelReader (both dump every table's routes)."""
    have = {}
    for r in kernel.get_routes(family=socket.AF_INET):
        if (r.get_attr("RTA_TABLE") or r["table"]) == FALLBACK_TABLE:
            have[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = r.get_attr("RTA_GATEWAY")
    return have


def sync(tunnel: str, wanted: dict[str, str], ipr: Any) -> list[str]:
    """Make table 142 and its rule hold exactly `wanted`; returns one line per change."""
    idx = ipr.link_lookup(ifname=tunnel)
    if not idx:
        return []
    have = installed(ipr)
    changes = []
    for prefix, via in sorted(wanted.items()):
        if have.get(prefix) != via:
            args = {"dst": prefix, "gateway": via, "oif": idx[0], "flags": RTNH_F_ONLINK}
            ipr.route("replace", table=FALLBACK_TABLE, proto=ROUTE_PROTO, **args)
            changes.append(f"{prefix} via {via} (both spokes behind NAT)")
    for prefix in sorted(set(have) - set(wanted)):
        ipr.route("del", dst=prefix, table=FALLBACK_TABLE)
        changes.append(f"{prefix}: direct again")
    rules = [r for r in ipr.get_rules(family=socket.AF_INET) if r.get_attr("FRA_TABLE") == FALLBACK_TABLE]
    if wanted and not rules:
        ipr.rule("add", table=FALLBACK_TABLE, priority=RULE_PRIORITY)
    elif not wanted:
        for _ in rules:
            ipr.rule("del", table=FALLBACK_TABLE, priority=RULE_PRIORITY)
    return changes
