"""Installed Debian package versions: one `dpkg-query` for every package the appliance asks about.

`dpkg-query` reads dpkg's whole database and costs most of a second on a small box, and both the
site loader (which FRR is installed?) and preflight ask. So one query answers all of them, and its
answer is kept in /run/appliance/packages.json beside the identity (inode, size, mtime) of the
database files it came from: `/var/lib/dpkg/status` and the `updates/` journal directory, which dpkg
rewrites (rename) or adds to on every install, upgrade and removal. Any such change is a cache miss.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

# Every package the appliance asks about (model/validate.py: frr; preflight.py: all of them).
PACKAGES = ("frr", "frr-pythontools", "strongswan-swanctl", "strongswan-charon", "keepalived", "systemd-timesyncd")
DPKG_DB = Path("/var/lib/dpkg")
CACHE = Path("/run/appliance/packages.json")


def database_key(db: Path = DPKG_DB) -> list[list[int]] | None:
    """What identifies the state of dpkg's database; None when there is none (not a Debian box)."""
    key = []
    for path in (db / "status", db / "updates"):
        try:
            st = path.stat()
        except OSError:
            return None
        key.append([st.st_ino, st.st_size, st.st_mtime_ns])
    return key


def query(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{package: Debian version} for the installed ones among `packages` (one dpkg-query run)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", r"${Package}\t${Status}\t${Version}\n", *packages],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,  # exit 1 when one of them is unknown to dpkg; the others are still listed
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    versions = {}
    for line in out.splitlines():
        fields = line.split("\t")
        # Status is "want ok state": installed means the state is "installed" (held packages too).
        if len(fields) == 3 and fields[1].split()[-1:] == ["installed"] and fields[0] in packages:
            versions[fields[0]] = fields[2]
    return versions


def installed_versions(
    packages: tuple[str, ...] = PACKAGES, db: Path = DPKG_DB, cache: Path | None = CACHE
) -> dict[str, str]:
    """{package: Debian version} for the installed ones, from the cache while dpkg's database is unchanged."""
    key = database_key(db)
    if key is None or cache is None:
        return query(packages)
    wanted = {"database": key, "packages": list(packages)}
    try:
        saved = json.loads(cache.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            return dict(saved["versions"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache yet, or unreadable: ask dpkg
    versions = query(packages)
    if database_key(db) == key:  # dpkg did not change the database while we asked
        _save(cache, {**wanted, "versions": versions})
    return versions


def _save(cache: Path, data: dict) -> None:
    """Best effort: without write access (not root) every call asks dpkg."""
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
        os.replace(tmp, cache)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def version_tuple(version: str, parts: int = 3) -> tuple[int, ...]:
    """'1:8.4.4-1.1~deb12u2' -> (8, 4, 4): the upstream version's first numbers, without the epoch."""
    return tuple(int(x) for x in re.findall(r"\d+", version.split(":")[-1])[:parts])
