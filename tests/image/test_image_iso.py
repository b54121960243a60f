"""The live/installer ISO: hybrid (BIOS and UEFI), boots the same system live with a config drive,
installs it to a blank disk with appliance-install, and that disk boots on its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from image_vm import REPO, ApplianceVm, build, make_config_drive

pytestmark = pytest.mark.image

BOOT_TIMEOUT = 900  # the live system is slower than the disk under TCG
APPLY_TIMEOUT = 300


@pytest.fixture(scope="module")
def iso_cache(workdir: Path) -> Path:
    return build("iso", workdir / "build-iso.log")


def test_iso_is_hybrid_bios_and_uefi(iso_cache: Path) -> None:
    report = subprocess.run(
        ["xorriso", "-indev", str(iso_cache / "appliance.iso"), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
    ).stdout
    platforms = [line.split()[6] for line in report.splitlines() if line.startswith("El Torito boot img :")]
    assert platforms == ["BIOS", "UEFI"], report
    mbr = (iso_cache / "appliance.iso").read_bytes()[510:512]
    assert mbr == b"\x55\xaa", "no MBR: the ISO would not boot from a USB stick"


def test_iso_boots_with_uefi(workdir: Path, iso_cache: Path, key: Path) -> None:
    """UEFI firmware (OVMF) finds the ISO's EFI GRUB, which starts the kernel with the live system."""
    vm = ApplianceVm(workdir, key, name="uefi")
    vm.firmware = Path("/usr/share/ovmf/OVMF.fd")
    assert vm.firmware.exists(), "OVMF missing: make image-deps"
    vm.add_cdrom(iso_cache / "appliance.iso")
    vm.start()
    try:
        vm.wait_for_console("Command line: BOOT_IMAGE=/live/vmlinuz boot=live", BOOT_TIMEOUT)
        vm.wait_for_console("EFI v", 5)  # the kernel saw EFI firmware: this was no BIOS boot
    finally:
        vm.stop()


def test_iso_boots_live_and_installs_to_disk(workdir: Path, iso_cache: Path, key: Path) -> None:
    live = ApplianceVm(workdir, key, name="live")
    live.memory_mib = 1536  # the live system keeps its writes in RAM
    target = workdir / "target.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), "4G"], check=True)
    live.add_disk(target)
    live.add_config_drive(make_config_drive(workdir, REPO / "examples/spoke1.yaml", key, name="spoke1.img"))
    live.add_cdrom(iso_cache / "appliance.iso")
    live.start()
    try:
        live.wait_for_ssh(BOOT_TIMEOUT)
        # Install on an idle box (TCG on shared cores): after the boot, the site's apply included.
        live.ssh(f"timeout {APPLY_TIMEOUT} systemctl is-system-running --wait", timeout=APPLY_TIMEOUT + 30)
        root = live.ssh("findmnt -no FSTYPE /").stdout.strip()
        assert root == "overlay", f"the live system runs from squashfs under an overlay, not {root}"
        assert live.ssh("cat /etc/appliance/site.yaml").stdout == (REPO / "examples/spoke1.yaml").read_text()
        install = live.ssh("appliance-install --yes /dev/vda", timeout=900)
        assert install.returncode == 0, install.stdout + install.stderr
        assert "appliance-install: done" in install.stdout
        live.poweroff()
    finally:
        live.stop()

    installed = ApplianceVm(workdir, key, name="installed")
    installed.add_disk(target)  # no ISO, no config drive: everything must come from the disk
    installed.start()
    try:
        installed.wait_for_ssh(BOOT_TIMEOUT)
        installed.ssh(f"timeout {APPLY_TIMEOUT} systemctl is-system-running --wait", timeout=APPLY_TIMEOUT + 30)
        assert installed.ssh("findmnt -no SOURCE,FSTYPE /").stdout.split() == ["/dev/vda1", "ext4"]
        assert installed.ssh("cat /etc/appliance/site.yaml").stdout == (REPO / "examples/spoke1.yaml").read_text()
        assert installed.ssh("stat -c %a /etc/appliance/secrets.env").stdout.strip() == "600"
        assert installed.ssh("test -x /opt/appliance/bin/appliance && readlink /usr/local/bin/appliance").stdout == (
            "/opt/appliance/bin/appliance\n"
        )
        started = installed.unit_property("appliance.service", "ExecMainStartTimestampMonotonic")
        assert started not in ("", "0"), "appliance.service did not run on the installed disk"
    finally:
        installed.stop()
