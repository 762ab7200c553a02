/**
 * The kernel boundary: one interface, two backends (`sim` and `linux`).
 *
 * Every method mirrors one syscall or ioctl of the iommufd / VFIO-cdev uAPI
 * (../shared/reference/kernel-uapi.md). Methods either succeed with exactly
 * the kernel's effect or reject with a KernelError carrying the errno, and
 * then have no effect (the kernel's own "nothing changes" guarantee), except
 * where the uAPI documents partial progress (IOAS_UNMAP).
 */
import type { ErrnoName } from './errno.js';

/** An iommufd object ID: u32, lowest free first, reused at once after destroy. */
export type KernelObjectId = number & { readonly __kernelObjectId: unique symbol };

/** An open `/dev/iommu` file. Opaque to everything outside the backend. */
export interface IommufdFile {
  readonly kind: 'iommufd';
  /** Backend-local number, for logs only (an fd number on linux). */
  readonly fdNumber: number;
}

/** An open `/dev/vfio/devices/vfioN` file. Opaque outside the backend. */
export interface DeviceFile {
  readonly kind: 'device';
  readonly fdNumber: number;
  readonly cdev: string;
}

/** Every kernel call the broker makes; used for fault injection and metrics. */
export type KernelOp =
  | 'open_iommufd'
  | 'close_iommufd'
  | 'open_device'
  | 'close_device'
  | 'bind_iommufd'
  | 'attach_pt'
  | 'detach_pt'
  | 'destroy'
  | 'ioas_alloc'
  | 'hwpt_alloc'
  | 'viommu_alloc'
  | 'vdevice_alloc'
  | 'get_hw_info'
  | 'ioas_map'
  | 'ioas_map_file'
  | 'ioas_unmap'
  | 'ioas_iova_ranges'
  | 'device_get_info'
  | 'device_reset'
  | 'adopt_file'
  | 'hwpt_get_dirty_bitmap'
  | 'hwpt_invalidate';

export const KERNEL_OPS: readonly KernelOp[] = [
  'open_iommufd',
  'close_iommufd',
  'open_device',
  'close_device',
  'bind_iommufd',
  'attach_pt',
  'detach_pt',
  'destroy',
  'ioas_alloc',
  'hwpt_alloc',
  'viommu_alloc',
  'vdevice_alloc',
  'get_hw_info',
  'ioas_map',
  'ioas_map_file',
  'ioas_unmap',
  'ioas_iova_ranges',
  'device_get_info',
  'device_reset',
];

/**
 * Kernel calls of the restart reconcile (adoptFile, lookupProbe), left out of
 * KERNEL_OPS: they run once at start on the bare backend, before the broker
 * and its decorators (metrics, fault injection) exist.
 */
export const RESTART_OPS: readonly KernelOp[] = ['adopt_file', 'hwpt_get_dirty_bitmap', 'hwpt_invalidate'];

export class KernelError extends Error {
  override readonly name = 'KernelError';
  constructor(
    readonly errno: ErrnoName | `ERRNO_${number}`,
    readonly op: KernelOp,
    detail?: string,
  ) {
    super(`${op}: ${errno}${detail ? ` (${detail})` : ''}`);
  }
}

export function isKernelError(err: unknown, errno?: ErrnoName): err is KernelError {
  return err instanceof KernelError && (errno === undefined || err.errno === errno);
}

/**
 * Unbind behaviour of the running kernel (kernel-uapi.md §4.3):
 * - `linux-6.13`: 6.13–6.16. A vDEVICE outlives its device's unbind and stays
 *   destroyable; several vDEVICEs per device are allowed.
 * - `linux-6.17`: 6.17+. Unbind destroys the vDEVICE and tombstones its ID
 *   (ENOENT forever, never reused); one vDEVICE per device.
 */
export type KernelProfile = 'linux-6.13' | 'linux-6.17';
export const KERNEL_PROFILES: readonly KernelProfile[] = ['linux-6.13', 'linux-6.17'];

/** HWPT_ALLOC flag bits (iommufd.h). */
export const HWPT_ALLOC_NEST_PARENT = 1;
export const HWPT_ALLOC_DIRTY_TRACKING = 2;
export const HWPT_FAULT_ID_VALID = 4;
export const HWPT_ALLOC_PASID = 8;

/** Type codes the kernel uses for vIOMMUs, HWPT data and HW info. */
export const VIOMMU_TYPE = { ARM_SMMUV3: 1, TEGRA241_CMDQV: 2, SELFTEST: 0xdeadbeef } as const;
export const HWPT_DATA_TYPE = { NONE: 0, VTD_S1: 1, ARM_SMMUV3: 2, AMD_GUEST: 3, SELFTEST: 0xdead } as const;
export const HW_INFO_TYPE = { NONE: 0, INTEL_VTD: 1, ARM_SMMUV3: 2, TEGRA241_CMDQV: 3, AMD: 4, SELFTEST: 0xfeedbeef } as const;

export interface HwptAllocArgs {
  flags: number;
  devId: KernelObjectId;
  /** IOAS, nest-parent HWPT_PAGING, or vIOMMU. */
  ptId: KernelObjectId;
  dataType: number;
  data: Uint8Array;
}

export interface ViommuAllocArgs {
  type: number;
  devId: KernelObjectId;
  hwptId: KernelObjectId;
}

export interface VdeviceAllocArgs {
  viommuId: KernelObjectId;
  devId: KernelObjectId;
  virtId: bigint;
}

export interface HwInfo {
  type: number;
  data: Uint8Array;
  capabilities: bigint;
  maxPasidLog2: number;
}

/** Access of an IOAS mapping; neither is EINVAL in the kernel (§3.3). Unset means granted. */
export interface MapAccess {
  readable?: boolean | undefined;
  writeable?: boolean | undefined;
}

/** IOMMU_IOAS_MAP_FILE arguments (§3.4). */
export interface IoasMapFileArgs extends MapAccess {
  ioasId: KernelObjectId;
  /** An fd of this process: a memfd (or hugetlbfs file, or on 6.19+ a supported dma-buf). */
  fd: number;
  /** Byte offset in the file. */
  start: bigint;
  length: bigint;
  /** Fixed IOVA (IOMMU_IOAS_MAP_FIXED_IOVA); undefined lets the kernel choose. */
  iova?: bigint | undefined;
}

/** IOMMU_IOAS_UNMAP's unmap-everything request (§3.5): iova 0, length U64_MAX. */
export const UNMAP_ALL = { iova: 0n, length: 0xffff_ffff_ffff_ffffn } as const;

/** A PCI function as the host sees it (sysfs on linux, config on sim). */
export interface PciFunction {
  /** Domain:bus:device.function, e.g. `0000:00:04.0`. */
  bdf: string;
  vendorId: number;
  deviceId: number;
  iommuGroup: number;
  /** The VFIO cdev name (`vfio0`) when bound to a VFIO driver. */
  cdev: string | undefined;
  driver: string | undefined;
  description?: string;
}

export interface KernelCapabilities {
  backend: 'sim' | 'linux';
  /** `uname -r` on linux; the modelled release on sim. */
  release: string;
  profile: KernelProfile;
  /** ioctl names present, e.g. `IOMMU_VIOMMU_ALLOC`. */
  ioctls: string[];
  /** The IOMMUFD_TEST interface (mock devices) is available. */
  selftest: boolean;
}

/**
 * A lookup ioctl sent with arguments that make it read-only, to learn whether
 * an object ID is still alive at restart (object-probe.ts says which per
 * type, and why). `dataType` is HWPT_INVALIDATE's `data_type`.
 */
export type LookupIoctl = 'IOMMU_IOAS_IOVA_RANGES' | 'IOMMU_GET_HW_INFO' | 'IOMMU_HWPT_GET_DIRTY_BITMAP' | 'IOMMU_HWPT_INVALIDATE';
export interface LookupProbe {
  ioctl: LookupIoctl;
  id: KernelObjectId;
  dataType?: number;
}

export interface KernelBackend {
  readonly name: 'sim' | 'linux';
  probe(): Promise<KernelCapabilities>;
  listPciFunctions(): Promise<PciFunction[]>;

  openIommufd(): Promise<IommufdFile>;
  /** close(2) never fails; objects are freed once nothing else holds the file. */
  closeIommufd(file: IommufdFile): Promise<void>;

  openDevice(cdev: string): Promise<DeviceFile>;
  /** close(2) of a device fd: detach, unbind, and (6.17+) tombstone its vDEVICE. Never fails. */
  closeDevice(file: DeviceFile): Promise<void>;

  /** VFIO_DEVICE_BIND_IOMMUFD; returns out_devid. */
  bindIommufd(device: DeviceFile, iommufd: IommufdFile): Promise<KernelObjectId>;
  /** VFIO_DEVICE_ATTACH_IOMMUFD_PT; attaching again replaces. Returns the HWPT attached. */
  attachPt(device: DeviceFile, ptId: KernelObjectId): Promise<KernelObjectId>;
  /** VFIO_DEVICE_DETACH_IOMMUFD_PT; succeeds even when nothing was attached. */
  detachPt(device: DeviceFile): Promise<void>;

  destroy(iommufd: IommufdFile, id: KernelObjectId): Promise<void>;
  ioasAlloc(iommufd: IommufdFile): Promise<KernelObjectId>;
  hwptAlloc(iommufd: IommufdFile, args: HwptAllocArgs): Promise<KernelObjectId>;
  viommuAlloc(iommufd: IommufdFile, args: ViommuAllocArgs): Promise<KernelObjectId>;
  vdeviceAlloc(iommufd: IommufdFile, args: VdeviceAllocArgs): Promise<KernelObjectId>;
  getHwInfo(iommufd: IommufdFile, devId: KernelObjectId): Promise<HwInfo>;

  /** IOMMU_IOAS_MAP_FILE (6.13+, §3.4); returns the IOVA. Pins the file's pages. */
  ioasMapFile(iommufd: IommufdFile, args: IoasMapFileArgs): Promise<bigint>;
  /**
   * IOMMU_IOAS_UNMAP (§3.5); returns the bytes unmapped. The one call with
   * partial progress: on error, areas before the failing one may be gone.
   */
  ioasUnmap(iommufd: IommufdFile, ioasId: KernelObjectId, iova: bigint, length: bigint): Promise<bigint>;

  /**
   * The OS fd of an open device file in this process, to hand to a VMM
   * (SCM_RIGHTS); undefined once it is closed. On linux it is the VFIO cdev
   * fd itself; on sim a memfd standing in for it.
   */
  osFd?(file: DeviceFile): number | undefined;

  /**
   * Managed devices (libvirt-style): give the function to vfio-pci, or back
   * to the driver it had. Backends without driver control omit these.
   */
  prepareDevice?(bdf: string): Promise<PciFunction>;
  releaseDevice?(bdf: string): Promise<PciFunction | undefined>;

  /**
   * Calls `listener` when the host asks for a device back (vfio-pci's request
   * IRQ: a driver unbind in sysfs or a surprise removal). Until the device fd
   * is closed the kernel blocks that unbind (kernel-uapi.md §4.5).
   */
  onDeviceRequest?(listener: (bdf: string) => void): void;

  // ---- Restart without teardown (src/broker/restore.ts) ----

  /**
   * The OS fd behind an open file, for the service manager's fd store: the
   * store's copy keeps the kernel file (and every VM's DMA) alive while the
   * daemon restarts. linux: the fd itself; sim: a memfd standing in for it.
   */
  storeFd?(file: IommufdFile | DeviceFile): number | undefined;
  /**
   * Takes over an fd handed back at restart (LISTEN_FDS): an iommufd or a
   * VFIO device cdev; anything else is EBADF. The backend owns it from then on.
   */
  adoptFile?(fd: number): Promise<IommufdFile | DeviceFile>;
  /** One read-only lookup (object-probe.ts): resolves when the kernel answers 0, rejects with its errno. */
  lookupProbe?(iommufd: IommufdFile, probe: LookupProbe): Promise<void>;
  /** VFIO_DEVICE_GET_INFO: true when the device file is bound, false on EINVAL (unbound, §3.15). */
  deviceBound?(device: DeviceFile): Promise<boolean>;

  /** Releases everything the backend holds (used at daemon exit and in tests). */
  shutdown(): Promise<void>;
}

export function kernelId(n: number): KernelObjectId {
  return n as KernelObjectId;
}
