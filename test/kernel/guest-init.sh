#!/bin/sh
# PID 1 of the real-kernel lane guest (booted by run-vm.sh with init=<this file>).
#
# The root filesystem is the host's own `/` over 9p, read-only. This script:
#   1. copies itself into a fresh tmpfs and re-executes from there, so it never runs from a
#      directory it is about to mount over (the checkout may live under /tmp);
#   2. mounts proc, sysfs, devtmpfs, tmpfs on /tmp and /run, the writable results share
#      (mount_tag "results") and the project checkout (mount_tag "project") at its host path;
#   3. binds the QEMU edu device (1234:11e8) to vfio-pci (driver_override + drivers_probe) and
#      checks that /dev/iommu and /dev/vfio/devices/vfio* exist;
#   4. runs the command the host wrote to results/cmd.sh from the project directory, with the
#      host's node on PATH, and writes its exit status to results/exit-code;
#   5. powers off (`poweroff -f`; if that fails, exiting PID 1 panics the kernel and
#      `panic=-1` + QEMU `-no-reboot` end the VM).
# Settings come from results/lane.env, written by run-vm.sh.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

STAGE=/run/vfio-broker
RESULTS="$STAGE/results"
NINEP_OPTS="trans=virtio,version=9p2000.L,msize=262144"

up() { cut -d' ' -f1 /proc/uptime 2>/dev/null || echo '?'; }
say() { echo "[guest-init $(up)s] $*"; }

halt_vm() {
  sync
  poweroff -f >/dev/null 2>&1
  # No MAGIC_SYSRQ in the lane kernel; exiting PID 1 panics and panic=-1 reboots, which
  # QEMU's -no-reboot turns into an exit.
  say "poweroff -f failed; exiting PID 1"
  exit 1
}

# fail CODE MESSAGE: record a guest-init failure (exit code 125 + message) and stop.
fail() {
  say "FAILED: $*"
  if [ "${RESULTS_MOUNTED:-0}" = 1 ]; then
    echo "$*" >"$RESULTS/guest-error"
    dmesg >"$RESULTS/dmesg.txt" 2>/dev/null
    echo 125 >"$RESULTS/exit-code.tmp" && mv "$RESULTS/exit-code.tmp" "$RESULTS/exit-code"
  fi
  halt_vm
}

# --- 1. run from a tmpfs copy -----------------------------------------------------------------
if [ "${VFIO_BROKER_INIT_STAGED:-}" != 1 ]; then
  SELF=$(cat "$0") || { echo "guest-init: cannot read $0"; exit 1; }
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || { echo "guest-init: cannot mount /run"; exit 1; }
  mkdir -p "$STAGE"
  printf '%s\n' "$SELF" >"$STAGE/guest-init.sh"
  VFIO_BROKER_INIT_STAGED=1 exec /bin/sh "$STAGE/guest-init.sh" "$@"
fi
unset VFIO_BROKER_INIT_STAGED

# --- 2. filesystems ---------------------------------------------------------------------------
# /proc first and unconditionally: through the 9p root, /proc, /sys and /dev show the HOST's
# files (QEMU's local fsdev passes them through), so before the guest's own proc is mounted
# they look like mount points and /proc/self/mountinfo is QEMU's. After it, `mountpoint` is
# reliable (the kernel itself mounts devtmpfs on /dev with CONFIG_DEVTMPFS_MOUNT).
mount -t proc -o nosuid,nodev,noexec proc /proc || { echo "guest-init: cannot mount /proc"; exit 1; }
mountpoint -q /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "cannot mount sysfs"
mountpoint -q /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || fail "cannot mount devtmpfs"
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp || fail "cannot mount tmpfs on /tmp"
[ -d /sys/kernel/debug ] && mount -t debugfs -o nosuid,nodev,noexec debugfs /sys/kernel/debug 2>/dev/null
ip link set lo up 2>/dev/null || say "WARNING: could not bring up lo"
say "booted $(uname -r); cmdline: $(cat /proc/cmdline)"

mkdir -p "$RESULTS"
mount -t 9p -o "$NINEP_OPTS" results "$RESULTS" || fail "cannot mount the results share (tag 'results')"
RESULTS_MOUNTED=1
[ -r "$RESULTS/lane.env" ] || fail "results/lane.env missing (run-vm.sh writes it)"
# shellcheck disable=SC1091
. "$RESULTS/lane.env"
[ -n "${VFIO_BROKER_PROJECT_DIR:-}" ] || fail "lane.env does not set VFIO_BROKER_PROJECT_DIR"
echo running >"$RESULTS/guest-status"

# The checkout: its own 9p share (tag "project"), mounted at its host path (which the tmpfs on
# /tmp or /run may hide). Modes (lane.env VFIO_BROKER_PROJECT_MODE):
#   overlay (default) read-only share + tmpfs overlay: tools may write (vite writes
#                     node_modules/.vite-temp), the writes vanish with the VM
#   ro                read-only share
#   rw                writable share: writes land in the host checkout
PROJECT_MODE="${VFIO_BROKER_PROJECT_MODE:-overlay}"
PROJECT_OPTS="$NINEP_OPTS"
[ "${VFIO_BROKER_9P_CACHE:-none}" = none ] || PROJECT_OPTS="$PROJECT_OPTS,cache=$VFIO_BROKER_9P_CACHE"
[ "$PROJECT_MODE" = rw ] || PROJECT_OPTS="$PROJECT_OPTS,ro"
mkdir -p "$VFIO_BROKER_PROJECT_DIR" 2>/dev/null
if [ "$PROJECT_MODE" = overlay ]; then
  LOWER="$STAGE/project-lower"
  mkdir -p "$LOWER" "$STAGE/overlay/upper" "$STAGE/overlay/work"
  mount -t 9p -o "$PROJECT_OPTS" project "$LOWER" || fail "cannot mount the project share (tag 'project')"
  if ! mount -t overlay overlay \
      -o "lowerdir=$LOWER,upperdir=$STAGE/overlay/upper,workdir=$STAGE/overlay/work" \
      "$VFIO_BROKER_PROJECT_DIR"; then
    say "WARNING: overlay mount failed (kernel without CONFIG_OVERLAY_FS?); checkout is read-only"
    mount --bind "$LOWER" "$VFIO_BROKER_PROJECT_DIR" || fail "cannot bind the project share at $VFIO_BROKER_PROJECT_DIR"
    PROJECT_MODE=ro
  fi
else
  mount -t 9p -o "$PROJECT_OPTS" project "$VFIO_BROKER_PROJECT_DIR" \
    || fail "cannot mount the project share at $VFIO_BROKER_PROJECT_DIR"
fi
[ -f "$VFIO_BROKER_PROJECT_DIR/package.json" ] || fail "no package.json in $VFIO_BROKER_PROJECT_DIR"

# --- 3. devices -------------------------------------------------------------------------------
[ -c /dev/iommu ] || fail "/dev/iommu missing (kernel without CONFIG_IOMMUFD?)"

EDU_BDF=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1234 ] && [ "$(cat "$d/device" 2>/dev/null)" = 0x11e8 ] || continue
  EDU_BDF=${d##*/}
  break
done
[ -n "$EDU_BDF" ] || fail "edu PCI device (1234:11e8) not found (qemu without -device edu?)"
EDU_SYS="/sys/bus/pci/devices/$EDU_BDF"
if [ "$(basename "$(readlink "$EDU_SYS/driver" 2>/dev/null)")" != vfio-pci ]; then
  if [ -e "$EDU_SYS/driver" ]; then
    echo "$EDU_BDF" >"$EDU_SYS/driver/unbind" || fail "cannot unbind $EDU_BDF from its driver"
  fi
  echo vfio-pci >"$EDU_SYS/driver_override" || fail "cannot set driver_override on $EDU_BDF"
  echo "$EDU_BDF" >/sys/bus/pci/drivers_probe || fail "drivers_probe of $EDU_BDF failed (IOMMU off? see dmesg.txt)"
fi
[ "$(basename "$(readlink "$EDU_SYS/driver" 2>/dev/null)")" = vfio-pci ] || fail "$EDU_BDF is not bound to vfio-pci"
EDU_VFIO=""
for v in "$EDU_SYS"/vfio-dev/vfio*; do
  [ -e "$v" ] && EDU_VFIO="/dev/vfio/devices/${v##*/}"
done
[ -n "$EDU_VFIO" ] && [ -c "$EDU_VFIO" ] || fail "no /dev/vfio/devices/vfio* for $EDU_BDF (CONFIG_VFIO_DEVICE_CDEV?)"
EDU_GROUP=$(basename "$(readlink "$EDU_SYS/iommu_group" 2>/dev/null)")
say "edu $EDU_BDF bound to vfio-pci: $EDU_VFIO (iommu group ${EDU_GROUP:-?}); /dev/iommu present; checkout $VFIO_BROKER_PROJECT_DIR ($PROJECT_MODE)"

# --- 4. run the command -----------------------------------------------------------------------
mkdir -p /tmp/home
export HOME=/tmp/home
export TMPDIR=/tmp
export npm_config_cache=/tmp/npm-cache
export npm_config_update_notifier=false
export CI=1
export VFIO_BROKER_GUEST=1
export VFIO_BROKER_RESULTS_DIR="$RESULTS"
export VFIO_BROKER_TEST_BDF="$EDU_BDF"
export VFIO_BROKER_TEST_VFIO_DEV="$EDU_VFIO"
export VFIO_BROKER_TEST_IOMMU_GROUP="$EDU_GROUP"
export VFIO_BROKER_PROJECT_DIR
PATH="$VFIO_BROKER_PROJECT_DIR/node_modules/.bin:${VFIO_BROKER_NODE_DIR:+$VFIO_BROKER_NODE_DIR:}$PATH"
export PATH

cd "$VFIO_BROKER_PROJECT_DIR" || fail "cannot cd to $VFIO_BROKER_PROJECT_DIR"
command -v node >/dev/null || fail "node not found on PATH ($PATH)"
[ -r "$RESULTS/cmd.sh" ] || fail "results/cmd.sh missing"
say "running: $(cat "$RESULTS/cmd.sh")"
say "----- guest command output -----"
# Output goes to the console (streamed to the host log) and to results/output.log.
( /bin/sh "$RESULTS/cmd.sh" </dev/null; echo $? >"$RESULTS/exit-code.tmp" ) 2>&1 | tee "$RESULTS/output.log"
RC=$(cat "$RESULTS/exit-code.tmp" 2>/dev/null || echo 125)
say "----- guest command exited with status $RC -----"

dmesg >"$RESULTS/dmesg.txt" 2>/dev/null
echo "done" >"$RESULTS/guest-status"
mv "$RESULTS/exit-code.tmp" "$RESULTS/exit-code" || echo "$RC" >"$RESULTS/exit-code"
sync
cd /
umount "$RESULTS" 2>/dev/null
halt_vm
