"""The appliance image, built (cached) and booted in QEMU (TCG) with a config drive carrying
examples/hub.yaml: it must come up on its own, by key only, and apply the site at boot.
(The ISO: test_image_iso.py.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from image_vm import REPO, TEST_SECRETS, ApplianceVm, build, make_config_drive

pytestmark = pytest.mark.image

BOOT_TIMEOUT = 600  # TCG on 2 shared cores; measured boots take about 1-2 minutes
APPLY_TIMEOUT = 300


@pytest.fixture(scope="module")
def image_cache(workdir: Path) -> Path:
    return build("image", workdir / "build.log")


@pytest.fixture(scope="module")
def hub(workdir: Path, image_cache: Path, key: Path):
    vm = ApplianceVm(workdir, key, name="hub")
    vm.add_overlay(image_cache / "appliance.qcow2")
    vm.add_config_drive(make_config_drive(workdir, REPO / "examples/hub.yaml", key))
    vm.start()
    try:
        vm.wait_for_ssh(BOOT_TIMEOUT)
        # Boot is over (appliance.service, a oneshot, succeeded or failed) when this returns.
        vm.ssh(f"timeout {APPLY_TIMEOUT} systemctl is-system-running --wait", timeout=APPLY_TIMEOUT + 30)
        yield vm
    finally:
        vm.stop()


def test_image_build_is_cached(workdir: Path, image_cache: Path) -> None:
    log = workdir / "rebuild.log"
    started = time.monotonic()
    build("image", log)
    assert "appliance.qcow2: up to date" in log.read_text(), log.read_text()
    assert time.monotonic() - started < 30


def test_config_drive_imported_with_root_only_secrets(hub: ApplianceVm) -> None:
    assert hub.unit_property("appliance-config-drive.service", "Result") == "success"
    modes = hub.ssh("stat -c '%n %a %U' /etc/appliance/site.yaml /etc/appliance/secrets.env /root/.ssh/authorized_keys")
    assert modes.stdout.split("\n")[:3] == [
        "/etc/appliance/site.yaml 600 root",
        "/etc/appliance/secrets.env 600 root",
        "/root/.ssh/authorized_keys 600 root",
    ], modes.stdout + modes.stderr
    site = hub.ssh("cat /etc/appliance/site.yaml").stdout
    assert site == (REPO / "examples/hub.yaml").read_text()


def test_no_password_and_ssh_by_key_only(hub: ApplianceVm) -> None:
    shadow = hub.ssh("getent shadow root").stdout.split(":")
    assert shadow[1] == "*", "root must have no password at all (not even an empty one)"
    sshd = hub.ssh("sshd -T").stdout.splitlines()
    assert "passwordauthentication no" in sshd
    assert "permitrootlogin without-password" in sshd  # sshd -T's spelling of prohibit-password
    assert "kbdinteractiveauthentication no" in sshd


def test_box_made_its_own_identity(hub: ApplianceVm, image_cache: Path) -> None:
    """Host keys and machine-id are made on first boot: two copies of the image never share them."""
    fingerprint = hub.ssh("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout
    assert "ED25519" in fingerprint
    machine_id = hub.ssh("cat /etc/machine-id").stdout.strip()
    assert len(machine_id) == 32
    shipped = subprocess.run(
        ["debugfs", "-R", "ls /etc/ssh", f"{image_cache / 'appliance.raw'}?offset=1048576"],
        capture_output=True,
        text=True,
    ).stdout
    assert "sshd_config" in shipped and "ssh_host_" not in shipped, "the image must not ship SSH host keys"


def test_only_charon_systemd_runs(hub: ApplianceVm) -> None:
    assert hub.unit_property("strongswan-starter.service", "LoadState") == "masked"
    assert hub.unit_property("strongswan.service", "ActiveState") == "active"


def test_appliance_service_succeeded(hub: ApplianceVm) -> None:
    result = hub.unit_property("appliance.service", "Result")
    state = hub.unit_property("appliance.service", "ActiveState")
    journal = hub.ssh("journalctl -b -u appliance.service --no-pager -o cat | tail -20").stdout
    assert (state, result) == ("active", "success"), journal


def test_tunnel_interface_exists(hub: ApplianceVm) -> None:
    out = hub.ssh("ip -j -d link show dmvpn0")
    assert out.returncode == 0, out.stderr
    link = json.loads(out.stdout)[0]
    assert link["linkinfo"]["info_kind"] == "gre"
    assert hub.ssh("ip -j addr show dmvpn0").stdout.count("172.16.0.1") == 1


def test_show_dmvpn_json_answers(hub: ApplianceVm) -> None:
    out = hub.ssh("appliance show dmvpn --json", timeout=180)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), (dict, list))


def test_secrets_stay_out_of_journal_and_console(hub: ApplianceVm) -> None:
    journal = hub.ssh("journalctl -b --no-pager -o cat").stdout
    assert "appliance-config-drive: imported /etc/appliance/secrets.env" in journal
    for name, value in TEST_SECRETS.items():
        assert value not in journal, f"{name} in the journal"
        assert value not in hub.serial(), f"{name} on the console"
