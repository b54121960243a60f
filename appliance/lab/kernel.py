"""The lab VM's kernel and initramfs, prepared by the project itself from Debian's cloud kernel.

The host kernel may lack GRE, ESP, dummy and VRF; Debian's cloud kernel has them all as modules.
It is fetched once with `apt-get download`, unpacked, `depmod`ed (the unpacked package has no
modules.dep), and given a busybox-static initramfs that loads just enough to mount the host root
over virtiofs under an overlay and hand over to the stage-2 init (guest/init.sh).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import LabError

CACHE_DIR = Path(os.environ.get("APPLIANCE_LAB_CACHE", "/var/cache/appliance-lab"))
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
# What the initramfs needs to reach the root filesystem; modprobe --show-depends orders them.
INITRAMFS_MODULES = ("virtio_pci", "virtiofs", "overlay", "virtio_console")  # console: the control port
VIRTIOFS_TAG = "hostroot"
GUEST_DIR = Path(__file__).resolve().parent / "guest"

# The initramfs /init: busybox sh. Mounts the host root read-only (virtiofs) as the lower layer of
# an overlay whose upper layer is tmpfs, so nothing the VM writes reaches the host.
INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "lab: initramfs at $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
if grep -q lab.probe /proc/cmdline; then
  echo "lab: probe reached userspace" > /dev/console; echo o > /proc/sysrq-trigger; sleep 5
fi
while read -r mod; do
  insmod "/lib/mod/$mod" || echo "lab: insmod $mod failed" > /dev/console
done < /lib/mod/order
STAGE2=; MODULES=
for a in $(cat /proc/cmdline); do
  case $a in lab.init=*) STAGE2=${a#lab.init=};; lab.modules=*) MODULES=${a#lab.modules=};; esac
done
fail() { echo "lab: $*" > /dev/console; echo o > /proc/sysrq-trigger; sleep 5; }
mount -t virtiofs -o ro @TAG@ /lower || fail "cannot mount the host root (virtiofs tag @TAG@)"
mount -t tmpfs -o size=75%,mode=755 rw /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay mount failed"
mkdir -p /newroot/host
mount --move /lower /newroot/host
mkdir -p /newroot/lib/modules
mount --bind "/newroot/host$MODULES" /newroot/lib/modules || fail "no kernel modules at $MODULES"
umount /proc /sys /dev
exec switch_root /newroot "$STAGE2"
"""


class KernelError(LabError):
    """The lab kernel could not be fetched or prepared; the message names the failing step."""


@dataclass(frozen=True)
class KernelImage:
    version: str
    vmlinuz: Path
    initrd: Path
    modules: Path  # the directory to bind over /lib/modules in the VM

    @property
    def stage2(self) -> Path:
        return GUEST_DIR / "init.sh"


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise KernelError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelError(f"{' '.join(argv)} failed: {msg[-1] if msg else f'exit {proc.returncode}'}")
    return proc.stdout


def cloud_kernel_package() -> str:
    """linux-image-<version>-cloud-amd64 that the cloud meta package currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        name = line.split(":", 1)[-1].strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-") and name != KERNEL_META_PACKAGE:
            return name
    raise KernelError(f"apt-cache knows no kernel behind {KERNEL_META_PACKAGE} (run apt-get update)")


def cached_kernels(cache: Path = CACHE_DIR) -> list[Path]:
    return sorted(p for p in (cache / "kernel").glob("*") if (p / ".prepared").exists())


def prepare_kernel(cache: Path = CACHE_DIR, progress: Callable[[str], None] = print) -> KernelImage:
    """The newest prepared kernel in the cache, fetching and preparing one first if there is none."""
    ready = cached_kernels(cache)
    if ready:
        root = ready[-1]
    else:
        package = cloud_kernel_package()
        root = cache / "kernel" / package.removeprefix("linux-image-")
        progress(f"fetching {package} (once; cached in {cache})")
        _unpack_kernel(package, root)
    version = root.name
    initrd = _build_initramfs(root, version, cache)
    return KernelImage(version, root / "boot" / f"vmlinuz-{version}", initrd, root / "lib" / "modules")


def _unpack_kernel(package: str, root: Path) -> None:
    version = package.removeprefix("linux-image-")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", package], cwd=work)
        deb = next(work.glob("*.deb"), None)
        if deb is None:
            raise KernelError(f"apt-get download {package} left no .deb")
        unpacked = work / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        _run(["depmod", "-b", str(unpacked), version])
        (unpacked / ".prepared").write_text(package + "\n")
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)


def _module_files(root: Path, version: str) -> list[Path]:
    out = _run(["modprobe", "-a", "--show-depends", "-d", str(root), "-S", version, *INITRAMFS_MODULES])
    files: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod" and Path(parts[1]) not in files:
            files.append(Path(parts[1]))
    if not files:
        raise KernelError(f"no modules found for {', '.join(INITRAMFS_MODULES)} in {root}")
    return files


def _build_initramfs(root: Path, version: str, cache: Path) -> Path:
    """Build (or reuse) the initramfs; its name carries a hash of what went into it."""
    if not BUSYBOX.exists():
        raise KernelError(f"{BUSYBOX} missing (apt-get install busybox-static)")
    modules = _module_files(root, version)
    init = INIT_SCRIPT.replace("@TAG@", VIRTIOFS_TAG)
    digest = hashlib.sha256(init.encode() + "".join(map(str, modules)).encode() + BUSYBOX.read_bytes()).hexdigest()
    initrd = cache / "initrd" / f"initrd-{version}-{digest[:12]}.gz"
    if initrd.exists():
        return initrd
    initrd.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "lib/mod", "lower", "rw", "newroot"):
            (tree / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        order = []
        for ko in modules:
            # xz/zst-compressed modules would need a decompressing insmod; Debian 12's are plain .ko
            shutil.copy2(ko, tree / "lib" / "mod" / ko.name)
            order.append(ko.name)
        (tree / "lib" / "mod" / "order").write_text("\n".join(order) + "\n")
        (tree / "init").write_text(init)
        (tree / "init").chmod(0o755)
        names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=names, capture_output=True, check=True
        ).stdout
    partial = initrd.with_suffix(".part")
    with gzip.open(partial, "wb", compresslevel=1) as f:
        f.write(archive)
    partial.rename(initrd)
    for old in initrd.parent.glob(f"initrd-{version}-*.gz"):
        if old != initrd:
            old.unlink()
    return initrd
