# shellcheck shell=bash
# Shared helpers for the real-kernel lane scripts. Sourced, not executed.

KERNEL_LANE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
PROJECT_ROOT="$(cd "${KERNEL_LANE_DIR}/../.." && pwd)"

# Kernel source package (Debian sid) and the cache location.
: "${VFIO_BROKER_KERNEL_SOURCE_PKG:=linux-source-7.2}"
: "${VFIO_BROKER_KERNEL_SUITE:=sid}"
: "${VFIO_BROKER_KERNEL_CACHE:=${HOME}/.cache/vfio-broker/kernel}"
: "${VFIO_BROKER_KERNEL_FRAGMENT:=${KERNEL_LANE_DIR}/kernel-config.fragment}"

ts() { date -u +%H:%M:%S; }
log() { printf '[%s] %s: %s\n' "$(ts)" "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] %s: ERROR: %s\n' "$(ts)" "$(basename "$0")" "$*" >&2; exit 1; }

# Human-readable duration of N seconds.
fmt_secs() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

# as_root CMD...: run as root, via sudo when we are not root.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The first Debian mirror URI already configured on this machine (deb822 or one-line format).
# Never hard-code a mirror host: reuse what the machine's apt already uses.
debian_mirror_uri() {
  local uri=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk '
      /^[[:space:]]*$/ { if (isdeb && !sec && u != "") { print u; exit } u=""; isdeb=0; sec=0; next }
      /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb" || $i == "deb-src") isdeb=1 }
      /^URIs:/ { u=$2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ /-security$/) sec=1 }
      END { if (isdeb && !sec && u != "") print u }
    ' /etc/apt/sources.list.d/debian.sources | head -n1)"
  fi
  if [ -z "${uri}" ] && [ -r /etc/apt/sources.list ]; then
    uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' /etc/apt/sources.list | head -n1)"
  fi
  [ -n "${uri}" ] || die "could not find a Debian mirror URI in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  printf '%s\n' "${uri%/}"
}

# Keyring used by the configured Debian source (falls back to the standard archive keyring).
debian_keyring() {
  local kr=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    kr="$(awk '/^Signed-By:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
  fi
  [ -n "${kr}" ] && [ -r "${kr}" ] || kr=/usr/share/keyrings/debian-archive-keyring.gpg
  printf '%s\n' "${kr}"
}

fragment_hash() { sha256sum "${VFIO_BROKER_KERNEL_FRAGMENT}" | cut -c1-12; }

# The cache entry to boot: the newest complete entry built from the current fragment; failing
# that, the one named by ${VFIO_BROKER_KERNEL_CACHE}/current (written by build-kernel.sh), with
# a warning. Returns 1 when there is none.
current_kernel_dir() {
  local d best="" hash
  hash="$(fragment_hash)"
  for d in "${VFIO_BROKER_KERNEL_CACHE}"/*-"${hash}"; do
    [ -f "${d}/.complete" ] && [ -f "${d}/bzImage" ] && best="${d}"
  done
  if [ -n "${best}" ]; then
    printf '%s\n' "${best}"
    return 0
  fi
  local f="${VFIO_BROKER_KERNEL_CACHE}/current"
  [ -r "${f}" ] || return 1
  d="${VFIO_BROKER_KERNEL_CACHE}/$(cat "${f}")"
  [ -f "${d}/bzImage" ] || return 1
  log "WARNING: no kernel built from the current fragment (${hash}); booting ${d##*/} (run build-kernel.sh)"
  printf '%s\n' "${d}"
}
