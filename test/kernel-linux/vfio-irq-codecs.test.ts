/**
 * The region and IRQ codecs (vfio-irq-structs.ts). struct-layout-x86_64.txt
 * lists vfio_region_info's size only and neither IRQ struct, so the offsets
 * here are read off the 7.2 vfio.h by hand (every member a __u32 or
 * __aligned_u64, no padding before the end); the lane's layout check
 * compiles the real headers and compares the same tables.
 */
import { describe, expect, it } from 'vitest';
import { encodeIrqSetEventfds } from '../../src/kernel/linux/device-request.js';
import { IOCTL } from '../../src/kernel/linux/ioctl-numbers.js';
import {
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_STRUCT,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_STRUCT,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_REGION_INFO_STRUCT,
} from '../../src/kernel/linux/structs.js';
import { parseLayout, readReference } from './reference.js';

const layout = parseLayout(readReference('struct-layout-x86_64.txt'));
const shape = (fields: Record<string, { offset: number; size: number; kind: string }>) =>
  Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, [f.offset, f.size, f.kind]]));

describe('vfio region and IRQ codecs (vfio.h, 7.2)', () => {
  it('vfio_region_info: 32 bytes (as the reference says), u64 size and offset at 16 and 24', () => {
    expect(layout.structs.get('vfio_region_info')).toMatchObject({ size: 32, align: 8 });
    expect(VFIO_REGION_INFO_STRUCT.full).toBe(32);
    expect(VFIO_REGION_INFO_STRUCT.min).toBe(32); // minsz = offsetofend(offset)
    expect(shape(VFIO_REGION_INFO_STRUCT.fields)).toEqual({
      argsz: [0, 4, 'u32'],
      flags: [4, 4, 'u32'],
      index: [8, 4, 'u32'],
      cap_offset: [12, 4, 'u32'],
      size: [16, 8, 'u64'],
      offset: [24, 8, 'u64'],
    });
    const buf = VFIO_REGION_INFO_STRUCT.encode({ index: VFIO_PCI_CONFIG_REGION_INDEX });
    expect([...buf.subarray(0, 12)]).toEqual([32, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0]);
  });

  it('vfio_irq_info: 16 bytes, argsz/flags/index/count', () => {
    expect(VFIO_IRQ_INFO_STRUCT.full).toBe(16);
    expect(VFIO_IRQ_INFO_STRUCT.min).toBe(16);
    expect(shape(VFIO_IRQ_INFO_STRUCT.fields)).toEqual({ argsz: [0, 4, 'u32'], flags: [4, 4, 'u32'], index: [8, 4, 'u32'], count: [12, 4, 'u32'] });
    expect([...VFIO_IRQ_INFO_STRUCT.encode({ index: VFIO_PCI_REQ_IRQ_INDEX })]).toEqual([16, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('vfio_irq_set: a 20-byte header, then the flexible data[] the caller sizes argsz for', () => {
    expect(VFIO_IRQ_SET_STRUCT.full).toBe(20);
    expect(VFIO_IRQ_SET_STRUCT.spec.header).toBeUndefined();
    expect(shape(VFIO_IRQ_SET_STRUCT.fields)).toEqual({
      argsz: [0, 4, 'u32'],
      flags: [4, 4, 'u32'],
      index: [8, 4, 'u32'],
      start: [12, 4, 'u32'],
      count: [16, 4, 'u32'],
      data: [20, 0, 'bytes'],
    });
  });

  it('encodeIrqSetEventfds: argsz covers the s32 eventfds; -1 de-assigns', () => {
    const one = encodeIrqSetEventfds(VFIO_PCI_REQ_IRQ_INDEX, 0, [37]);
    expect(one.length).toBe(24);
    expect(VFIO_IRQ_SET_STRUCT.decode(one)).toMatchObject({ argsz: 24, flags: 0x24, index: 4, start: 0, count: 1 });
    expect(one.readInt32LE(20)).toBe(37);
    const two = encodeIrqSetEventfds(1, 2, [-1, 9]);
    expect(VFIO_IRQ_SET_STRUCT.decode(two)).toMatchObject({ argsz: 28, index: 1, start: 2, count: 2 });
    expect([two.readInt32LE(20), two.readInt32LE(24)]).toEqual([-1, 9]);
  });

  it('constants as vfio.h defines them', () => {
    expect({
      VFIO_REGION_INFO_FLAG_READ,
      VFIO_REGION_INFO_FLAG_WRITE,
      VFIO_REGION_INFO_FLAG_MMAP,
      VFIO_PCI_BAR0_REGION_INDEX,
      VFIO_PCI_CONFIG_REGION_INDEX,
      VFIO_IRQ_INFO_EVENTFD,
      VFIO_PCI_ERR_IRQ_INDEX,
      VFIO_PCI_REQ_IRQ_INDEX,
      VFIO_IRQ_SET_DATA_NONE,
      VFIO_IRQ_SET_DATA_EVENTFD,
      VFIO_IRQ_SET_ACTION_TRIGGER,
    }).toEqual({
      VFIO_REGION_INFO_FLAG_READ: 1,
      VFIO_REGION_INFO_FLAG_WRITE: 2,
      VFIO_REGION_INFO_FLAG_MMAP: 4,
      VFIO_PCI_BAR0_REGION_INDEX: 0,
      VFIO_PCI_CONFIG_REGION_INDEX: 7,
      VFIO_IRQ_INFO_EVENTFD: 1,
      VFIO_PCI_ERR_IRQ_INDEX: 3,
      VFIO_PCI_REQ_IRQ_INDEX: 4,
      VFIO_IRQ_SET_DATA_NONE: 1,
      VFIO_IRQ_SET_DATA_EVENTFD: 4,
      VFIO_IRQ_SET_ACTION_TRIGGER: 32,
    });
    expect([IOCTL.VFIO_DEVICE_GET_REGION_INFO, IOCTL.VFIO_DEVICE_GET_IRQ_INFO, IOCTL.VFIO_DEVICE_SET_IRQS]).toEqual([0x3b6c, 0x3b6d, 0x3b6e]);
  });
});
