#!/bin/sh
# Installs the appliance on a Debian 12 system (run as root inside it: a chroot at image build time,
# the booted cloud image under Packer): a venv at /opt/appliance on Debian's python3 with
# --system-site-packages (so it sees python3-nftables), /usr/local/bin/appliance, the systemd units.
#   usage: install-appliance.sh (--wheels DIR | --source DIR) --units DIR
#     --wheels DIR   wheels of the appliance and its dependencies (offline, as images/build.py does)
#     --source DIR   the appliance source tree; dependencies come from PyPI
set -eu
wheels= source= units=
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --units) units=$2; shift 2 ;;
    *) echo "install-appliance.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [ -z "$units" ] || { [ -z "$wheels" ] && [ -z "$source" ]; }; then
  echo "usage: install-appliance.sh (--wheels DIR | --source DIR) --units DIR" >&2; exit 2
fi

VENV=/opt/appliance
echo "install-appliance: venv $VENV on $(/usr/bin/python3 --version)"
rm -rf "$VENV"
/usr/bin/python3 -m venv --system-site-packages "$VENV"
if [ -n "$wheels" ]; then
  "$VENV/bin/pip" install -q --no-cache-dir --no-index --find-links "$wheels" appliance
else
  "$VENV/bin/pip" install -q --no-cache-dir "$source"
fi
"$VENV/bin/pip" freeze --local > "$VENV/pip-freeze.txt"
# The venv must see Debian's python3-nftables (not on PyPI).
"$VENV/bin/python" -c 'import nftables, appliance' || { echo "install-appliance: import check failed" >&2; exit 1; }
ln -sfn "$VENV/bin/appliance" /usr/local/bin/appliance

install -d -m 0700 /etc/appliance
for unit in "$units"/*.service "$units"/*.timer; do
  [ -e "$unit" ] || continue
  install -m 0644 "$unit" /etc/systemd/system/
  # Enable what declares how to be enabled; units without [Install] are started by others.
  if grep -q '^\[Install\]' "$unit"; then
    systemctl enable --quiet "$(basename "$unit")"
    echo "install-appliance: enabled $(basename "$unit")"
  else
    echo "install-appliance: installed $(basename "$unit")"
  fi
done
systemctl is-enabled --quiet appliance.service || { echo "install-appliance: appliance.service not enabled" >&2; exit 1; }
echo "install-appliance: $("$VENV/bin/appliance" --version) at /usr/local/bin/appliance"
