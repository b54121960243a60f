#!/bin/sh
# Makes a Debian 12 system an appliance box (run as root inside it, like install-appliance.sh):
# the files of images/rootfs, no password anywhere, SSH by key only, host keys and machine-id made
# on first boot (every copy of the image gets its own).
#   usage: configure-system.sh ROOTFS_DIR      (ROOTFS_DIR: a copy of images/rootfs)
set -eu
overlay=${1:?usage: configure-system.sh ROOTFS_DIR}

cp -R --no-preserve=ownership "$overlay"/. /
chmod 0755 /usr/local/sbin/appliance-config-drive /usr/local/sbin/appliance-install

# No password at all: '*' matches no password (an empty field would allow a login without one).
usermod -p '*' root
for user in $(awk -F: '$3 >= 1000 && $3 < 65534 {print $1}' /etc/passwd); do usermod -p '*' "$user"; done

rm -f /etc/ssh/ssh_host_*
systemctl enable --quiet appliance-ssh-hostkeys.service ssh.service

# An empty machine-id: systemd makes one on first boot (and runs first-boot units).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# strongswan-charon pulls in strongswan-starter (ipsec.conf): a second charon would fight
# charon-systemd's strongswan.service (the one the appliance drives over VICI) for the IKE ports.
systemctl mask --quiet strongswan-starter.service
# Until the site names the box (the build host's name must not leak into the image).
echo appliance > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tappliance\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log
echo "configure-system: root has no password, SSH by key only, host keys made on first boot"
