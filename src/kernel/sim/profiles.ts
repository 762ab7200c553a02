/**
 * What differs between the kernels the sim can pretend to be. Every
 * version-dependent branch in the sim reads one of these traits, so the
 * differences are listed in one place (kernel-uapi.md §4.3, §5.1).
 */
import type { KernelOp, KernelProfile } from '../types.js';

export interface ProfileTraits {
  readonly profile: KernelProfile;
  /** `uname -r` the sim reports. */
  readonly release: string;
  /** [major, minor] used to decide which ioctls exist (§5.1). */
  readonly version: readonly [number, number];
  /**
   * 6.17+: unbind destroys the device's vDEVICE and tombstones its ID; the
   * vDEVICE pins the DEVICE (wait_cnt) and a device may have only one vDEVICE;
   * VDEVICE_ALLOC on a device being unbound is ENOENT (§3.11, §4.3).
   * 6.13–6.16: the vDEVICE holds only the struct device and outlives unbind.
   */
  readonly vdeviceBoundToDevice: boolean;
  /**
   * 6.17 moved the vIOMMU type check into `get_viommu_size`, before the
   * hwpt_id lookup (§3.10). In 6.13 the driver's `viommu_alloc` checked the
   * type only after the HWPT lookup and NEST_PARENT check.
   */
  readonly viommuTypeCheckedBeforeHwpt: boolean;
  /** IOMMU_HWPT_ALLOC_PASID exists (6.15+); before, bit 3 is an unknown flag. */
  readonly hwptAllocPasid: boolean;
  /**
   * The mock accepts IOMMU_HWPT_DATA_SELFTEST on a paging HWPT (generic-pt
   * mock, present in 7.2, §6.3). Older mocks refused any paging user data
   * with EOPNOTSUPP.
   */
  readonly mockPagingUserData: boolean;
  /** IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED is reported (7.1+, §3.8). */
  readonly atsNotSupportedCap: boolean;
}

export const PROFILE_TRAITS: Readonly<Record<KernelProfile, ProfileTraits>> = Object.freeze({
  'linux-6.13': Object.freeze({
    profile: 'linux-6.13',
    release: '6.13.0-sim',
    version: [6, 13] as const,
    vdeviceBoundToDevice: false,
    viommuTypeCheckedBeforeHwpt: false,
    hwptAllocPasid: false,
    mockPagingUserData: false,
    atsNotSupportedCap: false,
  }),
  'linux-6.17': Object.freeze({
    profile: 'linux-6.17',
    release: '7.2.13-sim',
    version: [7, 2] as const,
    vdeviceBoundToDevice: true,
    viommuTypeCheckedBeforeHwpt: true,
    hwptAllocPasid: true,
    mockPagingUserData: true,
    atsNotSupportedCap: true,
  }),
});

/** ioctl name and the first mainline release that has it (§1.2, §1.3, §5.1). */
const IOCTL_HISTORY: readonly (readonly [string, number, number])[] = [
  ['IOMMU_DESTROY', 6, 2],
  ['IOMMU_IOAS_ALLOC', 6, 2],
  ['IOMMU_IOAS_ALLOW_IOVAS', 6, 2],
  ['IOMMU_IOAS_COPY', 6, 2],
  ['IOMMU_IOAS_IOVA_RANGES', 6, 2],
  ['IOMMU_IOAS_MAP', 6, 2],
  ['IOMMU_IOAS_UNMAP', 6, 2],
  ['IOMMU_OPTION', 6, 2],
  ['IOMMU_VFIO_IOAS', 6, 2],
  ['IOMMU_HWPT_ALLOC', 6, 6],
  ['IOMMU_GET_HW_INFO', 6, 6],
  ['IOMMU_HWPT_SET_DIRTY_TRACKING', 6, 7],
  ['IOMMU_HWPT_GET_DIRTY_BITMAP', 6, 7],
  ['IOMMU_HWPT_INVALIDATE', 6, 8],
  ['IOMMU_FAULT_QUEUE_ALLOC', 6, 11],
  ['IOMMU_IOAS_MAP_FILE', 6, 13],
  ['IOMMU_VIOMMU_ALLOC', 6, 13],
  ['IOMMU_VDEVICE_ALLOC', 6, 13],
  ['IOMMU_IOAS_CHANGE_PROCESS', 6, 13],
  ['IOMMU_VEVENTQ_ALLOC', 6, 15],
  ['IOMMU_HW_QUEUE_ALLOC', 6, 17],
  // The sim always models a CONFIG_IOMMUFD_TEST kernel (selftest: true).
  ['IOMMU_TEST_CMD', 6, 2],
  ['VFIO_DEVICE_GET_INFO', 6, 6],
  ['VFIO_DEVICE_GET_REGION_INFO', 6, 6],
  ['VFIO_DEVICE_GET_IRQ_INFO', 6, 6],
  ['VFIO_DEVICE_SET_IRQS', 6, 6],
  ['VFIO_DEVICE_RESET', 6, 6],
  ['VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', 6, 6],
  ['VFIO_DEVICE_PCI_HOT_RESET', 6, 6],
  ['VFIO_DEVICE_FEATURE', 6, 6],
  ['VFIO_DEVICE_BIND_IOMMUFD', 6, 6],
  ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', 6, 6],
  ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 6, 6],
];

export function ioctlsFor(traits: ProfileTraits): string[] {
  const [major, minor] = traits.version;
  return IOCTL_HISTORY.filter(([, ma, mi]) => major > ma || (major === ma && minor >= mi)).map(
    ([name]) => name,
  );
}

/** The ioctl behind each KernelOp the sim can pretend is missing (SimKernelOptions.withoutIoctls). */
export const OP_IOCTL: Partial<Record<KernelOp, string>> = {
  ioas_map_file: 'IOMMU_IOAS_MAP_FILE',
  ioas_unmap: 'IOMMU_IOAS_UNMAP',
  viommu_alloc: 'IOMMU_VIOMMU_ALLOC',
  vdevice_alloc: 'IOMMU_VDEVICE_ALLOC',
  hwpt_alloc: 'IOMMU_HWPT_ALLOC',
  get_hw_info: 'IOMMU_GET_HW_INFO',
  hwpt_get_dirty_bitmap: 'IOMMU_HWPT_GET_DIRTY_BITMAP',
  hwpt_invalidate: 'IOMMU_HWPT_INVALIDATE',
};
