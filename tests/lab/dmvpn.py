"""Helpers for the end-to-end DMVPN tests: run the product in a node, read its JSON, look at the wire."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from appliance.lab.expect import run_and_expect

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "tests" / "lab" / "topologies"
APPLIANCE = str(Path(sys.executable).with_name("appliance"))  # the same path inside the VM


def appliance(lab, node: str, args: str, timeout: float = 600) -> str:
    return lab.check(node, f"{APPLIANCE} {args}", timeout=timeout)


def show(lab, node: str, view: str) -> Any:
    return json.loads(appliance(lab, node, f"show {view} --json"))


def ping(lab, node: str, dst: str, count: int = 3, interval: float = 0.5) -> tuple[int, list[int]]:
    """(replies, TTLs seen) of `count` pings; never raises on loss."""
    out = lab.exec(node, f"ping -n -c {count} -i {interval} -W 2 {dst}", timeout=120).stdout
    ttls = [int(t) for t in re.findall(r"ttl=(\d+)", out)]
    return len(ttls), ttls


def wait_ping(lab, node: str, dst: str, timeout: float = 180) -> list[int]:
    """Ping until one reply comes; the TTLs of the round that answered."""
    return run_and_expect(
        lambda: ping(lab, node, dst, count=2)[1], lambda ttls: len(ttls) > 0, timeout, what=f"{node} ping {dst}"
    )


def pinging(lab, node: str, dst: str, observe: Callable[[], T]) -> Callable[[], T]:
    """`observe` after a few pings from node to dst: NHRP redirects and resolutions happen only
    while traffic flows, so a wait for a shortcut must keep sending."""

    def probe() -> T:
        ping(lab, node, dst, count=2, interval=0.2)
        return observe()

    return probe


def nhrp_cache(lab, node: str) -> list[dict[str, Any]]:
    return show(lab, node, "dmvpn")["cache"]


def cache_entry(lab, node: str, overlay: str) -> dict[str, Any] | None:
    return next((e for e in nhrp_cache(lab, node) if e.get("protocol") == overlay), None)


def routes(lab, node: str) -> list[dict[str, Any]]:
    return json.loads(lab.check(node, "ip -j route show"))


def route_to(lab, node: str, prefix: str) -> dict[str, Any] | None:
    return next((r for r in routes(lab, node) if r.get("dst") == prefix), None)


def neighbour(lab, node: str, ifname: str, address: str) -> dict[str, Any] | None:
    entries = json.loads(lab.check(node, f"ip -j neigh show dev {ifname}"))
    return next((n for n in entries if n.get("dst") == address), None)


def sas_with(lab, node: str, remote_host: str) -> list[dict[str, Any]]:
    return [sa for sa in show(lab, node, "ipsec")["sas"] if sa["remote"].split("[")[0] == remote_host]


def wait_direct_path(lab, pinger: str, dst: str, near: str, far: str, near_overlay: str, far_nbma: str) -> dict:
    """Keep pinging dst (behind `far`) from `pinger` (behind `near`) until the spoke-to-spoke path
    has settled both ways: `far` resolved `near` (its replies stop taking the hub), `near` has an
    installed SA with `far`, and a ping answers. A shortcut route alone is not enough: measured in
    CI, one of the next three pings was lost while the far side still switched over. Returns the SA."""
    run_and_expect(
        pinging(lab, pinger, dst, lambda: cache_entry(lab, far, near_overlay)),
        lambda e: e is not None,
        120,
        what=f"{far} NHRP cache entry for {near}",
    )
    # the first GRE packet to `far` triggers IKE; until the SA is up the kernel holds or drops
    # packets (XfrmOutNoStates): seconds under emulation
    sa = run_and_expect(
        pinging(lab, pinger, dst, lambda: sas_with(lab, near, far_nbma)),
        lambda s: any(c.get("state") == "INSTALLED" for sa in s for c in sa["children"]),
        120,
        what=f"{near}-{far} SA",
    )[0]
    wait_ping(lab, pinger, dst, timeout=60)
    return sa


def traceroute_hops(lab, node: str, dst: str) -> list[str]:
    out = lab.check(node, f"traceroute -n -q 1 -w 2 -m 6 {dst}", timeout=120)
    return re.findall(r"^\s*\d+\s+(\S+)", out, re.M)


def nft_counter(lab, node: str, name: str) -> int:
    data = json.loads(lab.check(node, f"nft -j list counter inet appliance {name}"))
    return next(o["counter"]["packets"] for o in data["nftables"] if "counter" in o)


def xfrm_stat(lab, node: str, name: str) -> int:
    m = re.search(rf"^{name}\s+(\d+)", lab.check(node, "cat /proc/net/xfrm_stat"), re.M)
    return int(m.group(1)) if m else 0


def set_secret(lab, node: str, name: str, value: str) -> None:
    """Replace one KEY=VALUE in the node's /etc/appliance/secrets.env (0600); values never echoed."""
    script = (
        'umask 077; f=/etc/appliance/secrets.env; grep -v "^$1=" $f > $f.new; '
        'printf "%s=%s\\n" "$1" "$(cat)" >> $f.new; mv $f.new $f'
    )
    result = lab.lab.exec(node, ["sh", "-c", script, "set-secret", name], stdin=value)
    assert result.rc == 0, f"{node}: could not set {name}: {result.stderr}"


def get_secret(lab, node: str, name: str) -> str:
    text = lab.check(node, "cat /etc/appliance/secrets.env")
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(name + "="))


SPOKE_SITE = """\
system: {{hostname: {hostname}}}
interfaces:
  public: {{name: eth0, address: {public}, gateway: {gateway}}}
  lan: [{{name: eth1, address: {lan}}}]
dmvpn:
  role: spoke
  tunnel: {{address: {overlay}, prefix: 172.16.0.0/24, key: 42}}
  nhrp:
    network_id: 42
    nhs: [{{address: 172.16.0.1, nbma: 192.0.2.2}}]
ipsec:
  auth: {{psk: {{env: DMVPN_PSK}}}}
routing:
  ospf:
    router_id: {router_id}
    hello_interval: 2
    dead_interval: 8
    authentication: {{key: {{env: OSPF_KEY}}}}
"""


def spoke_site(hostname: str, public: str, gateway: str, overlay: str, lan: str) -> str:
    """A phase-3 spoke of the examples' DMVPN (key 42, network-id 42, hub 192.0.2.2), OSPF with MD5."""
    return SPOKE_SITE.format(
        hostname=hostname, public=public, gateway=gateway, overlay=overlay, lan=lan, router_id=lan.split("/")[0]
    )


def configure_box(lab, node: str, site: str, secrets: str) -> str:
    """Make a `linux` node a box: its site file and secrets.env (0600), a dummy LAN, `appliance apply`."""
    lab.lab.exec(node, ["sh", "-c", "mkdir -p /etc/appliance; cat > /etc/appliance/site.yaml"], stdin=site)
    lab.lab.exec(node, ["sh", "-c", "umask 077; cat > /etc/appliance/secrets.env"], stdin=secrets)
    lab.check(node, "ip link show eth1 >/dev/null 2>&1 || ip link add eth1 type dummy")
    return appliance(lab, node, "apply /etc/appliance/site.yaml")


def wait_ospf_full(lab, node: str, at_least: int, timeout: float = 300) -> None:
    """Until `node` has at least that many OSPF neighbours in state Full."""
    lab.expect(
        node,
        f"{APPLIANCE} show ospf --json",
        lambda d: sum(n["state"].startswith("Full") for n in d["neighbours"]) >= at_least,
        timeout=timeout,
    )
