/**
 * What tests read of the sim's state: rows of `SimKernel.objects()` and
 * `SimKernel.mappings()`, the kernel side of "registry == kernel".
 */
import type { IoasArea, SimObject, SimObjectType } from './objects.js';

/** One row of `SimKernel.objects()`: the kernel state tests compare the broker's registry with. */
export interface SimObjectInfo {
  id: number;
  type: SimObjectType;
  /** Holders other than the ID table itself (§4.2); DESTROY succeeds only at 0. */
  users: number;
  /** HWPT_PAGING: created automatically by attaching a device to an IOAS. */
  auto?: boolean;
  /** HWPT_PAGING: allocated with NEST_PARENT. */
  nestParent?: boolean;
  /** HWPT_NESTED: the stage-2 HWPT_PAGING; VIOMMU: its nest-parent HWPT. */
  parentId?: number;
  /** HWPT_PAGING: its IOAS. */
  ioasId?: number;
  /** HWPT_NESTED made through a vIOMMU, and VDEVICE: the vIOMMU. */
  viommuId?: number;
  /** VDEVICE: its DEVICE while that is bound (absent after a 6.13 unbind); SELFTEST: its DEVICE. */
  devId?: number;
  /** DEVICE of a selftest mock device: its MOCK_FLAGS_DEVICE_* bits. */
  mockFlags?: number;
  /** VDEVICE: guest-visible virt_id. */
  virtId?: bigint;
  /** DEVICE, VDEVICE and SELFTEST: the PCI function (`iommufd_mockN` for a mock device). */
  bdf?: string;
  /** VIOMMU: physical IOMMU instance. */
  iommu?: string;
}

/** One row of `SimKernel.mappings()`: an IOAS_MAP_FILE area. */
export type SimMappingInfo = Pick<IoasArea, 'iova' | 'length' | 'start' | 'readable' | 'writeable'>;

export function mappingInfo(a: IoasArea): SimMappingInfo {
  return { iova: a.iova, length: a.length, start: a.start, readable: a.readable, writeable: a.writeable };
}

export function describe(obj: SimObject): SimObjectInfo {
  const base = { id: obj.id, type: obj.type, users: obj.users };
  switch (obj.type) {
    case 'DEVICE':
      return { ...base, bdf: obj.pci.bdf, ...(obj.mock ? { mockFlags: obj.mock.flags } : {}) };
    case 'IOAS':
      return base;
    case 'HWPT_PAGING':
      return { ...base, auto: obj.auto, nestParent: obj.nestParent, ioasId: obj.ioas.id };
    case 'HWPT_NESTED':
      return { ...base, parentId: obj.parent.id, ...(obj.viommu ? { viommuId: obj.viommu.id } : {}) };
    case 'VIOMMU':
      return { ...base, parentId: obj.hwpt.id, iommu: obj.iommu };
    case 'VDEVICE':
      return {
        ...base,
        viommuId: obj.viommu.id,
        virtId: obj.virtId,
        bdf: obj.bdf,
        ...(obj.device ? { devId: obj.device.id } : {}),
      };
    case 'SELFTEST':
      return { ...base, devId: obj.device.id, bdf: obj.device.pci.bdf };
  }
}

