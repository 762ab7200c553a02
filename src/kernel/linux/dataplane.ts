/**
 * IOAS mappings (kernel-uapi.md §3.3–§3.6) and VFIO device info/reset
 * (§3.18, §3.19). MAP_FILE and UNMAP are KernelBackend calls (the broker's
 * MapMemory/UnmapMemory); the others LinuxKernel exposes for the real-kernel
 * lane.
 * Their KernelErrors carry the op in EXTRA_OP and name the exact ioctl.
 */
import { isKernelError, UNMAP_ALL as UNMAP_ALL_REQUEST, type IoasMapFileArgs, type KernelObjectId, type KernelOp, type MapAccess } from '../types.js';
import { userPointer, type IoctlCaller } from './ioctl-call.js';
import {
  IOAS_MAP_FIXED_IOVA,
  IOAS_MAP_READABLE,
  IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_IOVA_RANGES_STRUCT,
  IOMMU_IOAS_MAP_FILE_STRUCT,
  IOMMU_IOAS_MAP_STRUCT,
  IOMMU_IOAS_UNMAP_STRUCT,
  IOMMU_IOVA_RANGE_STRUCT,
  VFIO_DEVICE_INFO_STRUCT,
} from './structs.js';

/** The KernelOp reported for each extra call (see the module comment). */
export const EXTRA_OP = {
  ioasMap: 'ioas_map',
  ioasMapFile: 'ioas_map_file',
  ioasUnmap: 'ioas_unmap',
  ioasIovaRanges: 'ioas_iova_ranges',
  deviceGetInfo: 'device_get_info',
  deviceReset: 'device_reset',
} as const satisfies Record<string, KernelOp>;

export type { MapAccess, IoasMapFileArgs } from '../types.js';

export interface IoasMapArgs extends MapAccess {
  ioasId: KernelObjectId;
  /** Address in this process (e.g. from a native allocation); the kernel pins it. */
  userVa: bigint;
  length: bigint;
  /** Fixed IOVA; omitted lets the kernel choose. */
  iova?: bigint | undefined;
}

function mapFlags(args: MapAccess & { iova?: bigint | undefined }): number {
  // Neither R nor W is EINVAL in the kernel (§3.3); default to both, the usual DMA buffer.
  const readable = args.readable ?? true;
  const writeable = args.writeable ?? true;
  return (
    (args.iova !== undefined ? IOAS_MAP_FIXED_IOVA : 0) |
    (readable ? IOAS_MAP_READABLE : 0) |
    (writeable ? IOAS_MAP_WRITEABLE : 0)
  );
}

/** IOMMU_IOAS_MAP; returns the IOVA. Async: pins and maps every page. */
export async function ioasMap(caller: IoctlCaller, fd: number, args: IoasMapArgs): Promise<bigint> {
  const out = await caller.call({
    fd,
    op: EXTRA_OP.ioasMap,
    name: 'IOMMU_IOAS_MAP',
    codec: IOMMU_IOAS_MAP_STRUCT,
    values: { flags: mapFlags(args), ioas_id: args.ioasId, user_va: args.userVa, length: args.length, iova: args.iova ?? 0n },
    mode: 'async',
  });
  return out.iova;
}

/** IOMMU_IOAS_MAP_FILE (6.13+); returns the IOVA. */
export async function ioasMapFile(caller: IoctlCaller, fd: number, args: IoasMapFileArgs): Promise<bigint> {
  const out = await caller.call({
    fd,
    op: EXTRA_OP.ioasMapFile,
    name: 'IOMMU_IOAS_MAP_FILE',
    codec: IOMMU_IOAS_MAP_FILE_STRUCT,
    values: { flags: mapFlags(args), ioas_id: args.ioasId, fd: args.fd, start: args.start, length: args.length, iova: args.iova ?? 0n },
    mode: 'async',
  });
  return out.iova;
}

/** Unmap-all request of §3.5: iova 0, length U64_MAX. */
export const UNMAP_ALL = UNMAP_ALL_REQUEST;

/**
 * IOMMU_IOAS_UNMAP; returns the bytes unmapped. On error the kernel may
 * already have unmapped areas before the failing one (§3.5).
 */
export async function ioasUnmap(caller: IoctlCaller, fd: number, ioasId: KernelObjectId, iova: bigint, length: bigint): Promise<bigint> {
  const out = await caller.call({
    fd,
    op: EXTRA_OP.ioasUnmap,
    name: 'IOMMU_IOAS_UNMAP',
    codec: IOMMU_IOAS_UNMAP_STRUCT,
    values: { ioas_id: ioasId, iova, length },
    mode: 'async',
  });
  return out.length;
}

export interface IovaRanges {
  /** Inclusive [start, last] ranges the IOAS accepts. */
  ranges: { start: bigint; last: bigint }[];
  alignment: bigint;
}

/** IOMMU_IOAS_IOVA_RANGES, growing the array on EMSGSIZE (§3.6). */
export async function ioasIovaRanges(caller: IoctlCaller, fd: number, ioasId: KernelObjectId): Promise<IovaRanges> {
  let capacity = 8;
  for (let attempt = 0; ; attempt++) {
    const array = Buffer.alloc(capacity * IOMMU_IOVA_RANGE_STRUCT.full);
    try {
      const out = await caller.call({
        fd,
        op: EXTRA_OP.ioasIovaRanges,
        name: 'IOMMU_IOAS_IOVA_RANGES',
        codec: IOMMU_IOAS_IOVA_RANGES_STRUCT,
        values: { ioas_id: ioasId, num_iovas: capacity, allowed_iovas: userPointer(array) },
        mode: 'sync',
        pointees: [array],
      });
      const ranges: IovaRanges['ranges'] = [];
      for (let i = 0; i < out.num_iovas; i++) {
        const r = IOMMU_IOVA_RANGE_STRUCT.decode(array.subarray(i * 16, (i + 1) * 16));
        ranges.push({ start: r.start, last: r.last });
      }
      return { ranges, alignment: out.out_iova_alignment };
    } catch (err) {
      // The kernel wrote the real count back, but the caller does not decode failed calls; an IOAS has few ranges.
      if (!isKernelError(err, 'EMSGSIZE') || attempt >= 8) throw err;
      capacity *= 4;
    }
  }
}

export interface VfioDeviceInfo {
  flags: number;
  numRegions: number;
  numIrqs: number;
}

/** VFIO_DEVICE_GET_INFO (after bind only, §3.15). Capability chains are not read. */
export async function deviceGetInfo(caller: IoctlCaller, fd: number): Promise<VfioDeviceInfo> {
  const out = await caller.call({
    fd,
    op: EXTRA_OP.deviceGetInfo,
    name: 'VFIO_DEVICE_GET_INFO',
    codec: VFIO_DEVICE_INFO_STRUCT,
    values: {},
    mode: 'sync',
  });
  return { flags: out.flags, numRegions: out.num_regions, numIrqs: out.num_irqs };
}

/** VFIO_DEVICE_RESET (§3.19). Async: a function reset can take a second or more. */
export async function deviceReset(caller: IoctlCaller, fd: number): Promise<void> {
  await caller.callNoArg(fd, EXTRA_OP.deviceReset, 'VFIO_DEVICE_RESET', 'async');
}
