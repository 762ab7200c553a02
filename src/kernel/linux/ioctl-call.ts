/**
 * One struct ioctl: encode at the size the running kernel knows, issue it
 * (on the event loop or a worker), decode what the kernel wrote back.
 */
import koffi from 'koffi';
import { KernelError, type KernelOp } from '../types.js';
import { IOCTL, type IoctlName } from './ioctl-numbers.js';
import { StructEncodeError, type Layout, type StructCodec, type StructInput, type StructValues } from './struct-codec.js';
import type { Syscalls } from './syscalls.js';
import type { KernelVersion } from './version.js';

/**
 * `sync` for calls that only look up or allocate small objects; `async` for
 * calls that can sleep: device open/reset (bind), populating or tearing down
 * an IO page table (attach, detach, HWPT alloc, destroy of a mapped IOAS,
 * map/unmap), and DESTROY's wait for short-term users (kernel-uapi.md §3.1).
 */
export type CallMode = 'sync' | 'async';

export interface IoctlRequest<L extends Layout> {
  fd: number;
  op: KernelOp;
  name: IoctlName;
  codec: StructCodec<L>;
  values: StructInput<L>;
  mode: CallMode;
  /** Buffers the struct points at (data_uptr, ...): held until the call settles. */
  pointees?: readonly Buffer[];
}

export class IoctlCaller {
  constructor(
    private readonly sys: Syscalls,
    private readonly version: () => KernelVersion,
  ) {}

  /** Resolves with every field of the struct as the kernel left it. */
  async call<L extends Layout>(req: IoctlRequest<L>): Promise<StructValues<L>> {
    const site = { op: req.op, what: req.name };
    const request = IOCTL[req.name];
    if (req.mode === 'async') {
      const buf = this.encode(req);
      await this.sys.ioctlAsync(req.fd, request, buf, site);
      // `req` (and so `req.pointees`) stays reachable until here, past the kernel's use of the pointers.
      return req.codec.decode(buf);
    }
    // Encode, ioctl and decode with no await between them: the syscall layer's argument area is reused by the next call.
    const buf = this.encode(req, this.sys.ioctlArgument?.(req.codec.full));
    this.sys.ioctl(req.fd, request, buf, site);
    return req.codec.decode(buf);
  }

  /** An ioctl without an argument (VFIO_DEVICE_RESET); resolves with its return value. */
  async callNoArg(fd: number, op: KernelOp, name: IoctlName, mode: CallMode): Promise<number> {
    const site = { op, what: name };
    if (mode === 'async') return this.sys.ioctlAsync(fd, IOCTL[name], null, site);
    return this.sys.ioctl(fd, IOCTL[name], null, site);
  }

  /** The struct bytes `call` would send (into `into`, zeroed and full-size, when given), for tests and logs. */
  encode<L extends Layout>(req: Pick<IoctlRequest<L>, 'op' | 'name' | 'codec' | 'values'>, into?: Buffer): Buffer {
    const size = req.codec.sizeFor(this.version());
    if (size === undefined) throw new KernelError('ENOTTY', req.op, `${req.name} is newer than this kernel`);
    try {
      return req.codec.encode(req.values, size, into);
    } catch (err) {
      if (err instanceof StructEncodeError) {
        // What the kernel would answer: unknown non-zero trailing bytes are E2BIG (§2 step 5).
        throw new KernelError(err.reason === 'too-new' ? 'E2BIG' : 'EINVAL', req.op, `${req.name}: ${err.message}`);
      }
      throw err;
    }
  }
}

/** A user pointer to `buf` for a `__aligned_u64 *_uptr` field (§0). */
export function userPointer(buf: Buffer): bigint {
  if (buf.length === 0) return 0n;
  return BigInt(koffi.address(buf));
}
