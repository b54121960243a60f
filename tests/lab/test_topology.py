"""The lab's topology file, build plan, secrets and polling helpers (no VM needed)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab.build import build_plan
from appliance.lab.expect import ExpectTimeout, json_subset, run_and_expect
from appliance.lab.lab import registration_state
from appliance.lab.secrets import env_references, lab_secrets, node_secrets
from appliance.lab.topology import load_topology
from appliance.lab.vm import INSTALL_HINT, choose_accel
from appliance.model.loader import SiteError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
APPLIANCE = str(Path(sys.executable).with_name("appliance"))


def write(tmp_path: Path, text: str, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(SiteError) as e:
        load_topology(path)
    return [p.headline() for p in e.value.problems]


def test_example_lab_loads_with_every_router_site():
    topology = load_topology(EXAMPLES / "lab.yaml")
    assert topology.name == "dmvpn"
    assert topology.routers() == ["hub", "spoke1", "spoke2", "spoke3"]
    assert topology.interfaces("hub") == ["eth0", "eth1"]  # eth1 from the site: no link, a dummy
    assert topology.addresses("spoke3") == ["192.168.100.2/24", "10.0.3.1/24", "172.16.0.13/32"]


def test_two_spokes_may_share_a_private_address_behind_different_nat_routers(tmp_path):
    path = write(
        tmp_path,
        f"""\
nodes:
  nat3: {{kind: internet, interfaces: {{eth0: 203.0.113.2/30, eth1: 192.168.100.1/24}}, masquerade: [eth0]}}
  nat4: {{kind: internet, interfaces: {{eth0: 203.0.113.6/30, eth1: 192.168.100.1/24}}, masquerade: [eth0]}}
  spoke3: {{kind: router, site: {EXAMPLES / "spoke3-nat.yaml"}}}
  spoke4: {{kind: router, site: {EXAMPLES / "spoke4-nat.yaml"}}}
links:
  - endpoints: [nat3:eth1, spoke3:eth0]
  - endpoints: [nat4:eth1, spoke4:eth0]
""",
    )
    topology = load_topology(path)
    assert topology.addresses("spoke3")[0] == topology.addresses("spoke4")[0] == "192.168.100.2/24"


def test_errors_point_at_file_line_and_column(tmp_path):
    path = write(
        tmp_path,
        """\
nodes:
  inet: {kind: internet, interfaces: {eth1: 192.0.2.1/30}, masquerade: [eth9]}
  hub: {kind: router, site: nowhere.yaml}
  h1: {kind: host, address: 10.0.0.5/24, gateway: 10.1.0.1}
links:
  - endpoints: [inet:eth1, h1:eth0]
  - endpoints: [inet:eth1, nope:eth0]
""",
    )
    assert errors(path) == [
        f"{path}:7:17: links[1].endpoints[0]: inet:eth1 is already used by links[0]",
        f"{path}:7:28: links[1].endpoints[1]: no node 'nope' in nodes",
        f"{path}:2:73: nodes.inet.masquerade[0]: eth9 is not one of this node's interfaces",
        f"{path}:3:29: nodes.hub.site: no such file: {tmp_path / 'nowhere.yaml'}",
        f"{path}:4:51: nodes.h1.gateway: not in 10.0.0.0/24",
    ]


def test_schema_errors_name_the_node_field_not_the_union_member(tmp_path):
    path = write(tmp_path, "nodes:\n  x: {kind: host, address: 10.0.0.5/24, gw: 1}\n  y: {kind: routr}\n")
    problems = errors(path)
    assert problems[0] == f"{path}:2:41: nodes.x.gw: unknown field"
    assert problems[1].startswith(f"{path}:3:3: nodes.y: ") and "'router'" in problems[1]


def test_a_router_site_error_is_reported_in_the_site_file(tmp_path):
    site = write(tmp_path, (EXAMPLES / "hub.yaml").read_text().replace("hostname: hub", "hostname: -bad-"), "s.yaml")
    path = write(tmp_path, "nodes:\n  hub: {kind: router, site: s.yaml}\n")
    problems = errors(path)
    assert problems[0] == f"{path}:2:29: nodes.hub.site: invalid site file {site}"
    assert problems[1].startswith(f"{site}:4:13: system.hostname:")


def test_build_plan_links_dummies_addresses_and_masquerade():
    plan = build_plan(load_topology(EXAMPLES / "lab.yaml"))
    assert "link add eth1 netns inet type veth peer name eth0 netns hub" in plan["links"]
    nodes = {n["name"]: n for n in plan["nodes"]}
    assert "link add eth1 type dummy" in nodes["hub"]["ip"]  # the hub's LAN: no link in the file
    assert "link add eth0 type dummy" not in nodes["hub"]["ip"]
    assert nodes["hub"]["private"] and not nodes["host1"]["private"]
    assert nodes["host1"]["ip"][-2:] == ["addr add 10.0.1.10/24 dev eth0", "route add default via 10.0.1.1"]
    assert 'oifname { "eth0" } counter masquerade' in nodes["nat3"]["nft"]
    assert nodes["inet"]["sysctl"] == {"net.ipv4.ip_forward": "1"} and "nft" not in nodes["inet"]


def test_secrets_are_generated_once_per_lab_kept_0600_and_fit_their_use(tmp_path):
    topology = load_topology(EXAMPLES / "lab.yaml")
    names = {name for name, _ in env_references(topology.sites["hub"].document.data)}
    assert names == {"DMVPN_PSK", "OSPF_KEY"}
    values = lab_secrets(topology, tmp_path)
    assert set(values) == names
    assert len(values["OSPF_KEY"]) == 16 and len(values["DMVPN_PSK"]) >= 20  # MD5 key limit, PSK minimum
    assert stat.S_IMODE((tmp_path / "secrets.env").stat().st_mode) == 0o600
    assert lab_secrets(topology, tmp_path) == values  # the same lab keeps its values


def test_a_node_can_override_a_secret(tmp_path):
    path = write(
        tmp_path, f"nodes:\n  hub: {{kind: router, site: {EXAMPLES / 'hub.yaml'}, env: {{OSPF_KEY: wrong}}}}\n"
    )
    topology = load_topology(path)
    values = lab_secrets(topology, tmp_path)
    assert node_secrets(topology, "hub", values) == {**values, "OSPF_KEY": "wrong"}


def test_json_subset_matches_nested_objects_and_unordered_lists():
    actual = {"nhs": [{"proto": "172.16.0.1", "state": "up"}, {"proto": "-"}], "cache": []}
    assert json_subset({"nhs": [{"state": "up"}]}, actual) is None
    assert json_subset({"nhs": [{"proto": "-"}, {"state": "up"}]}, actual) is None
    assert json_subset({"missing": None}, actual) is None
    assert json_subset({"cache": None}, actual) == "$.cache: expected absent, got []"
    assert json_subset({"nhs": [{"state": "down"}]}, actual) == '$.nhs[0]: no item matches {"state": "down"}'


def test_run_and_expect_times_out_showing_the_last_value():
    calls = []

    def poll():
        calls.append(1)
        return {"state": "ExStart", "try": len(calls)}

    with pytest.raises(ExpectTimeout) as e:
        run_and_expect(poll, {"state": "Full"}, timeout=0.3, interval=0.1, what="ospf")
    message = str(e.value)
    assert 'ospf not met within 0 s: $.state: expected "Full", got "ExStart"' in message
    assert f'"try": {len(calls)}' in message  # the last value, not the first
    assert run_and_expect(lambda: {"state": "Full", "x": 1}, {"state": "Full"}, timeout=1) == {"state": "Full", "x": 1}


def test_accelerator_can_be_forced_and_must_be_known(tmp_path):
    assert choose_accel(None, tmp_path / "verdict", "tcg") == "tcg"
    with pytest.raises(Exception, match="unknown accelerator"):
        choose_accel(None, tmp_path / "verdict", "hvf")
    assert "apt-get install qemu-system-x86" in INSTALL_HINT


def test_lab_up_with_a_bad_topology_exits_2_before_any_vm(tmp_path):
    path = write(tmp_path, "nodes:\n  x: {kind: nothing}\n")
    proc = subprocess.run([APPLIANCE, "lab", "up", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{path}:2:3: nodes.x: ")


def test_a_spoke_is_registered_only_when_every_hub_it_names_has_it_as_a_dynamic_peer():
    caches = {"hub": {"172.16.0.11", "172.16.0.13"}, "hub2": {"172.16.0.13"}, "down": "unavailable (exit 1)"}
    assert registration_state("172.16.0.13", ["hub", "hub2"], caches) == "registered"
    assert registration_state("172.16.0.11", ["hub", "hub2"], caches) == "not registered with hub2"
    assert registration_state("172.16.0.11", ["down"], caches) == "unavailable (exit 1)"
    assert registration_state("172.16.0.11", [], caches) == "no NHS in this lab"


def test_missing_qemu_or_virtiofsd_is_named_with_the_install_command(monkeypatch):
    from appliance.lab import LabError, vm

    monkeypatch.setattr(vm.shutil, "which", lambda tool: None if tool == vm.QEMU else f"/usr/bin/{tool}")
    monkeypatch.setattr(vm.os, "access", lambda path, mode: path != vm.VIRTIOFSD)
    with pytest.raises(LabError) as e:
        vm.check_requirements()
    message = str(e.value)
    assert message.startswith(f"the lab needs {vm.QEMU}, {vm.VIRTIOFSD};")
    assert "apt-get install qemu-system-x86" in message


def test_a_switch_bridges_every_link_to_it_into_one_segment(tmp_path):
    path = write(
        tmp_path,
        "nodes:\n  lan0: {kind: switch}\n"
        "  h1: {kind: host, address: 10.0.0.10/24}\n  h2: {kind: host, address: 10.0.0.11/24}\n"
        "links:\n  - endpoints: [lan0:p1, h1:eth0]\n  - endpoints: [lan0:p2, h2:eth0]\n",
    )
    switch = next(n for n in build_plan(load_topology(path))["nodes"] if n["name"] == "lan0")
    assert switch["ip"] == [
        "link set lo up",
        "link add br0 type bridge",
        "link set p1 master br0",
        "link set p2 master br0",
        "link set p1 up",
        "link set p2 up",
        "link set br0 up",
    ]
