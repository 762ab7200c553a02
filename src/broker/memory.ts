/**
 * Guest memory: MapMemory (IOMMU_IOAS_MAP_FILE of an uploaded memfd) and
 * UnmapMemory (IOMMU_IOAS_UNMAP), inside the context's FIFO like every
 * operation. The registry keeps each IOAS's mappings, so the pinned-bytes
 * quota is released exactly when the kernel drops them (unmap, IOAS destroy,
 * context close) and the broker can name what a refused range collides with.
 */
import { isKernelError, UNMAP_ALL, type KernelCapabilities } from '../kernel/types.js';
import type { Context } from './context.js';
import { BrokerError, kernelFailure } from './errors.js';
import type { Handle } from './ids.js';
import type { IoasMapping, IoasObject } from './objects.js';
import type { OpEnv } from './operations.js';
import type { Quotas } from './quotas.js';

export interface MapMemoryArgs {
  ioas: Handle;
  iova: bigint;
  fixedIova: boolean;
  length: bigint;
  offset: bigint;
  readable: boolean;
  writeable: boolean;
  uploadToken: string;
}

/** Guest memory needs IOMMU_IOAS_MAP_FILE: refused up front (UNIMPLEMENTED) on kernels without it. */
export function requireMapFile(capabilities: KernelCapabilities): void {
  if (capabilities.ioctls.includes('IOMMU_IOAS_MAP_FILE')) return;
  throw new BrokerError(
    'KERNEL_UNSUPPORTED',
    `kernel ${capabilities.release} has no IOMMU_IOAS_MAP_FILE (Linux 6.13+), so guest memory cannot be mapped from a memfd`,
    { errno: 'ENOTTY', kernelOp: 'ioas_map_file' },
  );
}

/** The tenant's pinned_bytes quota and the context's own count, moved together. */
export function pinnedAccount(quotas: Quotas): OpEnv['pinned'] {
  return {
    reserve(ctx, bytes) {
      // Quotas count in numbers; anything past 2^53 is over every possible limit.
      quotas.reservePinned(ctx.tenant, bytes > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER + 1 : Number(bytes));
      ctx.pinnedBytes += bytes;
    },
    release(ctx, bytes) {
      quotas.releasePinned(ctx.tenant, Number(bytes));
      ctx.pinnedBytes -= bytes;
    },
  };
}

const hex = (n: bigint) => `0x${n.toString(16)}`;

function describe(m: IoasMapping): string {
  return `[${hex(m.iova)}, ${hex(m.iova + m.length)})`;
}

function overlapping(ioas: IoasObject, start: bigint, last: bigint): IoasMapping[] {
  return [...ioas.mappings.values()].filter((m) => m.iova <= last && start <= m.iova + m.length - 1n);
}

export async function mapMemory(env: OpEnv, ctx: Context, args: MapMemoryArgs): Promise<IoasMapping> {
  const ioas = ctx.registry.resolve(args.ioas, ['IOAS'], 'ioas');
  if (!args.fixedIova && args.iova !== 0n) {
    throw new BrokerError('INVALID_FIELD', 'iova: only used with fixed_iova; leave it 0 to let the kernel choose', { field: 'iova' });
  }
  // The kernel says EINVAL (§3.3); say which rule it is.
  if (!args.readable && !args.writeable) {
    throw new BrokerError('INVALID_FIELD', 'readable/writeable: a mapping needs at least one of them', { field: 'readable' });
  }
  const upload = env.uploads.takeUpload(ctx, args.uploadToken);
  try {
    env.pinned.reserve(ctx, args.length);
  } catch (err) {
    upload.settle(false);
    throw err;
  }
  let iova: bigint;
  try {
    iova = await env.kernel.ioasMapFile(ctx.iommufd, {
      ioasId: ioas.kernelId,
      fd: upload.fd,
      start: args.offset,
      length: args.length,
      iova: args.fixedIova ? args.iova : undefined,
      readable: args.readable,
      writeable: args.writeable,
    });
  } catch (err) {
    env.pinned.release(ctx, args.length);
    upload.settle(false);
    const range = `[${hex(args.iova)}, ${hex(args.iova + args.length)})`;
    if (isKernelError(err, 'EEXIST')) {
      const clash = overlapping(ioas, args.iova, args.iova + args.length - 1n);
      throw new BrokerError('ALREADY_EXISTS', `iova: ${range} overlaps ${clash.map(describe).join(', ') || 'a mapping'} in IOAS ${ioas.handle}`, {
        errno: 'EEXIST',
        kernelOp: err.op,
        field: 'iova',
        objects: [ioas.handle],
      });
    }
    if (isKernelError(err, 'ENOTTY')) {
      throw new BrokerError('KERNEL_UNSUPPORTED', 'this kernel has no IOMMU_IOAS_MAP_FILE (Linux 6.13+)', { errno: 'ENOTTY', kernelOp: err.op });
    }
    throw kernelFailure(err, `mapping ${args.length} bytes at offset ${args.offset} of the upload into IOAS ${ioas.handle}${args.fixedIova ? ` at ${range}` : ''}`, [ioas.handle]);
  }
  // Mapped: the kernel holds the file, so the broker's copy goes.
  upload.settle(true);
  const mapping: IoasMapping = { iova, length: args.length };
  ioas.mappings.set(iova, mapping);
  return mapping;
}

/**
 * Unmaps whole mappings inside the range and returns the bytes unmapped.
 * A range that covers only part of a mapping is refused here, before the
 * kernel: the kernel would answer ENOENT only after unmapping the mappings
 * before it (§3.5), leaving the registry behind.
 */
export async function unmapMemory(env: OpEnv, ctx: Context, ioasHandle: Handle, iova: bigint, length: bigint): Promise<bigint> {
  const ioas = ctx.registry.resolve(ioasHandle, ['IOAS'], 'ioas');
  const all = iova === UNMAP_ALL.iova && length === UNMAP_ALL.length;
  const last = all ? UNMAP_ALL.length : iova + length - 1n;
  const hit = overlapping(ioas, iova, last);
  const partial = hit.find((m) => m.iova < iova || m.iova + m.length - 1n > last);
  if (partial) {
    throw new BrokerError('KERNEL_REJECTED', `[${hex(iova)}, ${hex(last + 1n)}) covers only part of the mapping ${describe(partial)} in IOAS ${ioas.handle}; mappings are never split`, {
      errno: 'ENOENT',
      kernelOp: 'ioas_unmap',
      field: 'length',
      objects: [ioas.handle],
    });
  }
  let unmapped: bigint;
  try {
    unmapped = await env.kernel.ioasUnmap(ctx.iommufd, ioas.kernelId, iova, length);
  } catch (err) {
    if (isKernelError(err, 'ENOENT')) {
      throw new BrokerError('KERNEL_REJECTED', `nothing is mapped in [${hex(iova)}, ${hex(last + 1n)}) of IOAS ${ioas.handle}`, {
        errno: 'ENOENT',
        kernelOp: err.op,
        objects: [ioas.handle],
      });
    }
    throw kernelFailure(err, `unmapping [${hex(iova)}, ${hex(last + 1n)}) from IOAS ${ioas.handle}`, [ioas.handle]);
  }
  let bytes = 0n;
  for (const m of hit) {
    ioas.mappings.delete(m.iova);
    bytes += m.length;
  }
  // The registry's own sum: it is what was reserved, and it equals `unmapped` while registry == kernel.
  env.pinned.release(ctx, bytes);
  return unmapped;
}
