#!/usr/bin/python3
"""Builds the appliance image: a bootable disk (raw, qcow2), a live/installer ISO, a Vagrant box.

    images/build.py [--cache DIR] [--kernel cloud|generic] [--force] {base,wheels,image,iso,box,all,paths}

Stages, each cached under a key made of its inputs (a stage is skipped when its key is unchanged):
  base    mmdebstrap of bookworm with images/packages.txt           -> base-KEY.tar
  wheels  the appliance and its PyPI dependencies, built on the host -> wheels-KEY/
  image   base + wheels + images/rootfs + images/scripts + systemd/ -> appliance.raw, appliance.qcow2
  iso     the image's root filesystem as squashfs, live-boot, GRUB  -> appliance.iso (hybrid, BIOS + UEFI)
  box     the qcow2 as a vagrant-libvirt box                        -> appliance.box
Needs root, loop devices and the tools of images/setup-build-host.sh (`make image-deps`).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
SUITE = "bookworm"
KERNELS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
DEFAULT_SOURCES = [
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
]
# Documentation and translations are dead weight on a router; copyright files stay.
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
]
# Fixed timestamps make mmdebstrap, mke2fs and mksquashfs output depend on the inputs only.
SOURCE_DATE_EPOCH = "1700000000"
DISK_SIZE = 2 * 1024**3
PART_OFFSET = 1024**2  # the root partition starts at 1 MiB
ROOT_LABEL = "approot"  # /etc/fstab and the kernel command line find the root by this label
ISO_LABEL = "APPLIANCE_LIVE"  # never "APPLIANCE": that label is the config drive's
# extlinux (syslinux 6.04) and older kernels cannot read these newer ext4 features.
EXT4_FEATURES = "^metadata_csum_seed,^orphan_file"
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"

# command -> Debian package that provides it (images/setup-build-host.sh installs them all)
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "unshare": "util-linux",
    "mount": "mount",
    "extlinux": "extlinux",
    "qemu-img": "qemu-utils",
    "mksquashfs": "squashfs-tools",
    "xorriso": "xorriso",
    "grub-mkrescue": "grub-common",
    "mformat": "mtools",
}
STAGE_TOOLS = {
    "base": ["mmdebstrap"],
    "wheels": [],
    "image": ["mkfs.ext4", "sfdisk", "unshare", "mount", "extlinux", "qemu-img"],
    "iso": ["unshare", "mount", "mksquashfs", "xorriso", "grub-mkrescue", "mformat"],
    "box": [],
}
STAGE_FILES = {  # files (besides the tools) a stage needs on the build host
    "image": ["/usr/lib/syslinux/mbr/mbr.bin"],
    "iso": ["/usr/lib/grub/i386-pc/boot_hybrid.img", "/usr/lib/grub/x86_64-efi/moddep.lst"],
}

_started = time.monotonic()


class BuildError(Exception):
    """One line saying what failed; main() prints it and exits 1."""


def log(message: str) -> None:
    print(f"[image {time.monotonic() - _started:6.1f}s] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(cmd))
    try:
        return subprocess.run(cmd, check=True, **kwargs)
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{cmd[0]} failed with exit status {e.returncode} (command above)") from None


def check_tools(stage: str) -> None:
    """Fail before any work when the build host lacks a tool, naming its package."""
    missing = [f"{t} (package {TOOLS[t]})" for t in STAGE_TOOLS[stage] if shutil.which(t) is None]
    missing += [f"{f} (package {_package_of(f)})" for f in STAGE_FILES.get(stage, []) if not Path(f).exists()]
    if missing:
        raise BuildError(f"missing on the build host: {', '.join(missing)}; run `make image-deps`")
    if os.geteuid() != 0 and stage != "wheels":
        raise BuildError(f"stage {stage} needs root (mmdebstrap --mode=root, loop mounts)")


def _package_of(path: str) -> str:
    return {"mbr.bin": "syslinux-common", "boot_hybrid.img": "grub-pc-bin", "moddep.lst": "grub-efi-amd64-bin"}[
        Path(path).name
    ]


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def tree_digest(root: Path, paths: list[Path]) -> str:
    """Hash of the paths (relative to root) and contents of the given files."""
    h = hashlib.sha256()
    for p in sorted(paths):
        rel = str(p.relative_to(root))
        h.update(f"{rel}\0{p.stat().st_mode & 0o111 != 0}\0".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def files_under(*dirs: Path) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        out += [p for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return out


def source_files() -> list[Path]:
    """The appliance source tree that goes into the image: tracked and new (not ignored) files."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "--", "appliance", "pyproject.toml"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return sorted(REPO / f for f in out if f and (REPO / f).is_file() and not f.endswith(".pyc"))


def unit_files() -> list[Path]:
    return sorted(p for pat in ("*.service", "*.timer") for p in (REPO / "systemd").glob(pat))


def clamp_mtimes(root: Path, epoch: int) -> None:
    """Files written during this build get the fixed build time, as mmdebstrap's files have."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ([""] if dirpath == str(root) else []):
            path = os.path.join(dirpath, name) if name else dirpath
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)


def package_list(kernel: str) -> list[str]:
    lines = (IMAGES / "packages.txt").read_text().splitlines()
    return [KERNELS[kernel]] + [s for line in lines if (s := line.split("#", 1)[0].strip())]


class Build:
    def __init__(self, cache: Path, kernel: str, force: bool) -> None:
        self.cache = cache
        self.kernel = kernel
        self.force = force
        self.sources = [s for s in os.environ.get("APPLIANCE_APT_SOURCES", "").split("|") if s] or DEFAULT_SOURCES

    # --- keys ---------------------------------------------------------------------------------

    def mmdebstrap_cmd(self, out: Path) -> list[str]:
        cmd = [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--arch=amd64",
            "--format=tar",
            "--aptopt=APT::Install-Recommends false",
            "--include=" + ",".join(package_list(self.kernel)),
        ]
        cmd += [f"--dpkgopt={x}" for x in DPKG_EXCLUDES]
        return cmd + [SUITE, str(out)] + self.sources

    def base_key(self) -> str:
        return digest("base-1", json.dumps(self.mmdebstrap_cmd(Path("OUT"))))[:16]

    def wheels_key(self) -> str:
        return digest("wheels-1", tree_digest(REPO, source_files()))[:16]

    def image_key(self) -> str:
        image_files = tree_digest(IMAGES, files_under(IMAGES / "rootfs", IMAGES / "scripts"))
        units = tree_digest(REPO, unit_files() + [Path(__file__).resolve()])
        return digest("image-1", self.base_key(), self.wheels_key(), image_files, units)[:16]

    def iso_key(self) -> str:
        return digest("iso-1", self.image_key())[:16]

    # --- cache --------------------------------------------------------------------------------

    def fresh(self, name: str, key: str) -> bool:
        stamp = self.cache / f"{name}.key"
        ok = not self.force and (self.cache / name).exists() and stamp.exists() and stamp.read_text() == key
        if ok:
            log(f"{name}: up to date (key {key}), skipped")
        return ok

    def stamp(self, name: str, key: str) -> None:
        (self.cache / f"{name}.key").write_text(key)

    # --- stages -------------------------------------------------------------------------------

    def base(self) -> Path:
        key = self.base_key()
        out = self.cache / f"base-{key}.tar"
        if out.exists() and not self.force:
            log(f"base: up to date ({out.name}), skipped")
            return out
        check_tools("base")
        for old in self.cache.glob("base-*.tar"):
            old.unlink()
        log(f"base: mmdebstrap {SUITE} with {len(package_list(self.kernel))} packages ({self.kernel} kernel)")
        tmp = out.with_suffix(".tmp")
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        run(self.mmdebstrap_cmd(tmp), env=env)
        tmp.rename(out)
        return out

    def wheels(self) -> Path:
        key = self.wheels_key()
        out = self.cache / f"wheels-{key}"
        if out.is_dir() and not self.force:
            log(f"wheels: up to date ({out.name}), skipped")
            return out
        check_tools("wheels")
        python = REPO / ".venv/bin/python"
        python = python if python.exists() else Path("/usr/bin/python3")
        version = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if version != "3.11":
            raise BuildError(f"{python} is Python {version}; wheels for {SUITE} need Python 3.11")
        for old in self.cache.glob("wheels-*"):
            shutil.rmtree(old)
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            src = Path(tmp) / "src"
            for f in source_files():
                dest = src / f.relative_to(REPO)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
            # Only the wheel's long description: not part of the key, so README edits do not rebuild.
            shutil.copy2(REPO / "README.md", src / "README.md")
            log(f"wheels: the appliance ({len(source_files())} files) and its dependencies from PyPI")
            tmp_out = Path(tmp) / "wheels"
            run([str(python), "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp_out), str(src)])
            tmp_out.rename(out)
        log("wheels: " + ", ".join(sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in out.iterdir())))
        return out

    def image(self) -> Path:
        key = self.image_key()
        raw, qcow2 = self.cache / "appliance.raw", self.cache / "appliance.qcow2"
        if self.fresh("appliance.qcow2", key) and raw.exists():
            return qcow2
        base, wheels = self.base(), self.wheels()
        check_tools("image")
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            log("image: unpacking the base system")
            run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(base)])
            self._install_appliance(root, wheels, key)
            self._write_boot_files(root)
            manifest = subprocess.run(
                ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (self.cache / "appliance.packages").write_text(manifest)
            shutil.copy2(root / "opt/appliance/pip-freeze.txt", self.cache / "appliance.pip-freeze")
            clamp_mtimes(root, int(SOURCE_DATE_EPOCH))
            tmp_raw = Path(tmp) / "appliance.raw"
            self._make_disk(root, tmp_raw, key)
            tmp_qcow2 = Path(tmp) / "appliance.qcow2"
            log("image: compressed qcow2")
            run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(tmp_raw), str(tmp_qcow2)])
            tmp_raw.rename(raw)
            tmp_qcow2.rename(qcow2)
        self.stamp("appliance.qcow2", key)
        log(f"image: {raw} ({DISK_SIZE // 1024**2} MiB sparse), {qcow2} ({qcow2.stat().st_size // 1024**2} MiB)")
        return qcow2

    def _install_appliance(self, root: Path, wheels: Path, key: str) -> None:
        """The same scripts as the Packer build, run in a chroot instead of a booted cloud image."""
        stage = root / "tmp/appliance-build"
        shutil.copytree(wheels, stage / "wheels")
        shutil.copytree(IMAGES / "scripts", stage / "scripts")
        shutil.copytree(IMAGES / "rootfs", stage / "rootfs")
        (stage / "units").mkdir()
        for u in unit_files():
            shutil.copy2(u, stage / "units" / u.name)
        log("image: installing the appliance (venv, units) and the system settings in a chroot")
        r = shlex.quote(str(root))
        # A private mount namespace: /proc and /dev vanish with it, even if the build is killed.
        script = (
            f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
            f"chroot {r} /bin/sh /tmp/appliance-build/scripts/install-appliance.sh"
            " --wheels /tmp/appliance-build/wheels --units /tmp/appliance-build/units && "
            f"chroot {r} /bin/sh /tmp/appliance-build/scripts/configure-system.sh /tmp/appliance-build/rootfs"
        )
        # A clean environment: the build host's PIP_*, proxies and locale must not leak into the image.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec", script], env=env)
        shutil.rmtree(stage)
        info = {"image_key": key, "base_key": self.base_key(), "wheels_key": self.wheels_key(), "kernel": self.kernel}
        (root / "usr/lib/appliance").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/appliance/build-info.json").write_text(json.dumps(info, indent=1) + "\n")

    def _write_boot_files(self, root: Path) -> None:
        (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n")
        ext = root / "boot/extlinux"
        ext.mkdir(parents=True, exist_ok=True)
        # /vmlinuz and /initrd.img are the symlinks the kernel package keeps current across upgrades.
        (ext / "extlinux.conf").write_text(
            "SERIAL 0 115200\nDEFAULT appliance\nTIMEOUT 10\nPROMPT 0\n"
            "LABEL appliance\n  LINUX /vmlinuz\n  INITRD /initrd.img\n"
            f"  APPEND root=LABEL={ROOT_LABEL} ro {KERNEL_CMDLINE}\n"
        )

    def _make_disk(self, root: Path, raw: Path, key: str) -> None:
        log("image: partitioning, ext4 from the root tree, extlinux")
        with raw.open("wb") as f:
            f.truncate(DISK_SIZE)
        label_id = "0x" + key[:8]
        table = f"label: dos\nlabel-id: {label_id}\nstart={PART_OFFSET // 512}, type=83, bootable\n"
        run(["sfdisk", "--quiet", str(raw)], input=table.encode())
        fs_uuid = str(uuid.UUID(digest("fs-uuid", key)[:32]))
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, E2FSPROGS_FAKE_TIME=SOURCE_DATE_EPOCH)
        size_k = (DISK_SIZE - PART_OFFSET) // 1024
        run(
            ["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", fs_uuid, "-O", EXT4_FEATURES]
            + ["-E", f"offset={PART_OFFSET},hash_seed={fs_uuid}", "-d", str(root), str(raw), f"{size_k}k"],
            env=env,
        )
        mnt = raw.parent / "mnt"
        mnt.mkdir()
        m, img = shlex.quote(str(mnt)), shlex.quote(str(raw))
        run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec"]
            + [f"mount -o loop,offset={PART_OFFSET} {img} {m}; extlinux --install {m}/boot/extlinux; umount {m}"]
        )
        mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()
        with raw.open("r+b") as f:
            f.write(mbr[:440])

    def iso(self) -> Path:
        key = self.iso_key()
        out = self.cache / "appliance.iso"
        self.image()
        if self.fresh("appliance.iso", key):
            return out
        check_tools("iso")
        raw = self.cache / "appliance.raw"
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            iso_root, mnt = Path(tmp) / "iso", Path(tmp) / "mnt"
            (iso_root / "live").mkdir(parents=True)
            (iso_root / "boot/grub").mkdir(parents=True)
            mnt.mkdir()
            log("iso: squashfs of the image's root filesystem")
            m, i = shlex.quote(str(mnt)), shlex.quote(str(iso_root))
            run(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-ec"]
                + [
                    f"mount -o ro,loop,offset={PART_OFFSET} {shlex.quote(str(raw))} {m}; "
                    f"cp -L {m}/vmlinuz {i}/live/vmlinuz; cp -L {m}/initrd.img {i}/live/initrd.img; "
                    f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH} mksquashfs {m} {i}/live/filesystem.squashfs"
                    " -comp zstd -noappend -no-progress -quiet; umount {m}".replace("{m}", m)
                ]
            )
            (iso_root / "boot/grub/grub.cfg").write_text(
                "serial --unit=0 --speed=115200\nterminal_input console serial\nterminal_output console serial\n"
                "set timeout=3\nset default=0\n"
                'menuentry "appliance (live; install to disk with appliance-install)" {\n'
                f"  linux /live/vmlinuz boot=live {KERNEL_CMDLINE}\n  initrd /live/initrd.img\n}}\n"
            )
            tmp_iso = Path(tmp) / "appliance.iso"
            log("iso: hybrid ISO (BIOS and UEFI) with grub-mkrescue")
            env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
            run(
                ["grub-mkrescue", "--quiet", "-o", str(tmp_iso), str(iso_root), "--", "-volid", ISO_LABEL],
                env=env,
                stderr=subprocess.DEVNULL if os.environ.get("APPLIANCE_BUILD_QUIET") else None,
            )
            tmp_iso.rename(out)
        self.stamp("appliance.iso", key)
        log(f"iso: {out} ({out.stat().st_size // 1024**2} MiB)")
        return out

    def box(self) -> Path:
        key = self.image_key()
        out = self.cache / "appliance.box"
        qcow2 = self.image()
        if self.fresh("appliance.box", key):
            return out
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            t = Path(tmp)
            os.link(qcow2, t / "box.img")
            meta = {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_SIZE // 1024**3}
            (t / "metadata.json").write_text(json.dumps(meta) + "\n")
            # The image has no vagrant user and no insecure key: the lab's config drive brings root's key.
            (t / "Vagrantfile").write_text(
                'Vagrant.configure("2") do |config|\n  config.ssh.username = "root"\n'
                "  config.ssh.insert_key = false\nend\n"
            )
            log("box: vagrant-libvirt box")
            run(["tar", "-C", tmp, "-czf", str(t / "appliance.box"), "metadata.json", "Vagrantfile", "box.img"])
            (t / "appliance.box").rename(out)
        self.stamp("appliance.box", key)
        log(f"box: {out}")
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("stage", choices=["base", "wheels", "image", "iso", "box", "all", "paths"])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("APPLIANCE_IMAGE_CACHE", REPO / "build/images")))
    ap.add_argument("--kernel", choices=sorted(KERNELS), default=os.environ.get("KERNEL", "cloud"))
    ap.add_argument("--force", action="store_true", help="rebuild the stage even when its key is unchanged")
    args = ap.parse_args(argv)
    build = Build(args.cache.resolve(), args.kernel, args.force)
    if args.stage == "paths":
        keys = {"base": build.base_key(), "wheels": build.wheels_key(), "image": build.image_key()}
        print(json.dumps({"cache": str(build.cache), "keys": keys}, indent=1))
        return 0
    build.cache.mkdir(parents=True, exist_ok=True)
    with (build.cache / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build in {build.cache}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if args.stage == "all":
                build.iso()
                build.box()
            else:
                getattr(build, args.stage)()
        except BuildError as e:
            print(f"images/build.py: {args.stage}: {e}", file=sys.stderr)
            return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
