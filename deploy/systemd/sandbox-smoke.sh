#!/usr/bin/env bash
# Manual smoke test of vfio-broker.service under a real systemd, for machines
# where systemd is not PID 1 (containers, CI sandboxes): systemd runs as PID 1
# of fresh mount/pid/cgroup namespaces with a private /run and /var/log, starts
# the unit exactly as written plus a drop-in that swaps ExecStart for the
# simulated backend, and the script checks that the sandbox holds and the
# daemon still works inside it:
#   Type=notify readiness and watchdog pings, the capability set (CAP_IPC_LOCK
#   only), NoNewPrivs and seccomp, /sys read-only except /sys/bus/pci and
#   /sys/devices, the socket's group and mode, a whole VM lifecycle through the
#   CLI, /metrics, and a clean stop that removes /run/vfio-broker.
#
# Needs root, unshare/nsenter (util-linux), systemd, and a built checkout
# (`npm ci` has run, dist/ is current) outside /home, /root and /tmp, which the
# unit hides; APP=DIR runs the daemon from another built copy (bin/, dist/,
# node_modules/) instead, e.g. one assembled like the Docker image's /app.
# Not part of `npm test`: it starts a second systemd and creates cgroups (it
# removes the ones it created on exit). On a host where systemd is PID 1, use
# `systemd-run` or install the unit instead.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
APP=$(cd "${APP:-$ROOT}" && pwd)
PORT=${PORT:-19474}
case "$APP" in /home/* | /root/* | /tmp/* | /var/tmp/*) echo "$APP is hidden from the unit (ProtectHome, PrivateTmp): use a copy elsewhere" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
[ -f "$APP/dist/cli/main.js" ] || { echo "build first: npm run build" >&2; exit 2; }
NODE=$(command -v node)
SYSTEMD=/lib/systemd/systemd
[ -x "$SYSTEMD" ] || SYSTEMD=/usr/lib/systemd/systemd

# Not under /tmp: the unit has PrivateTmp=yes, and the daemon's log goes here.
WORK=$(mktemp -d /var/tmp/vfio-broker-smoke.XXXXXX)
chmod 755 "$WORK"
CGROUPS_BEFORE=$(ls -d /sys/fs/cgroup/*/system.slice /sys/fs/cgroup/*/init.scope /sys/fs/cgroup/system.slice /sys/fs/cgroup/init.scope 2>/dev/null || true)
PRIVATE_TMP_BEFORE=$(ls -d /tmp/systemd-private-*-vfio-broker.service-* /var/tmp/systemd-private-*-vfio-broker.service-* 2>/dev/null || true)
UNSHARE_PID=
SD=

cleanup() {
  [ -n "$SD" ] && kill -KILL "$SD" 2>/dev/null || true
  [ -n "$UNSHARE_PID" ] && wait "$UNSHARE_PID" 2>/dev/null || true
  # Remove the (now empty) cgroups the inner systemd created, never older ones.
  for d in /sys/fs/cgroup/*/system.slice /sys/fs/cgroup/*/init.scope /sys/fs/cgroup/system.slice /sys/fs/cgroup/init.scope; do
    [ -d "$d" ] || continue
    grep -qxF "$d" <<<"$CGROUPS_BEFORE" && continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # PrivateTmp= directories of a unit that was killed rather than stopped.
  for d in /tmp/systemd-private-*-vfio-broker.service-* /var/tmp/systemd-private-*-vfio-broker.service-*; do
    [ -d "$d" ] || continue
    grep -qxF "$d" <<<"$PRIVATE_TMP_BEFORE" || rm -rf "$d"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/inner.sh" <<EOF
#!/bin/bash
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system/vfio-broker.service.d /run/lock
mount -t tmpfs tmpfs /var/log
cp /etc/group "$WORK/group" && echo 'vfio-broker:x:990:' >>"$WORK/group"
mount --bind "$WORK/group" /etc/group
cp "$ROOT/deploy/systemd/vfio-broker.service" /run/systemd/system/
cat >/run/systemd/system/vfio-broker.service.d/smoke.conf <<EOT
[Unit]
DefaultDependencies=no
[Service]
ExecStart=
ExecStart=$NODE $APP/bin/vfio-broker.js serve --backend sim --socket /run/vfio-broker/broker.sock --metrics-address 127.0.0.1:$PORT --audit-log /var/log/vfio-broker/audit.log
StandardOutput=file:$WORK/daemon.log
StandardError=file:$WORK/daemon.log
EOT
printf '[Unit]\nWants=vfio-broker.service\n' >/run/systemd/system/smoke.target
export container=vfio-broker-smoke
exec $SYSTEMD --system --unit=smoke.target --log-target=console
EOF
chmod +x "$WORK/inner.sh"

unshare --mount --pid --fork --cgroup --mount-proc "$WORK/inner.sh" >"$WORK/systemd.log" 2>&1 &
UNSHARE_PID=$!
for _ in $(seq 50); do SD=$(ps --ppid "$UNSHARE_PID" -o pid= | tr -d ' '); [ -n "$SD" ] && break; sleep 0.2; done
[ -n "$SD" ] || { cat "$WORK/systemd.log"; echo "systemd did not start" >&2; exit 1; }

in_ns() { nsenter -t "$SD" -m -p "$@"; }
fail() { echo "FAIL: $*" >&2; [ -f "$WORK/daemon.log" ] && tail -20 "$WORK/daemon.log" >&2; exit 1; }
ok() { echo "ok   $*"; }

state=
for _ in $(seq 100); do
  state=$(in_ns systemctl show vfio-broker.service -p ActiveState --value 2>/dev/null || true)
  [ "$state" = active ] || [ "$state" = failed ] && break
  sleep 0.2
done
[ "$state" = active ] || fail "unit is '$state', not active"
ok "Type=notify: active after READY=1 ($(in_ns systemctl show vfio-broker.service -p StatusText --value))"

MAIN=$(ps --ppid "$SD" -o pid=,comm= | awk '$2 == "node" { print $1 }')
[ -n "$MAIN" ] || fail "no node process under the inner systemd"
status=$(cat "/proc/$MAIN/status")
grep -q '^CapBnd:[[:space:]]*0000000000004000$' <<<"$status" || fail "bounding set is not CAP_IPC_LOCK alone: $(grep CapBnd <<<"$status")"
grep -q '^CapEff:[[:space:]]*0000000000004000$' <<<"$status" || fail "effective set: $(grep CapEff <<<"$status")"
grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$status" || fail "NoNewPrivs is not set"
grep -q '^Seccomp:[[:space:]]*2$' <<<"$status" || fail "no seccomp filter"
ok "capabilities CAP_IPC_LOCK only, NoNewPrivs, seccomp filter"

mountopt() { awk -v p="$1" '$5 == p { split($6, o, ","); print o[1] }' "/proc/$MAIN/mountinfo" | tail -1; }
[ "$(mountopt /sys)" = ro ] || fail "/sys is not read-only"
[ "$(mountopt /sys/bus/pci)" = rw ] || fail "/sys/bus/pci is not writable"
[ "$(mountopt /sys/devices)" = rw ] || fail "/sys/devices is not writable"
[ "$(mountopt /proc/sys)" = ro ] || fail "/proc/sys is not read-only"
[ "$(mountopt /)" = ro ] || fail "/ is not read-only"
ok "/ and /sys read-only, /sys/bus/pci and /sys/devices writable, /proc/sys read-only"

perms=$(in_ns stat -c '%a %U:%G' /run/vfio-broker /run/vfio-broker/broker.sock | tr '\n' ' ')
[ "$perms" = "750 root:vfio-broker 660 root:vfio-broker " ] || fail "socket directory and socket: $perms"
ok "socket root:vfio-broker 0660 in a 0750 directory"

CLI=("$NODE" "$APP/bin/vfio-broker.js")
S=(--socket /run/vfio-broker/broker.sock)
[ "$(in_ns "${CLI[@]}" health "${S[@]}")" = SERVING ] || fail "health is not SERVING"
dev=$(in_ns "${CLI[@]}" devices "${S[@]}" | awk 'NR == 2 { print $1 }')
in_ns "${CLI[@]}" assign "$dev" default "${S[@]}" >/dev/null
ctx=$(in_ns "${CLI[@]}" open --label smoke "${S[@]}")
in_ns "${CLI[@]}" bind "$ctx" "$dev" "${S[@]}" >/dev/null
in_ns "${CLI[@]}" alloc-ioas "$ctx" "${S[@]}" >/dev/null
in_ns "${CLI[@]}" attach "$ctx" 1 2 "${S[@]}" >/dev/null
in_ns "${CLI[@]}" alloc-hwpt "$ctx" 1 2 --kind nest-parent "${S[@]}" >/dev/null
in_ns "${CLI[@]}" alloc-viommu "$ctx" 1 4 "${S[@]}" >/dev/null
in_ns "${CLI[@]}" alloc-vdevice "$ctx" 5 1 0x99 "${S[@]}" >/dev/null
in_ns "${CLI[@]}" unbind "$ctx" 1 "${S[@]}" | grep -q '1 vDEVICE destroyed' || fail "unbind did not destroy the vDEVICE"
in_ns "${CLI[@]}" close "$ctx" "${S[@]}" >/dev/null
ok "health SERVING; bind, attach, vIOMMU, vDEVICE, unbind and close through the socket"

metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics") || fail "no /metrics on 127.0.0.1:$PORT"
grep -q '^vfio_broker_ready 1$' <<<"$metrics" || fail "vfio_broker_ready is not 1"
grep -q '^vfio_broker_vdevice_teardowns_total{outcome="destroyed"} 1$' <<<"$metrics" || fail "vDEVICE teardown not counted"
in_ns test -s /var/log/vfio-broker/audit.log || fail "audit log is empty"
ok "/metrics serves, audit log written"

sleep 20 # past half of WatchdogSec: the daemon must have pinged
[ -n "$(in_ns systemctl show vfio-broker.service -p WatchdogTimestampMonotonic --value | grep -v '^0$')" ] || fail "no watchdog ping"
[ "$(in_ns systemctl show vfio-broker.service -p NRestarts --value)" = 0 ] || fail "the unit restarted"
ok "watchdog pings, no restarts"

in_ns systemctl stop vfio-broker.service
[ "$(in_ns systemctl show vfio-broker.service -p Result --value)" = success ] || fail "stop did not end in success"
in_ns test ! -e /run/vfio-broker || fail "/run/vfio-broker survived the stop"
ok "clean stop, RuntimeDirectory removed"
echo "sandbox smoke test passed"
