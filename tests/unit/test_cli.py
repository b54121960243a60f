"""The command line: exit codes, error output, --help everywhere, --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance import __version__
from appliance.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
NO_SECRETS = {"PATH": "/usr/bin:/bin", "APPLIANCE_SECRETS_ENV": "/nonexistent/secrets.env"}
ENV = {**NO_SECRETS, "DMVPN_PSK": "test-psk-not-secret-0123456789", "OSPF_KEY": "ospf-md5"}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV if env is None else env,
        timeout=60,
    )


def test_validate_good_file_exits_0() -> None:
    r = run("validate", "examples/spoke1.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "examples/spoke1.yaml: valid (spoke spoke1)\n"


def test_validate_bad_file_exits_2_with_located_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples/spoke1.yaml").read_text().replace("172.16.0.11", "172.16.9.11"))
    r = run("validate", str(bad))
    assert r.returncode == 2
    assert r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first == f"{bad}:16:14: dmvpn.tunnel.address: 172.16.9.11 is not inside the overlay 172.16.0.0/24"


def test_validate_missing_file_is_one_line() -> None:
    r = run("validate", "nope.yaml")
    assert (r.returncode, r.stderr) == (2, "nope.yaml:0:0: (file): no such file\n")


def test_validate_without_secrets_in_the_environment_fails_unless_asked(tmp_path: Path) -> None:
    r = run("validate", "examples/hub.yaml", env=NO_SECRETS)
    assert r.returncode == 2
    assert "ipsec.auth.psk.env: environment variable DMVPN_PSK is not set" in r.stderr
    r = run("validate", "--no-secrets", "examples/hub.yaml", env=NO_SECRETS)
    assert r.returncode == 0, r.stderr


def test_version() -> None:
    r = run("--version")
    assert r.stdout.strip() == f"appliance {__version__}"


def subcommands() -> list[list[str]]:
    parser = build_parser()
    found = []

    def walk(p, prefix):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(parser, [])
    return found


@pytest.mark.parametrize("command", subcommands(), ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    r = run(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: appliance " + " ".join(command))


def commands_of(parser) -> set[str]:
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(action.choices)


def test_each_command_module_registers_exactly_the_commands_listed_for_it() -> None:
    import argparse
    import importlib

    from appliance.cli import COMMAND_MODULES

    for (module, name), commands in COMMAND_MODULES.items():
        parser = argparse.ArgumentParser()
        getattr(importlib.import_module(module), name)(parser.add_subparsers())
        assert commands_of(parser) == set(commands), module


def test_a_command_builds_only_its_own_module_and_help_lists_every_command() -> None:
    everything = commands_of(build_parser())
    assert {"validate", "render", "apply", "show", "supervise", "lab"} <= everything
    assert commands_of(build_parser(["--help"])) == everything
    assert commands_of(build_parser(["no-such-command"])) == everything
    assert commands_of(build_parser(["apply", "site.yaml"])) == {
        "validate", "render", "check", "plan", "apply", "confirm", "rollback", "generations"
    }  # fmt: skip
    assert commands_of(build_parser(["validate", "site.yaml"])) == {"validate", "render"}


def test_apply_does_not_import_the_lab_show_or_ha_modules() -> None:
    code = (
        "import sys; from appliance.cli import build_parser; build_parser(['apply', 'site.yaml']);"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('appliance.'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded = set(r.stdout.split())
    assert "appliance.engine_cli" in loaded, r.stderr
    assert not loaded & {"appliance.lab.cli", "appliance.lab.lab", "appliance.show", "appliance.ha_cli"}


def test_the_apply_path_loads_neither_the_schema_nor_the_yaml_parser_nor_the_templates() -> None:
    # engine_cli, the engine, preflight and every driver: what an apply reusing its last DesiredState runs
    code = (
        "import importlib, sys; import appliance.engine_cli, appliance.engine as engine;"
        "[importlib.import_module(target.split(':')[0]) for _, target in engine.ORDER];"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded = set(r.stdout.split())
    assert "appliance" in loaded, r.stderr
    assert not loaded & {"pydantic", "pydantic_core", "ruamel", "jinja2"}


def test_help_lists_every_command() -> None:
    r = run("--help")
    assert r.returncode == 0
    for command in ("validate", "render", "check", "plan", "apply", "show", "supervise", "lab"):
        assert f"    {command} " in r.stdout or f"    {command}\n" in r.stdout, command
