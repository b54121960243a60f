"""`appliance check|plan|apply|confirm|rollback|generations`: thin wiring over engine.py.

Exit codes (cli.py): 0 ok, 1 operational failure (the box was restored), 2 bad input, 3 preflight.
`plan --detailed-exitcode` returns 2 when there are changes (like Terraform).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import engine, reuse, services
from .drivers.base import Context, DriverError, Ledger
from .generations import STATE_DIR, StateDir, StateError
from .model.inputs import SiteInputs, site_text
from .model.problems import Problem, SiteError
from .redact import Redactor
from .render.spec import DesiredState

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREFLIGHT = 0, 1, 2, 3
CONFIRM_JOB = "appliance-confirm"


class Stop(Exception):
    """Ends a command with one line on stderr and an exit code."""

    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(message)


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def out(*args: object) -> None:
    print(*args, flush=True)


# --- shared steps ------------------------------------------------------------------------------


@dataclass
class LoadedDesired:
    desired: DesiredState
    inputs: SiteInputs  # what it was rendered from (secret values: never print or store)
    warnings: list[Problem]

    @property
    def site_text(self) -> str:
        return site_text(self.inputs.raw)


def load_desired(path: Path, state: StateDir | None = None) -> LoadedDesired:
    """The site's DesiredState: the current generation's of `state` when the site's inputs are those
    it was rendered from (reuse.py), else loaded, validated and rendered. Warnings go to stderr."""
    try:
        loaded = _reuse_or_load(path, state)
    except SiteError as e:
        raise Stop(EXIT_BAD_INPUT, str(e)) from None
    for w in loaded.warnings:
        eprint(w.format())
    return loaded


def _reuse_or_load(path: Path, state: StateDir | None) -> LoadedDesired:
    reused = reuse.reuse(state, path) if state is not None else None
    if reused is not None:
        return LoadedDesired(reused.desired, reused.inputs, reused.warnings)
    # Imported here, not with the module: the schema (pydantic), the YAML loader and the renderers'
    # templates are the largest part of a start-up, and a reused DesiredState needs none of them.
    from .model.validate import load_site
    from .render import render_site

    loaded = load_site(path)
    return LoadedDesired(render_site(loaded.site), loaded.inputs, loaded.warnings)


def make_context(state: StateDir) -> Context:
    state.ensure()
    try:
        ledger = Ledger(state.root / "ledger.json")
    except DriverError as e:
        raise Stop(EXIT_FAILED, str(e)) from None
    return Context(ledger=ledger, services=services.for_environment(), log=eprint)


def make_drivers(ctx: Context) -> list:
    try:
        return engine.build_drivers(ctx)
    except ImportError as e:
        raise Stop(EXIT_FAILED, f"this appliance build lacks a driver: {e}") from None


def charon_algorithms(desired: DesiredState):
    """Ask a running charon which proposal algorithms it lacks; None when charon is not running yet."""

    def ask() -> list[str] | None:
        from . import status

        try:
            from .drivers.ipsec import missing_algorithms
        except ImportError:
            return None
        try:
            session = status._vici_session()
        except status.StatusError:
            return None  # not running yet: the plugin check above stands in for it
        return missing_algorithms(session, desired.ipsec)

    return ask


def box_preflight(desired: DesiredState) -> None:
    """Raises engine.PreflightFailed with one line per problem when this box cannot apply `desired`."""
    from . import preflight  # imported when asked: a no-op apply asks nothing of it

    problems = preflight.check(desired, charon_algorithms=charon_algorithms(desired))
    if problems:
        raise engine.PreflightFailed("\n".join(f"preflight: {p}" for p in problems) + "\nnothing was changed")


def run_preflight(desired: DesiredState) -> None:
    try:
        box_preflight(desired)
    except engine.PreflightFailed as e:
        raise Stop(EXIT_PREFLIGHT, str(e)) from None


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 5m, 1h)")
    value = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not 10 <= value <= 86400:
        raise argparse.ArgumentTypeError("the confirm window must be between 10s and 24h")
    return value


def print_result(result: engine.Result, redactor: Redactor) -> None:
    if result.plan.empty:
        out("no changes" + (f" (recorded generation {result.generation})" if result.generation else ""))
        return
    n = len(result.plan.all())
    out(f"applied {n} change{'s' if n != 1 else ''}; generation {result.generation}")


def print_timings(result: engine.Result) -> None:
    """One 'subsystem seconds' line per driver on stderr, in apply order (bench/apply_bench.py reads them)."""
    for name, seconds in result.timings.items():
        eprint(f"{name} {seconds:.3f}")


# --- check / plan --------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    run_preflight(load_desired(args.site).desired)
    out("preflight: ok")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    desired = load_desired(args.site, state).desired
    ctx = make_context(state)
    drivers = make_drivers(ctx)
    # As in apply (engine.py), the preflight runs only when there is something to change or a diff
    # failed: a box lacking a tool then hears which package to install, not the tool's symptom.
    try:
        plan = engine.compute_plan(drivers, desired)
    except DriverError as e:
        run_preflight(desired)
        raise Stop(EXIT_FAILED, str(e)) from None
    if not plan.empty:
        run_preflight(desired)
    redactor = Redactor(desired.secrets)
    if args.json:
        out(json.dumps(plan.to_json(redactor), indent=2, sort_keys=True))
    else:
        out(plan.render(redactor, details=args.diff))
    return 2 if args.detailed_exitcode and not plan.empty else EXIT_OK


# --- apply / confirm / rollback --------------------------------------------------------------------


def _apply(
    state: StateDir,
    desired: DesiredState,
    site_text: str | None,
    meta: dict[str, Any],
    keep=None,
    inputs: dict[str, Any] | None = None,
    preflight: bool = False,
) -> engine.Result:
    """`preflight`: check the box before the first change (engine.run_apply); a rollback does not,
    it returns to what this box ran before."""
    ctx = make_context(state)
    drivers = make_drivers(ctx)
    try:
        return engine.run_apply(
            drivers,
            desired,
            state,
            ctx.ledger,
            site_text=site_text,
            meta=meta,
            log=eprint,
            keep_snapshots=keep,
            inputs=inputs,
            preflight=(lambda: box_preflight(desired)) if preflight else None,
        )
    except engine.PreflightFailed as e:
        raise Stop(EXIT_PREFLIGHT, str(e)) from None
    except engine.ApplyError as e:
        raise Stop(EXIT_FAILED, str(e)) from None


def cmd_apply(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    loaded = load_desired(args.site, state)
    desired = loaded.desired
    redactor = Redactor(desired.secrets)
    with _locked(state, "apply") as note:
        if note:
            eprint(f"appliance: {note}")
        previous = state.current()
        kept: dict[str, Any] = {}

        def keep(snapshots) -> None:
            kept.update({driver.name: snap for driver, snap in snapshots})

        meta = {"what": "apply", "site": str(args.site.resolve())}
        key = state.inputs_key(create=True)
        inputs = reuse.inputs_record(loaded.inputs, loaded.warnings, key) if key is not None else None
        result = _apply(state, desired, loaded.site_text, meta, keep if args.confirm else None, inputs, preflight=True)
        print_result(result, redactor)
        if args.timings:
            print_timings(result)
        if args.confirm:
            if result.plan.empty:
                out("nothing changed, so there is nothing to confirm")
                return EXIT_OK
            schedule_rollback(state, result, previous, kept, args.confirm)
    return EXIT_OK


def schedule_rollback(state: StateDir, result: engine.Result, previous, kept: dict[str, Any], seconds: int) -> None:
    pending = {
        "generation": result.generation,
        "rollback_to": previous.number if previous else None,
        "deadline": time.time() + seconds,
    }
    if previous is None:
        # No earlier generation: undo with this apply's own snapshots (0600, they may hold secrets).
        pending["snapshots"] = kept
        eprint("appliance: no earlier generation: a rollback restores the state recorded before this apply")
    state.set_pending(pending)
    manager = services.for_environment()
    how = manager.schedule(
        CONFIRM_JOB,
        seconds,
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "rollback",
            "--confirm-timeout",
            "--state-dir",
            str(state.root),
        ],  # fmt: skip
    )
    target = f"generation {previous.number}" if previous else "the state before this apply"
    out(f"run 'appliance confirm' within {seconds}s, or the box rolls back to {target} ({how})")


def cmd_confirm(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    with _locked(state, "confirm", wait_s=30):
        pending = state.pending()
        if pending is None:
            raise Stop(EXIT_FAILED, "nothing to confirm (no apply --confirm is pending)")
        services.for_environment().cancel(CONFIRM_JOB)
        state.clear_pending()
    out(f"confirmed generation {pending['generation']}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    with _locked(state, "rollback", wait_s=60) as note:
        if note:
            eprint(f"appliance: {note}")
        if args.confirm_timeout:
            return _rollback_unconfirmed(state)
        current = state.current()
        if args.generation is None:
            gens = state.generations()
            if len(gens) < 2:
                raise Stop(EXIT_FAILED, "no earlier generation to roll back to")
            target = gens[-2]
        else:
            try:
                target = state.get(args.generation)
            except StateError as e:
                raise Stop(EXIT_FAILED, str(e)) from None
        desired = target.desired()
        site_text = (target.path / "site.yaml").read_text() if (target.path / "site.yaml").exists() else None
        meta = {"what": "rollback", "rollback_of": target.number, "from": current.number if current else None}
        result = _apply(state, desired, site_text, meta)
        state.clear_pending()
        print_result(result, Redactor(desired.secrets))
        out(f"rolled back to generation {target.number}")
    return EXIT_OK


def _rollback_unconfirmed(state: StateDir) -> int:
    """Run by the confirm timer: undo the unconfirmed apply, unless it was confirmed meanwhile."""
    pending = state.pending()
    current = state.current()
    if pending is None or current is None or current.number != pending["generation"]:
        out("nothing to roll back (confirmed, or another apply happened since)")
        return EXIT_OK
    if pending["rollback_to"] is not None:
        target = state.get(pending["rollback_to"])
        meta = {"what": "rollback", "rollback_of": target.number, "from": current.number, "reason": "not confirmed"}
        _apply(state, target.desired(), None, meta)
        message = f"not confirmed in time: rolled back to generation {target.number}"
    else:
        ctx = make_context(state)
        errors = engine.restore_snapshots(make_drivers(ctx), pending.get("snapshots", {}), log=eprint)
        if errors:
            raise Stop(EXIT_FAILED, "rollback incomplete: " + "; ".join(errors))
        message = "not confirmed in time: restored the state from before the apply"
    state.clear_pending()
    eprint(f"appliance: {message}")
    out(message)
    return EXIT_OK


def cmd_generations(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    gens = state.generations()
    pending = state.pending()
    if args.json:
        out(json.dumps([{"number": g.number, **g.meta} for g in gens], indent=2, sort_keys=True))
        return EXIT_OK
    if not gens:
        out("no generations yet")
        return EXIT_OK
    for g in gens:
        what = g.meta.get("what", "apply")
        if what == "rollback":
            what = f"rollback to {g.meta.get('rollback_of')}" + (
                f" ({g.meta['reason']})" if g.meta.get("reason") else ""
            )
        flag = "  (unconfirmed)" if pending and pending.get("generation") == g.number else ""
        out(f"{g.number:>4}  {g.created}  {what}  {g.meta.get('site', '')}{flag}")
    return EXIT_OK


class _locked:
    """StateDir.locked with StateError turned into a one-line Stop."""

    def __init__(self, state: StateDir, what: str, wait_s: float = 0.0) -> None:
        self.cm = state.locked(what, wait_s)

    def __enter__(self):
        try:
            return self.cm.__enter__()
        except StateError as e:
            raise Stop(EXIT_FAILED, str(e)) from None

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


# --- registration ------------------------------------------------------------------------------------


def _guard(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except Stop as e:
            eprint(f"appliance {args.command}: {e.message}" if "\n" not in e.message else e.message)
            return e.code

    return run


def add_engine_commands(sub: argparse._SubParsersAction) -> None:
    def state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=f"appliance state (default {STATE_DIR})")

    p = sub.add_parser("check", help="preflight: are the daemons, tools and kernel modules the site needs there?")
    p.add_argument("site", type=Path, help="site.yaml")
    p.set_defaults(func=_guard(cmd_check))

    p = sub.add_parser("plan", help="show what apply would create, change and remove (secrets redacted)")
    p.add_argument("site", type=Path, help="site.yaml")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--diff", action="store_true", help="also show file and configuration diffs")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    state_dir(p)
    p.set_defaults(func=_guard(cmd_plan))

    p = sub.add_parser("apply", help="make the box match the site file, all or nothing")
    p.add_argument("site", type=Path, help="site.yaml")
    p.add_argument(
        "--confirm",
        type=parse_duration,
        metavar="DURATION",
        help="roll back by itself unless 'appliance confirm' runs within DURATION (e.g. 5m)",
    )
    p.add_argument("--timings", action="store_true", help="print the seconds each subsystem took to stderr")
    state_dir(p)
    p.set_defaults(func=_guard(cmd_apply))

    p = sub.add_parser("confirm", help="keep the configuration of a pending 'apply --confirm'")
    state_dir(p)
    p.set_defaults(func=_guard(cmd_confirm))

    p = sub.add_parser("rollback", help="restore an earlier generation (default: the previous one)")
    p.add_argument("generation", type=int, nargs="?", help="generation number (appliance generations)")
    p.add_argument("--confirm-timeout", action="store_true", help=argparse.SUPPRESS)
    state_dir(p)
    p.set_defaults(func=_guard(cmd_rollback))

    p = sub.add_parser("generations", help="list the applied generations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    state_dir(p)
    p.set_defaults(func=_guard(cmd_generations))
