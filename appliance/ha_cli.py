"""`appliance supervise`, and `check-tunnel` (what keepalived's tunnel track script checks)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import syslog
import threading
from pathlib import Path

from . import health, nat_pairs, nhrp_repair, services, status
from .drivers.base import Context
from .engine import build_drivers
from .generations import STATE_DIR, StateDir
from .supervisor import HEALTH_PATH, METRICS_PORT, Supervisor, serve_metrics

SUPERVISOR_LOCK = HEALTH_PATH.parent / "supervisor.lock"


def log(message: str) -> None:
    syslog.syslog(syslog.LOG_NOTICE, message)
    print(message, file=sys.stderr, flush=True)


def cmd_supervise(args: argparse.Namespace) -> int:
    # one supervisor per box: a second one (by hand, or a test) says so and leaves
    SUPERVISOR_LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(SUPERVISOR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("appliance supervise: another supervisor is running on this box", file=sys.stderr)
        return 1
    state = StateDir(args.state_dir)
    manager = services.for_environment()

    def make_drivers(ledger):
        return build_drivers(Context(ledger=ledger, services=manager, log=log))

    def read_health(desired):
        return health.collect(desired.role, desired.netlink.tunnel.name)

    def repair_neighbours(desired):
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return nhrp_repair.repair_neighbours(desired.netlink.tunnel.name, lambda: status.nhrp()["cache"], ipr)

    def route_nat_pairs(desired):
        if desired.role != "spoke":
            return []
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return nat_pairs.sync(desired.netlink.tunnel.name, nat_pairs.routes_through_hub(status.nhrp()), ipr)

    fixes = {"nhrp-neighbours": repair_neighbours, "nat-pairs": route_nat_pairs}
    supervisor = Supervisor(state, make_drivers, read_health, log, runtime_fixes=fixes)
    server = serve_metrics(supervisor, args.listen, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log(f"supervising every {args.interval:g}s; metrics on http://{args.listen}:{args.port}/metrics")
    if args.once:
        supervisor.tick()
        print(json.dumps(supervisor.last, indent=2, sort_keys=True))
    else:
        supervisor.run(args.interval, stop)
    server.shutdown()
    return 0


def cmd_check_tunnel(args: argparse.Namespace) -> int:
    """Exit 0 while the tunnel carries traffic: link up, and on a spoke an established IPsec SA.

    Runs the very script keepalived runs for `track_tunnel` (render/vrrp.py), from the current
    generation, so that the two can never disagree."""
    gen = StateDir(args.state_dir).current()
    if gen is None:
        print("no configuration applied", file=sys.stderr)
        return 1
    script = gen.desired().vrrp.tunnel_check
    if script is None:
        print("the applied generation has no tunnel check (apply again)", file=sys.stderr)
        return 1
    return subprocess.run(["/bin/sh", "-c", script], check=False).returncode


def add_ha_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supervise", help="watch health, export metrics, repair drift from the applied generation")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (default 5)")
    p.add_argument("--listen", default="127.0.0.1", help="metrics address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=METRICS_PORT, help=f"metrics port (default {METRICS_PORT})")
    p.add_argument("--once", action="store_true", help="one round, print the health, exit")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_supervise)

    p = sub.add_parser("check-tunnel", help="exit 0 while the tunnel carries traffic (keepalived track script)")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_check_tunnel)
