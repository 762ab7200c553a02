/**
 * IOMMUFD_TEST mock devices (kernel-uapi.md §6.2, §6.4): a kernel built with
 * CONFIG_IOMMUFD_TEST can create a device behind the mock IOMMU inside an
 * iommufd, which lets the broker's whole object graph run without PCI
 * hardware. How the mock maps onto the VFIO flow:
 *
 * | VFIO cdev flow                                   | mock device                                  |
 * |--------------------------------------------------|----------------------------------------------|
 * | open(vfioN) + BIND_IOMMUFD + ATTACH_IOMMUFD_PT(x) | TEST_CMD MOCK_DOMAIN{id: x}, one step        |
 * | bind's `out_devid` (IOMMUFD_OBJ_DEVICE)           | `out_idev_id`                                |
 * | ATTACH's returned HWPT                            | `out_hwpt_id`                                |
 * | the device fd itself                              | `out_stdev_id` (IOMMUFD_OBJ_SELFTEST)        |
 * | second ATTACH_IOMMUFD_PT (replace)                | TEST_CMD MOCK_DOMAIN_REPLACE{id: stdev, pt}  |
 * | close(device fd) = unbind (§4.5, tombstones §4.3) | IOMMU_DESTROY(stdev)                         |
 *
 * Differences: a mock device cannot exist unattached (no DETACH), its DEVICE
 * holds no reference on the iommufd file, so closing the iommufd destroys it
 * (§4.4), and IOMMU_DESTROY(idev) is EBUSY as for a VFIO DEVICE.
 */
import { kernelId, type KernelObjectId } from '../types.js';
import type { IoctlCaller } from './ioctl-call.js';
import { IOMMU_DESTROY_STRUCT, IOMMU_TEST_CMD_STRUCT, IOMMU_TEST_OP } from './structs.js';

export interface MockDevice {
  /** IOMMUFD_OBJ_SELFTEST: destroying it unbinds the device (the "device fd"). */
  stdevId: KernelObjectId;
  /** The HWPT the device was attached to (automatic when created on an IOAS). */
  hwptId: KernelObjectId;
  /** IOMMUFD_OBJ_DEVICE: `dev_id` for HWPT_ALLOC, GET_HW_INFO, VIOMMU_ALLOC, VDEVICE_ALLOC. */
  idevId: KernelObjectId;
}

/** `MOCK_FLAGS_DEVICE_*` bits for MOCK_DOMAIN_FLAGS (§6.2); others give EINVAL. */
export const MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0;
export const MOCK_FLAGS_DEVICE_PASID = 1 << 2;

/**
 * MOCK_DOMAIN (op 2), or MOCK_DOMAIN_FLAGS (op 12) when `devFlags` is given:
 * creates, binds and attaches a mock device to `ptId` (an IOAS or HWPT).
 * Async: attaching fills a page table from the IOAS's mappings.
 */
export async function mockDomain(
  caller: IoctlCaller,
  fd: number,
  ptId: KernelObjectId,
  devFlags?: number,
): Promise<MockDevice> {
  const out = await caller.call({
    fd,
    op: 'bind_iommufd',
    name: 'IOMMU_TEST_CMD',
    codec: IOMMU_TEST_CMD_STRUCT,
    values:
      devFlags === undefined
        ? { op: IOMMU_TEST_OP.MOCK_DOMAIN, id: ptId }
        : { op: IOMMU_TEST_OP.MOCK_DOMAIN_FLAGS, id: ptId, 'mock_domain_flags.dev_flags': devFlags },
    mode: 'async',
  });
  return {
    stdevId: kernelId(out['mock_domain.out_stdev_id']),
    hwptId: kernelId(out['mock_domain.out_hwpt_id']),
    idevId: kernelId(out['mock_domain.out_idev_id']),
  };
}

/** MOCK_DOMAIN_REPLACE (op 10): the mock's second ATTACH; returns the HWPT now attached. */
export async function mockDomainReplace(
  caller: IoctlCaller,
  fd: number,
  stdevId: KernelObjectId,
  ptId: KernelObjectId,
): Promise<KernelObjectId> {
  const out = await caller.call({
    fd,
    op: 'attach_pt',
    name: 'IOMMU_TEST_CMD',
    codec: IOMMU_TEST_CMD_STRUCT,
    values: { op: IOMMU_TEST_OP.MOCK_DOMAIN_REPLACE, id: stdevId, 'mock_domain_replace.pt_id': ptId },
    mode: 'async',
  });
  return kernelId(out['mock_domain_replace.pt_id']);
}

/** IOMMU_DESTROY(stdev): the mock's close(device fd); detaches, unbinds, tombstones its vDEVICE (§6.2). */
export async function destroyMockDevice(caller: IoctlCaller, fd: number, stdevId: KernelObjectId): Promise<void> {
  await caller.call({
    fd,
    op: 'close_device',
    name: 'IOMMU_DESTROY',
    codec: IOMMU_DESTROY_STRUCT,
    values: { id: stdevId },
    mode: 'async',
  });
}
