/**
 * The scenario type and the fixtures scenarios share. Fixtures record their
 * steps like any other call, so a fixture that goes wrong shows up in the
 * trace exactly where it happened.
 */
import {
  HWPT_ALLOC_NEST_PARENT,
  HWPT_DATA_TYPE,
  kernelId,
  VIOMMU_TYPE,
  type HwptAllocArgs,
  type IommufdFile,
  type KernelObjectId,
} from '../../src/kernel/types.js';
import { mock, ok, type Recorder } from './harness.js';

export interface Scenario {
  /** `fixture.test` of tools/testing/selftests/iommu/iommufd.c where one corresponds (§6.5). */
  name: string;
  /** The kernel-uapi.md rules it checks. */
  rules: string;
  /** Uses the target's VFIO device (the edu device in the QEMU lane). */
  vfio?: boolean;
  run(s: Recorder): Promise<void>;
}

export const id = kernelId;

/**
 * `struct iommu_hwpt_selftest {iotlb = IOMMU_TEST_IOTLB_DEFAULT (0xbadbeef),
 * pagetable_type}` cut or zero-padded to `len` bytes.
 */
export function selftestData(len = 8, pagetableType = 0): Uint8Array {
  const full = new Uint8Array(Math.max(8, len));
  const view = new DataView(full.buffer);
  view.setUint32(0, 0xbadbeef, true);
  view.setUint32(4, pagetableType, true);
  return full.slice(0, len);
}

/** HWPT_ALLOC of a paging HWPT (pt_id = IOAS) or anything else with no driver data. */
export function paging(devId: KernelObjectId, ptId: KernelObjectId, flags = 0, extra: Partial<HwptAllocArgs> = {}): HwptAllocArgs {
  return { flags, devId, ptId, dataType: HWPT_DATA_TYPE.NONE, data: new Uint8Array(0), ...extra };
}

/** HWPT_ALLOC of a nested HWPT with selftest data (pt_id = parent HWPT or vIOMMU, §6.3). */
export function nested(devId: KernelObjectId, ptId: KernelObjectId, extra: Partial<HwptAllocArgs> = {}): HwptAllocArgs {
  return paging(devId, ptId, 0, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(), ...extra });
}

export interface ViommuFixture {
  fd: IommufdFile;
  ioas: KernelObjectId;
  stdev: KernelObjectId;
  idev: KernelObjectId;
  autoHwpt: KernelObjectId;
  parent: KernelObjectId;
  viommu: KernelObjectId;
  nested: KernelObjectId;
}

/**
 * FIXTURE_SETUP(iommufd_viommu), variant mock_viommu: IOAS 1, mock device
 * (stdev 2, idev 3, automatic HWPT 4), NEST_PARENT HWPT 5, selftest vIOMMU 6
 * and a nested HWPT 7 through the vIOMMU, in a fresh iommufd.
 */
export async function viommuFixture(s: Recorder): Promise<ViommuFixture> {
  const fd = await s.openIommufd();
  const ioas = await s.ioasAlloc(fd, ok(1));
  const m = await s.mockDomain(fd, ioas, mock(2, 4, 3));
  const parent = await s.hwptAlloc(fd, paging(m.idevId, ioas, HWPT_ALLOC_NEST_PARENT), ok(5), { note: 'nest parent' });
  const viommu = await s.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent }, ok(6));
  const nestedHwpt = await s.hwptAlloc(fd, nested(m.idevId, viommu), ok(7), { note: 'nested through the vIOMMU' });
  return { fd, ioas, stdev: m.stdevId, idev: m.idevId, autoHwpt: m.hwptId, parent, viommu, nested: nestedHwpt };
}
