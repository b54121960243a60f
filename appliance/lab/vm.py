"""The lab VM's command lines, its requirements, and the choice between KVM and TCG.

No network device reaches the outside (-nodefaults, no -nic): the nodes' links are veth pairs
inside the guest. The host root is shared read-only through virtiofs (memfd-backed guest memory,
which vhost-user needs); the control channel is a virtio-serial port (see guest/agent.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import LabError
from .kernel import VIRTIOFS_TAG, KernelImage

QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
CONTROL_PORT = "appliance.lab"
INSTALL_HINT = "install them with: apt-get install qemu-system-x86 qemu-system-common busybox-static cpio kmod"
KVM_PROBE_TIMEOUT_S = 20


# The CPU a TCG guest gets (lab and image tests). Not "max": with AVX2 offered, glibc and OpenSSL
# pick AVX2 code paths that QEMU 7.2 emulates slowly; Westmere (SSE4.2, AES-NI) measured 25-35%
# faster for Python start-up, imports and hashing in the guest (`python -c "import pydantic,
# pyroute2"` 9.8 s -> 6.9 s).
TCG_CPU = "Westmere"


@dataclass(frozen=True)
class VmConfig:
    accel: str = "tcg"  # "kvm" | "tcg"
    memory_mib: int = 2048
    cpus: int = 2


def missing_requirements() -> list[str]:
    """What the lab needs on the host and cannot find (empty when everything is there)."""
    missing = []
    for tool in (QEMU, "cpio", "depmod", "modprobe", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not os.access(VIRTIOFSD, os.X_OK):
        missing.append(VIRTIOFSD)
    if not Path("/bin/busybox").exists():
        missing.append("/bin/busybox (busybox-static)")
    return missing


def check_requirements() -> None:
    missing = missing_requirements()
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)}; {INSTALL_HINT} (or: make deps)")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces in the VM are built as root, virtiofsd shares /)")


def virtiofsd_argv(socket: Path) -> list[str]:
    return [
        VIRTIOFSD,
        f"--socket-path={socket}",
        "-o", "source=/",
        "-o", "cache=auto",
        "-o", "sandbox=chroot",
        "-o", "no_posix_lock",
        "-o", "log_level=err",
    ]  # fmt: skip


def qemu_argv(
    kernel: KernelImage, config: VmConfig, vfs_socket: Path, control_socket: Path, console: Path
) -> list[str]:
    mem = f"{config.memory_mib}M"
    accel = (
        ["-accel", "kvm", "-cpu", "host"] if config.accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]
    )
    append = " ".join(
        [
            "console=ttyS0",
            "quiet",
            "loglevel=3",
            "panic=-1",
            f"lab.init={kernel.stage2}",
            f"lab.modules={kernel.modules}",
            f"lab.port={CONTROL_PORT}",
            # the command this lab runs as `appliance` in nodes (keepalived's hooks find it on PATH)
            f"lab.appliance={Path(sys.executable).with_name('appliance')}",
        ]
    )
    return [
        QEMU, *accel, "-smp", str(config.cpus), "-m", mem,
        "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem",
        "-chardev", f"socket,id=vfs,path={vfs_socket}",
        "-device", f"vhost-user-fs-pci,chardev=vfs,tag={VIRTIOFS_TAG}",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=ctl,path={control_socket},server=on,wait=off",
        "-device", f"virtserialport,chardev=ctl,name={CONTROL_PORT}",
        "-chardev", f"file,id=con,path={console}",
        "-serial", "chardev:con",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initrd), "-append", append,
        "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
    ]  # fmt: skip


def choose_accel(
    kernel: KernelImage, verdict_file: Path, requested: str = "auto", progress: Callable[[str], None] = print
) -> str:
    """'kvm' only where a KVM guest really boots, else 'tcg' (with a message saying why).

    The verdict is kept for the host's uptime (verdict_file lives under /run). Two probes: one
    `hlt` through the KVM ioctls (kvmprobe.py), then the lab kernel booted to its initramfs under
    KVM; broken nested virtualisation passes the first and fails the second.
    """
    if requested in ("kvm", "tcg"):
        return requested
    if requested != "auto":
        raise LabError(f"unknown accelerator {requested!r} (auto, kvm, tcg)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        verdict = verdict_file.read_text().strip()
    except OSError:
        verdict = _probe_kvm(kernel)
        verdict_file.parent.mkdir(parents=True, exist_ok=True)
        verdict_file.write_text(verdict + "\n")
    if verdict == "ok":
        return "kvm"
    progress(f"KVM does not work here ({verdict}); using TCG emulation (slower)")
    return "tcg"


def _probe_kvm(kernel: KernelImage) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "appliance.lab.kvmprobe"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return "the KVM ioctl probe hung"
    if proc.returncode != 0:
        return proc.stdout.strip() or proc.stderr.strip() or "KVM ioctl probe failed"
    argv = [
        QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-kernel", str(kernel.vmlinuz), "-initrd",
        str(kernel.initrd), "-append", "console=ttyS0 quiet panic=-1 lab.probe", "-display", "none",
        "-nodefaults", "-no-user-config", "-no-reboot", "-serial", "stdio",
    ]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=KVM_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"a KVM guest did not reach userspace within {KVM_PROBE_TIMEOUT_S} s"
    if "probe reached userspace" in proc.stdout:
        return "ok"
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return lines[0].strip() if lines else f"a KVM guest exited with {proc.returncode} before userspace"
