#!/bin/sh
# The guest's init (PID 1): mount the data disks, start what etc/ names, report on the console.
# It runs the services as a Pi's systemd would, and prints, twice a second, every status file and
# the data disks' /proc/diskstats lines: what the host knows of the guest when its power is cut.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
say() { echo "@vm $* $(cut -d' ' -f1 /proc/uptime)"; }
fatal() { say "fatal $*"; busybox poweroff -f; }
say init
# The mount points are in the image (rootfs.py): the root is read-only.
mount -t ext4 /dev/vdb /var/lib/saltmarsh || fatal no-data-disk
if [ -b /dev/vdc ]; then mount -t ext4 /dev/vdc /var/lib/saltmarsh-sensor || fatal no-sensor-disk; fi
busybox ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  busybox ip addr add 10.0.2.15/24 dev eth0
  busybox ip link set eth0 up
  busybox ip route add default via 10.0.2.2
fi
ETC=/var/lib/saltmarsh/etc
export PYTHONPATH=/opt/saltmarsh/src:/opt/saltmarsh/lib
mkdir -p /run/saltmarsh/status
if [ -f $ETC/mosquitto.conf ]; then mosquitto -c $ETC/mosquitto.conf >/dev/ttyS1 2>&1 & fi
if [ -f $ETC/forwarder.toml ]; then python3 -m gateway --config $ETC/forwarder.toml >/dev/ttyS1 2>&1 & fi
for conf in $ETC/sensor-*.toml; do
  if [ -f "$conf" ]; then python3 -m sensor --config "$conf" >/dev/ttyS1 2>&1 & fi
done
say services
while true; do
  for f in /run/saltmarsh/status/*.json; do
    if [ -f "$f" ]; then echo "@status $(cat "$f")"; fi
  done
  echo "@disk $(cut -d' ' -f1 /proc/uptime) $(grep -E ' vd[bc] ' /proc/diskstats | tr -s ' ' | tr '\n' ';')"
  sleep 0.5
done
