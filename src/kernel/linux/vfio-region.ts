/**
 * Region access through a VFIO device fd, as a VMM does it with the fd
 * LeaseDeviceFd hands over: VFIO_DEVICE_GET_REGION_INFO says where region N
 * lies in the fd (vfio-pci: N << 40), and pread/pwrite at that offset reach
 * the BAR or config space. Works on any bound VFIO device fd of this
 * process, not only the backend's own (the fd is a plain number here).
 */
import { readSync, writeSync } from 'node:fs';
import { IOCTL } from './ioctl-numbers.js';
import { VFIO_REGION_INFO_STRUCT } from './structs.js';
import { createLibcSyscalls, type Syscalls } from './syscalls.js';

export interface RegionInfo {
  index: number;
  /** VFIO_REGION_INFO_FLAG_* (READ, WRITE, MMAP, CAPS). */
  flags: number;
  /** Bytes; 0 for a BAR the function does not implement. */
  size: bigint;
  /** Where the region starts in the device fd. */
  offset: bigint;
}

/** VFIO_DEVICE_GET_REGION_INFO (sync: a table lookup in the driver). Capability chains are not read. */
export function regionInfo(fd: number, index: number, sys: Pick<Syscalls, 'ioctl'> = createLibcSyscalls()): RegionInfo {
  const buf = VFIO_REGION_INFO_STRUCT.encode({ index });
  sys.ioctl(fd, IOCTL.VFIO_DEVICE_GET_REGION_INFO, buf, { op: 'device_get_info', what: 'VFIO_DEVICE_GET_REGION_INFO' });
  const out = VFIO_REGION_INFO_STRUCT.decode(buf);
  return { index: out.index, flags: out.flags, size: out.size, offset: out.offset };
}

/**
 * The fd position of byte `at` of the region, as a number: Node's writeSync
 * silently ignores a bigint position (it writes at the file position
 * instead), and vfio-pci's offsets (index << 40) are exact doubles anyway.
 */
function position(region: RegionInfo, at: number, length: number): number {
  if (!Number.isInteger(at) || at < 0 || BigInt(at + length) > region.size) {
    throw new RangeError(`region ${region.index}: bytes ${at}..${at + length - 1} lie outside its ${region.size} bytes`);
  }
  const pos = Number(region.offset + BigInt(at));
  if (!Number.isSafeInteger(pos)) throw new RangeError(`region ${region.index}: offset 0x${region.offset.toString(16)} is beyond 2^53`);
  return pos;
}

/**
 * pread of 1, 2 or 4 bytes at `at` in the region, little-endian (PCI). One
 * read of exactly that width: vfio-pci turns it into one access of that
 * size, which is what device registers need.
 */
export function readRegister(fd: number, region: RegionInfo, at: number, width: 1 | 2 | 4): number {
  const buf = Buffer.alloc(width);
  const n = readSync(fd, buf, 0, width, position(region, at, width));
  if (n !== width) throw new Error(`region ${region.index}: short read at ${at} (${n} of ${width} bytes)`);
  return width === 1 ? buf.readUInt8(0) : width === 2 ? buf.readUInt16LE(0) : buf.readUInt32LE(0);
}

/** pwrite of one 1-, 2- or 4-byte little-endian value (one access of that width). */
export function writeRegister(fd: number, region: RegionInfo, at: number, width: 1 | 2 | 4, value: number): void {
  const buf = Buffer.alloc(width);
  if (width === 1) buf.writeUInt8(value, 0);
  else if (width === 2) buf.writeUInt16LE(value, 0);
  else buf.writeUInt32LE(value >>> 0, 0);
  const n = writeSync(fd, buf, 0, width, position(region, at, width));
  if (n !== width) throw new Error(`region ${region.index}: short write at ${at} (${n} of ${width} bytes)`);
}
