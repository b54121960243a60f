"""Tunnel neighbours nhrpd left without an NBMA address, rewritten from nhrpd's own cache.

Measured in the lab with FRR 8.4.4 (and reported upstream, FRR issue #9452): now and then nhrpd
leaves a kernel neighbour `172.16.0.11 lladdr 0.0.0.0 proto nhrp` on the hub's tunnel while its
NHRP cache holds the right NBMA address. Every unicast packet to that spoke then fails
(`sendmsg ... Invalid argument`), so OSPF with it sticks in Exchange. Rewriting the neighbour with
the cache's NBMA address recovers at once (OSPF Full ~20 s later). The supervisor does it every
round; the check is one netlink dump, and nhrpd is asked only when such a neighbour exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NUD_REACHABLE = 0x02
UNSPECIFIED = "0.0.0.0"  # pyroute2 reads and writes a GRE neighbour's 4-byte lladdr as an IPv4 address


def repair_neighbours(tunnel: str, read_cache: Callable[[], list[dict[str, Any]]], ipr: Any) -> list[str]:
    """Rewrite the tunnel's 0.0.0.0 neighbours from the NHRP cache; returns 'overlay -> nbma' per fix."""
    idx = ipr.link_lookup(ifname=tunnel)
    if not idx:
        return []
    broken = [
        n.get_attr("NDA_DST")
        for n in ipr.get_neighbours(ifindex=idx[0])
        # IPv6 multicast neighbours (ff02::...) carry 0.0.0.0 too; nhrpd maps IPv4 only
        if n.get_attr("NDA_LLADDR") == UNSPECIFIED and "." in (n.get_attr("NDA_DST") or "")
    ]
    if not broken:
        return []
    nbma = {e["protocol"]: e["nbma"] for e in read_cache() if e.get("nbma") and e.get("type") != "local"}
    fixed = []
    for dst in broken:
        if dst in nbma:
            ipr.neigh("replace", dst=dst, lladdr=nbma[dst], ifindex=idx[0], state=NUD_REACHABLE)
            fixed.append(f"{dst} -> {nbma[dst]}")
    return fixed
