/**
 * vfio-region.ts: GET_REGION_INFO through an injected ioctl, and register
 * reads/writes at the region's offset in the fd. A temp file stands in for
 * the device fd, so positions are checked byte for byte.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IOCTL } from '../../src/kernel/linux/ioctl-numbers.js';
import { VFIO_REGION_INFO_STRUCT } from '../../src/kernel/linux/structs.js';
import { readRegister, regionInfo, writeRegister, type RegionInfo } from '../../src/kernel/linux/vfio-region.js';
import { writeFields } from './fake-kernel.js';

describe('vfio-region', () => {
  it('regionInfo sends the index with argsz 32 and decodes flags, size and offset', () => {
    const sent: Buffer[] = [];
    const info = regionInfo(7, 2, {
      ioctl: (fd, request, arg) => {
        expect([fd, request]).toEqual([7, IOCTL.VFIO_DEVICE_GET_REGION_INFO]);
        sent.push(Buffer.from(arg!));
        writeFields(arg!, VFIO_REGION_INFO_STRUCT, { flags: 7, size: 0x10_0000n, offset: 2n << 40n });
        return 0;
      },
    });
    expect(VFIO_REGION_INFO_STRUCT.decode(sent[0]!)).toMatchObject({ argsz: 32, index: 2 });
    expect(info).toEqual({ index: 2, flags: 7, size: 0x10_0000n, offset: 2n << 40n });
  });

  it('reads and writes little-endian registers at region offset + at, one access of the given width', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-region-'));
    const file = join(dir, 'fd');
    const fd = openSync(file, 'w+');
    try {
      const region: RegionInfo = { index: 0, flags: 3, size: 0x100n, offset: 0x1000n };
      writeRegister(fd, region, 0x80, 4, 0xdead_beef);
      writeRegister(fd, region, 0x04, 2, 0x0506);
      writeRegister(fd, region, 0x00, 1, 0xed);
      const bytes = readFileSync(file);
      expect(bytes.length).toBe(0x1084);
      expect([...bytes.subarray(0x1080, 0x1084)]).toEqual([0xef, 0xbe, 0xad, 0xde]);
      expect([...bytes.subarray(0x1000, 0x1006)]).toEqual([0xed, 0, 0, 0, 0x06, 0x05]);
      expect(readRegister(fd, region, 0x80, 4)).toBe(0xdead_beef);
      expect(readRegister(fd, region, 0x04, 2)).toBe(0x0506);
      expect(readRegister(fd, region, 0x00, 1)).toBe(0xed);
      expect(() => readRegister(fd, region, 0xfe, 4)).toThrow(RangeError);
      expect(() => writeRegister(fd, { ...region, offset: 1n << 60n }, 0, 4, 1)).toThrow(/beyond 2\^53/);
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
