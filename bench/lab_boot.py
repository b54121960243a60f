"""Lab timings against the targets: VM boot to the first node command <= 15 s; a 5-node topology
up with every `appliance apply` done <= 90 s. Prints figures; asserts nothing (a benchmark, not a
test: the machine's load decides much of it). Run as root:

    .venv/bin/python bench/lab_boot.py [--runs 3] [--skip-apply]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.lab.lab import Lab
from appliance.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
FIVE_NODES = REPO / "examples" / "lab-small.yaml"
ONE_NODE = "name: bench-boot\nnodes:\n  n1: {kind: linux}\n"
TARGET_FIRST_COMMAND_S, TARGET_FIVE_NODES_S = 15, 90


def quiet(_: str) -> None:
    pass


def first_node_command() -> tuple[float, float]:
    """(seconds to the agent's ready, seconds to the first command answered in a node)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "boot.yaml"
        path.write_text(ONE_NODE)
        topology = load_topology(path)
        t0 = time.monotonic()
        lab, report = Lab.up(topology, apply=False, progress=quiet)
        try:
            result = lab.exec("n1", ["hostname"])
            took = time.monotonic() - t0
            assert result.stdout.strip() == "n1", result
        finally:
            lab.down(progress=quiet)
    return report.boot_s, took


def five_nodes_applied() -> tuple[float, float, float, float, list[str]]:
    topology = load_topology(FIVE_NODES)
    t0 = time.monotonic()
    lab, report = Lab.up(topology, apply=True, progress=quiet, converge_timeout=0)
    took = time.monotonic() - t0
    lab.down(progress=quiet)
    failed = [f"{n.name}: {n.apply}" for n in report.failed]
    return took, report.boot_s, report.build_s, report.apply_s, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-apply", action="store_true", help="only the boot figure")
    args = parser.parse_args()
    print(f"host load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    boots, firsts = [], []
    for run in range(args.runs):
        boot, first = first_node_command()
        boots.append(boot)
        firsts.append(first)
        print(f"run {run + 1}: VM ready {boot:5.1f} s, first node command answered {first:5.1f} s")
    ok = "met" if statistics.median(firsts) <= TARGET_FIRST_COMMAND_S else "MISSED"
    print(f"boot to first node command: median {statistics.median(firsts):.1f} s, max {max(firsts):.1f} s "
          f"(target <= {TARGET_FIRST_COMMAND_S} s: {ok})")  # fmt: skip
    if args.skip_apply:
        return 0
    totals = []
    for run in range(args.runs):
        total, boot, build, apply, failed = five_nodes_applied()
        totals.append(total)
        note = f"  FAILED: {', '.join(failed)}" if failed else ""
        print(f"run {run + 1}: 5 nodes up and applied {total:5.1f} s (boot {boot:.1f}, build {build:.1f}, "
              f"apply {apply:.1f}){note}")  # fmt: skip
    ok = "met" if statistics.median(totals) <= TARGET_FIVE_NODES_S else "MISSED"
    print(f"5-node topology up with all applies: median {statistics.median(totals):.1f} s, max {max(totals):.1f} s "
          f"(target <= {TARGET_FIVE_NODES_S} s: {ok})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
