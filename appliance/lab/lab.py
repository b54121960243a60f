"""A lab's life: up (boot, build, apply, converge, summary), exec, status, logs, down.

Used by the CLI (cli.py) and the pytest fixtures (tests/lab/conftest.py) alike. State lives in
/run/appliance-lab/<name>/ (0700): vm.json and pids.json for the daemon, topology.json for the
clients, secrets.env (0600), the daemon's, QEMU's and the guest console's logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import LabError
from .build import GUEST_BUILD, build_plan, has_private_dirs
from .client import STATE_ROOT, ExecResult, LabClient, running_labs
from .kernel import prepare_kernel
from .secrets import lab_secrets, node_secrets, secrets_env_text
from .topology import RouterNode, Topology
from .vm import VmConfig, check_requirements, choose_accel, qemu_argv, virtiofsd_argv

HOST_ROOT_IN_VM = "/host"  # the host's root as the VM sees it (read-only): site files are read there
APPLIANCE = str(Path(sys.executable).with_name("appliance"))  # same venv path inside the VM
APPLY_TIMEOUT_S = 600
CONVERGE_TIMEOUT_S = 120
LOG_FILES = ("/var/log/syslog", "/var/log/frr/*.log", "/run/charon.stdout", "/run/frr/*.log", "/run/*.log")

Progress = Callable[[str], None]


# as appliance-supervisor.service on a box; setsid and redirections: it must outlive the exec
SUPERVISE = (
    f"APPLIANCE_SERVICE_MANAGER=lab setsid {APPLIANCE} supervise --interval {{interval}}"
    " >>/var/log/appliance-supervisor.log 2>&1 </dev/null &"
)


@dataclass
class NodeResult:
    name: str
    kind: str
    addresses: list[str]
    role: str = ""
    apply: str = "-"  # "-", "ok", "FAILED (exit N)"
    nhs: str = "-"
    detail: str = ""  # apply output and log tail of a failed node (secrets redacted)


@dataclass
class UpReport:
    name: str
    boot_s: float
    build_s: float
    apply_s: float
    nodes: list[NodeResult] = field(default_factory=list)
    converged: bool | None = None  # None: not checked (no apply, or `show dmvpn` not available)
    missing: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.apply.startswith("FAILED")]

    def summary(self) -> str:
        rows = [
            (n.name, n.kind + (f"/{n.role}" if n.role else ""), " ".join(n.addresses), n.apply, n.nhs)
            for n in self.nodes
        ]
        headers = ("node", "kind", "addresses", "apply", "NHS")
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
        return "\n".join(lines)


class Lab:
    """A running (or about to run) lab, by name."""

    def __init__(self, name: str, state_root: Path = STATE_ROOT) -> None:
        self.name = name
        self.state_root = state_root
        self.state = state_root / name
        self.client = LabClient(name, state_root)

    # --- running labs ------------------------------------------------------------------------

    @classmethod
    def find(cls, name: str | None = None, state_root: Path = STATE_ROOT) -> Lab:
        """The named lab, or the only running one."""
        if name:
            return cls(name, state_root)
        labs = running_labs(state_root)
        if len(labs) == 1:
            return cls(labs[0], state_root)
        if not labs:
            raise LabError("no lab is running (appliance lab up TOPOLOGY.yaml)")
        raise LabError(f"several labs are running ({', '.join(labs)}): name one with --name")

    @property
    def topology_info(self) -> dict[str, Any]:
        try:
            return json.loads((self.state / "topology.json").read_text())
        except (OSError, ValueError):
            return {"nodes": {}}

    def exec(
        self, node: str | None, argv: Sequence[str], stdin: str | None = None, timeout: float = 300, env=None
    ) -> ExecResult:
        nodes = self.topology_info["nodes"]
        if node is not None and nodes and node not in nodes:
            raise LabError(f"lab {self.name!r} has no node {node!r} (nodes: {', '.join(nodes)})")
        return self.client.exec(node, argv, stdin=stdin, env=env, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return {**self.client.status(), "name": self.name, **self.topology_info}

    def logs(self, node: str, lines: int = 60) -> str:
        """The tail of a node's daemon logs (syslog, FRR, charon), secrets redacted."""
        script = f'for f in {" ".join(LOG_FILES)}; do [ -s "$f" ] || continue; echo "== $f"; tail -n {lines} "$f"; done'
        result = self.client.exec(node, ["sh", "-c", script], timeout=60)
        return self._redact(result.output or "(no logs)")

    def _redact(self, text: str) -> str:
        try:
            values = {
                k: v for k, v in (line.split("=", 1) for line in (self.state / "secrets.env").read_text().split())
            }
        except (OSError, ValueError):
            values = {}
        extra = {v for spec in self.topology_info["nodes"].values() for v in spec.get("env_values", [])}
        from ..redact import Redactor

        return Redactor([*values.values(), *extra]).text(text)

    def down(self, progress: Progress = print) -> None:
        if not self.client.running():
            self._kill_leftovers()
            raise LabError(f"lab {self.name!r} is not running")
        progress(f"stopping lab {self.name}")
        self.client.request({"op": "down"}, timeout=10)
        deadline = time.monotonic() + 30
        while self.client.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """A daemon killed hard leaves QEMU and virtiofsd behind: stop exactly those (by pid)."""
        try:
            pids = json.loads((self.state / "pids.json").read_text())
        except (OSError, ValueError):
            return
        for role in ("qemu", "virtiofsd", "daemon"):
            pid = pids.get(role)
            if pid and _is_process(pid, role):
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass

    # --- up ----------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        topology: Topology,
        apply: bool = True,
        accel: str = "auto",
        vm: VmConfig | None = None,
        progress: Progress = print,
        converge_timeout: float = CONVERGE_TIMEOUT_S,
        state_root: Path = STATE_ROOT,
    ) -> tuple[Lab, UpReport]:
        """Boot, build, apply, converge. Raises LabError when the VM or the build fails; a failed
        apply or missing convergence is in the report (the lab stays up for inspection)."""
        check_requirements()
        lab = cls(topology.name, state_root)
        if lab.client.running():
            raise LabError(f"lab {lab.name!r} is already up (appliance lab down --name {lab.name})")
        t0 = time.monotonic()
        _private_dir(state_root)
        _private_dir(lab.state)
        kernel = prepare_kernel(progress=progress)
        accel = choose_accel(kernel, state_root / "kvm.verdict", accel, progress)
        config = VmConfig(accel=accel, **({"memory_mib": vm.memory_mib, "cpus": vm.cpus} if vm else {}))
        values = lab_secrets(topology, lab.state)
        lab._write_state(topology, config, kernel, values)
        progress(f"booting the lab VM ({accel.upper()}, {config.cpus} CPUs, {config.memory_mib} MiB)")
        lab._start_daemon()
        status = lab._wait_ready()
        boot_s = time.monotonic() - t0
        progress(f"VM up in {boot_s:.1f} s (agent ready {status['guest_uptime_at_ready_s']:.1f} s after kernel start)")
        t1 = time.monotonic()
        lab._build(topology, values, progress)
        build_s = time.monotonic() - t1
        progress(f"{len(topology.nodes)} nodes and {len(topology.model.links)} links built in {build_s:.1f} s")
        report = UpReport(lab.name, boot_s, build_s, 0.0)
        for name, spec in topology.nodes.items():
            role = topology.sites[name].site.role if isinstance(spec, RouterNode) else ""
            report.nodes.append(NodeResult(name, spec.kind, topology.addresses(name), role))
        if apply and topology.routers():
            t2 = time.monotonic()
            lab._apply_all(topology, report, progress)
            report.apply_s = time.monotonic() - t2
            if not report.failed:
                lab._converge(topology, report, converge_timeout, progress)
        return lab, report

    def _write_state(self, topology: Topology, config: VmConfig, kernel, values: dict[str, str]) -> None:
        vfs, ctl = self.state / "vfs.sock", self.state / "control.sock"
        spec = {
            "accel": config.accel,
            "vfs_socket": str(vfs),
            "control_socket": str(ctl),
            "virtiofsd": virtiofsd_argv(vfs),
            "qemu": qemu_argv(kernel, config, vfs, ctl, self.state / "console.log"),
        }
        (self.state / "vm.json").write_text(json.dumps(spec, indent=1) + "\n")
        nodes = {}
        for name, node in topology.nodes.items():
            nodes[name] = {"kind": node.kind, "addresses": topology.addresses(name)}
            if isinstance(node, RouterNode):
                nodes[name] |= {"site": str(topology.site_path(name)), "role": topology.sites[name].site.role}
                nodes[name]["env_values"] = sorted(set(node.env.values()))
        info = {"name": self.name, "topology": str(topology.path), "accel": config.accel, "nodes": nodes}
        fd = os.open(self.state / "topology.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        for log in ("console.log", "qemu.log", "virtiofsd.log", "daemon.log"):
            (self.state / log).unlink(missing_ok=True)

    def _start_daemon(self) -> None:
        with open(self.state / "daemon.log", "ab") as log:
            self._daemon = subprocess.Popen(
                [sys.executable, "-m", "appliance.lab.daemon", str(self.state)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `lab up`, its terminal and its process group
                cwd="/",
            )

    def _wait_ready(self, timeout: float = 200) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.client.socket.exists():
            if time.monotonic() > deadline or self._daemon_died():
                raise LabError(f"the lab daemon did not start: {self._tail('daemon.log')} {self._tail('qemu.log')}")
            time.sleep(0.1)
        try:
            return self.client.request({"op": "wait-ready", "timeout": timeout}, timeout=timeout + 10)
        except LabError as e:
            raise LabError(f"the VM did not come up ({e}); console: {self._tail('console.log')}") from None

    def _daemon_died(self) -> bool:
        daemon = getattr(self, "_daemon", None)
        return daemon is not None and daemon.poll() is not None

    def _tail(self, name: str, lines: int = 5) -> str:
        try:
            return " | ".join((self.state / name).read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _build(self, topology: Topology, values: dict[str, str], progress: Progress) -> None:
        progress("building nodes and links")
        result = self.client.exec(
            None, ["python3", "-I", "-S", str(GUEST_BUILD)], stdin=json.dumps(build_plan(topology))
        )
        if not result.ok:
            raise LabError(f"building the topology failed: {result.output}")
        for name, spec in topology.nodes.items():
            if not has_private_dirs(spec):
                continue
            self.client.request(
                {"op": "syslog", "socket": f"/run/lab/{name}/run/log.sock", "file": f"/run/lab/{name}/log/syslog"}
            )
            if isinstance(spec, RouterNode):
                env = secrets_env_text(node_secrets(topology, name, values))
                script = "umask 077; mkdir -p /etc/appliance; cat > /etc/appliance/secrets.env"
                self._check(name, ["sh", "-c", script], "writing /etc/appliance/secrets.env", stdin=env)
            for command in spec.setup:
                self._check(name, ["sh", "-c", command], f"setup command {command!r}")

    def _check(self, node: str, argv: list[str], what: str, stdin: str | None = None) -> None:
        result = self.client.exec(node, argv, stdin=stdin, timeout=120)
        if not result.ok:
            raise LabError(f"{node}: {what} failed (exit {result.rc}): {self._redact(result.output)}")

    def _apply_all(self, topology: Topology, report: UpReport, progress: Progress) -> None:
        routers = topology.routers()
        progress(f"appliance apply in {', '.join(routers)} (in parallel)")
        by_name = {n.name: n for n in report.nodes}

        def apply(name: str) -> tuple[str, ExecResult, float]:
            t = time.monotonic()
            site = HOST_ROOT_IN_VM + str(topology.site_path(name))
            env = {"APPLIANCE_SERVICE_MANAGER": "lab"}
            return name, self.client.exec(name, [APPLIANCE, "apply", site], env=env, timeout=APPLY_TIMEOUT_S), t

        with ThreadPoolExecutor(max_workers=len(routers)) as pool:
            for future in as_completed([pool.submit(apply, name) for name in routers]):
                name, result, started = future.result()
                took = time.monotonic() - started
                node = by_name[name]
                if result.ok:
                    node.apply = "ok"
                    progress(f"  {name}: applied in {took:.1f} s")
                    if topology.model.supervise:
                        supervise = SUPERVISE.format(interval=topology.model.supervise_interval)
                        self._check(name, ["sh", "-c", supervise], "starting appliance supervise")
                else:
                    node.apply = f"FAILED (exit {result.rc})"
                    node.detail = self._redact(result.output) + "\n" + self.logs(name, 30)
                    progress(f"  {name}: apply FAILED (exit {result.rc}) after {took:.1f} s")

    def _converge(self, topology: Topology, report: UpReport, timeout: float, progress: Progress) -> None:
        """Wait until every spoke is registered with the hubs it names (their NHRP caches say so).

        The hub's cache is the authority: a dynamic entry exists only after a registration was
        accepted, whereas a spoke lists a statically configured NHS whether it answered or not.
        """
        hubs = {
            str(topology.sites[n].site.dmvpn.tunnel.address): n
            for n in topology.routers()
            if topology.sites[n].site.role == "hub"
        }
        wanted: dict[str, tuple[str, list[str]]] = {}  # spoke -> (tunnel address, hub nodes it registers with)
        for n in topology.routers():
            site = topology.sites[n].site
            if site.role == "spoke":
                targets = [hubs[str(nhs.address)] for nhs in site.dmvpn.nhrp.nhs if str(nhs.address) in hubs]
                wanted[n] = (str(site.dmvpn.tunnel.address), targets)
        if not wanted:
            report.converged = True
            return
        progress(f"waiting up to {timeout:.0f} s for the NHRP registrations of {', '.join(wanted)}")
        by_name = {node.name: node for node in report.nodes}
        deadline = time.monotonic() + timeout
        while True:
            caches = {hub: self.nhrp_dynamic_peers(hub) for hub in sorted({h for _, hs in wanted.values() for h in hs})}
            for spoke, (address, targets) in wanted.items():
                by_name[spoke].nhs = registration_state(address, targets, caches)
            done = all(by_name[s].nhs == "registered" or by_name[s].nhs.startswith("unavailable") for s in wanted)
            if done or time.monotonic() > deadline:
                break
            time.sleep(3)
        states = [by_name[s].nhs for s in wanted]
        report.missing = [f"{s}: NHS {by_name[s].nhs}" for s in wanted if by_name[s].nhs != "registered"]
        report.converged = None if all(st.startswith("unavailable") for st in states) else not report.missing
        progress("converged" if report.converged else f"not converged: {'; '.join(report.missing)}")

    def nhrp_dynamic_peers(self, hub: str) -> set[str] | str:
        """Overlay addresses of the hub's dynamic (registered) NHRP peers, or why they are unknown."""
        result = self.client.exec(hub, [APPLIANCE, "show", "dmvpn", "--json"], timeout=120)
        if not result.ok:
            lines = result.output.splitlines()
            return f"unavailable ({self._redact(lines[-1]) if lines else f'exit {result.rc}'})"
        try:
            cache = json.loads(result.stdout).get("cache", [])
        except (ValueError, AttributeError):
            return "unavailable (unreadable JSON from show dmvpn)"
        return {str(e.get("protocol")) for e in cache if e.get("type") == "dynamic"}


def registration_state(address: str, hubs: list[str], caches: dict[str, set[str] | str]) -> str:
    """'registered' when every hub the spoke names has it as a dynamic peer, else what is missing."""
    if not hubs:
        return "no NHS in this lab"
    unknown = [caches[h] for h in hubs if isinstance(caches[h], str)]
    if unknown:
        return str(unknown[0])
    missing = [h for h in hubs if address not in caches[h]]
    if not missing:
        return "registered"
    return f"not registered with {', '.join(missing)}"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _is_process(pid: int, role: str) -> bool:
    """Is pid still the process we started (and not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return {"qemu": "qemu-system", "virtiofsd": "virtiofsd", "daemon": "appliance.lab.daemon"}[role] in cmdline
