#!/usr/bin/env bash
# Installs the host packages the real-kernel lane needs (Debian/Ubuntu, apt), only if missing.
#   qemu-system-x86  : QEMU with q35, intel-iommu, the edu device and virtio-9p
#   flex bison bc libelf-dev libssl-dev cpio make gcc : kernel build
#   xz-utils         : unpack linux-source-*.tar.xz
#   rsync            : `make headers_install` (uAPI headers for layout checks)
#   python3          : used by the kernel build scripts
#   gdb              : layout check: reads the struct member list from DWARF (`ptype /o`)
#   ca-certificates, debian-archive-keyring : fetching and verifying the sid index
# Idempotent: exits quickly when everything is present. Set VFIO_BROKER_SKIP_SETUP=1 to skip.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ "${VFIO_BROKER_SKIP_SETUP:-0}" = 1 ]; then
  log "VFIO_BROKER_SKIP_SETUP=1: not checking host packages"
  exit 0
fi

PACKAGES=(
  qemu-system-x86
  flex bison bc libelf-dev libssl-dev cpio
  make gcc libc6-dev xz-utils rsync python3 ca-certificates debian-archive-keyring
  gdb
)

command -v dpkg-query >/dev/null 2>&1 || die "this lane needs a Debian-based host (dpkg/apt not found)"

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${db:Status-Status}\n' "${p}" 2>/dev/null | grep -qx installed; then
    missing+=("${p}")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "all host packages present"
else
  log "installing missing packages: ${missing[*]}"
  start=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the index once if it is empty or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    log "apt-get update"
    as_root apt-get update -q
  fi
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  log "packages installed in $(fmt_secs $(( $(date +%s) - start )))"
fi

# Sanity: the QEMU we got must have what the lane uses.
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"
devs="$(qemu-system-x86_64 -device help 2>&1)"
for d in intel-iommu edu virtio-9p-pci; do
  grep -q "\"${d}\"" <<<"${devs}" || die "this qemu-system-x86_64 has no -device ${d}"
done
log "qemu: $(qemu-system-x86_64 --version | head -n1)"
