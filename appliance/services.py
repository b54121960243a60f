"""Starting and stopping the daemons: the one explicit difference between a lab node and a box.

A real box runs systemd (`SystemdServiceManager`: systemctl, units frr, strongswan, keepalived).
A lab node is a network namespace with no systemd (`LabServiceManager`: the daemons' own start
commands, pid files under /run), selected by APPLIANCE_SERVICE_MANAGER=lab. Service names are
the Debian unit names: strongswan is charon-systemd's unit (package charon-systemd).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

SERVICES = ("frr", "strongswan", "keepalived")


class ServiceError(Exception):
    """A start/stop/reload failed; the message carries the command's own output."""


class ServiceManager(Protocol):
    kind: str

    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def reload(self, name: str) -> None: ...
    def is_active(self, name: str) -> bool: ...
    def main_pid(self, name: str) -> int | None: ...
    def enable(self, name: str) -> None: ...
    def disable(self, name: str) -> None: ...
    def is_enabled(self, name: str) -> bool: ...
    def schedule(self, name: str, delay_s: int, argv: Sequence[str]) -> str: ...
    def cancel(self, name: str) -> None: ...


def _run(
    argv: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None


def _check(argv: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None) -> str:
    proc = _run(argv, timeout, env)
    if proc.returncode != 0:
        out = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
        raise ServiceError(f"{' '.join(argv)} failed (exit {proc.returncode}): {out}")
    return proc.stdout


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: str | Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- systemd ----------------------------------------------------------------------------------


class SystemdServiceManager:
    kind = "systemd"

    def start(self, name: str) -> None:
        _check(["systemctl", "start", name])

    def stop(self, name: str) -> None:
        _check(["systemctl", "stop", name])

    def restart(self, name: str) -> None:
        _check(["systemctl", "restart", name])

    def reload(self, name: str) -> None:
        _check(["systemctl", "reload", name])

    def is_active(self, name: str) -> bool:
        return _run(["systemctl", "is-active", "--quiet", name]).returncode == 0

    def main_pid(self, name: str) -> int | None:
        out = _run(["systemctl", "show", "-p", "MainPID", "--value", name]).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def enable(self, name: str) -> None:
        _check(["systemctl", "enable", "--quiet", name])

    def disable(self, name: str) -> None:
        _check(["systemctl", "disable", "--now", "--quiet", name])

    def is_enabled(self, name: str) -> bool:
        return _run(["systemctl", "is-enabled", "--quiet", name]).returncode == 0

    def schedule(self, name: str, delay_s: int, argv: Sequence[str]) -> str:
        # A transient timer survives the SSH session and the shell; stop it with `cancel`.
        _run(["systemctl", "stop", f"{name}.timer", f"{name}.service"])
        _run(["systemctl", "reset-failed", f"{name}.timer", f"{name}.service"])
        _check(["systemd-run", f"--unit={name}", f"--on-active={delay_s}s", "--timer-property=AccuracySec=1s", *argv])
        return f"systemd timer {name}.timer"

    def cancel(self, name: str) -> None:
        _run(["systemctl", "stop", f"{name}.timer"])


# --- lab (no systemd) -------------------------------------------------------------------------

FRRINIT = "/usr/lib/frr/frrinit.sh"
WATCHFRR_SH = "/usr/lib/frr/watchfrr.sh"  # frrcommon.sh's entry point: `start all` starts the daemons
CHARON = "/usr/lib/ipsec/charon"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
# watchfrr starts the daemons itself ("restart all") and kills that job after 20 s by default;
# under TCG, with several nodes starting at once, it takes longer (measured: killed, FRR never up).
LAB_WATCHFRR_OPTIONS = "--restart-timeout 240"


class LabServiceManager:
    """Daemons started directly, as the lab recipe does; each node has its own /run."""

    kind = "lab"

    def __init__(self, run_dir: str | Path = "/run", wait_s: float = 240.0) -> None:
        self.run = Path(run_dir)
        self.wait_s = wait_s  # TCG is slow: charon needs seconds to open its socket

    def _pidfile(self, name: str) -> Path:
        return {
            "frr": self.run / "frr" / "watchfrr.pid",
            "strongswan": self.run / "charon.pid",
            "keepalived": self.run / "keepalived.pid",
        }[self._known(name)]

    @staticmethod
    def _known(name: str) -> str:
        if name not in SERVICES:
            raise ServiceError(f"unknown service {name!r} (lab knows {', '.join(SERVICES)})")
        return name

    def main_pid(self, name: str) -> int | None:
        pid = read_pid(self._pidfile(name))
        return pid if pid_alive(pid) else None

    def is_active(self, name: str) -> bool:
        return self.main_pid(name) is not None

    def start(self, name: str) -> None:
        if self.is_active(name):
            return
        if name == "frr":
            self._frrinit("start")
            self._wait(lambda: self.is_active("frr") and (self.run / "frr" / "zserv.api").exists(), "FRR")
        elif name == "strongswan":
            self._start_charon()
        elif name == "keepalived":
            for p in ("keepalived.pid", "keepalived-vrrp.pid", "keepalived-chk.pid"):
                (self.run / p).unlink(missing_ok=True)
            _check(
                [
                    "keepalived",
                    "-f",
                    KEEPALIVED_CONF,
                    "-p",
                    str(self.run / "keepalived.pid"),
                    "-r",
                    str(self.run / "keepalived-vrrp.pid"),
                    "-c",
                    str(self.run / "keepalived-chk.pid"),
                ]
            )
            self._wait(lambda: self.is_active("keepalived"), "keepalived")
        else:
            self._known(name)

    def _frrinit(self, action: str) -> None:
        env = dict(os.environ)
        env.setdefault("watchfrr_options", LAB_WATCHFRR_OPTIONS)  # /etc/frr/daemons may still set its own
        if action in ("start", "restart"):
            if action == "restart":
                _check([FRRINIT, "stop"], timeout=self.wait_s, env=env)
            # The daemons first, under our own deadline, then watchfrr finds them up. Left to
            # watchfrr ("restart all"), the start is killed after its restart timeout: measured
            # under TCG on a loaded host even at 240 s, and FRR never came up.
            _check([WATCHFRR_SH, "start", "all"], timeout=self.wait_s, env=env)
            action = "start"
        _check([FRRINIT, action], timeout=self.wait_s, env=env)

    def _start_charon(self) -> None:
        vici = self.run / "charon.vici"
        vici.unlink(missing_ok=True)
        log = self.run / "charon.stdout"
        with open(log, "ab") as out:
            # setsid: a `timeout` or a dying shell must not take charon with it (lab pitfall 6)
            charon = subprocess.Popen([CHARON], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)  # fmt: skip

        def ready() -> bool:
            if charon.poll() is not None:  # say so at once rather than wait for a socket that never comes
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise ServiceError(f"charon exited with {charon.returncode}: {tail[0]}")
            return vici.exists()

        self._wait(ready, "charon (its VICI socket)")
        # as strongswan.service's ExecStartPost: a restarted charon has the saved config again
        _check(["swanctl", "--load-all", "--noprompt"])

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        raise ServiceError(f"{what} did not come up within {self.wait_s:.0f} s")

    def stop(self, name: str) -> None:
        if name == "frr":
            if self.is_active("frr") or any((self.run / "frr").glob("*.pid")):
                self._frrinit("stop")
            return
        pid = self.main_pid(name)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.wait_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if name == "strongswan":
            (self.run / "charon.vici").unlink(missing_ok=True)

    def restart(self, name: str) -> None:
        if name == "frr":
            self._frrinit("restart")
            self._wait(lambda: self.is_active("frr") and (self.run / "frr" / "zserv.api").exists(), "FRR")
            return
        self.stop(name)
        self.start(name)

    def reload(self, name: str) -> None:
        if name == "frr":
            self._frrinit("reload")
        elif name == "strongswan":
            _check(["swanctl", "--load-all", "--noprompt"])
        elif name == "keepalived":
            pid = self.main_pid(name)
            if pid is None:
                raise ServiceError("keepalived is not running")
            os.kill(pid, signal.SIGHUP)

    def enable(self, name: str) -> None:
        """Nothing starts a lab node at boot: the lab re-runs apply instead."""

    def disable(self, name: str) -> None:
        """No unit is enabled in a lab node, so none needs disabling."""

    def is_enabled(self, name: str) -> bool:
        return True

    def schedule(self, name: str, delay_s: int, argv: Sequence[str]) -> str:
        self.cancel(name)
        pid = spawn_detached(argv, delay_s, self.run / f"{name}.pid", self.run / f"{name}.log")
        return f"detached process {pid}"

    def cancel(self, name: str) -> None:
        pidfile = self.run / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)  # the sleeper leads its own session
            except ProcessLookupError:
                pass
        pidfile.unlink(missing_ok=True)


def spawn_detached(argv: Sequence[str], delay_s: int, pidfile: Path, logfile: Path) -> int:
    """Run argv after delay_s in a process that outlives us and our shell (double fork + setsid)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # first child: new session, fork again so the grandchild is no session leader's child
        try:
            os.close(r)
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(w, str(grandchild).encode())
                os._exit(0)
            os.close(w)
            os.setpgid(0, 0)
            fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            time.sleep(delay_s)
            os.execvp(argv[0], list(argv))
        except BaseException:  # never return into the caller's code from a forked child
            os._exit(127)
    os.close(w)
    os.waitpid(child, 0)
    pid = int(os.read(r, 32) or b"0")
    os.close(r)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{pid}\n")
    return pid


def for_environment(env: dict[str, str] | None = None) -> ServiceManager:
    """APPLIANCE_SERVICE_MANAGER=lab|systemd; default systemd when PID 1 is systemd, else lab."""
    env = dict(os.environ) if env is None else env
    choice = env.get("APPLIANCE_SERVICE_MANAGER", "").strip().lower()
    if choice == "lab":
        return LabServiceManager(env.get("APPLIANCE_RUN_DIR", "/run"))
    if choice == "systemd":
        return SystemdServiceManager()
    if choice:
        print(f"appliance: unknown APPLIANCE_SERVICE_MANAGER={choice!r}, using systemd", file=sys.stderr)
        return SystemdServiceManager()
    return SystemdServiceManager() if Path("/run/systemd/system").is_dir() else LabServiceManager()
