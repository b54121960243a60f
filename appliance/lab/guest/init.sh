#!/bin/bash
# Stage 2 of the lab VM, PID 1 (no systemd). Root is overlay(host root read-only, tmpfs); the host
# root itself is at /host. Mounts the API filesystems, then runs the control agent on the
# virtio-serial port named on the kernel command line and reaps orphans (daemons that died).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run; mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/lock /run/netns; mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd
# Every node has its own /run: this one link gives each node its own syslog socket (see agent.py).
ln -sf /run/log.sock /dev/log
hostname labvm
ip link set lo up
say() { echo "lab: $* at $(cut -d' ' -f1 /proc/uptime)s" > /dev/console; }
PORT=appliance.lab
for a in $(cat /proc/cmdline); do case $a in lab.port=*) PORT=${a#lab.port=};; esac; done
modprobe virtio_console
dev=
for i in $(seq 100); do
  for f in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$f" 2>/dev/null)" = "$PORT" ] && dev=/dev/$(basename "$(dirname "$f")")
  done
  [ -n "$dev" ] && [ -e "$dev" ] && break
  sleep 0.05
done
[ -n "$dev" ] || { say "no virtio-serial port $PORT"; echo o > /proc/sysrq-trigger; sleep 5; }
say "stage 2 up, agent on $dev"
/usr/bin/python3 -I -S "$(dirname "$0")/agent.py" "$dev" &
agent=$!
# bash reaps every child it is sent SIGCHLD for, including reparented daemons, while it waits
while kill -0 $agent 2>/dev/null; do wait $agent; done
say "agent exited; powering off"
sync
echo o > /proc/sysrq-trigger
sleep 5
