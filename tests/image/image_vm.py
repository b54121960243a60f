"""Builds (cached) and boots the appliance image in QEMU with TCG, for tests/image and bench/image_boot.py.

The VM has three NICs on isolated QEMU user networks (restrict=on: nothing leaves the host):
eth0 the site's public interface, eth1 its LAN, eth2 a management interface (DHCP through a
systemd-networkd file on the config drive) with SSH forwarded to a port on 127.0.0.1.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from pathlib import Path

from appliance.lab.vm import TCG_CPU

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "images" / "build.py"
MAKE_CONFIG_DRIVE = REPO / "images" / "make-config-drive.sh"
# Test-only secrets for the examples' {env: NAME} references; they must never show up in logs.
TEST_SECRETS = {"DMVPN_PSK": "image-test-psk-5d1f0c8e9a7b", "OSPF_KEY": "ospf-k3y"}
MGMT_NETWORK = """\
[Match]
Name=eth2

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
# Management only: the site owns the default route (public gateway) and the name.
UseRoutes=false
UseDNS=false
UseHostname=false
"""


def build(stage: str, log: Path) -> Path:
    """Runs images/build.py STAGE (skipped when cached); returns the cache directory."""
    with log.open("ab") as out:
        r = subprocess.run(["/usr/bin/python3", str(BUILD), stage], stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise AssertionError(f"images/build.py {stage} failed (exit {r.returncode}):\n" + "\n".join(tail))
    paths = subprocess.run(["/usr/bin/python3", str(BUILD), "paths"], check=True, capture_output=True, text=True)
    return Path(json.loads(paths.stdout)["cache"])


def make_key(workdir: Path) -> Path:
    """A throwaway SSH key pair; returns the private key (the public one is KEY.pub)."""
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", str(key)], check=True)
    return key


def make_config_drive(workdir: Path, site: Path, key: Path, name: str = "config.img") -> Path:
    """A config drive with the site, the test secrets, the key and the management network file."""
    secrets = workdir / "secrets.env"
    secrets.write_text("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
    mgmt = workdir / "mgmt.network"
    mgmt.write_text(MGMT_NETWORK)
    out = workdir / name
    subprocess.run(
        [str(MAKE_CONFIG_DRIVE), "--network", str(mgmt), str(site), str(secrets), f"{key}.pub", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApplianceVm:
    """One QEMU (TCG) guest: a disk (a qcow2 overlay on the image, or a blank disk), optionally the
    ISO as a CD-ROM, optionally a config drive."""

    def __init__(self, workdir: Path, key: Path, name: str = "vm") -> None:
        self.workdir, self.key, self.name = workdir, key, name
        self.serial_log = workdir / f"{name}.serial.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.drives: list[str] = []
        self.boot_from_cdrom = False
        self.firmware: Path | None = None  # e.g. OVMF for UEFI; default SeaBIOS
        self.memory_mib = 1024
        self.monitor = workdir / f"{name}.monitor"

    def add_overlay(self, base_qcow2: Path) -> Path:
        """Boots from a throwaway overlay: the cached image is never written."""
        disk = self.workdir / f"{self.name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base_qcow2), str(disk)], check=True
        )
        return self.add_disk(disk)

    def add_disk(self, disk: Path, fmt: str = "qcow2") -> Path:
        self.drives += ["-drive", f"file={disk},if=virtio,format={fmt}"]
        return disk

    def add_config_drive(self, image: Path) -> None:
        self.drives += ["-drive", f"file={image},if=virtio,format=raw,readonly=on"]

    def add_cdrom(self, iso: Path) -> None:
        self.drives += ["-drive", f"file={iso},media=cdrom,readonly=on"]
        self.boot_from_cdrom = True

    def start(self) -> None:
        self.serial_log.write_bytes(b"")
        cmd = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", TCG_CPU, "-smp", "2"]
        cmd += ["-m", str(self.memory_mib), "-nodefaults", "-display", "none", "-serial", f"file:{self.serial_log}"]
        cmd += ["-monitor", f"unix:{self.monitor},server=on,wait=off"]
        cmd += self.drives + (["-boot", "d"] if self.boot_from_cdrom else [])
        cmd += ["-bios", str(self.firmware)] if self.firmware else []
        nics = [
            ("pub", "restrict=on,net=192.0.2.0/24"),
            ("lan", "restrict=on,net=10.99.0.0/24"),
            ("mgmt", f"restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"),
        ]
        for slot, (nic, opts) in enumerate(nics):
            cmd += ["-netdev", f"user,id={nic},{opts}", "-device", f"virtio-net-pci,netdev={nic},addr={0x10 + slot:#x}"]
        (self.workdir / f"{self.name}.qemu.cmd").write_text(shlex.join(cmd) + "\n")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started = time.monotonic()

    def serial(self) -> str:
        return self.serial_log.read_text(errors="replace")

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = ["ssh", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        cmd += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        return subprocess.run(cmd + ["root@127.0.0.1", command], capture_output=True, text=True, timeout=timeout)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.ssh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def wait_for_ssh(self, timeout: float) -> float:
        """Seconds from start until root logs in with the key; fails with the console's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise AssertionError(f"QEMU exited ({self.proc.returncode}): {err.strip()}\n{self.console_tail()}")
            try:
                if self.ssh("true", timeout=40).returncode == 0:
                    return time.monotonic() - self.started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(3)
        raise AssertionError(f"no SSH login within {timeout:.0f} s\n{self.console_tail()}")

    def wait_until(self, command: str, expect: str, timeout: float) -> str:
        """Polls a command until its output contains `expect`; returns the last output either way."""
        deadline, out = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                out = self.ssh(command).stdout
            except subprocess.TimeoutExpired:
                out = ""
            if expect in out:
                break
            time.sleep(3)
        return out

    def wait_for_console(self, text: str, timeout: float) -> float:
        """Seconds from start until `text` shows on the serial console; fails with its tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.serial():
                return time.monotonic() - self.started
            time.sleep(2)
        raise AssertionError(f"{text!r} not on the console within {timeout:.0f} s\n{self.console_tail()}")

    def console_tail(self, lines: int = 40) -> str:
        return "console (last lines):\n" + "\n".join(self.serial().splitlines()[-lines:])

    def poweroff(self, timeout: float = 300) -> None:
        """A clean shutdown (the guest must flush its disk), then QEMU exits by itself. If SSH does not
        get through, the ACPI power button (systemd-logind powers off on it)."""
        assert self.proc is not None
        try:
            self.ssh("systemctl poweroff", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            self.monitor_command("system_powerdown")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"guest did not power off within {timeout:.0f} s\n{self.console_tail()}") from None

    def monitor_command(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.sendall(command.encode() + b"\n")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
