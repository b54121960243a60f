"""Health of a running box: one snapshot from the daemons' structured outputs, and its verdict.

Read in as few daemon round-trips as possible (one vtysh call for every FRR question, one VICI
list_sas, one netlink dump): the supervisor reads it every few seconds, keepalived's tunnel check
every two. `appliance show health` prints it; the supervisor exports it as Prometheus text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import status

FRR_QUESTIONS = ("show ip nhrp nhs json", "show ip nhrp cache json", "show ip ospf neighbor json")


def tunnel_link(name: str) -> dict[str, Any]:
    """{'exists', 'up'} of the tunnel interface from netlink."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return {"exists": False, "up": False}
        link = ipr.get_links(idx[0])[0]
        return {"exists": True, "up": bool(link["flags"] & 1)}  # IFF_UP


def _frr(role: str) -> dict[str, Any]:
    try:
        nhs, cache, ospf = status.vtysh_json(*FRR_QUESTIONS)
    except status.StatusError as e:
        return {"error": str(e)}
    nhs_rows = status._table(nhs)
    registered = [row for row in nhs_rows if status.nhs_registered(row)]
    neighbours = (
        [n for entries in (ospf.get("neighbors") or {}).values() for n in entries] if isinstance(ospf, dict) else []
    )
    full = [n for n in neighbours if str(n.get("nbrState", n.get("state", ""))).startswith("Full")]
    return {
        "nhs": nhs_rows,
        "nhs_registered": len(registered),
        "nhrp_peers": len([e for e in status._table(cache) if e.get("type") == "dynamic"]),
        "ospf_neighbours": len(neighbours),
        "ospf_full": len(full),
    }


def _ipsec() -> dict[str, Any]:
    try:
        sas = status.ipsec()["sas"]
    except status.StatusError as e:
        return {"error": str(e)}
    established = [sa for sa in sas if sa["state"] == "ESTABLISHED"]
    return {
        "ike_sas": len(established),
        "child_sas": sum(1 for sa in established for c in sa["children"] if c.get("state") == "INSTALLED"),
        "peers": sorted(sa["remote"].split("[")[0] for sa in established),
    }


def collect(
    role: str,
    tunnel: str,
    *,
    link: Callable[[str], dict[str, Any]] = tunnel_link,
    frr: Callable[[str], dict[str, Any]] = _frr,
    ipsec: Callable[[], dict[str, Any]] = _ipsec,
    vrrp: Callable[[], dict[str, Any]] = status.vrrp,
) -> dict[str, Any]:
    snapshot = {
        "time": time.time(),
        "role": role,
        "tunnel": {"name": tunnel, **link(tunnel)},
        "frr": frr(role),
        "ipsec": ipsec(),
        "vrrp": vrrp(),
    }
    snapshot["problems"] = problems(snapshot)
    snapshot["healthy"] = not snapshot["problems"]
    return snapshot


def problems(h: dict[str, Any]) -> list[str]:
    """Why the box is not carrying DMVPN traffic (empty: healthy)."""
    out = []
    t = h["tunnel"]
    if not t["exists"]:
        out.append(f"tunnel {t['name']} does not exist")
    elif not t["up"]:
        out.append(f"tunnel {t['name']} is down")
    if "error" in h["frr"]:
        out.append(f"FRR: {h['frr']['error']}")
    elif h["role"] == "spoke" and h["frr"]["nhs_registered"] == 0:
        out.append("not registered with any NHS")
    if "error" in h["ipsec"]:
        out.append(f"IPsec: {h['ipsec']['error']}")
    elif h["role"] == "spoke" and h["ipsec"]["ike_sas"] == 0:
        out.append("no IPsec SA")
    return out


def prometheus(h: dict[str, Any], counters: dict[str, int]) -> str:
    """Prometheus text exposition of a health snapshot plus the supervisor's repair counters."""
    lines = []

    def metric(name: str, value: float, help_text: str, labels: dict[str, str] | None = None) -> None:
        lines.append(f"# HELP appliance_{name} {help_text}")
        lines.append(f"# TYPE appliance_{name} gauge")
        label = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        lines.append(f"appliance_{name}{label} {value:g}")

    metric("healthy", int(h["healthy"]), "1 when the box carries DMVPN traffic")
    metric("tunnel_up", int(h["tunnel"]["up"]), "1 when the tunnel interface is up", {"tunnel": h["tunnel"]["name"]})
    frr, ipsec = h["frr"], h["ipsec"]
    if "error" not in frr:
        metric("nhrp_nhs_registered", frr["nhs_registered"], "NHS registrations that are up")
        metric("nhrp_peers", frr["nhrp_peers"], "dynamic NHRP cache entries (registered spokes on a hub)")
        metric("ospf_neighbours_full", frr["ospf_full"], "OSPF neighbours in state Full")
    if "error" not in ipsec:
        metric("ipsec_ike_sas", ipsec["ike_sas"], "established IKE SAs")
        metric("ipsec_child_sas", ipsec["child_sas"], "installed CHILD SAs")
    for g in h["vrrp"].get("groups", []):
        metric(
            "vrrp_master",
            int(g.get("state") == "MASTER"),
            "1 while this router is VRRP master",
            {"group": g.get("name", "?")},
        )
    lines.append("# HELP appliance_drift_repairs_total drift repairs by subsystem")
    lines.append("# TYPE appliance_drift_repairs_total counter")
    for subsystem, n in sorted(counters.items()):
        lines.append(f'appliance_drift_repairs_total{{subsystem="{subsystem}"}} {n}')
    last = h.get("last_repair", {})
    if last:
        lines.append("# HELP appliance_drift_last_repair_timestamp_seconds when a subsystem's drift was last repaired")
        lines.append("# TYPE appliance_drift_last_repair_timestamp_seconds gauge")
        for subsystem, times in sorted(last.items()):
            lines.append(
                f'appliance_drift_last_repair_timestamp_seconds{{subsystem="{subsystem}"}} {times["repaired"]:.3f}'
            )
    return "\n".join(lines) + "\n"
