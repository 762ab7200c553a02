/**
 * Kernel release parsing and the version policy of the linux backend
 * (kernel-uapi.md §5.1, §5.2).
 */
import type { KernelProfile } from '../types.js';

/** [major, minor]; the patch level never changes the uAPI. */
export type KernelVersion = readonly [number, number];

/**
 * Oldest kernel the linux backend runs on. 6.13 added IOMMU_VIOMMU_ALLOC and
 * IOMMU_VDEVICE_ALLOC (§5.1), which the broker's object model needs, and
 * `linux-6.13` is the oldest behaviour profile the broker knows. A 6.6–6.12
 * kernel has cdevs and HWPTs but no vIOMMU: refused at startup, not degraded.
 */
export const MIN_KERNEL: KernelVersion = [6, 13];
/** First release that tombstones a vDEVICE at unbind (§4.3), i.e. profile `linux-6.17`. */
export const TOMBSTONE_KERNEL: KernelVersion = [6, 17];

/** `6.18.44-fc-v669` → [6, 18]; undefined when `release` does not start with `N.N`. */
export function parseRelease(release: string): KernelVersion | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release.trim());
  if (!m) return undefined;
  return [Number(m[1]), Number(m[2])];
}

export function versionAtLeast(v: KernelVersion, min: KernelVersion): boolean {
  return v[0] > min[0] || (v[0] === min[0] && v[1] >= min[1]);
}

export function formatVersion(v: KernelVersion): string {
  return `${v[0]}.${v[1]}`;
}

/**
 * The unbind profile (§4.3). Tombstones cannot be probed (§5.2), so the
 * release decides; IOMMU_HW_QUEUE_ALLOC arrived in the same release, so a
 * distro kernel with an older number that has it is treated as 6.17 too.
 */
export function profileFor(version: KernelVersion, hasHwQueueAlloc: boolean): KernelProfile {
  return versionAtLeast(version, TOMBSTONE_KERNEL) || hasHwQueueAlloc ? 'linux-6.17' : 'linux-6.13';
}
