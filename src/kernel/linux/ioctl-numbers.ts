/**
 * iommufd and VFIO ioctl request numbers (kernel-uapi.md §1).
 *
 * Every request of both families is a plain `_IO(';', nr)`: no direction and
 * no size bits, even where the header comments say _IOR/_IOW (§1.3). The
 * kernel compares the whole request value, so a wrongly encoded number is
 * ENOTTY rather than a different command (§1.1 "Exact match required").
 */

/** `IOMMUFD_TYPE` = `VFIO_TYPE` = ';' (§1.1). */
export const IOCTL_TYPE = 0x3b;
/** iommufd numbers start at 0x80; below that /dev/iommu answers as a VFIO container (§2 step 1). */
export const IOMMUFD_CMD_BASE = 0x80;
/** `VFIO_BASE`. */
export const VFIO_BASE = 100;

/**
 * Architectures whose `asm/ioctl.h` has `_IOC_NONE = 1` and `_IOC_DIRSHIFT =
 * 29`, so every `_IO` value gains `1 << 29` (§1.1). Names are `process.arch`
 * values; sparc and alpha are listed although Node has no build for them.
 * parisc uses NONE = 0 and is generic.
 */
const IOC_NONE_IS_ONE = new Set(['ppc', 'ppc64', 'mips', 'mipsel', 'mips64', 'mips64el', 'sparc', 'sparc64', 'alpha']);

/** The direction bits `_IO` contributes on `arch`. */
export function ioNoneBits(arch: string = process.arch): number {
  return IOC_NONE_IS_ONE.has(arch) ? 1 << 29 : 0;
}

/** `_IO(type, nr)` for `arch` (defaults to the running one); always a non-negative number. */
export function ioctlIO(type: number, nr: number, arch: string = process.arch): number {
  return (ioNoneBits(arch) | (type << 8) | nr) >>> 0;
}

export type IoctlFamily = 'iommufd' | 'vfio';

export interface IoctlDef {
  readonly family: IoctlFamily;
  /** The `nr` argument of `_IO`. */
  readonly nr: number;
  /** First mainline release with the ioctl, [major, minor] (§1.2, §5.1). */
  readonly since: readonly [number, number];
  /** Present only with CONFIG_IOMMUFD_TEST (§6). */
  readonly selftestOnly?: true;
}

const iommu = (k: number, major: number, minor: number): IoctlDef => ({
  family: 'iommufd',
  nr: IOMMUFD_CMD_BASE + k,
  since: [major, minor],
});
const vfio = (k: number, major: number, minor: number): IoctlDef => ({
  family: 'vfio',
  nr: VFIO_BASE + k,
  since: [major, minor],
});

/**
 * Every ioctl the broker knows, with its release. VFIO device ioctls are
 * dated by the cdev interface (6.6, §5.1), the only way this daemon reaches
 * them; VFIO_GET_API_VERSION is the container ioctl at the start of the range.
 */
export const IOCTL_DEFS = {
  IOMMU_DESTROY: iommu(0x00, 6, 2),
  IOMMU_IOAS_ALLOC: iommu(0x01, 6, 2),
  IOMMU_IOAS_ALLOW_IOVAS: iommu(0x02, 6, 2),
  IOMMU_IOAS_COPY: iommu(0x03, 6, 2),
  IOMMU_IOAS_IOVA_RANGES: iommu(0x04, 6, 2),
  IOMMU_IOAS_MAP: iommu(0x05, 6, 2),
  IOMMU_IOAS_UNMAP: iommu(0x06, 6, 2),
  IOMMU_OPTION: iommu(0x07, 6, 2),
  IOMMU_VFIO_IOAS: iommu(0x08, 6, 2),
  IOMMU_HWPT_ALLOC: iommu(0x09, 6, 6),
  IOMMU_GET_HW_INFO: iommu(0x0a, 6, 6),
  IOMMU_HWPT_SET_DIRTY_TRACKING: iommu(0x0b, 6, 7),
  IOMMU_HWPT_GET_DIRTY_BITMAP: iommu(0x0c, 6, 7),
  IOMMU_HWPT_INVALIDATE: iommu(0x0d, 6, 8),
  IOMMU_FAULT_QUEUE_ALLOC: iommu(0x0e, 6, 11),
  IOMMU_IOAS_MAP_FILE: iommu(0x0f, 6, 13),
  IOMMU_VIOMMU_ALLOC: iommu(0x10, 6, 13),
  IOMMU_VDEVICE_ALLOC: iommu(0x11, 6, 13),
  IOMMU_IOAS_CHANGE_PROCESS: iommu(0x12, 6, 13),
  IOMMU_VEVENTQ_ALLOC: iommu(0x13, 6, 15),
  IOMMU_HW_QUEUE_ALLOC: iommu(0x14, 6, 17),
  // IOMMUFD_CMD_BASE + 32: after the gap that leaves room for new commands (§6).
  IOMMU_TEST_CMD: { ...iommu(0x20, 6, 2), selftestOnly: true },
  VFIO_GET_API_VERSION: vfio(0, 3, 6),
  VFIO_DEVICE_GET_INFO: vfio(7, 6, 6),
  VFIO_DEVICE_GET_REGION_INFO: vfio(8, 6, 6),
  VFIO_DEVICE_GET_IRQ_INFO: vfio(9, 6, 6),
  VFIO_DEVICE_SET_IRQS: vfio(10, 6, 6),
  VFIO_DEVICE_RESET: vfio(11, 6, 6),
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: vfio(12, 6, 6),
  VFIO_DEVICE_PCI_HOT_RESET: vfio(13, 6, 6),
  VFIO_DEVICE_FEATURE: vfio(17, 6, 6),
  VFIO_DEVICE_BIND_IOMMUFD: vfio(18, 6, 6),
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: vfio(19, 6, 6),
  VFIO_DEVICE_DETACH_IOMMUFD_PT: vfio(20, 6, 6),
} as const satisfies Record<string, IoctlDef>;

export type IoctlName = keyof typeof IOCTL_DEFS;
export const IOCTL_NAMES = Object.keys(IOCTL_DEFS) as IoctlName[];

/** The request number of every ioctl for `arch`. */
export function ioctlNumbers(arch: string = process.arch): Readonly<Record<IoctlName, number>> {
  const out = {} as Record<IoctlName, number>;
  for (const name of IOCTL_NAMES) out[name] = ioctlIO(IOCTL_TYPE, IOCTL_DEFS[name].nr, arch);
  return Object.freeze(out);
}

/** Request numbers for the architecture this process runs on. */
export const IOCTL: Readonly<Record<IoctlName, number>> = ioctlNumbers();
