"""`appliance supervise`: read health every few seconds, repair drift from the last generation.

Drift is whatever a driver's diff reports against the current generation's desired state: the
tunnel deleted, table inet appliance flushed, the strongSwan connection unloaded, a daemon dead.
Repair re-runs the engine on that state; drivers without drift report no changes and are not
touched, so only the affected subsystem is re-applied. The supervisor takes the apply lock
without waiting: while an apply runs it only reads health (it never fights an apply).
Under systemd it is Type=notify with a watchdog (READY=1, WATCHDOG=1 over $NOTIFY_SOCKET).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import engine, health
from .drivers.base import Driver, Ledger
from .files import atomic_write
from .generations import StateDir, StateError
from .redact import Redactor
from .render.spec import DesiredState

HEALTH_PATH = Path(os.environ.get("APPLIANCE_RUN_DIR", "/run")) / "appliance" / "health.json"
METRICS_PORT = 9469


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) something; False when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())
    return True


class Supervisor:
    def __init__(
        self,
        state: StateDir,
        make_drivers: Callable[[Ledger], Sequence[Driver]],
        read_health: Callable[[DesiredState], dict[str, Any]],
        log: Callable[[str], None],
        health_path: Path = HEALTH_PATH,
        runtime_fixes: dict[str, Callable[[DesiredState], list[str]]] | None = None,
    ) -> None:
        self.state, self.make_drivers, self.read_health, self.log = state, make_drivers, read_health, log
        # name -> fix of what the daemons leave wrong at run time (nhrp_repair.py, nat_pairs.py);
        # each returns one line per thing it changed
        self.runtime_fixes = dict(runtime_fixes or {})
        self.health_path = health_path
        self.repairs: dict[str, int] = {}
        # subsystem -> {"detected", "repaired"}: wall-clock times of its last repair (how long one takes)
        self.last_repair: dict[str, dict[str, float]] = {}
        self.last: dict[str, Any] = {}
        self._cached: tuple[int, DesiredState] | None = None

    def desired(self) -> DesiredState | None:
        gen = self.state.current()
        if gen is None:
            return None
        if self._cached is None or self._cached[0] != gen.number:
            self._cached = (gen.number, gen.desired())
        return self._cached[1]

    def tick(self) -> dict[str, Any]:
        """One round: repair drift (if no apply runs), then read and publish health."""
        desired = self.desired()
        repaired: list[str] = []
        note = None
        if desired is None:
            note = "no generation applied yet"
        else:
            try:
                # the runtime fixes first: each is a question or two, a drift check reads every daemon
                for name, fix in self.runtime_fixes.items():
                    try:
                        fixed = fix(desired)
                    except Exception as e:  # a dead daemon: the drift repair below brings it back
                        self.log(f"{name}: skipped this round: {type(e).__name__}: {e}")
                        continue
                    if fixed:
                        self.log(f"{name}: " + "; ".join(fixed))
                        self.repairs[name] = self.repairs.get(name, 0) + len(fixed)
                        repaired.append(name)
                repaired += self.repair(desired)
            except StateError:
                note = "an apply is running: drift repair skipped"
            except engine.ApplyError as e:
                note = f"drift repair failed: {e}"
                self.log(note)
        snapshot = self.read_health(desired) if desired is not None else {"healthy": False, "problems": [note]}
        snapshot.update(
            {
                "repaired": repaired,
                "note": note,
                "repairs_total": dict(self.repairs),
                "last_repair": {name: dict(times) for name, times in self.last_repair.items()},
            }
        )
        self.last = snapshot
        atomic_write(self.health_path, json.dumps(snapshot, indent=1, sort_keys=True) + "\n", mode=0o644)
        return snapshot

    def _drift(self, desired: DesiredState) -> tuple[Ledger, list[Any], dict[str, list[Any]]]:
        """The ledger, the drivers and, by subsystem, the changes that would bring the box back to `desired`."""
        ledger = Ledger(self.state.root / "ledger.json")
        drivers = self.make_drivers(ledger)
        drifted = {}
        for d in drivers:
            changes = d.diff(desired)
            if changes:
                drifted[d.name] = changes
        return ledger, drivers, drifted

    def repair(self, desired: DesiredState) -> list[str]:
        """Re-apply the subsystems that drifted; returns their names (empty: no drift)."""
        # Look without the lock first: a drift check reads every daemon (seconds under load), and
        # holding the lock for it would make the engineer's `apply` collide with it most of the time.
        if not self._drift(desired)[2]:
            return []
        with self.state.locked("repair"):
            # an apply may have finished since the look: repair towards the newest generation only
            desired = self.desired()
            if desired is None:
                return []
            redactor = Redactor(desired.secrets)
            ledger, drivers, drifted = self._drift(desired)
            if not drifted:
                return []
            detected = time.time()
            for name, changes in drifted.items():
                found = "; ".join(c.description for c in changes)
                self.log(redactor.text(f"drift in {name}: {found}"))
            result = engine.run_apply(
                drivers,
                desired,
                self.state,
                ledger,
                site_text=None,
                meta={"what": "repair"},
                log=self.log,
                record=False,
            )
        names = [name for name, cs in result.plan.changes.items() if cs]
        done = time.time()
        for name in names:
            self.repairs[name] = self.repairs.get(name, 0) + 1
            self.last_repair[name] = {"detected": detected, "repaired": done}
        self.log(f"repaired {', '.join(names)}")
        return names

    def run(self, interval: float, stop: threading.Event) -> None:
        sd_notify("READY=1")
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as e:  # a bad round must not kill supervision; say why
                self.log(f"supervisor round failed: {type(e).__name__}: {e}")
            sd_notify("WATCHDOG=1")
            took = time.monotonic() - started
            # a round that takes long (a loaded box) is followed by as long a pause: supervision
            # never takes more than half a CPU from the routing daemons it watches
            stop.wait(max(0.5, interval - took, took))


def serve_metrics(supervisor: Supervisor, address: str, port: int) -> ThreadingHTTPServer:
    """Prometheus text on http://address:port/metrics from the last round (never recomputed here)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = health.prometheus(supervisor.last, supervisor.repairs).encode() if supervisor.last else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server
