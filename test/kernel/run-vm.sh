#!/usr/bin/env bash
# Boots the lane kernel under QEMU TCG and runs one command in the guest, from the project
# checkout, as root, with /dev/iommu and the edu device bound to vfio-pci.
#
#   test/kernel/run-vm.sh                                # default: the smoke probe
#   test/kernel/run-vm.sh 'node test/kernel/guest/probe.mjs'
#   test/kernel/run-vm.sh npx vitest run --config test/kernel/vitest.guest.config.ts
#
# A single argument is a shell command line; several arguments are quoted one by one.
# VFIO_BROKER_GUEST_CMD is used when there are no arguments.
#
# Exit status: the guest command's; 124 if the overall timeout hit; 125 if the VM or guest-init
# failed before the command could report (see the console log).
#
# Env: VFIO_BROKER_VM_TIMEOUT (s, default 1200), VFIO_BROKER_VM_MEM (2G), VFIO_BROKER_VM_SMP (2),
#      VFIO_BROKER_VM_OUT (default test/kernel/.out), VFIO_BROKER_VM_QUIET=1 (console only to
#      the log), VFIO_BROKER_VM_VERBOSE=1 (all kernel messages on the console),
#      VFIO_BROKER_VM_APPEND (extra kernel args), VFIO_BROKER_VM_PROJECT_MODE (overlay: the guest
#      may write to the checkout and the writes are discarded, the default; ro; rw: writes reach
#      the host checkout), VFIO_BROKER_VM_9P_CACHE (9p cache mode of the read-only shares,
#      default loose), VFIO_BROKER_KERNEL_IMAGE (boot this bzImage instead of the cached one).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s)
TIMEOUT="${VFIO_BROKER_VM_TIMEOUT:-1200}"
MEM="${VFIO_BROKER_VM_MEM:-2G}"
SMP="${VFIO_BROKER_VM_SMP:-2}"
OUT="${VFIO_BROKER_VM_OUT:-${KERNEL_LANE_DIR}/.out}"
RESULTS="${OUT}/results"
CONSOLE_LOG="${OUT}/console.log"

# --- guest command --------------------------------------------------------------------------
if [ "$#" -eq 1 ]; then
  CMD="$1"
elif [ "$#" -gt 1 ]; then
  CMD="$(printf '%q ' "$@")"
  CMD="${CMD% }"
else
  CMD="${VFIO_BROKER_GUEST_CMD:-node test/kernel/guest/probe.mjs}"
fi

# --- kernel ---------------------------------------------------------------------------------
if [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ]; then
  KERNEL="${VFIO_BROKER_KERNEL_IMAGE}"
elif KDIR="$(current_kernel_dir)"; then
  KERNEL="${KDIR}/bzImage"
else
  die "no cached kernel in ${VFIO_BROKER_KERNEL_CACHE}; run test/kernel/build-kernel.sh first (or set VFIO_BROKER_KERNEL_IMAGE)"
fi
[ -r "${KERNEL}" ] || die "kernel image not readable: ${KERNEL}"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed; run test/kernel/setup-host.sh"

# --- paths the guest must see ----------------------------------------------------------------
case "${PROJECT_ROOT}" in
  *[[:space:]]*) die "the checkout path must not contain whitespace: ${PROJECT_ROOT}" ;;
esac
INIT="${PROJECT_ROOT}/test/kernel/guest-init.sh"
[ -x "${INIT}" ] || die "${INIT} is missing or not executable"
NODE_BIN="$(command -v node || true)"
[ -n "${NODE_BIN}" ] || die "node not found on the host PATH (the guest uses the host's node)"
NODE_DIR="$(dirname "$(readlink -f "${NODE_BIN}")")"
case "${NODE_DIR}/" in
  /tmp/*|/run/*|/proc/*|/sys/*|/dev/*)
    die "node lives under ${NODE_DIR}, which the guest hides behind its own mounts; install node elsewhere" ;;
esac
[ -d "${PROJECT_ROOT}/node_modules/koffi" ] || die "no node_modules in ${PROJECT_ROOT}; run npm ci first"

# 9p cache mode for the read-only root and project mounts (none | loose | mmap ...).
NINEP_CACHE="${VFIO_BROKER_VM_9P_CACHE:-loose}"
case "${NINEP_CACHE}" in *[!a-z]*) die "VFIO_BROKER_VM_9P_CACHE must be a 9p cache mode name" ;; esac

# How the guest sees the checkout: overlay (writable, writes discarded), ro, or rw (writes reach
# the host checkout).
PROJECT_MODE="${VFIO_BROKER_VM_PROJECT_MODE:-overlay}"
case "${PROJECT_MODE}" in overlay|ro|rw) ;; *) die "VFIO_BROKER_VM_PROJECT_MODE must be overlay, ro or rw" ;; esac

# --- results share ---------------------------------------------------------------------------
mkdir -p "${OUT}"
exec 8>"${OUT}/.lock"
flock -n 8 || die "another run-vm.sh is using ${OUT}; set VFIO_BROKER_VM_OUT to a different directory"
rm -rf "${RESULTS}"
mkdir -p "${RESULTS}"
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
  echo "# written by run-vm.sh; sourced by guest-init.sh"
  echo "VFIO_BROKER_PROJECT_DIR=$(sq "${PROJECT_ROOT}")"
  echo "VFIO_BROKER_NODE_DIR=$(sq "${NODE_DIR}")"
  echo "VFIO_BROKER_9P_CACHE=$(sq "${NINEP_CACHE}")"
  echo "VFIO_BROKER_PROJECT_MODE=${PROJECT_MODE}"
} >"${RESULTS}/lane.env"
printf '%s\n' "${CMD}" >"${RESULTS}/cmd.sh"

PROJECT_RO=",readonly=on"
[ "${PROJECT_MODE}" = rw ] && PROJECT_RO=""
LOGLEVEL="loglevel=4"
[ "${VFIO_BROKER_VM_VERBOSE:-0}" = 1 ] && LOGLEVEL="loglevel=7"
APPEND="root=hostroot rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144"
[ "${NINEP_CACHE}" = none ] || APPEND+=",cache=${NINEP_CACHE}"
APPEND+=" ro"
APPEND+=" init=${INIT} console=ttyS0 intel_iommu=on iommu=on panic=-1 ${LOGLEVEL}"
APPEND+="${VFIO_BROKER_VM_APPEND:+ ${VFIO_BROKER_VM_APPEND}}"

# shellcheck disable=SC2054  # the commas are QEMU option syntax
QEMU=(qemu-system-x86_64
  -machine q35 -accel tcg -cpu max -m "${MEM}" -smp "${SMP}"
  -nographic -no-reboot -nic none
  -device intel-iommu,intremap=on,caching-mode=on
  -device edu
  -kernel "${KERNEL}" -append "${APPEND}"
  -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev "local,id=project,path=${PROJECT_ROOT},security_model=none${PROJECT_RO},multidevs=remap"
  -device virtio-9p-pci,fsdev=project,mount_tag=project
  -fsdev "local,id=results,path=${RESULTS},security_model=none,multidevs=remap"
  -device virtio-9p-pci,fsdev=results,mount_tag=results
)

log "kernel ${KERNEL}"
log "guest command: ${CMD}"
log "console log: ${CONSOLE_LOG} (timeout ${TIMEOUT}s)"
printf '%q ' "${QEMU[@]}" >"${OUT}/qemu-cmdline.txt"
echo >>"${OUT}/qemu-cmdline.txt"

# The console (kernel + guest-init + command output) goes to the log and, unless quiet, to our
# stdout. stdin is /dev/null so QEMU never puts a terminal into raw mode.
set +e
if [ "${VFIO_BROKER_VM_QUIET:-0}" = 1 ]; then
  timeout -k 15 "${TIMEOUT}" "${QEMU[@]}" </dev/null 2>&1 | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' >"${CONSOLE_LOG}"
else
  timeout -k 15 "${TIMEOUT}" "${QEMU[@]}" </dev/null 2>&1 | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' | tee "${CONSOLE_LOG}"
fi
QEMU_STATUS=${PIPESTATUS[0]}
set -e
ELAPSED=$(( $(date +%s) - T0 ))
echo "${ELAPSED}" >"${OUT}/vm-seconds"

if [ "${QEMU_STATUS}" -eq 124 ] || [ "${QEMU_STATUS}" -eq 137 ]; then
  log "ERROR: the VM did not finish within ${TIMEOUT}s (VFIO_BROKER_VM_TIMEOUT); last console lines:"
  tail -n 30 "${CONSOLE_LOG}" >&2
  exit 124
fi
if [ -f "${RESULTS}/guest-error" ]; then
  log "ERROR: guest-init failed: $(cat "${RESULTS}/guest-error") (console: ${CONSOLE_LOG}, dmesg: ${RESULTS}/dmesg.txt)"
  [ -f "${RESULTS}/dmesg.txt" ] && { log "last guest kernel messages:"; tail -n 15 "${RESULTS}/dmesg.txt" >&2; }
  exit 125
fi
if [ ! -f "${RESULTS}/exit-code" ]; then
  log "ERROR: the VM never reported an exit code (qemu exit status ${QEMU_STATUS}); last console lines:"
  tail -n 30 "${CONSOLE_LOG}" >&2
  exit 125
fi
RC="$(tr -dc '0-9' <"${RESULTS}/exit-code")"
[ -n "${RC}" ] || { log "ERROR: unreadable exit code in ${RESULTS}/exit-code"; exit 125; }
log "guest command exited with status ${RC}; VM ran $(fmt_secs "${ELAPSED}") (results: ${RESULTS})"
exit "${RC}"
