"""FRR driver against real FRR 8.4 daemons in a private namespace (frr_instance.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from frr_instance import FrrNamespace, frr_available, run_in_frr_namespace

from appliance.drivers.base import CHANGE, CREATE, Context, DriverError, Ledger
from appliance.drivers.frr import (
    LEFTOVER_AGE_S,
    FrrDriver,
    daemon_configs,
    parse_reload_test,
    private_work_dir,
    strip_show_running,
)
from appliance.model.validate import load_site
from appliance.render import render_site
from appliance.render.frr import DAEMONS_PATH, FRR_CONF_PATH, VTYSH_CONF_PATH
from appliance.render.spec import RenderedFile

ROOT = Path(__file__).resolve().parents[2]
OSPF_KEY = "md5-frr-key"
ENV = {"DMVPN_PSK": "frr-driver-test-psk-0123456789abcdef", "OSPF_KEY": OSPF_KEY, "BGP_PASSWORD": "bgp-frr-pw"}
HUB_INTERFACES = ["eth0", "eth1", "dmvpn0"]


def load(example: str = "examples/hub.yaml"):
    return load_site(ROOT / example, env=ENV, frr_version=(8, 4)).site


def desired(example: str = "examples/hub.yaml", dead_interval: int | None = None):
    site = load(example)
    if dead_interval is not None:
        ospf = site.routing.ospf.model_copy(update={"dead_interval": dead_interval})
        site = site.model_copy(update={"routing": site.routing.model_copy(update={"ospf": ospf})})
    return render_site(site)


def with_frr_conf(state, config: str):
    files = tuple(replace(f, content=config) if f.path == FRR_CONF_PATH else f for f in state.files)
    return replace(state, frr=replace(state.frr, config=config), files=files)


def context(frr: FrrNamespace, tmp: Path) -> Context:
    return Context(ledger=Ledger(tmp / "ledger.json"), services=frr.services)


def summary(changes) -> list[tuple[str, str, str, bool]]:
    return [(c.action, c.kind, c.description, c.disruptive) for c in changes]


needs_frr = pytest.mark.skipif(frr_available() is not None, reason=str(frr_available()))


# --- frr-reload.py --test output ----------------------------------------------------------------


def test_no_output_is_no_change():
    assert parse_reload_test("") == {"delete": [], "add": []}


def test_sections_holding_only_bangs_are_no_change():
    assert parse_reload_test("\nLines To Delete\n===============\n!\n\nLines To Add\n============\n!\n") == {
        "delete": [],
        "add": [],
    }


def test_delta_lines_are_kept_per_direction():
    out = (
        "\nLines To Delete\n===============\ninterface dmvpn0\n no ip ospf dead-interval 8\n"
        "\nLines To Add\n============\ninterface dmvpn0\n ip ospf dead-interval 9\n"
    )
    assert parse_reload_test(out) == {
        "delete": ["interface dmvpn0", " no ip ospf dead-interval 8"],
        "add": ["interface dmvpn0", " ip ospf dead-interval 9"],
    }


def test_unexpected_output_is_an_error_not_silence():
    with pytest.raises(DriverError, match="unexpected"):
        parse_reload_test("Traceback (most recent call last):\n")


def test_show_running_banner_is_stripped():
    text = "Building configuration...\n\nCurrent configuration:\n!\nfrr version 8.4.4\nrouter ospf\nexit\n!\nend\n"
    assert strip_show_running(text) == "!\nfrr version 8.4.4\nrouter ospf\nexit\n!\n"


def test_claims_its_three_files(tmp_path):
    driver = FrrDriver(Context(ledger=Ledger(tmp_path / "l.json"), services=None))
    assert driver.claims(desired()) == {FRR_CONF_PATH, DAEMONS_PATH, VTYSH_CONF_PATH}


# --- files holding the config (and so the OSPF key) ----------------------------------------------


def test_work_dir_is_private_and_what_dead_processes_left_is_removed(tmp_path):
    base = tmp_path / "run/appliance/frr"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getppid(), os.getpid()):  # dead, alive, this pid reused from a dead one
        (base / str(pid)).mkdir(parents=True)
        (base / str(pid) / "reload-ABCDEF.txt").write_text("ip ospf message-digest-key 1 md5 secret\n")
    old = time.time() - LEFTOVER_AGE_S - 60
    legacy = {
        "tmp/frr-candidate-old.conf": True,  # from a version that wrote candidates to /tmp
        "tmp/frr-candidate-new.conf": False,  # may be in use
        "var/run/frr/reload-OLDONE.txt": True,  # frr-reload killed with its default --rundir
        "tmp/unrelated.conf": False,
    }
    for name, is_old in legacy.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("secret\n")
        if is_old or name == "tmp/unrelated.conf":
            os.utime(tmp_path / name, (old, old))

    mine = private_work_dir(tmp_path)

    assert mine == base / str(os.getpid()) and list(mine.iterdir()) == []
    assert (base.stat().st_mode & 0o777, mine.stat().st_mode & 0o777) == (0o700, 0o700)
    assert sorted(d.name for d in base.iterdir()) == sorted([str(os.getppid()), str(os.getpid())])
    assert {name: (tmp_path / name).exists() for name in legacy} == {
        "tmp/frr-candidate-old.conf": False,
        "tmp/frr-candidate-new.conf": True,
        "var/run/frr/reload-OLDONE.txt": False,
        "tmp/unrelated.conf": True,
    }
    (mine / "in-use.conf").write_text("x")
    assert private_work_dir(tmp_path) == mine and (mine / "in-use.conf").exists()  # later calls keep it


class RecordingFrrDriver(FrrDriver):
    """Runs nothing: records each command and the mode and directory of the files it is given."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ran: list[list[str]] = []
        self.files: list[tuple[str, int]] = []

    def _run(self, argv, what):
        self.ran.append(list(argv))
        for arg in argv:
            if arg.startswith("/") and os.path.isfile(arg) and "frr-candidate-" in arg:
                self.files.append((os.path.dirname(arg), os.stat(arg).st_mode & 0o777))
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_candidates_and_frr_reload_files_stay_in_the_private_work_dir(tmp_path):
    driver = RecordingFrrDriver(Context(ledger=Ledger(tmp_path / "l.json"), services=None, root=tmp_path))
    work = str(tmp_path / "run/appliance/frr" / str(os.getpid()))
    driver._check_content("router ospf\n ospf router-id 10.0.0.1\nexit\n")
    driver.reload()
    assert driver.files == [(work, 0o600)]
    reload_argv = driver.ran[-1]
    assert reload_argv[reload_argv.index("--rundir") + 1] == work
    assert reload_argv[reload_argv.index("--log-level") + 1] == "warning"  # at info it logs the lines it sends
    assert os.listdir(work) == []


# --- real FRR ---------------------------------------------------------------------------------


@needs_frr
def test_first_apply_starts_frr_and_a_second_apply_changes_nothing(tmp_path):
    state = desired()

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(context(frr, tmp_path))
        first = driver.diff(state)
        driver.apply(first)
        driver.verify(state)
        pid = frr.services.main_pid("frr")
        second = FrrDriver(context(frr, tmp_path)).diff(state)
        conf = Path(FRR_CONF_PATH)
        return {
            "first": summary(first),
            "second": second,
            "daemons": frr.running_daemons(),
            "mode": oct(conf.stat().st_mode & 0o777),
            "owner": (conf.owner(), conf.group()),
            "running": frr.running_config(),
            "same_pid": pid == frr.services.main_pid("frr"),
        }

    out = run_in_frr_namespace(scenario, hostname=state.hostname, interfaces=HUB_INTERFACES)
    assert out["first"] == [
        (CREATE, "file", f"write {VTYSH_CONF_PATH}", False),
        (CREATE, "file", f"write {DAEMONS_PATH}", False),
        (CREATE, "file", f"write {FRR_CONF_PATH} (checked with vtysh -C)", False),
        (CREATE, "daemon", "start frr", False),
    ]
    assert out["second"] == []
    assert out["daemons"] == {"zebra", "staticd", "nhrpd", "ospfd"}
    assert out["mode"] == "0o640" and out["owner"] == ("frr", "frr")
    assert "ip ospf network point-to-multipoint" in out["running"]
    assert out["same_pid"]


@needs_frr
def test_changed_config_is_reloaded_as_a_minimal_delta_then_restored(tmp_path):
    before, after = desired(), desired(dead_interval=12)

    def scenario(frr: FrrNamespace):
        ctx = context(frr, tmp_path)
        driver = FrrDriver(ctx)
        driver.apply(driver.diff(before))
        watchfrr = frr.services.main_pid("frr")
        running_before = frr.running_config()
        changes = driver.diff(after)
        snap = driver.snapshot(after)
        driver.apply(changes)
        driver.verify(after)
        running_after = frr.running_config()
        no_restart = frr.services.main_pid("frr") == watchfrr
        driver.restore(snap)
        return {
            "changes": summary(changes),
            "detail": changes[-1].detail,
            "running_after": running_after,
            "no_restart": no_restart,
            "restored_running": frr.running_config() == running_before,
            "restored_file": Path(FRR_CONF_PATH).read_text() == before.frr.config,
            "diff_after_restore": FrrDriver(ctx).diff(before),
        }

    out = run_in_frr_namespace(scenario, hostname=before.hostname, interfaces=HUB_INTERFACES)
    assert out["changes"] == [
        (CHANGE, "file", f"write {FRR_CONF_PATH} (checked with vtysh -C)", False),
        (CHANGE, "config", "reload FRR configuration (2 lines to add, 2 to delete)", False),
    ]
    assert out["detail"] == (
        "lines to delete:\n  interface dmvpn0\n   no ip ospf dead-interval 8\n"
        "lines to add:\n  interface dmvpn0\n   ip ospf dead-interval 12"
    )
    assert " ip ospf dead-interval 12" in out["running_after"]
    assert out["no_restart"]
    assert out["restored_running"] and out["restored_file"]
    assert out["diff_after_restore"] == []


@needs_frr
def test_config_vtysh_cannot_parse_is_refused_and_the_running_config_kept(tmp_path):
    good = desired()
    bad = with_frr_conf(good, good.frr.config.replace("router ospf\n", "router ospf\n bogus command here\n"))

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(context(frr, tmp_path))
        driver.apply(driver.diff(good))
        running = frr.running_config()
        try:
            driver.diff(bad)
            diff_error = None
        except DriverError as e:
            diff_error = str(e)
        try:  # apply checks again: a plan may be old
            driver.apply([_write_change(bad)])
            apply_error = None
        except DriverError as e:
            apply_error = str(e)
        return {
            "diff_error": diff_error,
            "apply_error": apply_error,
            "running_kept": frr.running_config() == running,
            "file_kept": Path(FRR_CONF_PATH).read_text() == good.frr.config,
        }

    out = run_in_frr_namespace(scenario, hostname=good.hostname, interfaces=HUB_INTERFACES)
    for error in (out["diff_error"], out["apply_error"]):
        assert error is not None and error.startswith(f"frr: vtysh rejects {FRR_CONF_PATH} (nothing was changed): ")
        assert "Unknown command" in error and "bogus command here" in error
    assert out["running_kept"] and out["file_kept"]


def _write_change(state):
    from appliance.drivers.base import Change

    f = next(f for f in state.files if f.path == FRR_CONF_PATH)
    return Change("frr", CHANGE, "file", f.path, f"write {f.path}", payload=f)


@needs_frr
def test_new_daemon_set_restarts_frr_with_exactly_those_daemons(tmp_path):
    ospf, bgp = desired(), desired("examples/bgp/hub.yaml")

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(context(frr, tmp_path))
        driver.apply(driver.diff(ospf))
        changes = driver.diff(bgp)
        driver.apply(changes)
        driver.verify(bgp)
        return {"changes": summary(changes), "daemons": frr.running_daemons(), "again": driver.diff(bgp)}

    interfaces = sorted({*HUB_INTERFACES, *(lan.name for lan in load("examples/bgp/hub.yaml").interfaces.lan)})
    out = run_in_frr_namespace(scenario, hostname=bgp.hostname, interfaces=interfaces)
    assert (CHANGE, "daemon", "restart frr (daemons: bgpd nhrpd staticd zebra)", True) in out["changes"]
    assert out["daemons"] == {"zebra", "staticd", "nhrpd", "bgpd"}
    assert out["again"] == []


@needs_frr
def test_plan_shows_no_secret_outside_the_detail(tmp_path):
    before, after = desired(), desired(dead_interval=12)

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(context(frr, tmp_path))
        first = driver.diff(before)
        driver.apply(first)
        return [c.description for c in first + driver.diff(after)]

    descriptions = run_in_frr_namespace(scenario, hostname=before.hostname, interfaces=HUB_INTERFACES)
    assert descriptions and all(OSPF_KEY not in d for d in descriptions)


def test_rendered_file_defaults_match_the_renderer():
    # the driver falls back to these when DesiredState.files lacks one; they must be the renderer's
    state = desired()
    driver_files = FrrDriver._files(replace(state, files=()))
    for f in state.files:
        if f.path in driver_files:
            assert driver_files[f.path] == RenderedFile(f.path, f.content, f.mode, f.owner, f.group, f.secret)


def test_files_of_a_rendered_state_are_taken_as_they_are_without_a_template(monkeypatch):
    # a no-op apply diffs the desired state's own files; the daemons template would load jinja2
    state = desired()

    def no_rendering(daemons):
        raise AssertionError("rendered although the desired state has the file")

    monkeypatch.setattr("appliance.drivers.frr.render_daemons_file", no_rendering)
    assert set(FrrDriver._files(state).values()) == {f for f in state.files if f.path in FrrDriver._files(state)}


@needs_frr
def test_a_reload_that_changes_the_ospf_key_leaves_it_in_no_log_and_no_file(tmp_path):
    before = desired()
    after = render_site(
        load_site(ROOT / "examples/hub.yaml", env={**ENV, "OSPF_KEY": "new-md5-key"}, frr_version=(8, 4)).site
    )

    def scenario(frr: FrrNamespace):
        driver = FrrDriver(context(frr, tmp_path))
        driver.apply(driver.diff(before))
        changes = driver.diff(after)
        driver.apply(changes)
        driver.verify(after)
        log = Path("/var/log/frr/frr-reload.log")
        return {
            "changes": [c.kind for c in changes],
            "running_has_new_key": "new-md5-key" in frr.running_config(),
            "log_has_key": log.exists() and "new-md5-key" in log.read_text(),
            "left_in_work_dir": os.listdir(driver.work_dir()),
            "left_in_run_frr": [n for n in os.listdir("/var/run/frr") if n.startswith("reload-")],
        }

    out = run_in_frr_namespace(scenario, hostname=before.hostname, interfaces=HUB_INTERFACES)
    assert out["changes"] == ["file", "config"]
    assert out["running_has_new_key"]
    assert not out["log_has_key"]
    assert out["left_in_work_dir"] == [] and out["left_in_run_frr"] == []


# --- the daemons' vty sockets (the no-op fingerprint) ---------------------------------------------


def serve_vty(path: Path, answers: dict[bytes, bytes]) -> threading.Thread:
    """A daemon's vty socket answering each NUL-terminated command with its output, three NULs and a
    status byte, the output split over several writes as a busy daemon may send it."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            pending = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                pending += data
                while b"\0" in pending:
                    command, pending = pending.split(b"\0", 1)
                    reply = answers.get(command, b"% Unknown command\0\0\0\x02")
                    for i in range(0, len(reply), 7):
                        conn.sendall(reply[i : i + 7])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_daemon_configs_asks_each_vty_socket_and_gives_up_on_one_that_does_not_answer(tmp_path: Path) -> None:
    config = b"frr version 8.4.4\n!\nrouter ospf\n ospf router-id 10.0.0.1\nexit\n!\n"
    for name in ("ospfd", "zebra"):
        serve_vty(tmp_path / f"{name}.vty", {b"enable": b"\0\0\0\0", b"show running-config": config + b"\0\0\0\0"})
    text = daemon_configs(tmp_path)
    assert text == "\0".join(f"{name}\n{config.decode()}" for name in ("ospfd", "zebra"))
    # a daemon that died leaves its socket file: nobody listens, so there is no fingerprint
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "nhrpd.vty"))
    stale.close()
    assert daemon_configs(tmp_path) is None


def test_daemon_configs_is_none_when_a_daemon_refuses_the_command(tmp_path: Path) -> None:
    serve_vty(tmp_path / "bgpd.vty", {b"enable": b"\0\0\0\0"})  # 'show running-config': status 2
    assert daemon_configs(tmp_path) is None
    assert daemon_configs(tmp_path / "absent") is None  # FRR not running at all
