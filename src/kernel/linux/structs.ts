/**
 * One codec per uAPI struct, offsets and sizes from the 7.2 headers as
 * compiled in struct-layout-x86_64.txt (kernel-uapi.md §3, §6.1). Every
 * 64-bit field is `__aligned_u64`, so these layouts hold for 32-bit
 * userspace too (§0). Size histories come from §3's "struct size by kernel"
 * notes and §5.1.
 */
import { defineStruct, type FieldSpec } from './struct-codec.js';
import { VFIO_IRQ_INFO_STRUCT, VFIO_IRQ_SET_STRUCT, VFIO_REGION_INFO_STRUCT } from './vfio-irq-structs.js';

// Region and IRQ codecs (device request, region access) live beside this file to keep it short.
export * from './vfio-irq-structs.js';

const u8 = (offset: number) => ({ offset, size: 1, kind: 'u8' }) as const satisfies FieldSpec;
const u32 = (offset: number) => ({ offset, size: 4, kind: 'u32' }) as const satisfies FieldSpec;
const s32 = (offset: number) => ({ offset, size: 4, kind: 's32' }) as const satisfies FieldSpec;
const u64 = (offset: number) => ({ offset, size: 8, kind: 'u64' }) as const satisfies FieldSpec;
const bytes = (offset: number, size: number) => ({ offset, size, kind: 'bytes' }) as const satisfies FieldSpec;

// ---- iommufd (§3.1–§3.14) ----

export const IOMMU_DESTROY_STRUCT = defineStruct({
  name: 'iommu_destroy',
  ioctl: 'IOMMU_DESTROY',
  header: 'size',
  min: 8,
  full: 8,
  sizes: [[6, 2, 8]],
  fields: { size: u32(0), id: u32(4) },
});

export const IOMMU_IOAS_ALLOC_STRUCT = defineStruct({
  name: 'iommu_ioas_alloc',
  ioctl: 'IOMMU_IOAS_ALLOC',
  header: 'size',
  min: 12,
  full: 12,
  sizes: [[6, 2, 12]],
  fields: { size: u32(0), flags: u32(4), out_ioas_id: u32(8) },
});

/** IOMMU_IOAS_MAP flag bits (§3.3). */
export const IOAS_MAP_FIXED_IOVA = 1;
export const IOAS_MAP_WRITEABLE = 2;
export const IOAS_MAP_READABLE = 4;

export const IOMMU_IOAS_MAP_STRUCT = defineStruct({
  name: 'iommu_ioas_map',
  ioctl: 'IOMMU_IOAS_MAP',
  header: 'size',
  min: 40,
  full: 40,
  sizes: [[6, 2, 40]],
  fields: {
    size: u32(0),
    flags: u32(4),
    ioas_id: u32(8),
    __reserved: u32(12),
    user_va: u64(16),
    length: u64(24),
    iova: u64(32),
  },
});

/** No reserved field: offset 12 is the fd (§3.4). */
export const IOMMU_IOAS_MAP_FILE_STRUCT = defineStruct({
  name: 'iommu_ioas_map_file',
  ioctl: 'IOMMU_IOAS_MAP_FILE',
  header: 'size',
  min: 40,
  full: 40,
  sizes: [[6, 13, 40]],
  fields: {
    size: u32(0),
    flags: u32(4),
    ioas_id: u32(8),
    fd: s32(12),
    start: u64(16),
    length: u64(24),
    iova: u64(32),
  },
});

export const IOMMU_IOAS_UNMAP_STRUCT = defineStruct({
  name: 'iommu_ioas_unmap',
  ioctl: 'IOMMU_IOAS_UNMAP',
  header: 'size',
  min: 24,
  full: 24,
  sizes: [[6, 2, 24]],
  fields: { size: u32(0), ioas_id: u32(4), iova: u64(8), length: u64(16) },
});

export const IOMMU_IOAS_IOVA_RANGES_STRUCT = defineStruct({
  name: 'iommu_ioas_iova_ranges',
  ioctl: 'IOMMU_IOAS_IOVA_RANGES',
  header: 'size',
  min: 32,
  full: 32,
  sizes: [[6, 2, 32]],
  fields: {
    size: u32(0),
    ioas_id: u32(4),
    num_iovas: u32(8),
    __reserved: u32(12),
    allowed_iovas: u64(16),
    out_iova_alignment: u64(24),
  },
});

/** Array element behind `allowed_iovas`; `last` is inclusive (§3.6). */
export const IOMMU_IOVA_RANGE_STRUCT = defineStruct({
  name: 'iommu_iova_range',
  ioctl: undefined,
  header: undefined,
  min: 16,
  full: 16,
  sizes: [[6, 2, 16]],
  fields: { start: u64(0), last: u64(8) },
});

/** 32 bytes in 6.6, 40 from 6.7 (`out_capabilities`); bytes 28..31 split in 6.15 (§3.8). */
export const IOMMU_HW_INFO_STRUCT = defineStruct({
  name: 'iommu_hw_info',
  ioctl: 'IOMMU_GET_HW_INFO',
  header: 'size',
  min: 32,
  full: 40,
  sizes: [
    [6, 6, 32],
    [6, 7, 40],
  ],
  fields: {
    size: u32(0),
    flags: u32(4),
    dev_id: u32(8),
    data_len: u32(12),
    data_uptr: u64(16),
    in_data_type: u32(24),
    out_data_type: u32(24),
    out_max_pasid_log2: u8(28),
    __reserved: bytes(29, 3),
    out_capabilities: u64(32),
  },
});

/** 24 bytes in 6.6, 40 in 6.7–6.10, 48 from 6.11 (§3.9). */
export const IOMMU_HWPT_ALLOC_STRUCT = defineStruct({
  name: 'iommu_hwpt_alloc',
  ioctl: 'IOMMU_HWPT_ALLOC',
  header: 'size',
  min: 24,
  full: 48,
  sizes: [
    [6, 6, 24],
    [6, 7, 40],
    [6, 11, 48],
  ],
  fields: {
    size: u32(0),
    flags: u32(4),
    dev_id: u32(8),
    pt_id: u32(12),
    out_hwpt_id: u32(16),
    __reserved: u32(20),
    data_type: u32(24),
    data_len: u32(28),
    data_uptr: u64(32),
    fault_id: u32(40),
    __reserved2: u32(44),
  },
});

/** 24 bytes in 6.13–6.16, 40 from 6.17 (driver data, §3.10). */
export const IOMMU_VIOMMU_ALLOC_STRUCT = defineStruct({
  name: 'iommu_viommu_alloc',
  ioctl: 'IOMMU_VIOMMU_ALLOC',
  header: 'size',
  min: 24,
  full: 40,
  sizes: [
    [6, 13, 24],
    [6, 17, 40],
  ],
  fields: {
    size: u32(0),
    flags: u32(4),
    type: u32(8),
    dev_id: u32(12),
    hwpt_id: u32(16),
    out_viommu_id: u32(20),
    data_len: u32(24),
    __reserved: u32(28),
    data_uptr: u64(32),
  },
});

export const IOMMU_VDEVICE_ALLOC_STRUCT = defineStruct({
  name: 'iommu_vdevice_alloc',
  ioctl: 'IOMMU_VDEVICE_ALLOC',
  header: 'size',
  min: 24,
  full: 24,
  sizes: [[6, 13, 24]],
  fields: { size: u32(0), viommu_id: u32(4), dev_id: u32(8), out_vdevice_id: u32(12), virt_id: u64(16) },
});

// ---- Structs the probe sends all-zero (or flags = 1) to learn whether an ioctl exists (§5.2) ----

export const IOMMU_HWPT_INVALIDATE_STRUCT = defineStruct({
  name: 'iommu_hwpt_invalidate',
  ioctl: 'IOMMU_HWPT_INVALIDATE',
  header: 'size',
  min: 32,
  full: 32,
  sizes: [[6, 8, 32]],
  fields: {
    size: u32(0),
    hwpt_id: u32(4),
    data_uptr: u64(8),
    data_type: u32(16),
    entry_len: u32(20),
    entry_num: u32(24),
    __reserved: u32(28),
  },
});

export const IOMMU_FAULT_ALLOC_STRUCT = defineStruct({
  name: 'iommu_fault_alloc',
  ioctl: 'IOMMU_FAULT_QUEUE_ALLOC',
  header: 'size',
  min: 16,
  full: 16,
  sizes: [[6, 11, 16]],
  fields: { size: u32(0), flags: u32(4), out_fault_id: u32(8), out_fault_fd: u32(12) },
});

export const IOMMU_VEVENTQ_ALLOC_STRUCT = defineStruct({
  name: 'iommu_veventq_alloc',
  ioctl: 'IOMMU_VEVENTQ_ALLOC',
  header: 'size',
  min: 28,
  full: 32,
  sizes: [[6, 15, 32]],
  fields: {
    size: u32(0),
    flags: u32(4),
    viommu_id: u32(8),
    type: u32(12),
    veventq_depth: u32(16),
    out_veventq_id: u32(20),
    out_veventq_fd: u32(24),
    __reserved: u32(28),
  },
});

export const IOMMU_HW_QUEUE_ALLOC_STRUCT = defineStruct({
  name: 'iommu_hw_queue_alloc',
  ioctl: 'IOMMU_HW_QUEUE_ALLOC',
  header: 'size',
  min: 40,
  full: 40,
  sizes: [[6, 17, 40]],
  fields: {
    size: u32(0),
    flags: u32(4),
    viommu_id: u32(8),
    type: u32(12),
    index: u32(16),
    out_hw_queue_id: u32(20),
    nesting_parent_iova: u64(24),
    length: u64(32),
  },
});

// ---- IOMMUFD_TEST (§6.1) ----

/** IOMMU_TEST_CMD ops used by the broker (enum starting at 1, §6.1). */
export const IOMMU_TEST_OP = { MOCK_DOMAIN: 2, MOCK_DOMAIN_REPLACE: 10, MOCK_DOMAIN_FLAGS: 12 } as const;

/**
 * 72 bytes: header, a 48-byte union (largest member `dirty`) and `last`, the
 * end marker that makes min 68 (§6.1). Only the union members the broker uses
 * are spelled out; `dirty` covers the whole union so nothing else overlaps.
 */
export const IOMMU_TEST_CMD_STRUCT = defineStruct({
  name: 'iommu_test_cmd',
  ioctl: 'IOMMU_TEST_CMD',
  header: 'size',
  min: 68,
  full: 72,
  sizes: [[6, 2, 72]],
  fields: {
    size: u32(0),
    op: u32(4),
    id: u32(8),
    __reserved: u32(12),
    'mock_domain.out_stdev_id': u32(16),
    'mock_domain.out_hwpt_id': u32(20),
    'mock_domain.out_idev_id': u32(24),
    'mock_domain_flags.dev_flags': u32(28),
    'mock_domain_replace.pt_id': u32(16),
    'trigger_vevent.dev_id': u32(16),
    dirty: bytes(16, 48),
    last: u32(64),
  },
});

// ---- VFIO device cdev (§3.15–§3.18) ----

/** 16 bytes until 6.17 added the VF-token pointer (§3.15). */
export const VFIO_DEVICE_BIND_IOMMUFD_STRUCT = defineStruct({
  name: 'vfio_device_bind_iommufd',
  ioctl: 'VFIO_DEVICE_BIND_IOMMUFD',
  header: 'argsz',
  min: 16,
  full: 24,
  sizes: [
    [6, 6, 16],
    [6, 17, 24],
  ],
  fields: { argsz: u32(0), flags: u32(4), iommufd: s32(8), out_devid: u32(12), token_uuid_ptr: u64(16) },
});

/** 12 bytes until 6.15 added `pasid` (§3.16). */
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT = defineStruct({
  name: 'vfio_device_attach_iommufd_pt',
  ioctl: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
  header: 'argsz',
  min: 12,
  full: 16,
  sizes: [
    [6, 6, 12],
    [6, 15, 16],
  ],
  fields: { argsz: u32(0), flags: u32(4), pt_id: u32(8), pasid: u32(12) },
});

/** 8 bytes until 6.15 added `pasid` (§3.17). */
export const VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT = defineStruct({
  name: 'vfio_device_detach_iommufd_pt',
  ioctl: 'VFIO_DEVICE_DETACH_IOMMUFD_PT',
  header: 'argsz',
  min: 8,
  full: 12,
  sizes: [
    [6, 6, 8],
    [6, 15, 12],
  ],
  fields: { argsz: u32(0), flags: u32(4), pasid: u32(8) },
});

/** VFIO_DEVICE_GET_INFO flag bits (§3.18). */
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;

/** `cap_offset` long predates the cdev interface, so every cdev kernel takes 24 (§3.18). */
export const VFIO_DEVICE_INFO_STRUCT = defineStruct({
  name: 'vfio_device_info',
  ioctl: 'VFIO_DEVICE_GET_INFO',
  header: 'argsz',
  min: 16,
  full: 24,
  sizes: [[6, 6, 24]],
  fields: {
    argsz: u32(0),
    flags: u32(4),
    num_regions: u32(8),
    num_irqs: u32(12),
    cap_offset: u32(16),
    pad: u32(20),
  },
});

/** Every codec, for the layout test and anything that wants to list them. */
export const ALL_STRUCTS = [
  IOMMU_DESTROY_STRUCT,
  IOMMU_IOAS_ALLOC_STRUCT,
  IOMMU_IOAS_MAP_STRUCT,
  IOMMU_IOAS_MAP_FILE_STRUCT,
  IOMMU_IOAS_UNMAP_STRUCT,
  IOMMU_IOAS_IOVA_RANGES_STRUCT,
  IOMMU_IOVA_RANGE_STRUCT,
  IOMMU_HW_INFO_STRUCT,
  IOMMU_HWPT_ALLOC_STRUCT,
  IOMMU_VIOMMU_ALLOC_STRUCT,
  IOMMU_VDEVICE_ALLOC_STRUCT,
  IOMMU_HWPT_INVALIDATE_STRUCT,
  IOMMU_FAULT_ALLOC_STRUCT,
  IOMMU_VEVENTQ_ALLOC_STRUCT,
  IOMMU_HW_QUEUE_ALLOC_STRUCT,
  IOMMU_TEST_CMD_STRUCT,
  VFIO_DEVICE_BIND_IOMMUFD_STRUCT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_INFO_STRUCT,
  VFIO_REGION_INFO_STRUCT,
  VFIO_IRQ_INFO_STRUCT,
  VFIO_IRQ_SET_STRUCT,
] as const;
