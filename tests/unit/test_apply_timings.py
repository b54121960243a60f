"""`appliance apply --timings`: one 'subsystem seconds' line per driver on stderr, in apply order."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeDriver, desired_of

from appliance import engine, engine_cli
from appliance.cli import build_parser
from appliance.drivers.base import Ledger
from appliance.generations import StateDir


def test_apply_accepts_timings() -> None:
    args = build_parser().parse_args(["apply", "--timings", "site.yaml"])
    assert args.timings is True
    assert build_parser().parse_args(["apply", "site.yaml"]).timings is False


def test_timings_print_each_subsystem_in_apply_order_on_stderr(tmp_path: Path, capsys) -> None:
    desired, calls = desired_of(), []
    drivers = [FakeDriver(name, calls) for name in ("system", "netlink", "firewall")]
    drivers[0]._claims = {f.path for f in desired.files}
    state = StateDir(tmp_path / "state")
    with state.locked("apply"):
        result = engine.run_apply(
            drivers, desired, state, Ledger(tmp_path / "ledger.json"), site_text=None, meta={"what": "apply"}
        )
    engine_cli.print_timings(result)
    out = capsys.readouterr()
    assert out.out == ""
    lines = [line.split(" ") for line in out.err.splitlines()]
    assert [name for name, _ in lines] == ["system", "netlink", "firewall"]
    assert all(float(seconds) >= 0 for _, seconds in lines)
