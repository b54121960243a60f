#!/bin/bash
# Installs every Debian package appliance needs, by group. Named one by one on purpose: with
# --no-install-recommends, strongSwan comes without libstrongswan-standard-plugins (no AES-GCM,
# no ECP: every IKE exchange fails silently) and the base image has no ping (iputils-ping).
#   usage: install-deps.sh [product] [lab] [dev]      (default: all three)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PRODUCT=(
  frr frr-pythontools                       # zebra, nhrpd, ospfd, bgpd, staticd; frr-reload.py
  strongswan-charon strongswan-swanctl      # charon with VICI, swanctl
  libstrongswan-standard-plugins            # AES-GCM, ECP groups (see above)
  charon-systemd                            # strongswan.service (swanctl-based) on a real box
  keepalived                                # VRRP
  nftables python3-nftables                 # firewall through the JSON API
  iproute2 iputils-ping kmod procps         # diagnostics, modprobe, sysctl
  netbase                                   # /etc/protocols: nft resolves "esp", "gre" by name
  python3 python3-venv                      # the appliance's virtualenv (--system-site-packages)
)
LAB=(
  qemu-system-x86 qemu-system-common        # the lab VM (TCG), /usr/lib/qemu/virtiofsd
  busybox-static cpio                       # the lab's initramfs
  tcpdump traceroute conntrack iperf3       # lab tests and benchmarks look at the wire
  openssl                                   # test CAs for X.509 scenarios
)
DEV=(git make)

groups=("$@"); [ ${#groups[@]} -gt 0 ] || groups=(product lab dev)
pkgs=()
for g in "${groups[@]}"; do
  case $g in
    product) pkgs+=("${PRODUCT[@]}") ;;
    lab) pkgs+=("${LAB[@]}") ;;
    dev) pkgs+=("${DEV[@]}") ;;
    *) echo "install-deps.sh: unknown group '$g' (product, lab, dev)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
