"""`appliance apply` on real daemons (issue 4): idempotence, plan, a failed step, commit-confirm,
an apply killed with SIGKILL, preflight, rollback to a generation.

Topology tests/lab/topologies/apply.yaml: inet, the hub and spoke1 examples, and `bare` (nothing
applied). Every test that changes the hub leaves it as examples/hub.yaml had it (`restored`).
The tests run in file order: the first one checks the state `lab up` left.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.lab.client import ExecResult
from appliance.lab.expect import run_and_expect

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "tests" / "lab" / "topologies" / "apply.yaml"
APPLIANCE = f"APPLIANCE_SERVICE_MANAGER=lab {Path(sys.executable).with_name('appliance')}"  # same path in the VM
HOST_ROOT = "/host"  # the host's root as the VM sees it: site files are read there
SITES = {"hub": f"{HOST_ROOT}{REPO}/examples/hub.yaml", "spoke1": f"{HOST_ROOT}{REPO}/examples/spoke1.yaml"}
HUB_TEXT = (REPO / "examples" / "hub.yaml").read_text()
STATE = "/var/lib/appliance"
# Under TCG with other VMs on two cores an apply has been measured at minutes: generous, finite.
APPLY_TIMEOUT_S = 900
FRR_PIDS = ("watchfrr", "zebra", "nhrpd", "ospfd")

ALLOW_22 = "{protocol: tcp, port: 22, sources: [198.51.100.0/24]}"
ALLOW_2222 = "{protocol: tcp, port: 2222, sources: [198.51.100.0/24]}"


@pytest.fixture(scope="module")
def lab(lab_factory):
    return lab_factory(TOPOLOGY)


# --- helpers ---------------------------------------------------------------------------------------


def appliance(lab, node: str, args: str, timeout: float = APPLY_TIMEOUT_S) -> ExecResult:
    return lab.exec(node, f"{APPLIANCE} {args}", timeout=timeout)


def hub_site(lab, name: str, text: str) -> str:
    """A variant of examples/hub.yaml in the hub's private /tmp; its path there."""
    path = f"/tmp/{name}.yaml"
    result = lab.lab.exec("hub", ["sh", "-c", f"cat > {path}"], stdin=text)
    assert result.ok, result.output
    return path


def variant(old: str, new: str) -> str:
    assert HUB_TEXT.count(old) == 1, f"examples/hub.yaml changed: {old!r} is not there once"
    return HUB_TEXT.replace(old, new)


def generations(lab, node: str) -> list[dict[str, Any]]:
    return lab.json(node, f"{APPLIANCE} generations --json")


def ipsec_sas(lab, node: str) -> dict[str, Any]:
    """IKE SA unique ids and CHILD SA SPIs by connection: they change when an SA is rekeyed or redone."""
    sas = lab.json(node, f"{APPLIANCE} show ipsec --json")["sas"]
    return {
        sa["name"]: (sa["uniqueid"], sorted((c["spi_in"], c["spi_out"]) for c in sa["children"]))
        for sa in sas
        if sa["state"] == "ESTABLISHED"
    }


def pids(lab, node: str) -> dict[str, str]:
    files = {"charon": "/run/charon.pid", **{d: f"/run/frr/{d}.pid" for d in FRR_PIDS}}
    out = lab.check(node, " ; ".join(f"echo {name} $(cat {path})" for name, path in files.items()))
    found = dict(line.split(" ", 1) for line in out.splitlines())
    assert all(v.strip().isdigit() for v in found.values()), f"{node}: a daemon has no pid file: {found}"
    return found


def box_state(lab, node: str) -> dict[str, Any]:
    """What an apply must leave alone when it changes nothing, and put back when it fails."""
    link = lab.json(node, "ip -j -d link show dmvpn0")[0]
    return {
        "tunnel": {k: link.get(k) for k in ("ifindex", "mtu", "operstate")} | {"info": link.get("linkinfo")},
        "addresses": lab.check(node, "ip -4 -o addr show dev dmvpn0"),
        "nft": lab.check(node, "nft -s list table inet appliance"),  # -s: no counters
        "frr": lab.check(node, "vtysh -c 'show running-config'"),
        "conns": lab.check(node, "swanctl --list-conns"),
        "generations": [g["number"] for g in generations(lab, node)],
    }


def wait_established(lab, node: str, timeout: float = 240) -> dict[str, Any]:
    """IKE between hub and spoke1 (the first GRE packet of NHRP registration triggers it)."""
    return run_and_expect(
        lambda: ipsec_sas(lab, node), lambda sas: len(sas) >= 1, timeout, what=f"{node}: established IKE SA"
    )


@contextmanager
def restored(lab) -> Iterator[None]:
    """Leave the hub as examples/hub.yaml made it, whatever the test did."""
    try:
        yield
    finally:
        lab.exec("hub", f"{APPLIANCE} confirm; umount /usr/lib/frr/frr-reload.py", timeout=120)
        result = appliance(lab, "hub", f"apply {SITES['hub']}")
        assert result.ok, f"could not put the hub back: {result.output}"


# --- tests -------------------------------------------------------------------------------------------


def test_the_hub_and_spoke_examples_applied_and_recorded_generation_1(lab):
    for node in ("hub", "spoke1"):
        gens = generations(lab, node)
        assert [g["number"] for g in gens] == [1], gens
        assert gens[0]["what"] == "apply" and gens[0]["site"] == SITES[node]
        assert lab.json(node, "ip -j -d link show dmvpn0")[0]["linkinfo"]["info_kind"] == "gre"
        assert "table inet appliance" in lab.check(node, "nft list tables")
    wait_established(lab, "spoke1")


def test_a_second_apply_changes_nothing_restarts_nothing_and_rekeys_nothing(lab):
    for node in ("hub", "spoke1"):
        wait_established(lab, node)
    before = {node: (box_state(lab, node), pids(lab, node), ipsec_sas(lab, node)) for node in ("hub", "spoke1")}
    for node in ("hub", "spoke1"):
        result = appliance(lab, node, f"apply {SITES[node]}")
        assert result.rc == 0, result.output
        assert result.stdout.strip() == "no changes", result.output
    for node in ("hub", "spoke1"):
        state, daemon_pids, sas = before[node]
        assert pids(lab, node) == daemon_pids, f"{node}: a daemon restarted"
        now = ipsec_sas(lab, node)
        for name, (uniqueid, spis) in sas.items():
            assert now.get(name) == (uniqueid, spis), f"{node}: SA {name} was redone or rekeyed: {sas} -> {now}"
        assert box_state(lab, node) == state, f"{node}: a no-op apply changed the box"


def test_plan_shows_exactly_the_one_changed_field_and_detailed_exitcode_says_so(lab):
    site = hub_site(lab, "hello3", variant("hello_interval: 2", "hello_interval: 3"))
    changed = appliance(lab, "hub", f"plan --json --detailed-exitcode {site}")
    assert changed.rc == 2, changed.output
    plan = json.loads(changed.stdout)
    assert set(plan["subsystems"]) == {"frr"}, plan
    config = [c for c in plan["subsystems"]["frr"] if c["kind"] == "config"]
    files = [c for c in plan["subsystems"]["frr"] if c["kind"] == "file"]
    assert len(config) == 1 and [c["name"] for c in files] == ["/etc/frr/frr.conf"], plan
    # FRR's own delta: the one interface line, out with the old value, in with the new
    assert config[0]["detail"] == (
        "lines to delete:\n  interface dmvpn0\n   no ip ospf hello-interval 2\n"
        "lines to add:\n  interface dmvpn0\n   ip ospf hello-interval 3"
    ), config[0]["detail"]
    assert plan["changes"] == 2, plan  # the file and the reload of that line
    assert "ip ospf hello-interval 3" in files[0]["detail"] and "hello-interval 2" in files[0]["detail"]

    same = appliance(lab, "hub", f"plan --detailed-exitcode {SITES['hub']}")
    assert same.rc == 0 and same.stdout.strip() == "no changes", same.output


def test_a_step_that_fails_names_it_with_the_tool_words_and_restores_the_box(lab):
    site = hub_site(lab, "broken", variant(ALLOW_22, ALLOW_2222).replace("hello_interval: 2", "hello_interval: 3"))
    before = box_state(lab, "hub")
    # frr-reload.py refuses to reload (its --test still works, so the plan is computed as usual):
    # the firewall step has already replaced the table when the frr step fails.
    wrapper = (
        "#!/bin/sh\n"
        'case " $* " in *" --reload "*) echo "frr-reload: lab test: vtysh is not answering" >&2; exit 1;; esac\n'
        'exec python3 /tmp/frr-reload.real "$@"\n'
    )
    lab.lab.exec("hub", ["sh", "-c", "cat > /tmp/frr-reload.fake && chmod +x /tmp/frr-reload.fake"], stdin=wrapper)
    lab.check("hub", "cp /usr/lib/frr/frr-reload.py /tmp/frr-reload.real && "
                     "mount --bind /tmp/frr-reload.fake /usr/lib/frr/frr-reload.py")  # fmt: skip
    with restored(lab):
        result = appliance(lab, "hub", f"apply {site}")
        assert result.rc == 1, result.output
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("appliance apply: apply failed at frr: frr: frr-reload.py --reload failed"), error
        assert "frr-reload: lab test: vtysh is not answering" in error
        assert error.endswith("the previous configuration was restored"), error
        assert "restored firewall" in result.stderr  # the step before it was undone
        assert box_state(lab, "hub") == before
        lab.check("hub", "umount /usr/lib/frr/frr-reload.py")
        same = appliance(lab, "hub", f"plan --detailed-exitcode {SITES['hub']}")
        assert same.rc == 0, f"the box is not back to generation {before['generations'][-1]}: {same.output}"


def test_apply_confirm_rolls_back_by_itself_unless_confirmed(lab):
    site = hub_site(lab, "allow2222", variant(ALLOW_22, ALLOW_2222))
    with restored(lab):
        before = box_state(lab, "hub")
        first = before["generations"][-1]
        result = appliance(lab, "hub", f"apply --confirm 20s {site}")
        assert result.rc == 0, result.output
        assert f"rolls back to generation {first}" in result.stdout, result.output
        assert "dport 2222" in lab.check("hub", "nft -s list table inet appliance")
        gens = run_and_expect(
            lambda: generations(lab, "hub"),
            lambda g: g[-1].get("reason") == "not confirmed",
            APPLY_TIMEOUT_S,
            what="hub: the unconfirmed apply rolled back",
        )
        assert gens[-1]["what"] == "rollback" and gens[-1]["rollback_of"] == first, gens[-1]
        after = box_state(lab, "hub")
        assert after["nft"] == before["nft"] and "dport 2222" not in after["nft"]
        assert after["frr"] == before["frr"] and after["conns"] == before["conns"]

        result = appliance(lab, "hub", f"apply --confirm 20s {site}")
        assert result.rc == 0, result.output
        confirmed = appliance(lab, "hub", "confirm", timeout=120)
        assert confirmed.rc == 0 and "confirmed generation" in confirmed.stdout, confirmed.output
        numbers = [g["number"] for g in generations(lab, "hub")]
        time.sleep(45)  # past the window (20 s) and the time a rollback would take to start
        assert [g["number"] for g in generations(lab, "hub")] == numbers
        assert "dport 2222" in lab.check("hub", "nft -s list table inet appliance")
        assert lab.exec("hub", f"test -e {STATE}/pending-confirm.json").rc == 1


def test_an_apply_killed_in_the_middle_of_frr_is_taken_over_and_rollback_still_works(lab):
    site = hub_site(lab, "hello3", variant("hello_interval: 2", "hello_interval: 3"))
    with restored(lab):
        first = generations(lab, "hub")[-1]["number"]
        # setsid: the apply leads its own process group, so kill -9 takes vtysh/frr-reload with it
        # (as a power cut would). The poll runs in the node, close to the step it waits for: the
        # journal names frr and the new frr.conf is on disk, the running config not yet reloaded.
        killed = lab.check(
            "hub",
            f"setsid env {APPLIANCE} apply {site} > /tmp/killed.out 2>&1 & pid=$!; i=0; "
            f'until grep -q \'"step": "frr"\' {STATE}/journal.json 2>/dev/null '
            "&& grep -q 'hello-interval 3' /etc/frr/frr.conf; do "
            "  i=$((i+1)); [ $i -lt 12000 ] || { echo never reached frr; exit 1; }; sleep 0.05; done; "
            "kill -9 -$pid; wait $pid; echo killed $?; cat /tmp/killed.out",  # dash: no -- for kill
            timeout=APPLY_TIMEOUT_S,
        )
        assert "killed 137" in killed, killed
        assert "applied" not in killed, f"the apply finished before the kill: {killed}"
        assert lab.exec("hub", f"test -e {STATE}/journal.json").rc == 0, "the killed apply left no journal"
        assert [g["number"] for g in generations(lab, "hub")][-1] == first

        again = appliance(lab, "hub", f"apply {site}")
        assert again.rc == 0, again.output
        assert "was interrupted during frr; converging to the requested state" in again.stderr, again.output
        assert "ip ospf hello-interval 3" in lab.check("hub", "vtysh -c 'show running-config'")
        assert appliance(lab, "hub", f"plan --detailed-exitcode {site}").rc == 0
        assert generations(lab, "hub")[-1]["number"] == first + 1

        back = appliance(lab, "hub", "rollback")
        assert back.rc == 0 and f"rolled back to generation {first}" in back.stdout, back.output
        assert "hello-interval 3" not in lab.check("hub", "vtysh -c 'show running-config'")
        assert appliance(lab, "hub", f"plan --detailed-exitcode {SITES['hub']}").rc == 0


def test_preflight_names_the_missing_package_and_changes_nothing(lab):
    site = "/tmp/bare.yaml"
    text = (
        (REPO / "examples" / "spoke1.yaml")
        .read_text()
        .replace("198.51.100.2/30", "198.51.100.10/30")
        .replace("gateway: 198.51.100.1", "gateway: 198.51.100.9")
    )
    assert lab.lab.exec("bare", ["sh", "-c", f"cat > {site}"], stdin=text).ok
    secrets = "DMVPN_PSK=lab-test-psk-0123456789 OSPF_KEY=labkey"  # a throwaway pair for this node only
    # the plugins disappear in this node's own mount namespace only
    lab.check("bare", "mkdir -p /tmp/no-plugins && mount --bind /tmp/no-plugins /usr/lib/ipsec/plugins")
    try:
        for command in ("check", "plan", "apply"):
            result = lab.exec("bare", f"{secrets} {APPLIANCE} {command} {site}", timeout=APPLY_TIMEOUT_S)
            assert result.rc == 3, f"{command}: {result.output}"
            assert "libstrongswan-standard-plugins" in result.stderr, result.output
            assert "nothing was changed" in result.stderr, result.output
        assert lab.exec("bare", f"test -e {STATE}/generations").rc == 1
        assert lab.exec("bare", "ip link show dmvpn0").rc != 0
        assert "appliance" not in lab.check("bare", "nft list tables")
        assert lab.exec("bare", "test -e /run/charon.pid -o -e /run/frr/watchfrr.pid").rc == 1
    finally:
        lab.exec("bare", "umount /usr/lib/ipsec/plugins")
    # the same box with the plugins back passes: it was the package, nothing else
    result = lab.exec("bare", f"{secrets} {APPLIANCE} check {site}", timeout=APPLY_TIMEOUT_S)
    assert result.rc == 0 and "preflight: ok" in result.stdout, result.output


def test_rollback_n_restores_generation_n(lab):
    site = hub_site(lab, "allow2222", variant(ALLOW_22, ALLOW_2222))
    with restored(lab):
        result = appliance(lab, "hub", f"apply {site}")
        assert result.rc == 0, result.output
        with_2222 = generations(lab, "hub")[-1]["number"]
        result = appliance(lab, "hub", f"apply {SITES['hub']}")
        assert result.rc == 0, result.output
        table = lab.check("hub", "nft -s list table inet appliance")
        assert "dport 2222" not in table and "dport 22 " in table

        back = appliance(lab, "hub", f"rollback {with_2222}")
        assert back.rc == 0 and f"rolled back to generation {with_2222}" in back.stdout, back.output
        table = lab.check("hub", "nft -s list table inet appliance")
        assert "dport 2222" in table and "dport 22 " not in table, table
        latest = generations(lab, "hub")[-1]
        assert latest["what"] == "rollback" and latest["rollback_of"] == with_2222, latest
