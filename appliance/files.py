"""Crash-safe file writing: temp file in the same directory, fsync, rename, fsync the directory.

A reader (or a reboot after power loss) sees either the old file or the new one, never half.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

from .render.spec import RenderedFile


def atomic_write(
    path: str | Path, content: str | bytes, mode: int = 0o644, owner: str | None = None, group: str | None = None
) -> None:
    """Write content to path atomically with the given mode (set before any byte is written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.appliance-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; secrets must not be
        if owner is not None or group is not None:
            uid = pwd.getpwnam(owner).pw_uid if owner else -1
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.fchown(fd, uid, gid)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_tree(files: Iterable[RenderedFile], root: str | Path) -> list[Path]:
    """Write rendered files under root (standing for /); owners are kept only when they exist."""
    written = []
    for f in files:
        target = Path(root) / f.path.lstrip("/")
        owner = f.owner if _user_exists(f.owner) else None
        group = f.group if _group_exists(f.group) else None
        atomic_write(
            target, f.content, f.mode, owner if os.geteuid() == 0 else None, group if os.geteuid() == 0 else None
        )
        written.append(target)
    return written


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
