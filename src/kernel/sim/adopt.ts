/**
 * Restart support in the sim: OS fds for the service manager's fd store,
 * taking a stored fd back (adoption), and the read-only lookup ioctls the
 * restart reconcile probes object IDs with (src/kernel/object-probe.ts).
 *
 * The lookups follow the 7.2 handlers' order of checks, so the sim gives the
 * answers the real kernel gives (kernel-uapi.md §2, §3.6, §3.8, §3.14):
 * - IOAS_IOVA_RANGES: typed IOAS lookup; with room for no range, EMSGSIZE
 *   (an IOAS always allows some IOVA: the whole space, or the mock aperture).
 * - GET_HW_INFO: typed DEVICE lookup.
 * - HWPT_GET_DIRTY_BITMAP: unknown flags EOPNOTSUPP, typed HWPT_PAGING lookup,
 *   then page_size 0 is EINVAL (iommufd_check_iova_range) before any read.
 * - HWPT_INVALIDATE: any-type lookup; a nested HWPT goes to the mock's
 *   cache_invalidate_user (data_type must be IOMMU_HWPT_INVALIDATE_DATA_SELFTEST,
 *   else EINVAL), a vIOMMU to the mock's cache_invalidate (an empty array of
 *   IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST is accepted, any other type fails
 *   the array copy with EINVAL); every other type is EINVAL.
 */
import { closeSync } from 'node:fs';
import { createMemfd } from '../memfd.js';
import { LOOKUP_OP } from '../object-probe.js';
import type { DeviceFile, IommufdFile, LookupProbe } from '../types.js';

export { LOOKUP_OP };
import { fail, type IommufdContext } from './objects.js';
import type { DeviceFileState, IommufdFileState } from './vfio.js';

/** IOMMU_HWPT_INVALIDATE_DATA_SELFTEST and IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST (both 0xdeadbeef). */
const INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
/** IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR, the only flag the ioctl knows. */
export const GET_DIRTY_BITMAP_NO_CLEAR = 1;

/** One read-only lookup against a context; throws SimFailure with the kernel's errno. */
export function lookup(ctx: IommufdContext, probe: LookupProbe): void {
  switch (probe.ioctl) {
    case 'IOMMU_IOAS_IOVA_RANGES':
      ctx.get(probe.id, 'IOAS');
      fail('EMSGSIZE', 'num_iovas 0: the IOAS has at least one allowed range');
      break;
    case 'IOMMU_GET_HW_INFO':
      ctx.get(probe.id, 'DEVICE');
      return;
    case 'IOMMU_HWPT_GET_DIRTY_BITMAP':
      ctx.get(probe.id, 'HWPT_PAGING');
      fail('EINVAL', 'page_size 0');
      break;
    case 'IOMMU_HWPT_INVALIDATE': {
      const obj = ctx.lookup(probe.id);
      if (obj === undefined) fail('ENOENT', `no object with id ${probe.id}`);
      if (obj.type !== 'HWPT_NESTED' && obj.type !== 'VIOMMU') fail('EINVAL', `${obj.type} ${probe.id} takes no invalidation`);
      if ((probe.dataType ?? 0) >>> 0 !== INVALIDATE_DATA_SELFTEST) fail('EINVAL', `data_type 0x${(probe.dataType ?? 0).toString(16)}`);
      return;
    }
  }
}

/**
 * The memfds standing in for iommufd fds in the fd store, made on first use
 * so a daemon without an fd store pays nothing; device files get theirs the
 * same way (SimKernel.osFd).
 */
export class SimStoreFds {
  private readonly iommufdFds = new Map<IommufdFile, number>();

  iommufdFd(state: IommufdFileState | undefined): number | undefined {
    if (!state?.fdOpen) return undefined;
    let fd = this.iommufdFds.get(state.handle);
    if (fd === undefined) {
      fd = createMemfd('iommufd-sim');
      this.iommufdFds.set(state.handle, fd);
    }
    return fd;
  }

  /** The iommufd's fd closed: its stand-in goes too. */
  forget(file: IommufdFile): void {
    const fd = this.iommufdFds.get(file);
    if (fd === undefined) return;
    this.iommufdFds.delete(file);
    closeSync(fd);
  }

  /**
   * The file behind a stored fd: one this kernel still has open (the store's
   * copy kept it open while the daemon restarted). Anything else, such as a
   * memfd of another process's sim, is EBADF: no kernel file stands behind it.
   */
  adopt(
    fd: number,
    iommufds: ReadonlyMap<IommufdFile, IommufdFileState>,
    devices: ReadonlyMap<DeviceFile, DeviceFileState>,
    deviceFd: (file: DeviceFile) => number | undefined,
  ): IommufdFile | DeviceFile {
    for (const [file, memfd] of this.iommufdFds) {
      if (memfd === fd && iommufds.get(file)?.fdOpen) return file;
    }
    for (const file of devices.keys()) if (deviceFd(file) === fd) return file;
    return fail('EBADF', `fd ${fd} is neither an iommufd nor a VFIO device file of this kernel`);
  }
}

/** VFIO_DEVICE_GET_INFO's answer on a device file: bound, or EINVAL before bind (§3.15). */
export function deviceBound(df: DeviceFileState): boolean {
  return df.binding !== undefined;
}
