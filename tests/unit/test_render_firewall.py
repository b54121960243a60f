"""nftables: the batch that replaces table inet appliance; GRE only out of IPsec; NHRP's NFLOG hooks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from example_sites import EXAMPLES, example_id, example_text, load_example, load_text

from appliance.render.firewall import render_firewall

GRE = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "gre"}}
IPSEC = {"match": {"op": "==", "left": {"meta": {"key": "ipsec"}}, "right": True}}


def batch(tmp_path: Path, name: str, *edits: tuple[str, str]) -> list[dict[str, Any]]:
    return render_firewall(load_text(example_text(name, *edits), tmp_path).site).batch["nftables"]


def rules(commands: list[dict[str, Any]], chain: str | None = None) -> dict[str, dict[str, Any]]:
    """comment -> rule, in order, for one chain (or all)."""
    out = {}
    for cmd in commands:
        rule = cmd.get("add", {}).get("rule")
        if rule and (chain is None or rule["chain"] == chain):
            out[rule["comment"]] = rule
    return out


def iif(name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": name}}


def test_the_table_is_replaced_atomically(tmp_path: Path) -> None:
    commands = batch(tmp_path, "spoke1")
    table = {"family": "inet", "name": "appliance"}
    assert commands[:4] == [
        {"metainfo": {"json_schema_version": 1}},
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
    ]


def test_gre_is_accepted_on_the_public_interface_only_out_of_ipsec(tmp_path: Path) -> None:
    commands = batch(tmp_path, "hub")
    gre_rules = [r for r in rules(commands).values() if GRE in r["expr"]]
    assert [r["comment"] for r in gre_rules] == ["public-gre-ipsec"]
    assert gre_rules[0]["expr"] == [iif("eth0"), GRE, IPSEC, {"accept": None}]


def test_public_input_ends_in_a_counted_drop(tmp_path: Path) -> None:
    public = [r for r in rules(batch(tmp_path, "hub"), "input").values() if iif("eth0") in r["expr"]]
    assert [r["comment"] for r in public] == [
        "public-established",
        "public-invalid",
        "public-ike",
        "public-esp",
        "public-gre-ipsec",
        "public-icmp-echo",
        "public-icmp-errors",
        "public-allow-tcp-22",
        "public-drop",
    ]
    assert public[-1]["expr"][1:] == [{"counter": "public-drop"}, {"drop": None}]


def test_phase3_hub_logs_hairpinned_tunnel_traffic_to_nhrpd(tmp_path: Path) -> None:
    redirect = rules(batch(tmp_path, "hub"), "forward")["nhrp-redirect"]
    assert redirect["expr"][-1] == {"log": {"group": 1, "snaplen": 128}}
    assert {"limit": {"rate": 10, "per": "second"}} in redirect["expr"]
    assert "nhrp-redirect" not in rules(batch(tmp_path, "spoke1"))
    assert "nhrp-redirect" not in rules(batch(tmp_path, "hub", ("    phase: 3\n", "    phase: 2\n")))


def test_link_local_multicast_goes_to_nhrpd_not_to_the_tunnel(tmp_path: Path) -> None:
    output = rules(batch(tmp_path, "spoke1"), "output")
    assert list(output) == ["nhrp-multicast-log", "nhrp-multicast-drop"]
    assert output["nhrp-multicast-log"]["expr"][-1] == {"log": {"group": 2}}
    assert output["nhrp-multicast-drop"]["expr"][-1] == {"drop": None}
    assert rules(batch(tmp_path, "spoke1", ("    phase: 3\n", "    phase: 3\n    multicast: false\n")), "output") == {}


def test_tcp_mss_is_clamped_both_ways_through_the_tunnel(tmp_path: Path) -> None:
    forward = rules(batch(tmp_path, "spoke1"), "forward")
    for comment in ("tcp-mss-out", "tcp-mss-in"):
        assert forward[comment]["expr"][-1] == {
            "mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": 1360}
        }
    assert "tcp-mss-out" not in rules(batch(tmp_path, "spoke1", ("    key: 42\n", "    key: 42\n    tcp_mss: null\n")))


def test_dhcp_and_masquerade_only_when_asked(tmp_path: Path) -> None:
    plain = batch(tmp_path, "spoke1")
    assert "public-dhcp" not in rules(plain) and "masquerade" not in rules(plain)
    edits = (
        ("    address: 198.51.100.2/30\n    gateway: 198.51.100.1\n", "    dhcp: true\n"),
        ("ipsec:\n", "firewall:\n  masquerade: true\nipsec:\n"),
    )
    commands = batch(tmp_path, "spoke1", *edits)
    assert "public-dhcp" in rules(commands, "input")
    assert rules(commands, "postrouting")["masquerade"]["expr"][-1] == {"masquerade": None}


def test_tunnel_policy_rules_then_default(tmp_path: Path) -> None:
    policy = (
        "ipsec:\n",
        "firewall:\n  tunnel:\n    default: drop\n    rules:\n"
        "      - {action: accept, sources: [10.0.0.0/16], protocol: tcp, port: 443}\n"
        "ipsec:\n",
    )
    chain = rules(batch(tmp_path, "spoke1", policy), "tunnel-policy")
    assert list(chain) == ["tunnel-established", "tunnel-rule-0", "tunnel-default"]
    assert chain["tunnel-rule-0"]["expr"] == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                "right": {"prefix": {"addr": "10.0.0.0", "len": 16}},
            }
        },
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}},
        {"accept": None},
    ]
    assert chain["tunnel-default"]["expr"] == [{"drop": None}]


def test_vrrp_only_from_the_lan_peers(tmp_path: Path) -> None:
    vrrp = (
        "ipsec:\n",
        "vrrp:\n  groups:\n    - {name: lan, interface: eth1, vrid: 10, virtual_addresses: [10.0.1.254/24],"
        " unicast_peers: [10.0.1.2]}\nipsec:\n",
    )
    chain = rules(batch(tmp_path, "spoke1", vrrp), "input")
    assert chain["vrrp-lan"]["expr"][2] == {
        "match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.1.2"}
    }
    assert list(chain)[-2:] == ["vrrp-lan", "vrrp-drop-eth1"]


def test_vrrp_from_other_sources_is_dropped_and_counted(tmp_path: Path) -> None:
    vrrp = (
        "ipsec:\n",
        "vrrp:\n  groups:\n    - {name: lan, interface: eth1, vrid: 10, virtual_addresses: [10.0.1.254/24]}\nipsec:\n",
    )
    commands = batch(tmp_path, "spoke1", vrrp)
    drop = rules(commands, "input")["vrrp-drop-eth1"]["expr"]
    assert drop[-2:] == [{"counter": "vrrp-drop"}, {"drop": None}]
    assert {"add": {"counter": {"family": "inet", "table": "appliance", "name": "vrrp-drop"}}} in commands
    # without VRRP groups there is no counter nobody would ever increment
    assert not any("vrrp" in json.dumps(c) for c in batch(tmp_path, "spoke1"))


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_nft_accepts_the_batch(example: Path, tmp_path: Path) -> None:
    """`nft --check` parses and validates the batch in the kernel, in a throw-away network namespace."""
    spec = render_firewall(load_example(example).site)
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(json.dumps(spec.batch))
    r = subprocess.run(
        ["unshare", "--net", "nft", "--check", "--json", "-f", str(batch_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
