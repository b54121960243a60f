"""Real FRR daemons for unit tests, each run in a private network + mount + UTS namespace.

As FRR's topotests do: tmpfs over /etc/frr, /run/frr, /var/lib/frr (where it exists) and
/var/log, so the host's FRR files and sockets are never touched. The host kernel has no GRE;
zebra, staticd, ospfd, bgpd and nhrpd load their configuration fine without it (interfaces named
in the config are created as bridges).

A namespace is entered by a forked child (unshare needs a single-threaded caller, and pytest's
process must stay in the host namespaces), so a scenario is a function run in that child:

    result = run_in_frr_namespace(scenario, hostname="hub", interfaces=["eth0", "eth1", "dmvpn0"])

`scenario(frr)` gets a `FrrNamespace` (with `services`, a LabServiceManager on that /run) and
returns anything picklable; an exception in it (a failed assert included) is raised again in the
test with the child's traceback. FRR is stopped when the scenario ends.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pickle
import pwd
import shutil
import subprocess
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from appliance.files import atomic_write
from appliance.render.frr import DAEMONS_PATH, FRR_CONF_PATH, VTYSH_CONF_PATH, render_daemons_file
from appliance.services import FRRINIT, LabServiceManager

T = TypeVar("T")
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWNET = 0x00020000, 0x04000000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PRIVATE_DIRS = ("/etc/frr", "/run/frr", "/var/lib/frr", "/var/log")


def frr_available() -> str | None:
    """None when FRR can run here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root (namespaces, tmpfs mounts)"
    if not Path(FRRINIT).exists() or shutil.which("vtysh") is None:
        return "FRR is not installed"
    try:
        pwd.getpwnam("frr")
    except KeyError:
        return "no frr user"
    return None


class FrrNamespace:
    """Inside the child: FRR's private directories, the service manager, vtysh."""

    def __init__(self) -> None:
        self.services = LabServiceManager("/run")

    def vtysh(self, *commands: str) -> str:
        argv = ["vtysh"]
        for c in commands:
            argv += ["-c", c]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"vtysh {commands} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def running_config(self) -> str:
        return self.vtysh("show running-config")

    def write_files(self, config: str, daemons: Iterable[str]) -> None:
        """frr.conf, daemons, vtysh.conf as a box has them (owners matter: watchfrr checks them)."""
        _write(FRR_CONF_PATH, config, "frr", "frr")
        _write(DAEMONS_PATH, render_daemons_file(frozenset(daemons)), "frr", "frr")
        _write(VTYSH_CONF_PATH, "service integrated-vtysh-config\n", "frr", "frrvty")

    def start(self, config: str, daemons: Iterable[str]) -> None:
        self.write_files(config, daemons)
        self.services.start("frr")

    def running_daemons(self) -> set[str]:
        """FRR daemons with a live pid file under /run/frr."""
        alive = set()
        for pidfile in Path("/run/frr").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, OSError):
                continue
            alive.add(pidfile.stem)
        return alive - {"watchfrr"}


def _write(path: str, content: str, owner: str, group: str) -> None:
    atomic_write(path, content, 0o640, owner, group)


def _libc_call(name: str, *args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _enter_namespace(hostname: str, interfaces: Iterable[str]) -> None:
    _libc_call("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS)
    _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)  # nothing leaks to the host
    uid, gid = pwd.getpwnam("frr").pw_uid, grp.getgrnam("frr").gr_gid
    for d in PRIVATE_DIRS:
        if not os.path.isdir(d):
            continue  # /var/lib/frr is absent on this host; FRR 8.4 does not need it for these daemons
        _libc_call("mount", b"tmpfs", d.encode(), b"tmpfs", 0, b"mode=0755")
    os.makedirs("/var/log/frr", exist_ok=True)
    for d in ("/etc/frr", "/run/frr", "/var/log/frr"):
        os.chown(d, uid, gid)
    os.chmod("/etc/frr", 0o750)
    _libc_call("sethostname", hostname.encode(), len(hostname.encode()))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for name in interfaces:
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    # As the sysctl driver leaves a box: FRR prints 'no ip forwarding' otherwise.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def _stop_frr(frr: FrrNamespace) -> None:
    try:
        frr.services.stop("frr")
    except Exception:
        pass
    for pidfile in Path("/run/frr").glob("*.pid"):  # whatever survived the init script
        try:
            os.kill(int(pidfile.read_text().split()[0]), 9)
        except (ValueError, IndexError, OSError):
            pass


class ChildFailure(AssertionError):
    """The scenario failed in the namespace child; the message is its traceback."""


def run_in_frr_namespace(
    scenario: Callable[[FrrNamespace], T], hostname: str = "appliance", interfaces: Iterable[str] = ()
) -> T:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        frr = None
        try:
            _enter_namespace(hostname, list(interfaces))
            frr = FrrNamespace()
            payload = pickle.dumps(("ok", scenario(frr)))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        finally:
            if frr is not None:
                _stop_frr(frr)
        try:
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise ChildFailure("the namespace child died without a result")
    status, value = pickle.loads(data)
    if status == "error":
        raise ChildFailure("in the FRR namespace:\n" + value)
    return value
