"""High availability in the lab: VRRP failover time and drift-repair time. Run as root:

    .venv/bin/python bench/ha_bench.py [--runs 3] [--keep]

VRRP failover: the master's LAN link goes down while a LAN host pings the virtual address every
0.1 s; the figure is first lost to first answered ping (ping's own timestamps, in the VM), for the
hub pair (advert_interval 1 s) and the spoke pair (0.5 s), next to the RFC 5798 master down
interval (3 x interval + skew) that bounds it. Drift repair: `appliance supervise --interval 2`
on spokeb; for each kind of drift, seconds from the damage until the supervisor saw it and until
its repair was applied (the supervisor's own timestamps). Prints figures; asserts nothing (the
machine's load decides much of it). Its lab is `ha` (tests/lab/topologies/ha.yaml), reused when
it is already running, and left up with --keep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from conftest import RunningLab  # noqa: E402  (the lab tests' own helpers, one way to measure)
from ha import (  # noqa: E402
    DRIFTS,
    master_down_interval,
    ping_outage,
    repair_time,
    start_supervisor,
    stop_supervisor,
    wait_master,
)

from appliance.lab.lab import Lab, UpReport  # noqa: E402
from appliance.lab.topology import load_topology  # noqa: E402

TOPOLOGY = REPO / "tests" / "lab" / "topologies" / "ha.yaml"
# (pair, master, backup, LAN host, virtual address)
PAIRS = [
    ("hub pair", "hub", "hub2", "host0", "10.0.0.254"),
    ("spoke pair", "spokea", "spokeb", "host7", "10.0.7.254"),
]


def quiet(_: str) -> None:
    pass


def lab_up() -> tuple[RunningLab, bool]:
    """The `ha` lab, and whether this run started it."""
    topology = load_topology(TOPOLOGY)
    lab = Lab(topology.name)
    started = False
    if not (lab.client.running() and lab.topology_info.get("topology") == str(topology.path)):
        if lab.client.running():
            lab.down(progress=quiet)
        lab, report = Lab.up(topology, progress=quiet)
        if report.failed:
            raise SystemExit("lab ha: apply failed in " + ", ".join(n.name for n in report.failed))
        started = True
    return RunningLab(lab, UpReport(topology.name, 0, 0, 0), TOPOLOGY, ()), started


def failover(lab: RunningLab, master: str, backup: str, host: str, vip: str) -> tuple[float, int]:
    wait_master(lab, master, "eth1", vip, timeout=300)
    try:
        outage = ping_outage(lab, host, vip, lambda: lab.check(master, "ip link set eth1 down"))
    finally:
        lab.check(master, "ip link set eth1 up")
    wait_master(lab, master, "eth1", vip, timeout=300)  # preempts back before the next run
    return outage.seconds, outage.lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (the median is shown)")
    parser.add_argument("--keep", action="store_true", help="leave the lab ha up")
    args = parser.parse_args()
    print(f"host load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    lab, started = lab_up()
    try:
        print("VRRP failover, master's LAN link down, LAN host pinging the virtual address every 0.1 s:")
        for name, master, backup, host, vip in PAIRS:
            runs = [failover(lab, master, backup, host, vip) for _ in range(args.runs)]
            seconds = statistics.median(r[0] for r in runs)
            shown = ", ".join(f"{s:.2f} s/{lost} lost" for s, lost in runs)
            print(
                f"  {name} ({master} -> {backup}): {seconds:.2f} s median [{shown}]; "
                f"master down interval {master_down_interval(backup):.2f} s"
            )
        print("Drift repair on spokeb (appliance supervise --interval 2), damage -> seen / repaired:")
        pid = start_supervisor(lab, "spokeb", interval=2)
        try:
            for drift in DRIFTS:
                runs = [repair_time(lab, "spokeb", drift) for _ in range(args.runs)]
                seen = statistics.median(r.detected for r in runs)
                done = statistics.median(r.seconds for r in runs)
                shown = ", ".join(f"{r.detected:.1f}/{r.seconds:.1f}" for r in runs)
                print(f"  {drift} ({runs[0].subsystem}): seen {seen:.1f} s, repaired {done:.1f} s median [{shown}]")
        finally:
            stop_supervisor(lab, "spokeb", pid)
    finally:
        if started and not args.keep:
            lab.lab.down(progress=quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
