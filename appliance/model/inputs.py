"""Everything loading a site reads besides the package itself, and the record of one load's reads.

The loader (validate.py) reads through here: the site file's bytes, the `{env: NAME}` values (the
process environment over /etc/appliance/secrets.env), the secret and certificate files the site
names, and the FRR version it validates for. `SiteInputs` is what one load read; `read_inputs`
reads the same inputs again without the schema or the YAML parser, so that an apply can tell that a
new load would see nothing new and reuse the DesiredState rendered last time (reuse.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..packages import installed_versions, version_tuple
from .problems import Problem, SiteError

TARGET_FRR = (8, 4)  # assumed when FRR is not installed where the site is validated
# Where a box keeps {env: NAME} secrets (mode 0600), so that `appliance apply` typed in a shell
# finds the same secrets as appliance.service; the process environment takes precedence.
SECRETS_ENV = Path("/etc/appliance/secrets.env")


def installed_frr_version() -> tuple[int, int] | None:
    """FRR's (major, minor) from dpkg, or None where FRR is not installed."""
    version = version_tuple(installed_versions().get("frr", ""), 2)
    return (version[0], version[1]) if len(version) == 2 else None


def frr_version_to_validate() -> tuple[int, int]:
    return installed_frr_version() or TARGET_FRR


def read_secrets_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile syntax, without expansion); refused if world-readable."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    if st.st_mode & stat.S_IROTH:
        raise SiteError([Problem(str(path), 0, 0, "(file)", "world-readable; chmod 600 it")])
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SiteError([Problem(str(path), number, 1, "(file)", "expected KEY=VALUE")])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def default_env() -> dict[str, str]:
    secrets = Path(os.environ.get("APPLIANCE_SECRETS_ENV", SECRETS_ENV))
    return {**read_secrets_env(secrets), **os.environ}


def site_text(raw: bytes) -> str:
    """A site file's text as Path.read_text gives it (UTF-8, universal newlines); UnicodeDecodeError if not UTF-8."""
    return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def read_file(path: Path) -> tuple[int, bytes]:
    """(st_mode, bytes) of a file the site names: the loader checks the mode (regular, not world-readable)."""
    mode = path.stat().st_mode
    return mode, path.read_bytes()


@dataclass(frozen=True)
class SiteInputs:
    """What one load of a site read. Holds secret values: never print, log or store it."""

    site: str  # the site file's resolved path (relative paths in it are relative to its directory)
    raw: bytes = field(repr=False)  # the site file's bytes
    env: Mapping[str, str] = field(repr=False)  # {NAME: value} of every {env: NAME} the site names
    files: Mapping[str, tuple[int, bytes]] = field(repr=False)  # path -> read_file(path) of every file it names
    frr_version: tuple[int, int] = TARGET_FRR


def read_inputs(site: Path, env_names: Iterable[str], files: Iterable[str]) -> SiteInputs | None:
    """The inputs a load of `site` naming these variables and files would read now; None when one of
    them cannot be read (a load would report it). A SiteError from secrets.env is the loader's own."""
    env, names = default_env(), tuple(env_names)
    try:
        raw = site.read_bytes()
        resolved = str(site.resolve())
        read = {path: read_file(Path(path)) for path in files}
    except OSError:
        return None
    if any(name not in env for name in names):
        return None
    values = {name: env[name] for name in names}
    return SiteInputs(resolved, raw, values, read, frr_version_to_validate())
