#!/bin/bash
# Builds the appliance image with Packer from Debian's cloud image: a throwaway SSH key for this one
# build, a cloud-init seed authorizing it for root (removed again by the last provisioner), the
# image's checksum from Debian's SHA512SUMS. Needs internet access and, for speed, KVM.
#   usage: images/packer/build.sh [packer build options...]     output: build/packer/appliance.qcow2
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v packer >/dev/null || { echo "packer missing: make image-deps" >&2; exit 1; }
work=build/packer-seed
rm -rf "$work" build/packer
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
ssh-keygen -q -t ed25519 -N '' -C packer-build -f "$work/id_ed25519"
cat > "$work/user-data" <<SEED
#cloud-config
disable_root: false
ssh_pwauth: false
users: []
write_files:
  - path: /root/.ssh/authorized_keys
    permissions: "0600"
    content: |
      $(cat "$work/id_ed25519.pub")
SEED
cp images/packer/seed/meta-data "$work/meta-data"
url=$(sed -n '/variable "debian_image_url"/,/}/s/.*default *= *"\(.*\)"/\1/p' images/packer/appliance.pkr.hcl)
accel=tcg; [ -w /dev/kvm ] && accel=kvm
packer build -var "seed_dir=$work" -var "ssh_private_key_file=$work/id_ed25519" \
  -var "debian_image_checksum=file:${url%/*}/SHA512SUMS" -var "accelerator=$accel" "$@" images/packer/appliance.pkr.hcl
