#!/bin/bash
# The main job of `make demo`. Until the lab can build routers, it validates and renders every
# example and shows the result; the lab demo replaces this once `appliance lab` exists.
set -euo pipefail
cd "$(dirname "$0")/.."
APPLIANCE=.venv/bin/appliance
# Demo secrets only; a real box keeps them in /etc/appliance/secrets.env (0600).
export DMVPN_PSK=${DMVPN_PSK:-demo-psk-change-me-0123456789} OSPF_KEY=${OSPF_KEY:-demo-md5}
out=$(mktemp -d)
for site in examples/*.yaml examples/bgp/*.yaml; do
  case $site in examples/lab*.yaml) continue ;; esac
  $APPLIANCE validate "$site"
  $APPLIANCE render "$site" --root-dir "$out/$(basename "${site%.yaml}")" >/dev/null
done
echo "== rendered artefacts under $out"
find "$out" -type f | sort
echo "== hub: /etc/frr/frr.conf (secrets redacted)"
sed -e "s/$OSPF_KEY/<redacted>/g" "$out/hub/etc/frr/frr.conf"
echo "NOT YET: the lab demo (routers built in a VM, pings across the DMVPN) lands with the lab issue."
