"""The `appliance` command line: thin wiring over model, render, engine and lab.

Each subcommand is registered by a small `add_*` function next to its handler; handlers return
the process exit code. Exit codes: 0 ok, 1 operational failure, 2 bad input (site file,
arguments), 3 preflight failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr)


# --- validate ---------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .model.problems import SiteError
    from .model.validate import load_site

    status = EXIT_OK
    for path in args.site:
        try:
            loaded = load_site(path, resolve_secrets=not args.no_secrets)
        except SiteError as e:
            eprint(str(e))
            status = EXIT_BAD_INPUT
            continue
        for w in loaded.warnings:
            eprint(w.format())
        print(f"{path}: valid ({loaded.site.role} {loaded.site.system.hostname})")
    return status


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check site files and print every error with file:line:col")
    p.add_argument("site", nargs="+", type=Path, help="site.yaml file(s)")
    p.add_argument("--no-secrets", action="store_true", help="do not require secrets (env vars, files) to be present")
    p.set_defaults(func=cmd_validate)


# --- render -----------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    from .files import write_tree
    from .model.problems import SiteError
    from .model.validate import load_site
    from .render import render_site

    try:
        loaded = load_site(args.site)
    except SiteError as e:
        eprint(str(e))
        return EXIT_BAD_INPUT
    desired = render_site(loaded.site)
    for path in write_tree(desired.files, args.root_dir):
        print(path)
    return EXIT_OK


def add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="write every rendered artefact under a root directory")
    p.add_argument("site", type=Path, help="site.yaml")
    p.add_argument(
        "--root-dir", type=Path, required=True, help="directory standing for / (files go where they live on a box)"
    )
    p.set_defaults(func=cmd_render)


# --- main -------------------------------------------------------------------------------------

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [add_validate, add_render]

# Command groups living in their own modules, and the commands each registers. Only the module of
# the command being run is imported (start-up time: importing all of them costs seconds on a small
# box); --help, a missing or an unknown command import every one of them.
COMMAND_MODULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("appliance.engine_cli", "add_engine_commands"): ("check", "plan", "apply", "confirm", "rollback", "generations"),
    ("appliance.show", "add_show"): ("show",),
    ("appliance.ha_cli", "add_ha_commands"): ("supervise", "check-tunnel"),
    ("appliance.lab.cli", "add_lab_parser"): ("lab",),
}


def requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand argv starts with; None when it starts with an option (-h, --version) or is empty."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def _optional_registrars(command: str | None = None) -> list[Callable[[argparse._SubParsersAction], None]]:
    """The registrars of the module owning `command`, or of every module when no module owns it."""
    owners = [target for target, commands in COMMAND_MODULES.items() if command in commands]
    builtin = command in {"validate", "render"}
    found = []
    for module, name in [] if builtin else owners or list(COMMAND_MODULES):
        try:
            mod = __import__(module, fromlist=[name])
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise
            continue
        found.append(getattr(mod, name))
    return found


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the module owning the command argv names is imported; without argv,
    or when argv names no known command, every command is registered (full --help and error lists)."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="A Linux-native DMVPN router configured from one site.yaml.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = None if argv is None else requested_command(argv)
    for register in REGISTRARS + _optional_registrars(command):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        eprint("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
