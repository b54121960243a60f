"""DMVPN in the lab: time from lab start to the first spoke-to-spoke reply, time from the first
spoke-to-spoke packet to the direct path, and tunnel throughput with ESP against plain routed
traffic between the same two LAN hosts in the same VM (a ratio). Run as root:

    .venv/bin/python bench/dmvpn_bench.py [--seconds 10] [--keep]

The lab is `core` (tests/lab/topologies/core.yaml: a hub, two public spokes, a NAT'd spoke), brought
up fresh so that no shortcut exists yet. host1 (behind spoke1) pings host2 (behind spoke2) every
0.1 s from the moment the lab is up; ping's own timestamps, taken in the VM, give the first reply and
the first reply with TTL 62 (host2 <- spoke2 <- spoke1, no hub hop; 61 is through the hub).
Throughput: iperf3 TCP host1 -> host2, first through the tunnel (GRE in transport-mode ESP,
AES-256-GCM, on the direct spoke-to-spoke path), then plain: the supervisors stopped, `table inet
appliance` deleted on both spokes and the LAN routes pointed at the underlay, so the same packets
cross the same routers unencapsulated. The lab is left broken afterwards: it is brought down
unless --keep. Prints figures; asserts nothing (the emulated CPU decides absolute figures; the
ratio is what carries over).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from appliance.lab.lab import Lab
from appliance.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "tests" / "lab" / "topologies" / "core.yaml"
HOST1, HOST2 = "10.0.1.10", "10.0.2.10"
# Plain routing between the spokes' LANs over the underlay (tests/lab/topologies/core.yaml)
# (host routes on the spokes: nhrpd installs a /32 for the resolved host, more specific than a /24)
PLAIN_ROUTES = {
    "spoke1": ["10.0.2.10/32 via 198.51.100.1"],
    "spoke2": ["10.0.1.10/32 via 198.51.100.5"],
    "inet": ["10.0.1.0/24 via 198.51.100.2", "10.0.2.0/24 via 198.51.100.6"],
}
APPLIANCE = str(Path(sys.executable).with_name("appliance"))  # the same path inside the VM
PING_S = 60  # long enough for OSPF and the shortcut under emulation


def quiet(_: str) -> None:
    pass


def check(lab: Lab, node: str, command: str, timeout: float = 300) -> str:
    result = lab.exec(node, ["sh", "-c", command], timeout=timeout)
    if result.rc != 0:
        raise SystemExit(f"{node}: `{command}` exited {result.rc}: {result.output}")
    return result.stdout


def first_replies(lab: Lab) -> tuple[float, float | None, float | None, int]:
    """(ping start in VM time, first reply, first direct reply (TTL 62), replies) from host1 to host2."""
    count = int(PING_S / 0.1)
    out = lab.exec("host1", ["sh", "-c", f"date +%s.%N; ping -D -n -i 0.1 -W 1 -c {count} {HOST2}"], timeout=600)
    lines = out.stdout.splitlines()
    start = float(lines[0])
    replies = [(float(ts), int(ttl)) for ts, ttl in re.findall(r"^\[([\d.]+)\].*ttl=(\d+)", out.stdout, re.M)]
    first = replies[0][0] if replies else None
    direct = next((ts for ts, ttl in replies if ttl == 62), None)
    return start, first, direct, len(replies)


def iperf(lab: Lab, seconds: int) -> float:
    """Mbit/s received by host2 from host1 over TCP."""
    check(lab, "host2", "iperf3 -s -D -1 -p 5201 --logfile /tmp/iperf3.log")
    time.sleep(1)
    out = check(lab, "host1", f"iperf3 -c {HOST2} -p 5201 -t {seconds} -J", timeout=seconds + 120)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def go_plain(lab: Lab) -> None:
    for node in ("spoke1", "spoke2"):
        lab.exec(node, ["sh", "-c", "pkill -f 'appliance supervise' || true"])
        check(lab, node, "nft delete table inet appliance")
    for node, routes in PLAIN_ROUTES.items():
        for route in routes:
            check(lab, node, f"ip route replace {route}")
    hops = check(lab, "host1", f"traceroute -n -q 1 -w 2 -m 6 {HOST2}", timeout=120)
    path = re.findall(r"^\s*\d+\s+(\S+)", hops, re.M)
    print(f"plain path host1 -> host2: {' '.join(path)}")
    if not any(hop.startswith("198.51.100.") for hop in path):
        raise SystemExit("the plain path still goes through the tunnel: no plain figure")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each iperf3 run")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    print(f"host load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    topology = load_topology(TOPOLOGY)
    stale = Lab(topology.name)
    if stale.client.running():
        stale.down(progress=quiet)
    t0 = time.monotonic()
    lab, report = Lab.up(topology, progress=quiet)
    up = time.monotonic() - t0
    try:
        if report.failed:
            raise SystemExit("lab did not come up: " + ", ".join(n.name for n in report.failed))
        print(f"lab up {up:.1f} s (VM {report.boot_s:.1f}, build {report.build_s:.1f}, apply {report.apply_s:.1f})")
        start, first, direct, replies = first_replies(lab)
        if first is None:
            print(f"no spoke-to-spoke reply within {PING_S} s of the lab being up")
            return 1
        print(f"lab start to first spoke-to-spoke reply: {up + first - start:.1f} s "
              f"({first - start:.1f} s after `lab up` returned)")  # fmt: skip
        if direct is None:
            print(f"no direct path (TTL 62) within {PING_S} s; {replies} replies")
        else:
            print(f"first spoke-to-spoke packet to the direct path: {direct - start:.1f} s "
                  f"({direct - first:.1f} s after the first reply through the hub)")  # fmt: skip
        sas = json.loads(check(lab, "spoke1", f"{APPLIANCE} show ipsec --json"))["sas"]
        direct_sa = [sa for sa in sas if sa["remote"].startswith("198.51.100.6")]
        print(f"spoke1 <-> spoke2 SA: {'yes' if direct_sa else 'no'}")
        esp = iperf(lab, args.seconds)
        go_plain(lab)
        plain = iperf(lab, args.seconds)
        print(f"throughput host1 -> host2 (TCP, {args.seconds} s): ESP {esp:.0f} Mbit/s, plain {plain:.0f} Mbit/s, "
              f"ESP/plain {esp / plain:.2f}")  # fmt: skip
    finally:
        if not args.keep:
            lab.down(progress=quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
