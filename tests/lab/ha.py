"""Measurements for the high-availability lab (tests/lab/test_ha.py, bench/ha_bench.py).

Everything is timed inside the VM (ping -D timestamps, `date` in a node, the supervisor's
health.json), never by the lab's transport, which under TCG costs a second or more per command.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.lab.expect import run_and_expect

REPO = Path(__file__).resolve().parents[2]
SITES = REPO / "tests" / "lab" / "sites" / "ha"
APPLIANCE = "/usr/local/bin/appliance"  # as on an image; keepalived's hooks use the same command
SUPERVISOR_LOG = "/var/log/appliance-supervise.log"
HEALTH_JSON = "/run/appliance/health.json"


def vrrp_group(site: str) -> dict[str, Any]:
    """The (only) VRRP group of a lab site file, with the schema's defaults filled in."""
    group = yaml.safe_load((SITES / f"{site}.yaml").read_text())["vrrp"]["groups"][0]
    return {"priority": 100, "advert_interval": 1.0, **group}


def master_down_interval(backup_site: str) -> float:
    """RFC 5798 6.1: 3 x Master_Adver_Interval + Skew_Time, Skew_Time = (256 - Priority) x interval / 256,
    with the backup's priority: how long the backup waits after the last advertisement it heard."""
    g = vrrp_group(backup_site)
    return 3 * g["advert_interval"] + (256 - g["priority"]) * g["advert_interval"] / 256


# --- VRRP state ---------------------------------------------------------------------------------


def holds_address(lab, node: str, ifname: str, address: str) -> bool:
    return f" {address}/" in lab.check(node, f"ip -4 -o addr show dev {ifname}")


def vrrp_state(lab, node: str) -> str | None:
    """State of the node's one VRRP group as `appliance show vrrp` reports it (keepalived's notify hook)."""
    groups = json.loads(lab.check(node, f"{APPLIANCE} show vrrp --json"))["groups"]
    return groups[0]["state"] if groups else None


def wait_master(lab, node: str, ifname: str, vip: str, timeout: float = 120) -> None:
    """Until `node` reports MASTER and holds the virtual address."""
    run_and_expect(
        lambda: (vrrp_state(lab, node), holds_address(lab, node, ifname, vip)),
        lambda s: s == ("MASTER", True),
        timeout,
        what=f"{node} VRRP master with {vip}",
    )


def wait_tunnel_ping(lab, node: str, source: str, destination: str, timeout: float = 180) -> None:
    """Until `node` reaches another router's tunnel address from its own: traffic through DMVPN
    (GRE in IPsec, through a hub or over an NHRP shortcut), never over a shared LAN."""
    run_and_expect(
        lambda: lab.exec(node, f"ping -n -c 2 -i 0.5 -W 2 -I {source} {destination}", timeout=120).rc,
        0,
        timeout,
        what=f"{node}: ping {destination} from {source}",
    )


# --- ping outage --------------------------------------------------------------------------------


@dataclass
class Outage:
    sent: int  # echo requests sent
    lost: int  # requests in the longest run without a reply
    seconds: float  # first lost to first answered request, from ping's own timestamps
    interval: float
    output: str

    def __str__(self) -> str:
        return f"{self.lost} of {self.sent} pings lost ({self.interval:g} s apart), outage {self.seconds:.2f} s"


REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.M)
NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)", re.M)


def parse_outage(output: str, interval: float) -> Outage:
    """The longest run of unanswered echo requests in `ping -D -O` output, and its duration.

    A request's send time is taken from the reply (or the 'no answer yet' line) of its neighbour;
    the outage runs from the send time of the first lost request to the reply of the first answered
    one after it."""
    replies = {int(seq): float(ts) for ts, seq in REPLY.findall(output)}
    unanswered = {int(seq): float(ts) for ts, seq in NO_ANSWER.findall(output)}
    sent = max([*replies, *unanswered], default=0)
    assert replies, f"no reply at all:\n{output[-2000:]}"
    best = (0, 0.0)
    previous = None  # last answered sequence number
    for seq in sorted(replies):
        if previous is not None and seq - previous > 1:
            lost = seq - previous - 1
            # request previous+1 left one interval after request `previous`, which was answered at
            # replies[previous] (an RTT later than it left; RTTs here are well under a millisecond)
            seconds = replies[seq] - (replies[previous] + interval)
            if lost > best[0]:
                best = (lost, seconds)
        previous = seq
    tail = sent - max(replies)
    if tail > best[0]:  # never answered again before the deadline
        best = (tail, float("inf"))
    return Outage(sent, best[0], max(best[1], 0.0), interval, output)


def ping_outage(
    lab, host: str, target: str, disrupt: Callable[[], None], seconds: float = 20, lead: float = 4,
    interval: float = 0.1,
) -> Outage:  # fmt: skip
    """Ping `target` from `host` every `interval` s for `seconds` s; call `disrupt` `lead` s in."""
    command = f"ping -n -D -O -i {interval} -W 1 -w {seconds:g} {target}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        pinging = pool.submit(lab.exec, host, command, None, seconds + 300)
        time.sleep(lead)
        disrupt()
        result = pinging.result()
    return parse_outage(result.stdout, interval)


# --- supervisor ---------------------------------------------------------------------------------


def start_supervisor(lab, node: str, interval: float = 2) -> int:
    """`appliance supervise` in the background of a lab node (no systemd there); its pid."""
    out = lab.check(
        node,
        f"setsid {APPLIANCE} supervise --interval {interval:g} >{SUPERVISOR_LOG} 2>&1 </dev/null & echo $!",
    )
    return int(out.strip())


def stop_supervisor(lab, node: str, pid: int) -> None:
    lab.exec(node, f"kill {pid}")


def health(lab, node: str) -> dict[str, Any] | None:
    result = lab.exec(node, f"cat {HEALTH_JSON}")
    return json.loads(result.stdout) if result.rc == 0 and result.stdout.strip() else None


def node_time(lab, node: str) -> float:
    return float(lab.check(node, "date +%s.%N"))


# Drift the supervisor must repair: the command that causes it, the subsystem that repairs it,
# and a command that succeeds once the damage is undone.
DRIFTS: dict[str, tuple[str, str, str]] = {
    "tunnel-deleted": ("ip link del dmvpn0", "netlink", "ip link show dmvpn0 | grep -q UP"),
    "firewall-flushed": (
        "nft flush table inet appliance",
        "firewall",
        "nft list chain inet appliance input | grep -q public-ike",
    ),
    # swanctl 5.9.8 has no --unload-conn: VICI's unload-conn, from the appliance's own Python
    "ipsec-unloaded": (
        f"$(dirname $(readlink -f {APPLIANCE}))/python -c"
        " \"import vici; vici.Session().unload_conn({'name': 'dmvpn'})\"",
        "ipsec",
        "swanctl --list-conns | grep -q '^dmvpn:'",
    ),
    # watchfrr restarts a daemon that dies by itself (seconds): the supervisor's case is FRR
    # without its watchdog
    "nhrpd-and-watchfrr-killed": (
        "kill -9 $(cat /run/frr/watchfrr.pid) $(cat /run/frr/nhrpd.pid)",
        "frr",
        "kill -0 $(cat /run/frr/nhrpd.pid) && kill -0 $(cat /run/frr/watchfrr.pid)",
    ),
}


@dataclass
class Repair:
    drift: str
    subsystem: str
    detected: float  # seconds from the damage to the supervisor round that saw it
    seconds: float  # seconds from the damage until the repair was applied


def repair_time(lab, node: str, drift: str, timeout: float = 300) -> Repair:
    """Cause `drift` in `node` (a supervisor runs there) and wait until a supervisor round repaired it."""
    command, subsystem, _ = DRIFTS[drift]
    before = (health(lab, node) or {}).get("repairs_total", {}).get(subsystem, 0)
    damaged = float(lab.check(node, f"date +%s.%N; {command} >/dev/null").split()[0])
    snapshot = run_and_expect(
        lambda: health(lab, node) or {},
        lambda h: h.get("repairs_total", {}).get(subsystem, 0) > before,
        timeout,
        what=f"{node}: supervisor repairs {drift} ({subsystem})",
    )
    times = snapshot["last_repair"][subsystem]
    return Repair(drift, subsystem, times["detected"] - damaged, times["repaired"] - damaged)
