"""The lab itself: the core topology (examples/lab.yaml and a few more nodes) boots, its underlay
works, nodes are isolated, the kernel has the data plane (GRE, ESP, nftables), and a node whose
daemon fails makes `lab up` fail loudly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.lab.lab import Lab
from appliance.lab.secrets import env_references

pytestmark = pytest.mark.lab("core")  # one boot of core for every module on it

REPO = Path(__file__).resolve().parents[2]
APPLIANCE = [str(Path(sys.executable).with_name("appliance"))]
INET_ON_HUB_LINK = "192.0.2.1"  # inet eth1
HUB_PUBLIC = "192.0.2.2"  # examples/hub.yaml
NAT_PUBLIC = "203.0.113.2"  # nat3 eth0


def test_every_router_reaches_the_internet_router(lab):
    for node in ("hub", "spoke1", "spoke2", "spoke3"):
        out = lab.check(node, f"ping -c 2 -i 0.3 -W 2 {INET_ON_HUB_LINK}")
        assert " 0% packet loss" in out, f"{node}: {out}"


def test_nat_spoke_reaches_the_hub_public_address_through_the_nat(lab):
    def masqueraded() -> int:
        table = lab.json("nat3", "nft -j list table ip lab-nat")["nftables"]
        return sum(r["rule"]["expr"][1]["counter"]["packets"] for r in table if "rule" in r)

    before = masqueraded()
    out = lab.check("spoke3", f"ping -c 3 -i 0.3 -W 2 {HUB_PUBLIC}")
    assert " 0% packet loss" in out
    assert masqueraded() > before, "the pings did not go through nat3's masquerade rule"
    # the hub sees the NAT router's public address, never spoke3's private one
    conntrack = lab.exec("nat3", "cat /proc/net/nf_conntrack").stdout
    assert "src=192.168.100.2 dst=192.0.2.2" in conntrack and f"dst={NAT_PUBLIC}" in conntrack, conntrack


def test_gre_esp_and_nftables_work_in_a_node(lab):
    key = "0x" + "11" * 20  # AES-128-GCM key + salt, a throwaway for this test only
    lab.check(
        "host1",
        "set -e; ip link add gretest type gre local 10.0.1.10 remote 10.0.1.99 key 7; ip link set gretest up;"
        " ip xfrm state add src 10.0.1.10 dst 10.0.1.99 proto esp spi 0x1000 mode transport"
        f" aead 'rfc4106(gcm(aes))' {key} 128;"
        " nft add table inet labtest; nft add chain inet labtest input '{ type filter hook input priority 0; }'",
    )
    try:
        assert json.loads(lab.check("host1", "ip -j -d link show gretest"))[0]["linkinfo"]["info_kind"] == "gre"
        assert "proto esp spi 0x00001000" in lab.check("host1", "ip xfrm state")
        assert "table inet labtest" in lab.check("host1", "nft list tables")
    finally:
        lab.exec("host1", "ip link del gretest; ip xfrm state flush; nft delete table inet labtest")


def test_each_node_has_its_own_hostname_etc_run_and_daemons(lab):
    for node in ("hub", "spoke1"):
        assert lab.check(node, "hostname").strip() == node
        assert lab.check(node, "cat /etc/hostname").strip() == node
        assert lab.exec(node, "test -S /run/charon.vici").rc == 0, f"{node} has no charon of its own"
    lab.check("spoke1", "echo spoke1-only > /etc/frr/lab-private-test; echo x > /run/lab-private-test")
    try:
        assert lab.exec("spoke2", "test -e /etc/frr/lab-private-test || test -e /run/lab-private-test").rc == 1
    finally:
        lab.exec("spoke1", "rm -f /etc/frr/lab-private-test /run/lab-private-test")
    pids = {node: lab.check(node, "cat /run/charon.pid").strip() for node in ("hub", "spoke1", "spoke2")}
    assert len(set(pids.values())) == 3, pids


def test_daemons_log_to_the_node_own_syslog(lab):
    hub_log = lab.check("hub", "cat /var/log/syslog")
    assert "charon" in hub_log and "watchfrr" in hub_log
    spoke_log = lab.check("spoke1", "cat /var/log/syslog")
    assert "spoke1" in lab.check("spoke1", "hostname")
    # each node's syslog holds only its own daemons: the hub's pids are not in spoke1's log
    hub_charon = lab.check("hub", "cat /run/charon.pid").strip()
    assert f"charon[{hub_charon}]" not in spoke_log


def test_secrets_are_generated_private_and_never_printed(lab):
    state = lab.lab.state
    secrets_file = state / "secrets.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in secrets_file.read_text().split())
    site = lab.lab.topology_info["nodes"]["hub"]["site"]
    from appliance.model.loader import load_document

    assert {name for name, _ in env_references(load_document(site).data)} <= set(values)
    mode = lab.check("hub", "stat -c %a /etc/appliance/secrets.env").strip()
    assert mode == "600"
    shown = lab.report.summary() + json.dumps(lab.lab.status()) + lab.lab.logs("hub")
    for value in values.values():
        assert value not in shown


def test_exec_passes_stdin_and_returns_the_exit_code(lab):
    proc = subprocess.run(
        [*APPLIANCE, "lab", "exec", "--name", lab.name, "hub", "--", "sh", "-c", "cat > /tmp/in; cat /tmp/in; exit 3"],
        input="line one\nline two\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "line one\nline two\n"
    status = subprocess.run(
        [*APPLIANCE, "lab", "status", "--name", lab.name, "--json"], capture_output=True, text=True, timeout=60
    )
    info = json.loads(status.stdout)
    assert info["state"] == "ready" and info["accel"] in ("tcg", "kvm")
    assert set(info["nodes"]) >= {"inet", "nat3", "hub", "spoke1", "spoke2", "spoke3", "host1", "host2"}


BROKEN = """\
name: broken
nodes:
  inet: {{kind: internet, interfaces: {{eth1: 192.0.2.1/30}}}}
  hub:
    kind: router
    site: {site}
    setup:
      # charon fails to start in this node only (a private mount namespace): a daemon that dies at once
      - |
        printf '#!/bin/sh\\necho "charon: lab test: refusing to start" >&2\\nexit 7\\n' > /tmp/charon
        chmod +x /tmp/charon && mount --bind /tmp/charon /usr/lib/ipsec/charon
links:
  - endpoints: [inet:eth1, hub:eth0]
"""


def test_a_node_whose_daemon_fails_makes_lab_up_fail_with_its_log(tmp_path, lab_manager):
    lab_manager.down()  # one VM at a time
    topology = tmp_path / "broken.yaml"
    topology.write_text(BROKEN.format(site=REPO / "examples" / "hub.yaml"))
    try:
        proc = subprocess.run(
            [*APPLIANCE, "lab", "up", str(topology), "--wait", "5"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        if Lab("broken").client.running():
            Lab("broken").down(progress=lambda _: None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "hub: apply FAILED" in out
    assert "== hub: appliance apply FAILED" in out
    assert "charon: lab test: refusing to start" in out  # the node's own log, in the report
