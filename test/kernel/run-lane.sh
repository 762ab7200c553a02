#!/usr/bin/env bash
# The real-kernel lane end to end: host packages -> kernel (cached) -> boot + guest command.
#
#   test/kernel/run-lane.sh                 # default guest command (see below)
#   test/kernel/run-lane.sh 'node test/kernel/guest/probe.mjs'
#   npm run test:kernel -- 'vitest run --config test/kernel/vitest.guest.config.ts -t bind'
#
# Default guest command: the smoke probe, followed by the guest vitest suite when
# test/kernel/vitest.guest.config.ts exists. Arguments and env are passed on to run-vm.sh.
# Exit status: the guest command's (124 timeout, 125 VM/guest-init failure; see run-vm.sh).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s)
step() { log "=== $* ==="; }

step "1/3 host packages"
t=$(date +%s)
"${KERNEL_LANE_DIR}/setup-host.sh"
SETUP_S=$(( $(date +%s) - t ))

step "2/3 kernel"
t=$(date +%s)
if [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ]; then
  log "using VFIO_BROKER_KERNEL_IMAGE=${VFIO_BROKER_KERNEL_IMAGE}"
else
  "${KERNEL_LANE_DIR}/build-kernel.sh" >/dev/null
fi
KERNEL_S=$(( $(date +%s) - t ))

step "3/3 guest run"
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

log "timings: setup $(fmt_secs "${SETUP_S}"), kernel $(fmt_secs "${KERNEL_S}"), vm $(fmt_secs "${VM_S}"), total $(fmt_secs $(( $(date +%s) - T0 )))"
if [ "${RC}" -eq 0 ]; then log "lane PASSED"; else log "lane FAILED (exit status ${RC})"; fi
exit "${RC}"
