#!/bin/bash
# Installs every Debian package the image build, the boot test, `packer validate` and
# `vagrant validate` need on the build host (Debian 12, root). Idempotent: installs only what is
# missing. Called by `make image-deps` (and so by `make image`, `make iso`, `make test`).
#   usage: images/setup-build-host.sh [--print]     (--print: only print the package list)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(
  mmdebstrap                                # the root filesystem, from the host's apt sources
  e2fsprogs fdisk util-linux mount          # mkfs.ext4 -d, sfdisk, losetup, mount
  extlinux syslinux-common                  # disk bootloader (extlinux + mbr.bin; grub-install fails on loop devices)
  qemu-utils                                # qemu-img: raw -> qcow2
  squashfs-tools                            # the live ISO's filesystem.squashfs
  xorriso grub-common grub-pc-bin           # grub-mkrescue: hybrid ISO, BIOS
  grub-efi-amd64-bin mtools dosfstools      # ... and its UEFI El Torito image; vfat config drives
  qemu-system-x86 ovmf                      # the boot test (TCG), UEFI firmware for the ISO check
  openssh-client                            # the boot test logs in with a throwaway key
  packer                                    # packer validate (1.6.6 in Debian 12: HCL2, built-in qemu builder)
  vagrant vagrant-libvirt                   # vagrant validate of the lab Vagrantfile
  python3                                   # images/build.py
)

if [ "${1:-}" = --print ]; then printf '%s\n' "${PKGS[@]}"; exit 0; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-build-host: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "setup-build-host: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
