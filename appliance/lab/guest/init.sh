#!/bin/bash
# Stage 2 of the lab VM, PID 1 (no systemd). Root is overlay(host root read-only, tmpfs); the host
# root itself is at /host. Mounts the API filesystems, then runs the control agent on the
# virtio-serial port named on the kernel command line and reaps orphans (daemons that died).
# Bash builtins wherever possible: under TCG every exec costs 0.1-0.5 s of boot time.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
here=${0%/*}
mount -a -T "$here/fstab"
say() { local up _; read -r up _ < /proc/uptime; echo "lab: $* at ${up}s" > /dev/console; }
say "stage 2 mounted"
read -r cmdline < /proc/cmdline
PORT=appliance.lab
APPLIANCE=
for a in $cmdline; do case $a in lab.port=*) PORT=${a#lab.port=};; lab.appliance=*) APPLIANCE=${a#lab.appliance=};; esac; done
# as /usr/local/bin/appliance on an image: keepalived's notify and track scripts run `appliance`
[ -x "$APPLIANCE" ] && ln -sf "$APPLIANCE" /usr/local/bin/appliance
[ -d /sys/module/virtio_console ] || modprobe virtio_console  # normally loaded by the initramfs
dev=
for _ in {1..100}; do
  for f in /sys/class/virtio-ports/*/name; do
    [ -r "$f" ] && read -r name < "$f" && [ "$name" = "$PORT" ] && { d=${f%/name}; dev=/dev/${d##*/}; }
  done
  [ -n "$dev" ] && [ -e "$dev" ] && break
  sleep 0.05
done
[ -n "$dev" ] || { say "no virtio-serial port $PORT"; echo o > /proc/sysrq-trigger; sleep 5; }
say "starting the agent on $dev"
/usr/bin/python3 -I -S "$here/agent.py" "$dev" &
agent=$!
# bash reaps every child it is sent SIGCHLD for, including reparented daemons, while it waits
while kill -0 $agent 2>/dev/null; do wait $agent; done
say "agent exited; powering off"
sync
echo o > /proc/sysrq-trigger
sleep 5
