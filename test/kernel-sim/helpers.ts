import { expect } from 'vitest';
import type { ErrnoName } from '../../src/kernel/errno.js';
import { createSimKernel, type SimKernel, type SimPciFunction } from '../../src/kernel/sim/index.js';
import {
  HWPT_ALLOC_NEST_PARENT,
  HWPT_DATA_TYPE,
  KernelError,
  kernelId,
  VIOMMU_TYPE,
  type DeviceFile,
  type HwptAllocArgs,
  type IommufdFile,
  type KernelObjectId,
  type KernelOp,
  type KernelProfile,
} from '../../src/kernel/types.js';

export const id = kernelId;

/** Asserts that `p` rejects with a KernelError carrying `errno` (and `op`, if given). */
export async function expectErrno(p: Promise<unknown>, errno: ErrnoName, op?: KernelOp): Promise<KernelError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${errno}, but the call succeeded`).toBeInstanceOf(KernelError);
  const ke = caught as KernelError;
  expect(ke.errno).toBe(errno);
  if (op !== undefined) expect(ke.op).toBe(op);
  return ke;
}

/** `struct iommu_hwpt_selftest {iotlb = 0xbadbeef, pagetable_type}`, little-endian. */
export function selftestData(len = 8, pagetableType = 0): Uint8Array {
  const full = new Uint8Array(8);
  const view = new DataView(full.buffer);
  view.setUint32(0, 0xbadbeef, true);
  view.setUint32(4, pagetableType, true);
  const out = new Uint8Array(len);
  out.set(full.subarray(0, Math.min(len, 8)));
  return out;
}

export function hwptArgs(devId: KernelObjectId, ptId: KernelObjectId, extra: Partial<HwptAllocArgs> = {}): HwptAllocArgs {
  return { flags: 0, devId, ptId, dataType: HWPT_DATA_TYPE.NONE, data: new Uint8Array(0), ...extra };
}

export function nestedArgs(devId: KernelObjectId, ptId: KernelObjectId, extra: Partial<HwptAllocArgs> = {}): HwptAllocArgs {
  return hwptArgs(devId, ptId, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(), ...extra });
}

export interface Fixture {
  k: SimKernel;
  fd: IommufdFile;
}

export async function fixture(profile: KernelProfile, devices?: SimPciFunction[]): Promise<Fixture> {
  const k = createSimKernel(devices ? { profile, devices } : { profile });
  return { k, fd: await k.openIommufd() };
}

export async function bindDevice(
  k: SimKernel,
  fd: IommufdFile,
  cdev = 'vfio0',
): Promise<{ dev: DeviceFile; devId: KernelObjectId }> {
  const dev = await k.openDevice(cdev);
  return { dev, devId: await k.bindIommufd(dev, fd) };
}

export interface NestingStack {
  ioas: KernelObjectId;
  dev: DeviceFile;
  devId: KernelObjectId;
  parent: KernelObjectId;
  viommu: KernelObjectId;
}

/** IOAS, bound device (no attach), NEST_PARENT HWPT and a selftest vIOMMU. */
export async function nestingStack(k: SimKernel, fd: IommufdFile, cdev = 'vfio0'): Promise<NestingStack> {
  const ioas = await k.ioasAlloc(fd);
  const { dev, devId } = await bindDevice(k, fd, cdev);
  const parent = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
  const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent });
  return { ioas, dev, devId, parent, viommu };
}

/** Users count of one object as the sim sees it. */
export function usersOf(k: SimKernel, fd: IommufdFile, objId: number): number | undefined {
  return k.objects(fd).find((o) => o.id === objId)?.users;
}

export function typeOf(k: SimKernel, fd: IommufdFile, objId: number): string | undefined {
  return k.objects(fd).find((o) => o.id === objId)?.type;
}
