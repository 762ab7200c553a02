/**
 * Restart support on the real kernel: recognising an fd the service manager
 * handed back (LISTEN_FDS) as an iommufd or a VFIO device cdev, and the
 * read-only lookups the restart reconcile checks object IDs with. Which
 * lookup proves what, per object type, is explained in
 * src/kernel/object-probe.ts; the argument values here are what make each
 * call read-only.
 */
import { readlinkSync } from 'node:fs';
import { LOOKUP_OP } from '../object-probe.js';
import { isKernelError, KernelError, type DeviceFile, type IommufdFile, type LookupProbe } from '../types.js';
import { deviceGetInfo } from './dataplane.js';
import type { IoctlCaller } from './ioctl-call.js';
import { defineStruct, type FieldSpec } from './struct-codec.js';
import { IOMMU_HW_INFO_STRUCT, IOMMU_HWPT_INVALIDATE_STRUCT, IOMMU_IOAS_IOVA_RANGES_STRUCT } from './structs.js';
import { CDEV_RE } from './sysfs.js';

const u32 = (offset: number) => ({ offset, size: 4, kind: 'u32' }) as const satisfies FieldSpec;
const u64 = (offset: number) => ({ offset, size: 8, kind: 'u64' }) as const satisfies FieldSpec;

/**
 * `struct iommu_hwpt_get_dirty_bitmap` (6.7+, 48 bytes; offsets from
 * struct-minsz.txt: iova@16 length@24 page_size@32 data@40). Kept here, not in
 * structs.ts, because only the restart probe sends it.
 */
export const IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT = defineStruct({
  name: 'iommu_hwpt_get_dirty_bitmap',
  ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP',
  header: 'size',
  min: 48,
  full: 48,
  sizes: [[6, 7, 48]],
  fields: { size: u32(0), hwpt_id: u32(4), flags: u32(8), __reserved: u32(12), iova: u64(16), length: u64(24), page_size: u64(32), data: u64(40) },
});

/** IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: read dirty bits without clearing them. */
const GET_DIRTY_BITMAP_NO_CLEAR = 1;

/**
 * What an inherited fd is, from the path the kernel reports for it. An fd is
 * only ever taken for what it is: the store could hand back anything, so
 * neither its name nor the journal decides.
 */
export function adoptFile(fd: number, devRoot: string): IommufdFile | DeviceFile {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    throw new KernelError('EBADF', 'adopt_file', `fd ${fd}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (target === `${devRoot}/iommu`) return Object.freeze({ kind: 'iommufd', fdNumber: fd });
  const prefix = `${devRoot}/vfio/devices/`;
  const cdev = target.startsWith(prefix) ? target.slice(prefix.length) : '';
  if (CDEV_RE.test(cdev)) return Object.freeze({ kind: 'device', fdNumber: fd, cdev });
  throw new KernelError('EBADF', 'adopt_file', `fd ${fd} is ${target.slice(0, 80)}, neither ${devRoot}/iommu nor a VFIO device cdev`);
}

/** One read-only lookup on the iommufd `fd`; rejects with the kernel's errno. */
export async function lookupProbe(caller: IoctlCaller, fd: number, probe: LookupProbe): Promise<void> {
  const op = LOOKUP_OP[probe.ioctl];
  switch (probe.ioctl) {
    case 'IOMMU_IOAS_IOVA_RANGES':
      // Room for no range: the kernel only counts them (EMSGSIZE when there are some).
      await caller.call({ fd, op, name: probe.ioctl, codec: IOMMU_IOAS_IOVA_RANGES_STRUCT, values: { ioas_id: probe.id, num_iovas: 0, allowed_iovas: 0n }, mode: 'sync' });
      return;
    case 'IOMMU_GET_HW_INFO':
      // data_len 0 is allowed and copies nothing (§3.8).
      await caller.call({ fd, op, name: probe.ioctl, codec: IOMMU_HW_INFO_STRUCT, values: { flags: 0, dev_id: probe.id, data_len: 0, data_uptr: 0n }, mode: 'sync' });
      return;
    case 'IOMMU_HWPT_GET_DIRTY_BITMAP':
      // NO_CLEAR, and page_size 0 fails the range check before any bit is read.
      await caller.call({
        fd,
        op,
        name: probe.ioctl,
        codec: IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT,
        values: { hwpt_id: probe.id, flags: GET_DIRTY_BITMAP_NO_CLEAR, iova: 0n, length: 0n, page_size: 0n, data: 0n },
        mode: 'sync',
      });
      return;
    case 'IOMMU_HWPT_INVALIDATE':
      // entry_num 0: the driver gets an empty array and invalidates nothing.
      await caller.call({
        fd,
        op,
        name: probe.ioctl,
        codec: IOMMU_HWPT_INVALIDATE_STRUCT,
        values: { hwpt_id: probe.id, data_uptr: 0n, data_type: (probe.dataType ?? 0) >>> 0, entry_len: 0, entry_num: 0 },
        mode: 'sync',
      });
      return;
  }
}

/** VFIO_DEVICE_GET_INFO: every device ioctl but BIND is EINVAL until the file is bound (§3.15). */
export async function deviceBound(caller: IoctlCaller, fd: number): Promise<boolean> {
  try {
    await deviceGetInfo(caller, fd);
    return true;
  } catch (err) {
    if (isKernelError(err, 'EINVAL')) return false;
    throw err;
  }
}
