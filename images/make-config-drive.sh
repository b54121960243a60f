#!/bin/bash
# Makes a config drive for the appliance image: a vfat image (OUT.img) or an ISO 9660 image (OUT.iso)
# labelled APPLIANCE, read at boot by appliance-config-drive.service.
#   usage: images/make-config-drive.sh [--network FILE]... [--file FILE]... SITE [SECRETS|-] [AUTHORIZED_KEYS|-] OUT
#     SITE             the site file (site.yaml on the drive); - for none (only keys, network)
#     SECRETS          an env file with the {env: NAME} secrets (secrets.env, 0600 on the box)
#     AUTHORIZED_KEYS  root's SSH public keys (the image has no password: this is how you log in)
#     --network FILE   a systemd-networkd file for an interface the site does not own (management)
#     --file FILE      any other file the site refers to (X.509 certificates, keys), next to site.yaml
# Needs mtools and dosfstools (vfat) or xorriso (ISO); no root. OUT holds secrets: it is made 0600.
set -euo pipefail
die() { echo "make-config-drive: $*" >&2; exit 1; }

network=() extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --network) network+=("$2"); shift 2 ;;
    --file) extra+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    --*) die "unknown option $1" ;;
    *) break ;;
  esac
done
case $# in
  2) site=$1 secrets=- keys=- out=$2 ;;
  3) site=$1 secrets=$2 keys=- out=$3 ;;
  4) site=$1 secrets=$2 keys=$3 out=$4 ;;
  *) echo "usage: make-config-drive.sh [--network FILE]... [--file FILE]... SITE [SECRETS|-] [AUTHORIZED_KEYS|-] OUT" >&2
     exit 2 ;;
esac
for f in "${network[@]}" "${extra[@]}"; do [ -f "$f" ] || die "$f: no such file"; done
[ "$site" = - ] || [ -f "$site" ] || die "$site: no such file"
[ "$secrets" = - ] || [ -f "$secrets" ] || die "$secrets: no such file"
[ "$keys" = - ] || [ -f "$keys" ] || die "$keys: no such file"
if [ "$keys" != - ] && ! grep -Eq '^(ssh-|ecdsa-|sk-)' "$keys"; then die "$keys: no SSH public key in it"; fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
umask 077
[ "$site" = - ] || cp "$site" "$stage/site.yaml"
[ "$secrets" = - ] || cp "$secrets" "$stage/secrets.env"
[ "$keys" = - ] || cp "$keys" "$stage/authorized_keys"
for f in "${extra[@]}"; do cp "$f" "$stage/"; done
if [ ${#network[@]} -gt 0 ]; then mkdir "$stage/network"; cp "${network[@]}" "$stage/network/"; fi

rm -f "$out"
case $out in
  *.iso)
    command -v xorriso >/dev/null || die "xorriso missing (make image-deps)"
    xorriso -as mkisofs -quiet -V APPLIANCE -J -r -o "$out" "$stage" ;;
  *)
    command -v mkfs.vfat >/dev/null || die "mkfs.vfat missing: package dosfstools (make image-deps)"
    command -v mcopy >/dev/null || die "mcopy missing: package mtools (make image-deps)"
    kib=$(( $(du -sk "$stage" | cut -f1) * 2 + 2048 ))
    mkfs.vfat -C -n APPLIANCE "$out" "$kib" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -i "$out" "$stage"/* ::/ ;;
esac
chmod 0600 "$out"
echo "make-config-drive: $out (label APPLIANCE): $(cd "$stage" && find . -type f | sed 's|^\./||' | sort | xargs)"
