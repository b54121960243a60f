"""Lab fixtures: one VM at a time for the whole session, any topology on demand.

    def test_x(core):                                  # tests/lab/topologies/core.yaml, applied
        lab.expect("spoke1", "appliance show dmvpn --json", {"nhs": [{"state": "up"}]})

    @pytest.fixture(scope="module")
    def nat_pair(lab_factory):                        # another topology for a whole module
        return lab_factory(Path("tests/lab/topologies/nat-pair.yaml"))

`lab_factory(path)` reuses the running lab when it is the same topology and options, otherwise
brings the previous one down first (two cores: never two VMs). A failed test's report gets every
node's daemon logs (hook in tests/conftest.py, through `RunningLab.collect_logs`).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.lab import LabError
from appliance.lab.client import ExecResult
from appliance.lab.expect import run_and_expect
from appliance.lab.lab import Lab, UpReport
from appliance.lab.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked with the same topology (`pytest.mark.lab("core")`) run one after another, so
    that it boots once: a boot with its applies takes minutes under emulation."""

    def topology(item: pytest.Item) -> str:
        marker = item.get_closest_marker("lab")
        return marker.args[0] if marker is not None and marker.args else item.module.__name__

    first: dict[str, int] = {}
    for i, item in enumerate(items):
        first.setdefault(topology(item), i)
    items.sort(key=lambda item: first[topology(item)])  # stable: order within a group is kept


@dataclass
class RunningLab:
    lab: Lab
    report: UpReport
    topology_path: Path
    options: tuple

    @property
    def name(self) -> str:
        return self.lab.name

    def exec(
        self, node: str, command: str | Sequence[str], stdin: str | None = None, timeout: float = 300
    ) -> ExecResult:
        """Run a command (a string goes through sh -c) in a node."""
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        return self.lab.exec(node, argv, stdin=stdin, timeout=timeout)

    def check(self, node: str, command: str | Sequence[str], timeout: float = 300) -> str:
        """Run a command that must succeed; its stdout."""
        result = self.exec(node, command, timeout=timeout)
        shown = command if isinstance(command, str) else shlex.join(command)
        assert result.rc == 0, f"{node}: `{shown}` exited {result.rc}: {result.output}"
        return result.stdout

    def json(self, node: str, command: str | Sequence[str]) -> Any:
        return json.loads(self.check(node, command))

    def expect(self, node: str, command: str, expected: Any | Callable[[Any], bool], timeout: float = 90) -> Any:
        """Poll a JSON-printing command in a node until `expected` is a subset of its output."""
        return run_and_expect(lambda: self.json(node, command), expected, timeout, what=f"{node}: {command}")

    def collect_logs(self, lines: int = 80) -> dict[str, str]:
        logs = {}
        for node, spec in self.lab.topology_info.get("nodes", {}).items():
            if spec["kind"] in ("router", "linux"):
                try:
                    logs[node] = self.lab.logs(node, lines)
                except LabError as e:
                    logs[node] = f"(logs unavailable: {e})"
        return logs


class LabManager:
    """The session's one lab VM."""

    def __init__(self, keep: bool, reuse: bool = False) -> None:
        self.current: RunningLab | None = None
        self.keep, self.reuse = keep, reuse

    def up(self, topology_path: Path, apply: bool = True, **options: Any) -> RunningLab:
        key = (apply, tuple(sorted(options.items())))
        if self.current and self.current.topology_path == topology_path and self.current.options == key:
            return self.current
        self.down()
        topology = load_topology(topology_path)
        stale = Lab(topology.name)
        if stale.client.running():  # left over by an interrupted or --lab-keep session
            if self.reuse and stale.topology_info.get("topology") == str(topology.path):
                self.current = RunningLab(stale, UpReport(topology.name, 0, 0, 0), topology_path, key)
                return self.current
            stale.down(progress=lambda _: None)
        lines: list[str] = []
        try:
            lab, report = Lab.up(topology, apply=apply, progress=lines.append, **options)
        except LabError as e:
            pytest.fail(f"lab {topology.name} did not come up: {e}\n" + "\n".join(lines), pytrace=False)
        self.current = RunningLab(lab, report, topology_path, key)
        if report.failed:
            details = "\n".join(f"== {n.name}: apply {n.apply}\n{n.detail}" for n in report.failed)
            pytest.fail(f"lab {topology.name}: apply failed\n{details}", pytrace=False)
        return self.current

    def down(self) -> None:
        if self.current is not None:
            try:
                self.current.lab.down(progress=lambda _: None)
            except LabError:
                pass
            self.current = None


@pytest.fixture(scope="session")
def lab_manager(request: pytest.FixtureRequest):
    reuse = request.config.getoption("--lab-reuse")
    manager = LabManager(keep=request.config.getoption("--lab-keep") or reuse, reuse=reuse)
    yield manager
    if not manager.keep:
        manager.down()


@pytest.fixture(scope="module")
def lab_factory(lab_manager: LabManager) -> Callable[..., RunningLab]:
    """lab_factory(topology_path, apply=True, converge_timeout=...) -> RunningLab."""
    return lab_manager.up


@pytest.fixture(scope="module")
def lab(core: RunningLab) -> RunningLab:
    """The lab's own tests run on the core topology: examples/lab.yaml (the demo) plus a hub LAN
    host, a host behind the NAT'd spoke and a rogue box. One topology fewer to boot in CI."""
    return core


@pytest.fixture(scope="module")
def core(lab_factory: Callable[..., RunningLab]) -> RunningLab:
    """tests/lab/topologies/core.yaml, every router applied, OSPF Full on the hub with its three spokes."""
    from dmvpn import TOPOLOGIES, wait_ospf_full

    lab = lab_factory(TOPOLOGIES / "core.yaml")
    wait_ospf_full(lab, "hub", 3)  # OSPF over the tunnel before anything is routed between LANs
    return lab
