"""FRR driver: a no-op diff runs no FRR tool once an apply verified the same state (it asks each
daemon over its vty socket), and still sees every change (real FRR 8.4 daemons in a private
namespace, frr_instance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from frr_instance import FrrNamespace, frr_available, run_in_frr_namespace

from appliance.drivers.base import Context, Ledger
from appliance.drivers.frr import FRR_RELOAD, RUN_DIR, SHOW_RUNNING, VTYSH, FrrDriver, candidate_file, daemon_configs
from appliance.model.validate import load_site
from appliance.render import render_site
from appliance.render.frr import FRR_CONF_PATH

ROOT = Path(__file__).resolve().parents[2]
ENV = {"DMVPN_PSK": "frr-noop-test-psk-0123456789abcdef", "OSPF_KEY": "md5-noop-key"}
HUB_INTERFACES = ["eth0", "eth1", "dmvpn0"]

pytestmark = pytest.mark.skipif(frr_available() is not None, reason=str(frr_available()))


def desired(hello: int = 2):
    site = load_site(ROOT / "examples/hub.yaml", env=ENV, frr_version=(8, 4)).site
    ospf = site.routing.ospf.model_copy(update={"hello_interval": hello})
    state = render_site(site.model_copy(update={"routing": site.routing.model_copy(update={"ospf": ospf})}))
    return state


class CountingFrrDriver(FrrDriver):
    """The real driver, remembering which tools it ran."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ran: list[list[str]] = []

    def _run(self, argv, what):
        self.ran.append(list(argv))
        return super()._run(argv, what)


def tools(ran: list[list[str]]) -> list[str]:
    return [" ".join(a[:3]) if a[0] == VTYSH else a[0] + " " + a[1] for a in ran]


def test_no_op_diff_after_a_verified_apply_runs_no_frr_tool_and_still_sees_hand_changes(tmp_path):
    state = desired()

    def scenario(frr: FrrNamespace):
        ledger_path = tmp_path / "ledger.json"
        driver = CountingFrrDriver(Context(ledger=Ledger(ledger_path), services=frr.services))
        driver.apply(driver.diff(state))
        driver.verify(state)
        recorded = json.loads(ledger_path.read_text())["frr"]["in_sync"]

        noop = CountingFrrDriver(Context(ledger=Ledger(ledger_path), services=frr.services))
        noop_changes = noop.diff(state)
        ledger_after_diff = ledger_path.read_text()
        daemons = daemon_configs(Path(RUN_DIR))

        frr.vtysh("configure terminal", "interface dmvpn0", "ip ospf hello-interval 5")
        by_hand = CountingFrrDriver(Context(ledger=Ledger(ledger_path), services=frr.services))
        hand_changes = by_hand.diff(state)
        return {
            "recorded": recorded,
            "noop": noop_changes,
            "noop_tools": tools(noop.ran),
            "daemons": [part.split("\n", 1)[0] for part in daemons.split("\0")],
            "ospfd_asked": "ip ospf hello-interval 2" in daemons,
            "diff_is_read_only": ledger_after_diff == ledger_path.read_text(),
            "hand": [(c.kind, c.detail) for c in hand_changes],
            "hand_tools": tools(by_hand.ran),
        }

    out = run_in_frr_namespace(scenario, hostname=state.hostname, interfaces=HUB_INTERFACES)
    assert len(out["recorded"]) == 64
    assert out["noop"] == []
    assert out["noop_tools"] == []  # no vtysh, no vtysh -C, no frr-reload.py
    assert {"zebra", "ospfd", "nhrpd"} <= set(out["daemons"]) and out["ospfd_asked"], out["daemons"]
    assert out["diff_is_read_only"]
    # a change made by hand misses the recorded state: the full check runs and FRR's delta shows it
    assert out["hand"] == [
        (
            "config",
            "lines to delete:\n  interface dmvpn0\n   no ip ospf hello-interval 5\n"
            "lines to add:\n  interface dmvpn0\n   ip ospf hello-interval 2",
        )
    ]
    assert out["hand_tools"] == [f"{VTYSH} -c {SHOW_RUNNING}", f"{VTYSH} -C -f", f"{FRR_RELOAD} --test"]


def test_delta_from_the_running_text_equals_frr_reload_reading_it_itself(tmp_path):
    # the full check hands frr-reload.py the very text it hashed (--input): same answer as without
    before, after = desired(), desired(hello=3)

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(Context(ledger=Ledger(tmp_path / "ledger.json"), services=frr.services))
        driver.apply(driver.diff(before))
        running = driver._show(SHOW_RUNNING)
        out = {}
        for name, config in (("same", before.frr.config), ("changed", after.frr.config)):
            with candidate_file(config) as path, candidate_file(running) as running_path:
                out[name] = (driver.reload_delta(path), driver.reload_delta(path, running_path))
        return out

    out = run_in_frr_namespace(scenario, hostname=before.hostname, interfaces=HUB_INTERFACES)
    assert out["same"] == ({"delete": [], "add": []},) * 2
    itself, given = out["changed"]
    assert (
        itself
        == given
        == {
            "delete": ["interface dmvpn0", " no ip ospf hello-interval 2"],
            "add": ["interface dmvpn0", " ip ospf hello-interval 3"],
        }
    )


def test_an_frr_conf_changed_on_disk_is_still_rewritten(tmp_path):
    state = desired()

    def scenario(frr: FrrNamespace):
        ledger = Ledger(tmp_path / "ledger.json")
        driver = FrrDriver(Context(ledger=ledger, services=frr.services))
        driver.apply(driver.diff(state))
        driver.verify(state)
        Path(FRR_CONF_PATH).write_text(state.frr.config + "! edited by hand\n")
        return [(c.kind, c.name) for c in FrrDriver(Context(ledger=ledger, services=frr.services)).diff(state)]

    assert run_in_frr_namespace(scenario, hostname=state.hostname, interfaces=HUB_INTERFACES) == [
        ("file", FRR_CONF_PATH)
    ]
