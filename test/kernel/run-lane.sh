#!/usr/bin/env bash
# The real-kernel lane end to end: host packages -> kernel (cached) -> layout check on the host
# (TS struct codecs and ioctl numbers vs the kernel's own uAPI headers) -> boot + guest command.
#
#   test/kernel/run-lane.sh                 # default guest command (see below)
#   test/kernel/run-lane.sh 'node test/kernel/guest/probe.mjs'
#   npm run test:kernel -- 'vitest run --config test/kernel/vitest.guest.config.ts -t bind'
#
# Default guest command: the smoke probe, followed by the guest vitest suite when
# test/kernel/vitest.guest.config.ts exists. Arguments and env are passed on to run-vm.sh.
# Exit status: the guest command's (124 timeout, 125 VM/guest-init failure; see run-vm.sh);
# 1 if the layout check failed (the VM is not booted then). VFIO_BROKER_SKIP_LAYOUT=1 skips it.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s)
step() { log "=== $* ==="; }

step "1/4 host packages"
t=$(date +%s)
"${KERNEL_LANE_DIR}/setup-host.sh"
SETUP_S=$(( $(date +%s) - t ))

step "2/4 kernel"
t=$(date +%s)
if [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ]; then
  log "using VFIO_BROKER_KERNEL_IMAGE=${VFIO_BROKER_KERNEL_IMAGE}"
else
  "${KERNEL_LANE_DIR}/build-kernel.sh" >/dev/null
fi
KERNEL_S=$(( $(date +%s) - t ))

step "3/4 layout check (host): TS codecs and ioctl numbers vs the kernel's uAPI headers"
t=$(date +%s)
LAYOUT_RESULT=skipped
if [ "${VFIO_BROKER_SKIP_LAYOUT:-0}" = 1 ]; then
  log "VFIO_BROKER_SKIP_LAYOUT=1: skipping the layout check"
else
  # The headers installed with the kernel we boot (build-kernel.sh writes uapi-include-path).
  if [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ]; then
    KDIR="$(dirname "${VFIO_BROKER_KERNEL_IMAGE}")"
  else
    KDIR="$(current_kernel_dir)" || die "no cached kernel entry after build-kernel.sh"
  fi
  if [ -r "${KDIR}/uapi-include-path" ]; then
    UAPI_INC="$(cat "${KDIR}/uapi-include-path")"
  elif [ -d "${KDIR}/usr/include/linux" ]; then
    UAPI_INC="${KDIR}/usr/include"
  else
    UAPI_INC=""
  fi
  if [ -z "${UAPI_INC}" ]; then
    [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ] || die "${KDIR} has no uapi-include-path; rebuild it (build-kernel.sh)"
    log "WARNING: no uAPI headers beside ${VFIO_BROKER_KERNEL_IMAGE}; skipping the layout check"
  else
    log "headers: ${UAPI_INC}"
    set +e
    (cd "${PROJECT_ROOT}" && VFIO_BROKER_UAPI_INCLUDE="${UAPI_INC}" \
      "${PROJECT_ROOT}/node_modules/.bin/vitest" run --config test/kernel/vitest.host.config.ts)
    LRC=$?
    set -e
    if [ "${LRC}" -ne 0 ]; then
      log "layout check FAILED (vitest exit ${LRC}): the linux backend's struct codecs, ioctl numbers or"
      log "constants differ from ${UAPI_INC} (see the differences above and"
      log "${VFIO_BROKER_VM_OUT:-${KERNEL_LANE_DIR}/.out}/layout/layout-report.json). Not booting the VM."
      log "timings: setup $(fmt_secs "${SETUP_S}"), kernel $(fmt_secs "${KERNEL_S}"), layout $(fmt_secs $(( $(date +%s) - t ))), total $(fmt_secs $(( $(date +%s) - T0 )))"
      log "lane FAILED (layout check)"
      exit 1
    fi
    LAYOUT_RESULT=passed
    log "layout check passed"
  fi
fi
LAYOUT_S=$(( $(date +%s) - t ))

step "4/4 guest run"
# Guest tests that run the daemon as a child process (restart.guest.test.ts) use this build;
# compiling inside the emulated guest is too slow, so it is made here, from this checkout.
log "compiling the daemon into .cache/test-dist for child-process tests"
(cd "${PROJECT_ROOT}" && "${PROJECT_ROOT}/node_modules/.bin/tsc" -p tsconfig.build.json --outDir .cache/test-dist)
if [ "$#" -eq 0 ] && [ -z "${VFIO_BROKER_GUEST_CMD:-}" ]; then
  CMD="node test/kernel/guest/probe.mjs"
  if [ -f "${PROJECT_ROOT}/test/kernel/vitest.guest.config.ts" ]; then
    CMD+=" && vitest run --config test/kernel/vitest.guest.config.ts"
  fi
  set -- "${CMD}"
fi
t=$(date +%s)
set +e
"${KERNEL_LANE_DIR}/run-vm.sh" "$@"
RC=$?
set -e
VM_S=$(( $(date +%s) - t ))

log "timings: setup $(fmt_secs "${SETUP_S}"), kernel $(fmt_secs "${KERNEL_S}"), layout $(fmt_secs "${LAYOUT_S}") (${LAYOUT_RESULT}), vm $(fmt_secs "${VM_S}"), total $(fmt_secs $(( $(date +%s) - T0 )))"
if [ "${RC}" -eq 0 ]; then log "lane PASSED"; else log "lane FAILED (exit status ${RC})"; fi
exit "${RC}"
