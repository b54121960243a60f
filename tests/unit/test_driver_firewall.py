"""nftables driver: each example's batch in a fresh netns, semantic re-diff, one-field changes, restore, errors."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from netns import in_fresh_netns

from appliance.drivers.base import CHANGE, CREATE, Context, DriverError, Ledger
from appliance.drivers.firewall import (
    FirewallDriver,
    batch_objects,
    canonical_table,
    nftables_session,
)
from appliance.model.schema import Firewall, Vrrp, VrrpGroup
from appliance.model.validate import load_site
from appliance.nft import MISSING_NFTABLES
from appliance.render import render_site
from appliance.render.firewall import NFTABLES_JSON_PATH
from appliance.render.spec import FirewallSpec

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "fw-test-psk-0123456789abcdef", "OSPF_KEY": "md5-fw-key", "BGP_PASSWORD": "bgp-fw-pw"}
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if not p.name.startswith("lab"))


def site_of(example: str = "examples/hub.yaml"):
    return load_site(ROOT / example, env=ENV, frr_version=(8, 4)).site


def every_branch_site():
    """hub.yaml with what the examples leave out: DHCP, masquerade, VRRP, tunnel rules, overlapping sources."""
    site = site_of()
    lan = site.interfaces.lan[0]
    firewall = Firewall.model_validate(
        {
            "masquerade": True,
            "public": {
                "icmp": False,
                "allow": [{"protocol": "udp", "port": 161, "sources": ["198.51.100.0/24", "203.0.113.7/32"]}],
            },
            "tunnel": {
                "default": "drop",
                "rules": [
                    # 10.1/16 lies inside 10/8: the kernel's interval set keeps only 10/8
                    {"action": "accept", "sources": ["10.0.0.0/8", "10.1.0.0/16"], "protocol": "tcp", "port": 443},
                    {"action": "accept", "protocol": "icmp"},
                    {"action": "drop", "destinations": ["10.9.9.9/32"]},
                ],
            },
        }
    )
    groups = [
        {"name": "lan", "interface": lan.name, "vrid": 10, "virtual_addresses": ["10.0.0.254/24"]},
        {
            "name": "lan2",
            "interface": lan.name,
            "vrid": 11,
            "virtual_addresses": ["10.0.0.253/24"],
            "unicast_peers": ["10.0.0.3", "10.0.0.2"],
        },
    ]
    public = site.interfaces.public.model_copy(update={"dhcp": True, "address": None, "gateway": None})
    return site.model_copy(
        update={
            "firewall": firewall,
            "vrrp": Vrrp(groups=[VrrpGroup.model_validate(g) for g in groups]),
            "interfaces": site.interfaces.model_copy(update={"public": public}),
        }
    )


def with_firewall(site, **changes):
    fw = site.firewall.model_copy(update=changes)
    return site.model_copy(update={"firewall": fw})


def driver_in(tmp_path: Path) -> FirewallDriver:
    return FirewallDriver(Context(ledger=Ledger(tmp_path / "state/ledger.json"), services=None, root=tmp_path / "root"))


def canonical_running(drv: FirewallDriver):
    return canonical_table(drv.running_objects("appliance"))


def nft(drv: FirewallDriver, command: str) -> None:
    rc, _, err = drv.nft.cmd(command)
    assert rc == 0, err


# --- against the kernel (each test in its own network namespace) ---------------------------------


CASES = [pytest.param(lambda p=p: site_of(str(p.relative_to(ROOT))), id=p.name) for p in EXAMPLES]
CASES.append(pytest.param(every_branch_site, id="every-branch"))


@pytest.mark.parametrize("make_site", CASES)
@in_fresh_netns
def test_each_site_applies_and_a_second_diff_is_empty(make_site, tmp_path: Path) -> None:
    desired = render_site(make_site())
    drv = driver_in(tmp_path)
    plan = drv.diff(desired)
    assert [(c.action, c.kind, c.name) for c in plan] == [
        (CREATE, "table", "table inet appliance"),
        (CREATE, "file", NFTABLES_JSON_PATH),
    ]
    drv.apply(plan)
    drv.verify(desired)
    assert drv.diff(desired) == []
    written = json.loads((tmp_path / "root" / NFTABLES_JSON_PATH.lstrip("/")).read_text())
    assert written == desired.firewall.batch
    assert canonical_running(drv) == canonical_table(batch_objects(desired.firewall.batch, "inet", "appliance"))


@in_fresh_netns
def test_counter_values_and_handles_are_not_drift(tmp_path: Path) -> None:
    desired = render_site(site_of())
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(desired))
    # The same table, with traffic counted: the named counter and the rules' handles change.
    batch = json.loads(json.dumps(desired.firewall.batch))
    for cmd in batch["nftables"]:
        if "counter" in cmd.get("add", {}):
            cmd["add"]["counter"].update(packets=42, bytes=4242)
    rc, _, err = drv.nft.json_cmd(batch)
    assert rc == 0, err
    counters = [o["counter"] for o in drv.running_objects("appliance") if "counter" in o]
    assert counters[0]["packets"] == 42
    assert drv.diff(desired) == []


@in_fresh_netns
def test_changing_one_allowed_port_is_exactly_that_rule(tmp_path: Path) -> None:
    site = site_of()
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(render_site(site)))
    allow = site.firewall.public.allow[0].model_copy(update={"port": 2222})
    public = site.firewall.public.model_copy(update={"allow": [allow]})
    changed = render_site(with_firewall(site, public=public))
    plan = drv.diff(changed)
    table = [c for c in plan if c.kind == "table"]
    assert len(table) == 1 and table[0].action == CHANGE
    assert table[0].detail.splitlines() == ["+ rule input public-allow-tcp-2222", "- rule input public-allow-tcp-22"]
    assert table[0].description == (
        "replace table inet appliance (+ rule input public-allow-tcp-2222, - rule input public-allow-tcp-22)"
    )
    assert [c.kind for c in plan] == ["table", "file"]  # the boot-time file follows
    drv.apply(plan)
    assert drv.diff(changed) == []


@in_fresh_netns
def test_changing_the_icmp_rate_changes_the_two_limited_rules(tmp_path: Path) -> None:
    site = site_of()
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(render_site(site)))
    public = site.firewall.public.model_copy(update={"icmp_rate": "20/second"})
    (table,) = [c for c in drv.diff(render_site(with_firewall(site, public=public))) if c.kind == "table"]
    assert table.detail.splitlines() == ["~ rule input public-icmp-echo", "~ rule input public-icmp-errors"]


@in_fresh_netns
def test_a_rule_added_by_hand_is_drift_and_apply_removes_it(tmp_path: Path) -> None:
    desired = render_site(site_of())
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(desired))
    nft(drv, "add rule inet appliance input tcp dport 9999 accept")
    (table,) = drv.diff(desired)
    assert table.detail == "~ rules of chain input"  # a rule without a comment cannot be named
    drv.apply([table])
    assert drv.diff(desired) == []


@in_fresh_netns
def test_restore_brings_back_the_previous_table_and_file(tmp_path: Path) -> None:
    hub, spoke = render_site(site_of("examples/hub.yaml")), render_site(site_of("examples/spoke1.yaml"))
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(hub))
    before = canonical_running(drv)
    file = tmp_path / "root" / NFTABLES_JSON_PATH.lstrip("/")
    file_before = file.read_text()

    snap = drv.snapshot(spoke)
    json.dumps(snap)  # the engine records it
    drv.apply(drv.diff(spoke))
    assert canonical_running(drv) != before
    drv.restore(snap)
    assert canonical_running(drv) == before
    assert file.read_text() == file_before
    assert [c.kind for c in drv.diff(hub)] == []


@in_fresh_netns
def test_restore_of_a_first_apply_deletes_the_table_and_the_file(tmp_path: Path) -> None:
    desired = render_site(site_of())
    drv = driver_in(tmp_path)
    nft(drv, "add table inet other")  # not ours: stays
    snap = drv.snapshot(desired)
    assert snap["objects"] is None
    drv.apply(drv.diff(desired))
    drv.restore(snap)
    assert drv.running_objects("appliance") is None
    assert drv.running_objects("other") is not None
    assert not (tmp_path / "root" / NFTABLES_JSON_PATH.lstrip("/")).exists()


@in_fresh_netns
def test_a_broken_batch_says_what_nft_said_and_keeps_the_running_table(tmp_path: Path) -> None:
    good = render_site(site_of())
    drv = driver_in(tmp_path)
    drv.apply(drv.diff(good))
    before = canonical_running(drv)
    batch = json.loads(json.dumps(good.firewall.batch))
    batch["nftables"].append(
        {
            "add": {
                "rule": {
                    "family": "inet",
                    "table": "appliance",
                    "chain": "input",
                    "expr": [{"jump": {"target": "nope"}}],
                }
            }
        }
    )
    broken = dataclasses.replace(good, firewall=FirewallSpec(table="appliance", batch=batch))
    plan = drv.diff(broken)
    with pytest.raises(DriverError) as e:
        drv.apply(plan)
    assert str(e.value) == (
        "firewall: nft refused the ruleset for table inet appliance: "
        "internal:0:0-0: Error: Could not process rule: No such file or directory"
    )
    assert canonical_running(drv) == before  # one transaction: nothing of the broken batch is in
    assert not any(c.kind == "file" for c in drv.diff(good))  # the boot-time file was not written


# --- pure ----------------------------------------------------------------------------------------


def test_canonical_form_ignores_what_nft_adds_when_it_prints() -> None:
    sent = [
        {"counter": {"family": "inet", "table": "t", "name": "c"}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "comment": "x", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": 112}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"set": ["10.0.0.3", {"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.1"]}}},
            {"limit": {"rate": 10, "per": "second"}},
            {"counter": None},
            {"accept": None},
        ]}},
    ]  # fmt: skip
    printed = [
        {"counter": {"family": "inet", "table": "t", "name": "c", "handle": 3, "packets": 9, "bytes": 900}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 7, "comment": "x", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": "vrrp"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"set": ["192.0.2.1", {"prefix": {"addr": "10.0.0.0", "len": 8}}]}}},
            {"limit": {"rate": 10, "burst": 5, "per": "second"}},
            {"counter": {"packets": 1, "bytes": 84}},
            {"accept": None},
        ]}},
    ]  # fmt: skip
    assert canonical_table(sent) == canonical_table(printed)
    different_rate = json.loads(json.dumps(printed).replace('"rate": 10', '"rate": 11'))
    assert canonical_table(sent) != canonical_table(different_rate)


def test_batch_objects_are_what_remains_after_the_last_delete() -> None:
    t = {"family": "inet", "name": "appliance"}
    batch = {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"add": {"chain": {"family": "inet", "table": "appliance", "name": "gone"}}},
            {"add": {"table": t}},
            {"delete": {"table": t}},
            {"add": {"table": t}},
            {"add": {"chain": {"family": "inet", "table": "appliance", "name": "input"}}},
        ]
    }
    assert batch_objects(batch, "inet", "appliance") == [
        {"chain": {"family": "inet", "table": "appliance", "name": "input"}}
    ]


def test_missing_python_nftables_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nftables", None)  # import nftables -> ImportError
    with pytest.raises(DriverError) as e:
        nftables_session()
    assert str(e.value) == f"firewall: {MISSING_NFTABLES}"
    assert "\n" not in str(e.value)


def test_the_driver_claims_the_boot_time_file() -> None:
    desired = render_site(site_of())
    assert FirewallDriver(Context(ledger=None, services=None)).claims(desired) == {NFTABLES_JSON_PATH}
    assert NFTABLES_JSON_PATH in {f.path for f in desired.files}
