/**
 * VFIO device region and IRQ structs (vfio.h): region info for reading a
 * BAR through a device fd, and the IRQ info/set pair that arms vfio-pci's
 * request IRQ (device-request.ts). Offsets from the 7.2 vfio.h (every field
 * is a u32 or __aligned_u64, so they hold for 32-bit userspace too); the
 * lane's layout check compares them with the compiled headers.
 * Re-exported by structs.ts, which lists them in ALL_STRUCTS.
 */
import { defineStruct, type FieldSpec } from './struct-codec.js';

const u32 = (offset: number) => ({ offset, size: 4, kind: 'u32' }) as const satisfies FieldSpec;
const u64 = (offset: number) => ({ offset, size: 8, kind: 'u64' }) as const satisfies FieldSpec;
const bytes = (offset: number, size: number) => ({ offset, size, kind: 'bytes' }) as const satisfies FieldSpec;

/** VFIO_DEVICE_GET_REGION_INFO flag bits. */
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;

/** vfio-pci's fixed region indexes (BAR0..5, ROM, config space). */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;

/**
 * Where a region lives in the device fd: pread/pwrite/mmap at `offset`
 * (vfio-pci puts region N at N << 40). Unchanged since long before cdevs.
 */
export const VFIO_REGION_INFO_STRUCT = defineStruct({
  name: 'vfio_region_info',
  ioctl: 'VFIO_DEVICE_GET_REGION_INFO',
  header: 'argsz',
  min: 32,
  full: 32,
  sizes: [[6, 6, 32]],
  fields: {
    argsz: u32(0),
    flags: u32(4),
    index: u32(8),
    cap_offset: u32(12),
    size: u64(16),
    offset: u64(24),
  },
});

/** VFIO_DEVICE_GET_IRQ_INFO flag bit: the index can signal an eventfd. */
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;

/** vfio-pci's IRQ indexes: the request IRQ is how the host asks for the device back (§4.5). */
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;

export const VFIO_IRQ_INFO_STRUCT = defineStruct({
  name: 'vfio_irq_info',
  ioctl: 'VFIO_DEVICE_GET_IRQ_INFO',
  header: 'argsz',
  min: 16,
  full: 16,
  sizes: [[6, 6, 16]],
  fields: { argsz: u32(0), flags: u32(4), index: u32(8), count: u32(12) },
});

/** VFIO_DEVICE_SET_IRQS flag bits: one DATA_* type and one ACTION_*. */
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

/**
 * The 20-byte header of VFIO_DEVICE_SET_IRQS; `data[]` (an s32 eventfd per
 * IRQ with DATA_EVENTFD) follows it in the same buffer. No `header`: argsz
 * must cover that array too, so the caller sets it (see device-request.ts).
 */
export const VFIO_IRQ_SET_STRUCT = defineStruct({
  name: 'vfio_irq_set',
  ioctl: 'VFIO_DEVICE_SET_IRQS',
  header: undefined,
  min: 20,
  full: 20,
  sizes: [[6, 6, 20]],
  fields: { argsz: u32(0), flags: u32(4), index: u32(8), start: u32(12), count: u32(16), data: bytes(20, 0) },
});
