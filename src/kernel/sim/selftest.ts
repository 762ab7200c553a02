/**
 * IOMMUFD_TEST mock devices in the sim (kernel-uapi.md §6.2, §6.4), mirroring
 * `iommufd_test_mock_domain` and `iommufd_test_mock_domain_replace` in
 * drivers/iommu/iommufd/selftest.c step by step, because the order of the
 * steps is visible in the IDs:
 *
 * 1. `iommufd_object_alloc(SELFTEST)` reserves the stdev ID first;
 * 2. `mock_dev_create` checks `dev_flags` (EINVAL) and registers
 *    `iommufd_mockN` in a fresh IOMMU group behind the mock IOMMU;
 * 3. `iommufd_device_bind` creates the DEVICE (idev), the second ID;
 * 4. `iommufd_device_attach(pt_id)` attaches it; an IOAS allocates the
 *    automatic HWPT, the third ID ("TEST_CMD op 2 on IOAS 1 → stdev 2,
 *    hwpt 4, idev 3", §6.4);
 * 5. the stdev is published. A failure in 2–4 undoes everything, so no ID leaks.
 *
 * Unlike a VFIO DEVICE, the mock DEVICE takes no reference on the iommufd
 * file (§4.4), so closing the iommufd destroys mock devices.
 */
import type { KernelObjectId } from '../types.js';
import { IdAllocator } from './ids.js';
import type { SimPciFunction } from './inventory.js';
import {
  fail,
  MOCK_FLAGS_DEVICE_NO_DIRTY,
  MOCK_FLAGS_DEVICE_PASID,
  type DeviceObject,
  type IommufdContext,
  type SelftestObject,
} from './objects.js';
import { changePt, unbindDevice, type Host } from './vfio.js';

/** The mock IOMMU instance (`mock_iommu.iommu_dev`): never the IOMMU of an inventory device. */
export const MOCK_IOMMU_INSTANCE = 'iommufd_selftest_iommu';

const VALID_DEV_FLAGS = MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_PASID;

/** The IDs of a mock device, as LinuxKernel.selftestMockDomain returns them (§6.2). */
export interface SimMockDevice {
  /** IOMMUFD_OBJ_SELFTEST: destroying it unbinds the device (the "device fd"). */
  stdevId: KernelObjectId;
  /** The HWPT the device was attached to (automatic when created on an IOAS). */
  hwptId: KernelObjectId;
  /** IOMMUFD_OBJ_DEVICE: `dev_id` for HWPT_ALLOC, GET_HW_INFO, VIOMMU_ALLOC, VDEVICE_ALLOC. */
  idevId: KernelObjectId;
}

/** The three IDs MOCK_DOMAIN returns (§6.1 `mock_domain.out_*`). */
export interface MockDomainResult {
  stdevId: number;
  hwptId: number;
  idevId: number;
}

/**
 * The mock bus, global to the (simulated) host like the kernel's
 * `mock_dev_ida` and IOMMU group IDs. Group numbers are the lowest free ones
 * above every inventory group. Device names are never reused: vDEVICEs find
 * their device by name here, and on 6.13 a vDEVICE outlives its mock device
 * holding the struct device, so the kernel would not reuse that name either
 * (names are not visible through the uAPI).
 */
export class MockBus {
  private nextName = 0;
  private readonly groups: IdAllocator;

  constructor(inventory: readonly SimPciFunction[]) {
    const top = inventory.reduce((m, f) => Math.max(m, f.iommuGroup), -1);
    this.groups = new IdAllocator(top + 1, 0x7fff_ffff);
  }

  create(): SimPciFunction {
    const group = this.groups.alloc();
    if (group === undefined) fail('ENOMEM', 'IOMMU group IDs exhausted');
    return Object.freeze({
      bdf: `iommufd_mock${this.nextName++}`,
      vendorId: 0,
      deviceId: 0,
      iommuGroup: group,
      cdev: undefined,
      driver: undefined,
      iommu: MOCK_IOMMU_INSTANCE,
    });
  }

  /** `mock_dev_destroy`: the IOMMU group goes away with the device. */
  destroy(fn: SimPciFunction): void {
    this.groups.free(fn.iommuGroup);
  }
}

/** IOMMU_TEST_OP_MOCK_DOMAIN (2), or MOCK_DOMAIN_FLAGS (12) with `devFlags` (§6.2). */
export function mockDomain(host: Host, bus: MockBus, ctx: IommufdContext, ptId: number, devFlags: number): MockDomainResult {
  const stdevId = ctx.reserve();
  try {
    if (devFlags & ~VALID_DEV_FLAGS) fail('EINVAL', `unknown mock dev_flags 0x${devFlags.toString(16)}`);
    const fn = bus.create();
    try {
      // iommufd_device_bind: a mock device has no MSI or group-sibling checks.
      // users 1: the selftest object's "driver" reference until unbind, so
      // DESTROY(idev) is EBUSY (§6.2).
      const dev = ctx.insert(
        (id): DeviceObject => ({
          id,
          type: 'DEVICE',
          users: 1,
          pci: fn,
          mock: Object.freeze({ flags: devFlags }),
          destroying: false,
          vdevs: new Set(),
        }),
      );
      let hwptId: number;
      try {
        hwptId = changePt(host, ctx, dev, ptId, false);
      } catch (err) {
        unbindDevice(host, ctx, dev);
        throw err;
      }
      ctx.publish(
        stdevId,
        (id): SelftestObject => ({
          id,
          type: 'SELFTEST',
          users: 0,
          device: dev,
          onDestroy: () => {
            unbindDevice(host, ctx, dev);
            bus.destroy(fn);
          },
        }),
      );
      return { stdevId, hwptId, idevId: dev.id };
    } catch (err) {
      bus.destroy(fn);
      throw err;
    }
  } catch (err) {
    ctx.unreserve(stdevId);
    throw err;
  }
}

/**
 * IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE (10): `id` must name a SELFTEST object
 * (ENOENT otherwise, §2), then `iommufd_device_replace`, the mock's second
 * ATTACH. Returns the HWPT now attached.
 */
export function mockDomainReplace(host: Host, ctx: IommufdContext, stdevId: number, ptId: number): number {
  const stdev = ctx.get(stdevId, 'SELFTEST');
  return changePt(host, ctx, stdev.device, ptId, true);
}
