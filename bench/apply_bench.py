"""`appliance apply` timings in the lab: a first apply and a no-op apply of the hub and a spoke
example, each split by subsystem (`apply --timings`), against a yardstick measured in the same
run: one bare `vtysh -c 'show running-config'` and one `swanctl --list-conns`. Goal: a no-op apply
costs no more than three bare daemon queries. Prints figures; asserts nothing (the machine's load
decides much of it: compare the ratio, not the seconds). Run as root:

    .venv/bin/python bench/apply_bench.py [--noop-runs 3] [--keep]

Its lab is `apply-bench` (tests/lab/topologies/apply.yaml under another name, brought up without
applying, so that the first apply is measured here, one node at a time).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from appliance.lab.lab import HOST_ROOT_IN_VM, Lab
from appliance.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "tests" / "lab" / "topologies" / "apply.yaml"
NAME = "apply-bench"
NODES = {"hub": REPO / "examples" / "hub.yaml", "spoke1": REPO / "examples" / "spoke1.yaml"}
APPLIANCE = f"APPLIANCE_SERVICE_MANAGER=lab {Path(sys.executable).with_name('appliance')}"  # same path in the VM
YARDSTICK = {"vtysh": "vtysh -c 'show running-config'", "swanctl": "swanctl --list-conns"}
BUDGET_QUERIES = 3
TIMEOUT_S = 1800  # TCG under contention: an apply has been measured at minutes


def quiet(_: str) -> None:
    pass


def timed(lab: Lab, node: str, command: str) -> tuple[float, int, str]:
    """Wall seconds of `command` measured inside the node (the lab's transport is not counted)."""
    script = (
        f"s=$(date +%s%N); {command} >/tmp/bench.out 2>/tmp/bench.err; rc=$?; e=$(date +%s%N); "
        'echo "$(( (e - s) / 1000 )) $rc"; cat /tmp/bench.err >&2'
    )
    result = lab.exec(node, ["sh", "-c", script], timeout=TIMEOUT_S)
    micros, rc = result.stdout.split()
    return int(micros) / 1e6, int(rc), result.stderr


def timings(stderr: str) -> dict[str, float]:
    """The 'subsystem seconds' lines `apply --timings` prints last."""
    out = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def apply(lab: Lab, node: str) -> tuple[float, dict[str, float]]:
    site = HOST_ROOT_IN_VM + str(NODES[node])
    wall, rc, err = timed(lab, node, f"{APPLIANCE} apply --timings {shlex.quote(site)}")
    if rc != 0:
        raise SystemExit(f"{node}: apply failed (exit {rc}): {err}")  # appliance redacts its own output
    return wall, timings(err)


def split(wall: float, parts: dict[str, float]) -> str:
    rest = wall - sum(parts.values())
    shown = "  ".join(f"{k} {v:.2f}" for k, v in parts.items())
    return f"{wall:6.2f} s = {shown}  (start-up, load, preflight, record {rest:.2f})"


def lab_up() -> Lab:
    text = TOPOLOGY.read_text().replace("name: apply\n", f"name: {NAME}\n")
    text = text.replace("../../../examples/", f"{REPO}/examples/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{NAME}.yaml"
        path.write_text(text)
        topology = load_topology(path)
        stale = Lab(NAME)
        if stale.client.running():
            stale.down(progress=quiet)
        lab, _ = Lab.up(topology, apply=False, progress=quiet)
    return lab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op applies per node (the median is shown)")
    parser.add_argument("--keep", action="store_true", help=f"leave the lab {NAME} up")
    args = parser.parse_args()
    print(f"host load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    lab = lab_up()
    try:
        for node in NODES:
            wall, parts = apply(lab, node)
            print(f"{node} first apply: {split(wall, parts)}")
        for node in NODES:
            runs = [apply(lab, node) for _ in range(args.noop_runs)]
            wall, parts = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            print(f"{node} no-op apply (median of {len(runs)}): {split(wall, parts)}")
            queries = {}
            for what, command in YARDSTICK.items():
                seconds = statistics.median(timed(lab, node, command)[0] for _ in range(args.noop_runs))
                queries[what] = seconds
            # the floor of any Python command here: what the emulated CPU makes of interpreter start-up
            floor = statistics.median(timed(lab, node, f"{sys.executable} -c pass")[0] for _ in range(args.noop_runs))
            yardstick = statistics.mean(queries.values())
            ratio = wall / yardstick
            verdict = "met" if ratio <= BUDGET_QUERIES else "MISSED"
            dominant = max(parts, key=lambda k: parts[k])
            print(
                f"{node} yardstick: vtysh show running-config {queries['vtysh']:.2f} s, swanctl --list-conns "
                f"{queries['swanctl']:.2f} s; no-op = {ratio:.1f} bare queries (goal <= {BUDGET_QUERIES}: "
                f"{verdict}); largest subsystem: {dominant} {parts[dominant]:.2f} s; python -c pass {floor:.2f} s"
            )
    finally:
        if not args.keep:
            lab.down(progress=quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
