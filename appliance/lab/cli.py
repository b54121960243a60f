"""`appliance lab up|exec|status|down`: try site files in a VM before production.

Exit codes of `up`: 0 up and converged, 1 failed (VM, build, or an apply: the lab stays up for
inspection), 2 bad topology or site file, 4 up and applied but not converged (NHRP registrations
missing: the summary says which).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..model.problems import SiteError
from . import LabError
from .lab import Lab
from .topology import load_topology
from .vm import VmConfig

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_CONVERGED = 0, 1, 2, 4


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def progress_printer() -> callable:
    t0 = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", flush=True)

    return progress


def cmd_up(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.topology)
    except SiteError as e:
        eprint(str(e))
        return EXIT_BAD_INPUT
    try:
        lab, report = Lab.up(
            topology,
            apply=not args.no_apply,
            accel=args.accel,
            vm=VmConfig(memory_mib=args.memory, cpus=args.cpus),
            progress=progress_printer(),
            converge_timeout=args.wait,
        )
    except LabError as e:
        eprint(f"appliance lab up: {e}")
        return EXIT_FAILED
    print()
    print(report.summary())
    for node in report.failed:
        print(f"\n== {node.name}: appliance apply {node.apply}\n{node.detail.strip()}")
    if report.failed:
        failed = ", ".join(n.name for n in report.failed)
        eprint(f"\nlab {lab.name}: apply failed on {failed}; the lab stays up for a look:")
        eprint(f"  appliance lab exec {report.failed[0].name} -- cat /var/log/syslog;  appliance lab down")
        return EXIT_FAILED
    if report.converged is False:
        eprint(f"\nlab {lab.name} is up but not converged: {'; '.join(report.missing)}")
        return EXIT_NOT_CONVERGED
    if report.converged is None and not args.no_apply:
        print("\nnote: NHRP registrations not checked (`appliance show dmvpn --json` is not available in the nodes)")
    print(f"\nlab {lab.name} is up: appliance lab exec NODE -- CMD...;  appliance lab down")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        eprint("appliance lab exec: no command (appliance lab exec NODE -- CMD...)")
        return EXIT_BAD_INPUT
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    try:
        lab = Lab.find(args.name)
        result = lab.exec(None if args.node == "vm" else args.node, argv, stdin=stdin, timeout=args.timeout)
    except LabError as e:
        eprint(f"appliance lab exec: {e}")
        return EXIT_FAILED
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status = Lab.find(args.name).status()
    except LabError as e:
        eprint(f"appliance lab status: {e}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps({k: v for k, v in status.items()}, indent=2, default=str))
        return EXIT_OK
    uptime = time.time() - status["started"]
    state = f"{status['state']}, {status['accel'].upper()}, up {uptime:.0f} s"
    print(f"lab {status['name']}: {state}, {status.get('topology', '')}")
    for name, node in status.get("nodes", {}).items():
        kind = node["kind"] + (f"/{node['role']}" if node.get("role") else "")
        print(f"  {name:<15} {kind:<16} {' '.join(node['addresses'])}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    try:
        print(Lab.find(args.name).logs(args.node, args.lines))
    except LabError as e:
        eprint(f"appliance lab logs: {e}")
        return EXIT_FAILED
    return EXIT_OK


def cmd_down(args: argparse.Namespace) -> int:
    try:
        Lab.find(args.name).down(progress=print)
    except LabError as e:
        eprint(f"appliance lab down: {e}")
        return EXIT_FAILED
    return EXIT_OK


def add_lab_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="try site files in a lab VM (routers, hosts, NAT) before production")
    cmds = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    p = cmds.add_parser("up", help="boot the VM, build the topology, apply every router's site, wait until converged")
    p.add_argument("topology", type=Path, help="topology file (see examples/lab.yaml)")
    p.add_argument("--no-apply", action="store_true", help="build nodes and links only; configure by hand with exec")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="auto: KVM where it really works")
    p.add_argument("--memory", type=int, default=2048, help="VM memory in MiB (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="VM CPUs (default 2)")
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for NHRP registrations (default 120)")
    p.set_defaults(func=cmd_up)

    p = cmds.add_parser("exec", help="run a command in a node (stdin passes through); its exit code is ours")
    p.add_argument("node", help="node name ('vm' for the VM itself)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    p.add_argument("--name", help="lab name (default: the only running lab)")
    p.add_argument("--timeout", type=float, default=600, help="seconds before the command is killed")
    p.set_defaults(func=cmd_exec)

    p = cmds.add_parser("status", help="the running lab: VM state, nodes and addresses")
    p.add_argument("--name", help="lab name (default: the only running lab)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = cmds.add_parser("logs", help="the tail of a node's daemon logs (syslog, FRR, charon)")
    p.add_argument("node")
    p.add_argument("--name", help="lab name (default: the only running lab)")
    p.add_argument("-n", "--lines", type=int, default=60)
    p.set_defaults(func=cmd_logs)

    p = cmds.add_parser("down", help="stop the lab VM (everything in it is gone)")
    p.add_argument("--name", help="lab name (default: the only running lab)")
    p.set_defaults(func=cmd_down)
