"""The engine: order, all-or-nothing with restore in reverse, generations, lock, journal, plan output."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from fakes import ENV, ROOT, FakeDriver, desired_of

from appliance import engine
from appliance.desired_json import from_data, to_data
from appliance.drivers.base import CHANGE, Change, DriverError, Ledger
from appliance.generations import StateDir, StateError
from appliance.model.validate import load_site
from appliance.redact import Redactor
from appliance.render import render_site

EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if not p.name.startswith("lab"))


def all_files_claimed(desired) -> set[str]:
    return {f.path for f in desired.files}


def make(calls, names=("system", "netlink", "firewall", "ipsec", "frr"), failing=None, desired=None):
    drivers = [FakeDriver(n, calls, fail_apply=(n == failing)) for n in names]
    drivers[0]._claims = all_files_claimed(desired)
    return drivers


def run(drivers, desired, tmp_path, **kw):
    state = StateDir(tmp_path / "state")
    ledger = Ledger(tmp_path / "state" / "ledger.json")
    with state.locked("apply"):
        return engine.run_apply(drivers, desired, state, ledger, site_text="site: 1\n", meta={"what": "apply"}, **kw)


def test_apply_runs_each_driver_in_order_diff_snapshot_apply_verify(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    result = run(drivers, desired, tmp_path)
    assert result.generation == 1
    expected = []
    for name in ("system", "netlink", "firewall", "ipsec", "frr"):
        expected += [("diff", name), ("snapshot", name), ("apply", name), ("verify", name)]
    assert calls == expected
    assert [c.description for c in result.plan.all()] == [
        f"set {n} to new" for n in ("system", "netlink", "firewall", "ipsec", "frr")
    ]


def test_failure_restores_every_touched_driver_in_reverse_and_records_nothing(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, failing="ipsec", desired=desired)
    with pytest.raises(engine.ApplyError) as exc:
        run(drivers, desired, tmp_path)
    assert str(exc.value) == (
        "apply failed at ipsec: ipsec: daemon refused: charon: unable to load connection; "
        "the previous configuration was restored"
    )
    restores = [name for kind, name in calls if kind == "restore"]
    assert restores == ["ipsec", "firewall", "netlink", "system"]
    assert ("diff", "frr") not in calls  # nothing after the failing step ran
    assert all(d.running == "old" for d in drivers)
    state = StateDir(tmp_path / "state")
    assert state.generations() == []
    assert state.read_journal() is None


def test_a_restore_that_fails_is_reported_and_the_others_still_run(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, failing="frr", desired=desired)

    def broken_restore(snapshot):
        calls.append(("restore", "netlink"))
        raise DriverError("netlink", "cannot delete dmvpn0", "Operation not permitted")

    drivers[1].restore = broken_restore
    with pytest.raises(engine.ApplyError) as exc:
        run(drivers, desired, tmp_path)
    assert exc.value.restore_errors == ["netlink: netlink: cannot delete dmvpn0: Operation not permitted"]
    assert "RESTORE INCOMPLETE" in str(exc.value)
    assert [n for k, n in calls if k == "restore"] == ["frr", "ipsec", "firewall", "netlink", "system"]


def test_second_apply_changes_nothing_and_records_no_generation(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    assert run(drivers, desired, tmp_path).generation == 1
    calls.clear()
    result = run(drivers, desired, tmp_path)
    assert result.plan.empty and result.generation is None
    assert {kind for kind, _ in calls} == {"diff"}
    assert [g.number for g in StateDir(tmp_path / "state").generations()] == [1]


def preflight_recording(calls, verdict: str | None = None):
    def preflight() -> None:
        calls.append(("preflight", ""))
        if verdict is not None:
            raise engine.PreflightFailed(verdict)

    return preflight


def test_preflight_runs_once_right_before_the_first_change(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    drivers[0].running = "new"  # system has nothing to change: netlink makes the first change
    run(drivers, desired, tmp_path, preflight=preflight_recording(calls))
    assert calls[:3] == [("diff", "system"), ("diff", "netlink"), ("preflight", "")]
    assert calls.count(("preflight", "")) == 1


def test_a_no_op_apply_runs_no_preflight(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    run(drivers, desired, tmp_path)
    calls.clear()
    result = run(drivers, desired, tmp_path, preflight=preflight_recording(calls, "preflight: no frr"))
    assert result.plan.empty and ("preflight", "") not in calls


def test_a_failed_preflight_changes_nothing_and_is_not_an_apply_error(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    with pytest.raises(engine.PreflightFailed, match="no frr"):
        run(drivers, desired, tmp_path, preflight=preflight_recording(calls, "preflight: no frr"))
    assert calls == [("diff", "system"), ("preflight", "")]
    assert all(d.running == "old" for d in drivers)
    state = StateDir(tmp_path / "state")
    assert state.generations() == [] and state.read_journal() is None


def test_a_diff_failing_before_any_change_asks_the_preflight_for_the_reason(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    for d in drivers:
        d.running = "new"

    def no_vtysh(desired):
        raise DriverError("frr", "vtysh not found")

    drivers[-1].diff = no_vtysh
    with pytest.raises(engine.PreflightFailed, match="frr-pythontools"):
        run(
            drivers,
            desired,
            tmp_path,
            preflight=preflight_recording(calls, "preflight: apt-get install frr-pythontools"),
        )
    # and when the box passes, the diff's own error stands
    calls.clear()
    with pytest.raises(engine.ApplyError, match="vtysh not found"):
        run(drivers, desired, tmp_path, preflight=preflight_recording(calls))
    assert ("preflight", "") in calls


def test_error_messages_never_carry_a_secret(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, failing="frr", desired=desired)

    def leaky_apply(changes):
        raise DriverError("frr", "vtysh rejected a line", f"ip ospf message-digest-key 1 md5 {ENV['OSPF_KEY']}")

    drivers[-1].apply = leaky_apply
    logged: list[str] = []
    with pytest.raises(engine.ApplyError) as exc:
        run(drivers, desired, tmp_path, log=logged.append)
    assert ENV["OSPF_KEY"] not in str(exc.value)
    assert "<redacted>" in str(exc.value)
    assert not any(ENV["OSPF_KEY"] in line for line in logged)


def test_every_rendered_file_needs_exactly_one_owner(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    drivers = make(calls, desired=desired)
    drivers[1]._claims = {"/etc/frr/frr.conf"}
    with pytest.raises(DriverError, match="/etc/frr/frr.conf: written by system, netlink"):
        run(drivers, desired, tmp_path)
    drivers[0]._claims = set()
    drivers[1]._claims = set()
    with pytest.raises(DriverError, match="/etc/frr/frr.conf: no driver writes it"):
        run(drivers, desired, tmp_path)


def test_generation_keeps_site_desired_state_and_ledger_private(tmp_path: Path) -> None:
    desired, calls = desired_of(), []
    run(make(calls, desired=desired), desired, tmp_path)
    gen = StateDir(tmp_path / "state").current()
    assert gen.desired() == desired
    assert (gen.path / "site.yaml").read_text() == "site: 1\n"
    for p in [tmp_path / "state", gen.path, *gen.path.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_desired_state_survives_json(example: Path) -> None:
    desired = render_site(load_site(example, env=ENV, frr_version=(8, 4)).site)
    assert from_data(json.loads(json.dumps(to_data(desired)))) == desired


def test_lock_refuses_a_second_apply(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    with state.locked("apply"):
        with pytest.raises(StateError, match=rf"another apply is running \(pid {os.getpid()} apply\)"):
            with StateDir(tmp_path / "state").locked("apply"):
                pass


def test_an_apply_waits_for_the_supervisors_repair_to_finish(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a repair holding the lock for a second
        os.close(r)
        with state.locked("repair"):
            os.write(w, b"x")
            time.sleep(1.0)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    started = time.monotonic()
    with StateDir(tmp_path / "state").locked("apply"):
        waited = time.monotonic() - started
    os.waitpid(pid, 0)
    assert 0.3 < waited < 30


def test_an_apply_killed_with_sigkill_leaves_a_lock_the_next_one_takes_over(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take the lock, start an apply, then hang until killed
        os.close(r)
        with state.locked("apply"):
            state.write_journal({"what": "apply", "pid": os.getpid(), "started": "12:00:00", "step": "ipsec"})
            os.write(w, b"x")
            time.sleep(60)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with state.locked("apply") as note:
        assert note == (
            f"the previous apply (pid {pid}, started 12:00:00) was interrupted during ipsec; "
            "converging to the requested state"
        )


def test_plan_output_redacts_secrets_and_counts_changes() -> None:
    secret = "s3cret-value-0123456789"
    plan = engine.Plan(
        {
            "frr": [Change("frr", CHANGE, "config", "frr.conf", "reload frr.conf", f"+ md5 {secret}")],
            "vrrp": [],
            "netlink": [
                Change("netlink", "create", "link", "dmvpn0", "create tunnel dmvpn0", disruptive=True),
            ],
        }
    )
    redactor = Redactor([secret])
    text = plan.render(redactor, details=True)
    assert secret not in text
    assert text.splitlines() == [
        "frr:",
        "  ~ reload frr.conf",
        "      + md5 <redacted>",
        "netlink:",
        "  + create tunnel dmvpn0  (disruptive)",
        "2 changes",
    ]
    data = plan.to_json(redactor)
    assert data["changes"] == 2 and "vrrp" not in data["subsystems"]
    assert secret not in json.dumps(data)
    assert engine.Plan({"frr": []}).render(redactor) == "no changes"
