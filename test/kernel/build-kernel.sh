#!/usr/bin/env bash
# Builds (once) a small x86_64 kernel with iommufd, the iommufd self-test, VFIO cdev, vfio-pci,
# the emulated Intel IOMMU and 9p root, from Debian's linux-source package (sid suite).
#
# Cache entry: ${VFIO_BROKER_KERNEL_CACHE}/<source-version>-<sha256(fragment):12>/
#   bzImage             the kernel the lane boots
#   config              the final .config
#   usr/include         `make headers_install` output (uAPI headers: linux/iommufd.h, linux/vfio.h)
#                       plus iommufd_test.h (drivers/iommu/iommufd/, the self-test ABI)
#   uapi-include-path   absolute path of usr/include, for -I in layout checks
#   source-version      e.g. 7.2.13-1
# ${VFIO_BROKER_KERNEL_CACHE}/current names the entry last built or selected.
#
# When an entry for this fragment already exists, nothing is downloaded or built (sid moves:
# set VFIO_BROKER_KERNEL_REFRESH=1 to look up the newest source version and build it if new).
# Prints the cache entry directory on stdout; all progress goes to stderr.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s)
PKG="${VFIO_BROKER_KERNEL_SOURCE_PKG}"
SERIES="${PKG#linux-source-}"               # 7.2
FRAG="${VFIO_BROKER_KERNEL_FRAGMENT}"
[ -r "${FRAG}" ] || die "config fragment not found: ${FRAG}"
HASH="$(fragment_hash)"
CACHE="${VFIO_BROKER_KERNEL_CACHE}"
JOBS="${VFIO_BROKER_KERNEL_JOBS:-$(nproc)}"
REQUIRED_OPTS=(IOMMUFD IOMMUFD_TEST VFIO_DEVICE_CDEV VFIO_PCI INTEL_IOMMU 9P_FS NET_9P_VIRTIO OVERLAY_FS)

mkdir -p "${CACHE}"
# One build at a time per cache (concurrent lane runs wait here).
exec 9>"${CACHE}/.lock"
if ! flock -n 9; then
  log "another build holds ${CACHE}/.lock; waiting"
  flock 9
fi

# --- 1. Is there already a kernel for this fragment? -----------------------------------------
find_cached() {
  # Newest (by version sort) entry for this series and fragment hash that has a bzImage.
  local d best=""
  for d in "${CACHE}/${SERIES}".*"-${HASH}"; do
    [ -f "${d}/bzImage" ] && [ -f "${d}/.complete" ] || continue
    best="${d}"
  done
  [ -n "${best}" ] || return 1
  printf '%s\n' "${best}"
}

select_entry() {
  basename "$1" >"${CACHE}/current"
  log "kernel: $1/bzImage ($(du -h "$1/bzImage" | cut -f1), source $(cat "$1/source-version"))"
  log "uapi headers: $(cat "$1/uapi-include-path")"
  printf '%s\n' "$1"
}

if [ -n "${VFIO_BROKER_KERNEL_IMAGE:-}" ]; then
  die "VFIO_BROKER_KERNEL_IMAGE is set (${VFIO_BROKER_KERNEL_IMAGE}); nothing to build"
fi

if [ "${VFIO_BROKER_KERNEL_REFRESH:-0}" != 1 ] && [ -z "${VFIO_BROKER_KERNEL_SOURCE_VERSION:-}" ] \
   && entry="$(find_cached)"; then
  log "cache hit (fragment ${HASH}); skipping download and build"
  select_entry "${entry}"
  exit 0
fi

# --- 2. Private apt state for the sid suite (the machine's apt setup is untouched) -------------
APT_DIR="${CACHE}/apt"
mkdir -p "${APT_DIR}/lists/partial" "${APT_DIR}/cache/archives/partial" "${CACHE}/downloads"
MIRROR="$(debian_mirror_uri)"
KEYRING="$(debian_keyring)"
printf 'deb [signed-by=%s] %s %s main\n' "${KEYRING}" "${MIRROR}" "${VFIO_BROKER_KERNEL_SUITE}" \
  >"${APT_DIR}/sources.list"
APT=(apt-get -q
  -o "Dir::Etc::SourceList=${APT_DIR}/sources.list"
  -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=${APT_DIR}/lists"
  -o "Dir::Cache=${APT_DIR}/cache"
  -o Dir::Etc::Preferences=/dev/null
  -o Dir::Etc::PreferencesParts=/dev/null
  -o APT::Sandbox::User=root)

t=$(date +%s)
log "apt-get update (suite ${VFIO_BROKER_KERNEL_SUITE} of ${MIRROR}, private state in ${APT_DIR})"
"${APT[@]}" update >&2
APTCACHE=(apt-cache "${APT[@]:2}")
VERSION="${VFIO_BROKER_KERNEL_SOURCE_VERSION:-$("${APTCACHE[@]}" show --no-all-versions "${PKG}" 2>/dev/null \
  | awk '/^Version:/ { print $2; exit }')}"
[ -n "${VERSION}" ] || die "${PKG} is not in ${VFIO_BROKER_KERNEL_SUITE} any more; set VFIO_BROKER_KERNEL_SOURCE_PKG (e.g. linux-source-7.3 with VFIO_BROKER_KERNEL_SUITE=trixie-backports) and check the fragment still applies"
log "${PKG} ${VERSION}"
ENTRY="${CACHE}/${VERSION}-${HASH}"
if [ -f "${ENTRY}/.complete" ]; then
  log "cache hit for ${VERSION}-${HASH}"
  select_entry "${ENTRY}"
  exit 0
fi

# --- 3. Download and unpack the source --------------------------------------------------------
DEB="${CACHE}/downloads/${PKG}_${VERSION//:/%3a}_all.deb"   # apt-get download's file name
if [ ! -f "${DEB}" ]; then
  log "downloading ${PKG}=${VERSION} (about 160 MB)"
  ( cd "${CACHE}/downloads" && "${APT[@]}" download "${PKG}=${VERSION}" >&2 )
  [ -f "${DEB}" ] || die "apt-get download did not produce ${DEB}"
fi
log "index + download took $(fmt_secs $(( $(date +%s) - t )))"

BUILD="${CACHE}/build/${VERSION}"
SRC="${BUILD}/linux"
if [ ! -f "${BUILD}/.unpacked" ]; then
  t=$(date +%s)
  rm -rf "${BUILD}"
  mkdir -p "${BUILD}/deb" "${SRC}"
  log "unpacking ${DEB##*/}"
  dpkg -x "${DEB}" "${BUILD}/deb"
  TARBALL=""
  for f in "${BUILD}/deb/usr/src/${PKG}".tar.*; do [ -f "${f}" ] && TARBALL="${f}" && break; done
  [ -n "${TARBALL}" ] || die "no usr/src/${PKG}.tar.* in ${DEB}"
  tar -xf "${TARBALL}" -C "${SRC}" --strip-components=1
  rm -rf "${BUILD}/deb"
  touch "${BUILD}/.unpacked"
  log "unpacked in $(fmt_secs $(( $(date +%s) - t )))"
else
  log "reusing unpacked source ${SRC}"
fi

# --- 4. Configure: allnoconfig + fragment + olddefconfig, then verify ------------------------
cd "${SRC}"
if [ ! -f .config ] || [ "$(cat .fragment-hash 2>/dev/null)" != "${HASH}" ]; then
  log "configuring: allnoconfig + ${FRAG##*/} + olddefconfig"
  make -s allnoconfig >&2
  scripts/kconfig/merge_config.sh -m .config "${FRAG}" >"${BUILD}/merge_config.log" 2>&1 \
    || { cat "${BUILD}/merge_config.log" >&2; die "merge_config.sh failed"; }
  make -s olddefconfig >&2
  echo "${HASH}" >.fragment-hash
fi
bad=()
for o in "${REQUIRED_OPTS[@]}"; do
  grep -qx "CONFIG_${o}=y" .config || bad+=("CONFIG_${o}")
done
if [ "${#bad[@]}" -gt 0 ]; then
  grep -E 'Value requested|Actual value' -A1 "${BUILD}/merge_config.log" >&2 || true
  rm -f .fragment-hash
  die "required options did not survive olddefconfig: ${bad[*]} (see ${BUILD}/merge_config.log; IOMMUFD_TEST needs DEBUG_KERNEL, FAULT_INJECTION, RUNTIME_TESTING_MENU, IOMMU_PT_AMDV1)"
fi
log "config OK: ${REQUIRED_OPTS[*]/#/CONFIG_} all =y"

# --- 5. Build ---------------------------------------------------------------------------------
t=$(date +%s)
log "make -j${JOBS} bzImage (about 7-11 min on 2 cores); log: ${BUILD}/make.log"
# sleep gets /dev/null so a leftover sleep never holds our stderr (a caller's pipe) open.
# shellcheck disable=SC2217
( while sleep 60 </dev/null >/dev/null 2>&1; do
    log "  ...building, $(fmt_secs $(( $(date +%s) - t ))) elapsed, $(grep -c '^  CC' "${BUILD}/make.log" 2>/dev/null || echo 0) files compiled"
  done ) &
TICKER=$!
trap 'kill "${TICKER}" 2>/dev/null || true' EXIT
if ! make -j"${JOBS}" bzImage >"${BUILD}/make.log" 2>&1; then
  tail -n 40 "${BUILD}/make.log" >&2
  die "kernel build failed (full log: ${BUILD}/make.log)"
fi
kill "${TICKER}" 2>/dev/null || true
BUILD_SECS=$(( $(date +%s) - t ))
log "bzImage built in $(fmt_secs "${BUILD_SECS}")"

# --- 6. Publish the cache entry ----------------------------------------------------------------
rm -rf "${ENTRY}.tmp"
mkdir -p "${ENTRY}.tmp"
cp arch/x86/boot/bzImage "${ENTRY}.tmp/bzImage"
cp .config "${ENTRY}.tmp/config"
cp "${FRAG}" "${ENTRY}.tmp/kernel-config.fragment"
make -s headers_install INSTALL_HDR_PATH="${ENTRY}.tmp/usr" >&2 \
  || die "make headers_install failed (it needs rsync: run test/kernel/setup-host.sh)"
# The self-test ABI (struct iommu_test_cmd, IOMMU_TEST_OP_*) is not uAPI; keep it beside them.
cp drivers/iommu/iommufd/iommufd_test.h "${ENTRY}.tmp/usr/include/iommufd_test.h"
echo "${VERSION}" >"${ENTRY}.tmp/source-version"
make -s kernelrelease >"${ENTRY}.tmp/kernel-release"
echo "${BUILD_SECS}" >"${ENTRY}.tmp/build-seconds"
rm -rf "${ENTRY}"
mv "${ENTRY}.tmp" "${ENTRY}"
echo "${ENTRY}/usr/include" >"${ENTRY}/uapi-include-path"
touch "${ENTRY}/.complete"

if [ "${VFIO_BROKER_KERNEL_KEEP_BUILD:-0}" != 1 ]; then
  log "removing build tree ${BUILD} (set VFIO_BROKER_KERNEL_KEEP_BUILD=1 to keep it)"
  cd /
  rm -rf "${BUILD}"
fi

log "total $(fmt_secs $(( $(date +%s) - T0 )))"
select_entry "${ENTRY}"
