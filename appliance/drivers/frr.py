"""FRR: frr.conf applied with frr-reload.py (minimal delta), the daemons file, vtysh.conf.

The diff is FRR's own: `frr-reload.py --test <candidate>` against the running config; an empty
delta means nothing to do. A candidate is always syntax-checked with `vtysh -C -f` first: measured
on FRR 8.4.4, `--test` on a file vtysh cannot parse prints a delta that deletes the whole running
configuration, and `--reload` would apply it. A changed daemon set needs watchfrr restarted
(`ctx.services.restart("frr")`, disruptive); everything else is a reload, which touches only the
lines in the delta. vtysh start-up is the slow part under emulation: a full diff costs one
`vtysh -C` and one `frr-reload.py --test` (three vtysh runs inside).

A no-op diff runs no FRR tool at all: the delta is a pure function of the candidate, of the
running config (which vtysh merges from each daemon's own `show running-config`, with vtysh.conf,
a file this driver checks on its own) and of the FRR tools themselves. Once an apply verified that
such a triple has an empty delta (and so passed `vtysh -C`), the ledger keeps its hash; a diff asks
each daemon over its vty socket, as vtysh does, and on the same triple skips vtysh and both tools
(measured under emulation: 0.16 s for five daemons, against 0.75 s for one vtysh start-up).
Anything else, a hand change in vtysh, a daemon that died or does not answer, an FRR upgrade,
misses the hash and gets the full check.

Files that hold the running or candidate config (OSPF keys, BGP passwords) live only in a 0700
directory of this process under /run/appliance/frr: our candidates, and frr-reload.py's own
`reload-*.txt` (its --rundir, by default /var/run/frr, written 0644 and removed only if it finishes).
An apply killed midway leaves them behind; the next driver removes the directories of dead processes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..render.frr import DAEMONS_PATH, FRR_CONF_PATH, VTYSH_CONF_PATH, render_daemons_file
from ..render.spec import DesiredState, RenderedFile
from ..services import pid_alive
from .base import (
    CHANGE,
    CREATE,
    Change,
    Context,
    DriverError,
    file_change,
    file_restore,
    file_snapshot,
    find_file,
    service_call,
    write_rendered,
)

SUBSYSTEM = "frr"
SERVICE = "frr"
VTYSH = "vtysh"
FRR_RELOAD = "/usr/lib/frr/frr-reload.py"
TIMEOUT_S = 300  # vtysh takes seconds per call under TCG; a reload runs many of them
SHOW_RUNNING = "show running-config no-header"  # what frr-reload.py itself reads as the running side
_DELTA_HEADERS = {"Lines To Delete": "delete", "Lines To Add": "add"}
NO_DELTA: dict[str, list[str]] = {"delete": [], "add": []}
RUN_DIR = "/run/frr"  # each daemon's vty socket, <daemon>.vty
VTY_TIMEOUT_S = 10
WORK_DIR = "/run/appliance/frr"  # one 0700 subdirectory per process (its pid)
# Left by older versions and by killed frr-reload runs with its default --rundir; nothing live is
# this old (a reload step times out after TIMEOUT_S).
LEFTOVERS = (("/tmp", "frr-candidate-*.conf"), ("/var/run/frr", "reload-*.txt"))
LEFTOVER_AGE_S = 3600


def parse_reload_test(output: str) -> dict[str, list[str]]:
    """frr-reload.py --test stdout -> {"delete": [...], "add": [...]} (both empty: no change).

    It prints nothing at all when there is no change; otherwise a section per direction, each
    headed by its title and a row of '='. A section may hold only '!' lines, which it skips: an
    empty section is no change either.
    """
    delta: dict[str, list[str]] = {"delete": [], "add": []}
    section: str | None = None
    for line in output.splitlines():
        title = line.strip()
        if title in _DELTA_HEADERS:
            section = _DELTA_HEADERS[title]
            continue
        if not title or set(title) == {"="} or title == "!":
            continue
        if section is None:
            raise DriverError(SUBSYSTEM, "frr-reload.py --test printed something unexpected", line)
        delta[section].append(line.rstrip())
    return delta


def delta_text(delta: dict[str, list[str]]) -> str:
    out = []
    if delta["delete"]:
        out += ["lines to delete:", *(f"  {line}" for line in delta["delete"])]
    if delta["add"]:
        out += ["lines to add:", *(f"  {line}" for line in delta["add"])]
    return "\n".join(out)


def strip_show_running(text: str) -> str:
    """`show running-config` minus vtysh's banner and trailing 'end', loadable as a config file."""
    banner = ("Building configuration...", "Current configuration:")
    lines = [ln for ln in text.splitlines() if ln.strip() not in banner]
    while lines and lines[-1].strip() in ("", "end"):
        lines.pop()
    return "\n".join(lines).lstrip("\n") + "\n"


def daemon_configs(run_dir: Path) -> str | None:
    """Each running daemon's own `show running-config`, asked over its vty socket in `run_dir` the
    way vtysh asks it; None when a daemon does not answer (stopped, stale socket, refused)."""
    parts = []
    for path in sorted(run_dir.glob("*.vty")):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as vty:
                vty.settimeout(VTY_TIMEOUT_S)
                vty.connect(str(path))
                answers = [_vty_command(vty, command) for command in ("enable", "show running-config")]
        except OSError:
            return None
        if any(status != 0 for status, _ in answers):
            return None
        parts.append(f"{path.stem}\n{answers[-1][1]}")
    return "\0".join(parts) if parts else None


def _vty_command(vty: socket.socket, command: str) -> tuple[int, str]:
    """(status, output) of one command: it goes NUL-terminated; the answer ends in three NULs and
    the command's status byte (FRR's lib/vty.c, what vtysh reads)."""
    vty.sendall(command.encode() + b"\0")
    answer = b""
    while not (len(answer) >= 4 and answer[-4:-1] == b"\0\0\0"):
        chunk = vty.recv(65536)
        if not chunk:
            raise ConnectionResetError(f"{command}: the daemon closed its vty")
        answer += chunk
    return answer[-1], answer[:-4].decode(errors="replace")


def tools_identity(paths: Sequence[str]) -> str:
    """Path, size and mtime of each tool: an upgraded vtysh or frr-reload.py invalidates a verified delta."""
    parts = []
    for name in paths:
        path = shutil.which(name) or name
        try:
            st = os.stat(path)
        except OSError:
            parts.append(f"{path}:missing")
            continue
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def in_sync_key(config: str, running: str, tools: str) -> str:
    """Hash of (candidate, running config, tools). Both texts may hold the OSPF key: the ledger that
    keeps this is root-only (0600), and frr.conf holds the key in clear anyway."""
    digest = hashlib.sha256()
    for part in (tools, config, running):
        digest.update(len(part.encode()).to_bytes(8, "big") + part.encode())
    return digest.hexdigest()


_claimed: set[Path] = set()  # work directories this process (by pid) has made its own


def private_work_dir(root: Path = Path("/")) -> Path:
    """This process's 0700 directory for config copies. The first call of a process removes what
    dead processes left: their directories, and LEFTOVERS older than LEFTOVER_AGE_S."""
    base = root / WORK_DIR.lstrip("/")
    mine = base / str(os.getpid())
    if mine in _claimed:
        mine.mkdir(parents=True, exist_ok=True, mode=0o700)
        return mine
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    for d in base.iterdir():
        # A directory named after this pid was left by a dead process that had the same pid.
        if d.name.isdigit() and (d == mine or not pid_alive(int(d.name))):
            shutil.rmtree(d, ignore_errors=True)
    now = time.time()
    for directory, pattern in LEFTOVERS:
        for leftover in (root / directory.lstrip("/")).glob(pattern):
            try:
                if leftover.is_file() and now - leftover.stat().st_mtime > LEFTOVER_AGE_S:
                    leftover.unlink()
            except OSError:
                continue  # gone meanwhile
    mine.mkdir(mode=0o700)
    _claimed.add(mine)
    return mine


@contextmanager
def candidate_file(config: str, directory: Path | None = None) -> Iterator[str]:
    """`config` in a 0600 file in a private 0700 directory: it may hold OSPF keys and BGP passwords."""
    fd, path = tempfile.mkstemp(prefix="frr-candidate-", suffix=".conf", dir=directory or private_work_dir())
    try:
        with os.fdopen(fd, "w") as f:
            f.write(config)
        yield path
    finally:
        os.unlink(path)


class FrrDriver:
    name = SUBSYSTEM

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.services = ctx, ctx.services
        self._verified_key: str | None = None  # of the last full diff that found no delta

    def work_dir(self) -> Path:
        return private_work_dir(self.ctx.root)

    # --- tools --------------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise DriverError(self.name, f"{argv[0]} not found (apt-get install frr frr-pythontools)") from None
        except subprocess.TimeoutExpired:
            raise DriverError(self.name, f"{what} did not finish within {TIMEOUT_S} s") from None

    def _confdir(self) -> str:
        return str(self.ctx.path(os.path.dirname(FRR_CONF_PATH)))

    def _installed(self) -> str:
        # frr-reload.py compares this string with confdir + "/frr.conf": equal means no `vtysh write`
        return self._confdir() + "/" + os.path.basename(FRR_CONF_PATH)

    def check_syntax(self, path: str) -> None:
        proc = self._run([VTYSH, "-C", "-f", path], "vtysh -C")
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).replace(path, FRR_CONF_PATH)
            raise DriverError(self.name, f"vtysh rejects {FRR_CONF_PATH} (nothing was changed)", out)

    def reload_delta(self, path: str, running: str | None = None) -> dict[str, list[str]]:
        """What `frr-reload.py --reload path` would change in the running config (or in the
        `show running-config` text in the file `running`)."""
        argv = [FRR_RELOAD, "--test", "--confdir", self._confdir(), path]
        if running is not None:
            argv[2:2] = ["--input", running]
        proc = self._run(argv, "frr-reload.py --test")
        if proc.returncode != 0:
            raise DriverError(self.name, "frr-reload.py --test failed", proc.stdout + proc.stderr)
        return parse_reload_test(proc.stdout)

    def _candidate_delta(self, config: str) -> dict[str, list[str]]:
        tools = tools_identity((VTYSH, FRR_RELOAD))
        run_dir = self.ctx.path(RUN_DIR)
        daemons = daemon_configs(run_dir)
        key = None if daemons is None else in_sync_key(config, daemons, tools)
        self._verified_key = None
        if key is not None and self.ctx.ledger.section(self.name).get("in_sync") == key:
            return {"delete": [], "add": []}
        running = self._show(SHOW_RUNNING)
        with candidate_file(config, self.work_dir()) as path, candidate_file(running, self.work_dir()) as running_path:
            self.check_syntax(path)
            delta = self.reload_delta(path, running_path)
        # kept only when nothing changed in a daemon while vtysh and frr-reload looked
        if delta == NO_DELTA and key is not None and daemon_configs(run_dir) == daemons:
            self._verified_key = key
        return delta

    def _show(self, command: str) -> str:
        proc = self._run([VTYSH, "-c", command], f"vtysh {command}")
        if proc.returncode != 0:
            raise DriverError(self.name, "vtysh cannot read the running config", proc.stdout + proc.stderr)
        return proc.stdout

    def running_config(self) -> str:
        return strip_show_running(self._show("show running-config"))

    # --- desired ------------------------------------------------------------------------------

    def claims(self, desired: DesiredState) -> set[str]:
        return {FRR_CONF_PATH, DAEMONS_PATH, VTYSH_CONF_PATH}

    @staticmethod
    def _files(desired: DesiredState) -> dict[str, RenderedFile]:
        # Built only when the desired state lacks the file: the daemons file is a template (jinja2).
        defaults = {
            FRR_CONF_PATH: lambda: RenderedFile(FRR_CONF_PATH, desired.frr.config, 0o640, "frr", "frr", secret=True),
            DAEMONS_PATH: lambda: RenderedFile(
                DAEMONS_PATH, render_daemons_file(desired.frr.daemons), 0o640, "frr", "frr"
            ),
            VTYSH_CONF_PATH: lambda: RenderedFile(
                VTYSH_CONF_PATH, "service integrated-vtysh-config\n", 0o640, "frr", "frrvty"
            ),
        }
        return {path: find_file(desired, path) or default() for path, default in defaults.items()}

    # --- diff ---------------------------------------------------------------------------------

    def diff(self, desired: DesiredState) -> list[Change]:
        files = self._files(desired)
        running = self.services.is_active(SERVICE)
        changes: list[Change] = []
        for path in (VTYSH_CONF_PATH, DAEMONS_PATH):
            c = file_change(self.ctx, self.name, files[path])
            if c is not None:
                changes.append(c)
        daemons_changed = any(c.name == DAEMONS_PATH for c in changes)

        conf = files[FRR_CONF_PATH]
        write_conf = file_change(self.ctx, self.name, conf)
        delta = self._candidate_delta(conf.content) if running else None
        if write_conf is not None:
            write_conf.description += " (checked with vtysh -C)"
            changes.append(write_conf)

        if not running:
            changes.append(Change(self.name, CREATE, "daemon", SERVICE, "start frr", payload="start"))
        elif daemons_changed:
            wanted = " ".join(sorted(desired.frr.daemons))
            changes.append(
                Change(
                    self.name,
                    CHANGE,
                    "daemon",
                    SERVICE,
                    f"restart frr (daemons: {wanted})",
                    disruptive=True,
                    detail=delta_text(delta) if delta else "",
                    payload="restart",
                )  # fmt: skip
            )
        elif delta and (delta["add"] or delta["delete"]):
            n_add, n_del = len(delta["add"]), len(delta["delete"])
            changes.append(
                Change(
                    self.name,
                    CHANGE,
                    "config",
                    "running-config",
                    f"reload FRR configuration ({n_add} line{'s' * (n_add != 1)} to add, {n_del} to delete)",
                    detail=delta_text(delta),
                    payload="reload",
                )  # fmt: skip
            )
        return changes

    # --- apply --------------------------------------------------------------------------------

    def apply(self, changes: list[Change]) -> None:
        for c in changes:
            if c.kind != "file":
                continue
            f: RenderedFile = c.payload
            if f.path == FRR_CONF_PATH:
                self._check_content(f.content)  # never install what vtysh cannot parse
            write_rendered(self.ctx, f)
        for c in changes:
            if c.kind == "daemon":
                self._service(c.payload)
            elif c.kind == "config":
                self.reload()

    def _check_content(self, config: str) -> None:
        with candidate_file(config, self.work_dir()) as path:
            self.check_syntax(path)

    def _service(self, verb: str) -> None:
        service_call(self.services, self.name, verb, SERVICE)

    def reload(self, path: str | None = None) -> None:
        """frr-reload.py --reload of the installed frr.conf (or of `path`, which FRR then writes out)."""
        target = path or self._installed()
        # --rundir: where it writes the lines it sends; --log-level warning: at info it logs them too.
        argv = [FRR_RELOAD, "--reload", "--confdir", self._confdir(), "--rundir", str(self.work_dir())]
        proc = self._run([*argv, "--log-level", "warning", target], "frr-reload.py --reload")
        # Measured (FRR 8.4.4): frr-reload re-sends every added line in a second pass and nhrpd
        # answers '% Entry exists already' to a repeated 'ip nhrp nhs'/'map multicast', so a correct
        # reload can exit 1. What counts is the result: an empty delta afterwards.
        if proc.returncode != 0 and self.reload_delta(target) != {"delete": [], "add": []}:
            raise DriverError(self.name, "frr-reload.py --reload failed", proc.stdout + proc.stderr)

    # --- verify, snapshot, restore ------------------------------------------------------------

    def verify(self, desired: DesiredState) -> None:
        if not self.services.is_active(SERVICE):
            raise DriverError(self.name, "frr is not running after apply")
        left = [c.description for c in self.diff(desired)]
        if left:
            detail = self.reload_delta(self._installed())
            raise DriverError(self.name, "still differs after apply: " + ", ".join(left), delta_text(detail))
        if self._verified_key is not None:  # a later no-op diff of the same state runs no FRR tool
            self.ctx.ledger.section(self.name)["in_sync"] = self._verified_key
            self.ctx.ledger.save()

    def snapshot(self, desired: DesiredState) -> dict[str, Any]:
        running = self.services.is_active(SERVICE)
        return {
            "files": file_snapshot(self.ctx, [FRR_CONF_PATH, DAEMONS_PATH, VTYSH_CONF_PATH]),
            "active": running,
            "running_config": self.running_config() if running else None,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Files back as they were; the daemons as they were; the running config as it was."""
        daemons_before = snapshot["files"].get(DAEMONS_PATH)
        daemons_changed = file_snapshot(self.ctx, [DAEMONS_PATH])[DAEMONS_PATH] != daemons_before
        file_restore(self.ctx, snapshot["files"])
        active = self.services.is_active(SERVICE)
        if not snapshot["active"]:
            if active:
                self._service("stop")
            return
        if not active:
            self._service("start")
        elif daemons_changed:
            self._service("restart")
        saved = snapshot.get("running_config")
        if saved is None or not self.services.is_active(SERVICE):
            return
        # The running config may have differed from frr.conf: reload exactly what ran, from a copy
        # (frr-reload then `vtysh write`s frr.conf, so the files are put back once more after it).
        with candidate_file(saved, self.work_dir()) as path:
            if self.reload_delta(path) != {"delete": [], "add": []}:
                self.reload(path)
        file_restore(self.ctx, snapshot["files"])
