/**
 * The iommufd ioctls that create objects, each checking its arguments in the
 * order the kernel does, so the first failing check decides the errno
 * (kernel-uapi.md §3.2, §3.8–3.11, §6.3). The sim's IOMMU driver is the
 * selftest mock IOMMU; its driver callbacks are the `mock*` functions.
 *
 * Every check happens before `ctx.insert`, so a failure changes nothing: the
 * kernel gets the same result by aborting the half-built object (§2 step 7).
 */
import {
  HWPT_ALLOC_DIRTY_TRACKING,
  HWPT_ALLOC_NEST_PARENT,
  HWPT_ALLOC_PASID,
  HWPT_DATA_TYPE,
  HWPT_FAULT_ID_VALID,
  HW_INFO_TYPE,
  VIOMMU_TYPE,
  type HwInfo,
  type HwptAllocArgs,
  type VdeviceAllocArgs,
  type ViommuAllocArgs,
} from '../types.js';
import {
  fail,
  MOCK_FLAGS_DEVICE_NO_DIRTY,
  MOCK_FLAGS_DEVICE_PASID,
  type DeviceObject,
  type HwptNestedObject,
  type HwptPagingObject,
  type IoasObject,
  type IommufdContext,
  type VdeviceObject,
  type ViommuObject,
} from './objects.js';
import { checkDomainFits } from './ioas-map.js';
import type { ProfileTraits } from './profiles.js';

const U64_MAX = (1n << 64n) - 1n;

/** IOMMU_HW_CAP_* bits (§3.8). */
const HW_CAP_DIRTY_TRACKING = 1n << 0n;
const HW_CAP_PCI_ATS_NOT_SUPPORTED = 1n << 3n;
/** IOMMU_HW_INFO_SELFTEST_REGVAL (iommufd_test.h). */
const SELFTEST_REGVAL = 0xdeadbeef;
/** MOCK_IOMMUPT_DEFAULT, MOCK_IOMMUPT_HUGE: the page-table formats the mock knows. */
const MOCK_PAGETABLE_TYPES = new Set([0, 1]);

interface UserData {
  readonly type: number;
  readonly bytes: Uint8Array;
}

export function ioasAlloc(ctx: IommufdContext): IoasObject {
  return ctx.insert((id): IoasObject => ({ id, type: 'IOAS', users: 0, hwpts: [], areas: [] }));
}

/** Creates a HWPT_PAGING on `ioas` and links it into the IOAS's hwpt list (list_add_tail). */
export function createPaging(ctx: IommufdContext, ioas: IoasObject, flags: number, auto: boolean): HwptPagingObject {
  // iopt_table_add_domain: existing mappings must fit the domain (§6.3).
  checkDomainFits(ioas);
  const hwpt = ctx.insert(
    (id): HwptPagingObject => ({
      id,
      type: 'HWPT_PAGING',
      users: 0,
      ioas,
      auto,
      nestParent: (flags & HWPT_ALLOC_NEST_PARENT) !== 0,
      flags,
    }),
  );
  ioas.hwpts.push(hwpt);
  return hwpt;
}

/** IOMMU_HWPT_ALLOC (§3.9). */
export function hwptAlloc(ctx: IommufdContext, traits: ProfileTraits, args: HwptAllocArgs): number {
  const flags = args.flags >>> 0;
  const dataType = args.dataType >>> 0;
  const len = args.data.length;
  if ((dataType === HWPT_DATA_TYPE.NONE) !== (len === 0)) {
    fail('EINVAL', 'data_type NONE must come with data_len 0 and vice versa');
  }
  const dev = ctx.get(args.devId, 'DEVICE');
  const pt = ctx.lookup(args.ptId);
  // pt_id is looked up as IOMMUFD_OBJ_ANY and any failure becomes EINVAL.
  if (pt === undefined) fail('EINVAL', `pt_id ${args.ptId} does not name an object`);
  const data: UserData | undefined = len === 0 ? undefined : { type: dataType, bytes: args.data };

  let create: () => HwptPagingObject | HwptNestedObject;
  switch (pt.type) {
    case 'IOAS':
      checkPagingAlloc(traits, dev, flags, data);
      create = () => createPaging(ctx, pt, flags, false);
      break;
    case 'HWPT_PAGING':
      checkNestedFlags(traits, flags);
      if (data === undefined) fail('EOPNOTSUPP', 'a nested HWPT needs driver data');
      if (pt.auto || !pt.nestParent) fail('EINVAL', `HWPT ${pt.id} is not a manual NEST_PARENT HWPT`);
      mockAllocNested(traits, flags, data);
      create = () => createNested(ctx, pt, undefined);
      break;
    case 'VIOMMU':
      if (pt.iommu !== dev.pci.iommu) {
        fail('EINVAL', `device is behind ${dev.pci.iommu}, vIOMMU ${pt.id} behind ${pt.iommu}`);
      }
      checkNestedFlags(traits, flags);
      if (data === undefined) fail('EOPNOTSUPP', 'a nested HWPT needs driver data');
      mockAllocNested(traits, flags, data);
      create = () => createNested(ctx, pt.hwpt, pt);
      break;
    default:
      fail('EINVAL', `pt_id ${args.ptId} is a ${pt.type}`);
  }
  // No FAULT object can exist in the sim, so the fault_id lookup always fails;
  // the kernel runs it after the domain was built and then aborts the HWPT.
  if (flags & HWPT_FAULT_ID_VALID) fail('ENOENT', 'fault_id names no FAULT object');
  return create().id;
}

function createNested(ctx: IommufdContext, parent: HwptPagingObject, viommu: ViommuObject | undefined): HwptNestedObject {
  return ctx.insert((id): HwptNestedObject => ({ id, type: 'HWPT_NESTED', users: 0, parent, viommu }));
}

/** Core checks of `iommufd_hwpt_paging_alloc`, then the mock's `domain_alloc_paging_flags`. */
function checkPagingAlloc(traits: ProfileTraits, dev: DeviceObject, flags: number, data: UserData | undefined): void {
  const valid =
    HWPT_ALLOC_NEST_PARENT |
    HWPT_ALLOC_DIRTY_TRACKING |
    HWPT_FAULT_ID_VALID |
    (traits.hwptAllocPasid ? HWPT_ALLOC_PASID : 0);
  if (flags & ~valid) fail('EOPNOTSUPP', `unsupported HWPT flags 0x${flags.toString(16)}`);
  // DIRTY_TRACKING needs IOMMU_CAP_DIRTY_TRACKING: the mock has it unless the
  // mock device was created with MOCK_FLAGS_DEVICE_NO_DIRTY (§6.3).
  if (flags & HWPT_ALLOC_DIRTY_TRACKING && !hasDirtyTracking(dev)) {
    fail('EOPNOTSUPP', `device ${dev.id} has no dirty tracking`);
  }
  if (flags & HWPT_FAULT_ID_VALID && flags & HWPT_ALLOC_NEST_PARENT) {
    fail('EOPNOTSUPP', 'FAULT_ID_VALID cannot be combined with NEST_PARENT');
  }
  if (data === undefined) return;
  if (!traits.mockPagingUserData) fail('EOPNOTSUPP', 'this mock takes no paging HWPT data');
  if (data.type !== HWPT_DATA_TYPE.SELFTEST) fail('EOPNOTSUPP', `data_type 0x${data.type.toString(16)}`);
  const cfg = copyHwptSelftest(data.bytes);
  if (!MOCK_PAGETABLE_TYPES.has(cfg.pagetableType)) {
    fail('EOPNOTSUPP', `mock pagetable_type ${cfg.pagetableType}`);
  }
}

/** The core flag check shared by both nested paths (§3.9). */
function checkNestedFlags(traits: ProfileTraits, flags: number): void {
  const valid = HWPT_FAULT_ID_VALID | (traits.hwptAllocPasid ? HWPT_ALLOC_PASID : 0);
  if (flags & ~valid) fail('EOPNOTSUPP', `unsupported nested HWPT flags 0x${flags.toString(16)}`);
}

/** The mock's nested allocation (`__mock_domain_alloc_nested`). */
function mockAllocNested(traits: ProfileTraits, flags: number, data: UserData): void {
  const driverFlags = flags & ~HWPT_FAULT_ID_VALID;
  if (driverFlags & ~(traits.hwptAllocPasid ? HWPT_ALLOC_PASID : 0)) fail('EOPNOTSUPP', 'mock nested flags');
  if (data.type !== HWPT_DATA_TYPE.SELFTEST) fail('EOPNOTSUPP', `data_type 0x${data.type.toString(16)}`);
  copyHwptSelftest(data.bytes);
}

/**
 * `iommu_copy_struct_from_user` for `struct iommu_hwpt_selftest` {iotlb u32,
 * pagetable_type u32}: at least offsetofend(iotlb) = 4 bytes, and a longer
 * buffer than the kernel's 8-byte struct is EINVAL, not E2BIG (§2).
 */
function copyHwptSelftest(bytes: Uint8Array): { iotlb: number; pagetableType: number } {
  if (bytes.length < 4 || bytes.length > 8) fail('EINVAL', `data_len ${bytes.length} outside 4..8`);
  // Bytes past the user's buffer read as zero, as copy_struct_from_user leaves them.
  const u32le = (at: number) => ((bytes[at] ?? 0) | ((bytes[at + 1] ?? 0) << 8) | ((bytes[at + 2] ?? 0) << 16) | ((bytes[at + 3] ?? 0) << 24)) >>> 0;
  return { iotlb: u32le(0), pagetableType: u32le(4) };
}

/** IOMMU_VIOMMU_ALLOC (§3.10, §6.3). */
export function viommuAlloc(ctx: IommufdContext, traits: ProfileTraits, args: ViommuAllocArgs): ViommuObject {
  const type = args.type >>> 0;
  // Checked before any lookup, so an all-zero struct is a safe probe (§5.2).
  if (type === 0) fail('EOPNOTSUPP', 'vIOMMU type 0 (DEFAULT)');
  const dev = ctx.get(args.devId, 'DEVICE');
  const typeOk = type === VIOMMU_TYPE.SELFTEST;
  if (traits.viommuTypeCheckedBeforeHwpt && !typeOk) fail('EOPNOTSUPP', `vIOMMU type 0x${type.toString(16)}`);
  const hwpt = ctx.get(args.hwptId, 'HWPT_PAGING');
  if (!hwpt.nestParent) fail('EINVAL', `HWPT ${hwpt.id} was not allocated with NEST_PARENT`);
  if (!typeOk) fail('EOPNOTSUPP', `vIOMMU type 0x${type.toString(16)}`);
  return ctx.insert(
    (id): ViommuObject => ({ id, type: 'VIOMMU', users: 0, hwpt, iommu: dev.pci.iommu, vdevs: new Map() }),
  );
}

/** IOMMU_VDEVICE_ALLOC (§3.11). */
export function vdeviceAlloc(ctx: IommufdContext, traits: ProfileTraits, args: VdeviceAllocArgs): number {
  const virtId = args.virtId;
  // virt_id indexes an xarray: anything past ULONG_MAX is EINVAL (64-bit kernel).
  if (virtId < 0n || virtId > U64_MAX) fail('EINVAL', `virt_id ${virtId} does not fit an unsigned long`);
  const viommu = ctx.get(args.viommuId, 'VIOMMU');
  const dev = ctx.get(args.devId, 'DEVICE');
  if (viommu.iommu !== dev.pci.iommu) {
    fail('EINVAL', `device is behind ${dev.pci.iommu}, vIOMMU ${viommu.id} behind ${viommu.iommu}`);
  }
  if (traits.vdeviceBoundToDevice) {
    if (dev.destroying) fail('ENOENT', 'device is being unbound');
    if (dev.vdevs.size > 0) fail('EEXIST', `device ${dev.id} already has a vDEVICE`);
  }
  if (viommu.vdevs.has(virtId)) fail('EEXIST', `virt_id ${virtId} is taken on vIOMMU ${viommu.id}`);
  const vdev = ctx.insert(
    (id): VdeviceObject => ({
      id,
      type: 'VDEVICE',
      users: 0,
      viommu,
      virtId,
      bdf: dev.pci.bdf,
      device: dev,
      pinsDevice: traits.vdeviceBoundToDevice,
    }),
  );
  viommu.vdevs.set(virtId, vdev);
  dev.vdevs.add(vdev);
  return vdev.id;
}

/** `mock_domain_capable(IOMMU_CAP_DIRTY_TRACKING)`. */
function hasDirtyTracking(dev: DeviceObject): boolean {
  return ((dev.mock?.flags ?? 0) & MOCK_FLAGS_DEVICE_NO_DIRTY) === 0;
}

/** MOCK_PASID_WIDTH: `out_max_pasid_log2` of a MOCK_FLAGS_DEVICE_PASID device. */
const MOCK_PASID_WIDTH = 20;

/** IOMMU_GET_HW_INFO with the default type request (§3.8, §6.3). */
export function getHwInfo(ctx: IommufdContext, traits: ProfileTraits, devId: number): HwInfo {
  const dev = ctx.get(devId, 'DEVICE');
  const data = new Uint8Array(8);
  const view = new DataView(data.buffer);
  view.setUint32(0, 0, true);
  view.setUint32(4, SELFTEST_REGVAL, true);
  let capabilities = hasDirtyTracking(dev) ? HW_CAP_DIRTY_TRACKING : 0n;
  if (traits.atsNotSupportedCap) capabilities |= HW_CAP_PCI_ATS_NOT_SUPPORTED;
  const pasid = ((dev.mock?.flags ?? 0) & MOCK_FLAGS_DEVICE_PASID) !== 0;
  return { type: HW_INFO_TYPE.SELFTEST, data, capabilities, maxPasidLog2: pasid ? MOCK_PASID_WIDTH : 0 };
}
