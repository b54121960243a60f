"""Plan and apply: the only place that knows the order of the subsystems and how to undo them.

    diff -> snapshot -> apply -> verify, driver by driver in ORDER; on any failure restore the
    snapshots of every driver touched so far in reverse order, then report the failing step with
    the daemon's own words. A generation is recorded only once every driver verified.

The preflight (can this box run the site at all?) runs right before the first change, or when a
diff fails before any change: a no-op apply changes nothing, so it has nothing to guard, and the
preflight's package and kernel queries were a fifth of a no-op apply's time.

Each driver is diffed again right before it applies: a later driver's state depends on an earlier
one (the per-interface sysctls exist only once netlink made the tunnel), so the plan shown to the
user is the best prediction, and the apply is computed against what is really there.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .drivers.base import Change, Context, Driver, DriverError, Ledger
from .generations import StateDir
from .redact import Redactor
from .render.spec import DesiredState

# (subsystem, "module:Class"), in apply order (STYLE.md: sysctl -> netlink -> firewall -> ipsec -> frr -> vrrp).
ORDER: tuple[tuple[str, str], ...] = (
    ("system", "appliance.drivers.system:SystemDriver"),
    ("netlink", "appliance.drivers.netlink:NetlinkDriver"),
    ("sysctl", "appliance.drivers.system:InterfaceSysctlDriver"),
    ("firewall", "appliance.drivers.firewall:FirewallDriver"),
    ("ipsec", "appliance.drivers.ipsec:IpsecDriver"),
    ("frr", "appliance.drivers.frr:FrrDriver"),
    ("vrrp", "appliance.drivers.vrrp:VrrpDriver"),
    ("services", "appliance.drivers.system:ServicesDriver"),
)


class PreflightFailed(Exception):
    """The box cannot apply the site (missing package, plugin, kernel module); nothing was changed."""


class ApplyError(Exception):
    """An apply failed at one step; the box was restored (or says what could not be)."""

    def __init__(self, step: str, cause: str, restore_errors: Sequence[str] = ()) -> None:
        self.step, self.cause, self.restore_errors = step, cause, list(restore_errors)
        restored = (
            "the previous configuration was restored"
            if not self.restore_errors
            else "RESTORE INCOMPLETE: " + "; ".join(self.restore_errors)
        )
        super().__init__(f"apply failed at {step}: {cause}; {restored}")


def build_drivers(ctx: Context, order: Sequence[tuple[str, str]] = ORDER) -> list[Driver]:
    drivers = []
    for _name, target in order:
        module, cls = target.split(":")
        drivers.append(getattr(importlib.import_module(module), cls)(ctx))
    return drivers


def check_file_owners(drivers: Sequence[Driver], desired: DesiredState) -> None:
    """Every rendered file has exactly one driver that writes it (a programming error otherwise)."""
    owners: dict[str, list[str]] = {}
    for d in drivers:
        for path in d.claims(desired):
            owners.setdefault(path, []).append(d.name)
    problems = [f"{f.path}: no driver writes it" for f in desired.files if f.path not in owners]
    problems += [f"{p}: written by {', '.join(names)}" for p, names in owners.items() if len(names) > 1]
    if problems:
        raise DriverError("engine", "rendered files without exactly one owner", "; ".join(problems))


# --- plan ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Changes per subsystem, in apply order."""

    changes: dict[str, list[Change]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.changes.values())

    def all(self) -> list[Change]:
        return [c for cs in self.changes.values() for c in cs]

    def to_json(self, redactor: Redactor) -> dict[str, Any]:
        return redactor.obj(
            {
                "changes": len(self.all()),
                "subsystems": {name: [c.to_dict() for c in cs] for name, cs in self.changes.items() if cs},
            }
        )

    def render(self, redactor: Redactor, details: bool = False) -> str:
        if self.empty:
            return "no changes"
        lines = []
        for name, cs in self.changes.items():
            if not cs:
                continue
            lines.append(f"{name}:")
            for c in cs:
                mark = {"create": "+", "change": "~", "remove": "-"}.get(c.action, "?")
                flag = "  (disruptive)" if c.disruptive else ""
                lines.append(f"  {mark} {c.description}{flag}")
                if details and c.detail:
                    lines += [f"      {line}" for line in c.detail.splitlines()]
        n = len(self.all())
        lines.append(f"{n} change{'s' if n != 1 else ''}")
        return redactor.text("\n".join(lines))


def compute_plan(drivers: Sequence[Driver], desired: DesiredState) -> Plan:
    return Plan({d.name: d.diff(desired) for d in drivers})


# --- apply ---------------------------------------------------------------------------------------


@dataclass
class Result:
    plan: Plan  # what was applied, driver by driver (as diffed right before each step)
    generation: int | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per subsystem (diff+apply+verify)
    notes: list[str] = field(default_factory=list)


Snapshots = list[tuple[Driver, dict[str, Any]]]


def _restore(snapshots: Snapshots, log: Callable[[str], None]) -> list[str]:
    errors = []
    for driver, snap in reversed(snapshots):
        try:
            driver.restore(snap)
            log(f"restored {driver.name}")
        except Exception as e:  # keep restoring the others; report every failure
            errors.append(f"{driver.name}: {e}")
    return errors


def run_apply(
    drivers: Sequence[Driver],
    desired: DesiredState,
    state: StateDir,
    ledger: Ledger,
    *,
    site_text: str | None,
    meta: dict[str, Any],
    log: Callable[[str], None] = lambda m: None,
    before_step: Callable[[str], None] | None = None,
    keep_snapshots: Callable[[Snapshots], None] | None = None,
    record: bool = True,
    inputs: dict[str, Any] | None = None,
    preflight: Callable[[], None] | None = None,
) -> Result:
    """Apply `desired` all or nothing and record a generation. The caller holds the state lock.

    `preflight()` raises PreflightFailed when the box cannot apply `desired`; it is called once,
    before the first change, or when a diff fails before any change.
    `before_step(subsystem)` is a test hook (kill points); `keep_snapshots` receives the snapshots
    of a successful apply (commit-confirm keeps them to undo a first apply). `record=False`
    (drift repair) converges to `desired` without recording a new generation. `inputs` (reuse.py)
    go with the generation, or to the current one when nothing changed and it holds `desired`."""
    check_file_owners(drivers, desired)
    redactor = Redactor(desired.secrets)
    journal = {
        "what": meta.get("what", "apply"),
        "pid": os.getpid(),
        "started": time.strftime("%H:%M:%S"),
        "step": None,
    }
    state.write_journal(journal)
    snapshots: Snapshots = []
    applied = Plan()
    timings: dict[str, float] = {}
    step = "start"
    unchecked = [preflight] if preflight is not None else []

    def check_box() -> None:
        while unchecked:
            unchecked.pop()()

    try:
        for driver in drivers:
            step = driver.name
            t0 = time.monotonic()
            if before_step is not None:
                before_step(step)
            changes = driver.diff(desired)
            applied.changes[driver.name] = changes
            if changes:
                check_box()
                journal["step"] = step
                state.write_journal(journal)
                snapshots.append((driver, driver.snapshot(desired)))
                for c in changes:
                    log(redactor.text(f"{driver.name}: {c.description}"))
                driver.apply(changes)
                driver.verify(desired)
            timings[driver.name] = time.monotonic() - t0
    except PreflightFailed:
        state.clear_journal()
        raise
    except Exception as e:
        if not snapshots and unchecked:
            try:
                check_box()  # a box without a tool fails a diff: name the package rather than the symptom
            except PreflightFailed:
                state.clear_journal()
                raise
        cause = redactor.text(str(e) if isinstance(e, DriverError) else f"{type(e).__name__}: {e}")
        log(f"failed at {step}: {cause}; restoring")
        errors = _restore(snapshots, log)
        state.clear_journal()
        raise ApplyError(step, cause, [redactor.text(x) for x in errors]) from e
    generation = None
    if record and (not applied.empty or state.current() is None):
        generation = state.record(desired, ledger.data, site_text, meta, inputs).number
    elif record and inputs is not None:
        state.note_inputs(desired, inputs)
    state.clear_journal()
    if keep_snapshots is not None:
        keep_snapshots(snapshots)
    return Result(applied, generation, timings)


def restore_snapshots(drivers: Sequence[Driver], saved: dict[str, dict[str, Any]], log=lambda m: None) -> list[str]:
    """Undo an apply from snapshots saved by name (commit-confirm after a first apply)."""
    by_name = {d.name: d for d in drivers}
    pairs = [(by_name[name], snap) for name, snap in saved.items() if name in by_name]
    return _restore(pairs, log)


def state_paths_context(
    services: Any, state_dir: Path, root: Path = Path("/"), log: Callable[[str], None] = lambda m: None
) -> Context:
    return Context(ledger=Ledger(state_dir / "ledger.json"), services=services, root=root, log=log)
