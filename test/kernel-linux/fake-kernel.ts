/**
 * A scripted stand-in for the Syscalls layer: records every call and answers
 * ioctls from per-ioctl handlers. It models only what a test sets up; the
 * default answer to any ioctl is ENOTTY, like a kernel without it.
 */
import koffi from 'koffi';
import type { ErrnoName } from '../../src/kernel/errno.js';
import { IOCTL, IOCTL_NAMES, type IoctlName } from '../../src/kernel/linux/ioctl-numbers.js';
import type { Layout, StructCodec, StructInput } from '../../src/kernel/linux/struct-codec.js';
import type { CallSite, EventSyscalls, Syscalls, Utsname } from '../../src/kernel/linux/syscalls.js';
import { KernelError } from '../../src/kernel/types.js';

export interface IoctlRecord {
  fd: number;
  name: IoctlName | `0x${string}`;
  async: boolean;
  /** The struct as sent (a copy), or undefined for a null argument. */
  sent: Buffer | undefined;
  site: CallSite;
}

/** Returns the ioctl's result, or an errno name to fail with. May write into `arg`. */
export type Handler = (arg: Buffer | null, fd: number) => number | ErrnoName | void;

const NAME_BY_NUMBER = new Map<number, IoctlName>(IOCTL_NAMES.map((n) => [IOCTL[n], n]));

/** The answers §5.2 lists for a 7.2 kernel with CONFIG_IOMMUFD_TEST. */
export const PROBE_ANSWERS_7_2: Partial<Record<IoctlName, ErrnoName>> = {
  IOMMU_DESTROY: 'ENOENT',
  IOMMU_IOAS_ALLOC: 'EOPNOTSUPP',
  IOMMU_HWPT_ALLOC: 'ENOENT',
  IOMMU_GET_HW_INFO: 'ENOENT',
  IOMMU_HWPT_INVALIDATE: 'ENOENT',
  IOMMU_FAULT_QUEUE_ALLOC: 'EOPNOTSUPP',
  IOMMU_IOAS_MAP_FILE: 'EINVAL',
  IOMMU_VIOMMU_ALLOC: 'EOPNOTSUPP',
  IOMMU_VDEVICE_ALLOC: 'ENOENT',
  IOMMU_VEVENTQ_ALLOC: 'EOPNOTSUPP',
  IOMMU_HW_QUEUE_ALLOC: 'EOPNOTSUPP',
  IOMMU_TEST_CMD: 'EOPNOTSUPP',
};

export class FakeKernel implements Syscalls {
  release = '7.2.13';
  /** Paths open() succeeds on. */
  readonly nodes = new Set<string>();
  readonly opened: { fd: number; path: string }[] = [];
  readonly closed: number[] = [];
  readonly ioctls: IoctlRecord[] = [];
  /** eventfd/poll: absent by default, so device requests stay off; tests plug in real ones. */
  events?: EventSyscalls;
  /** Shared by every sync call, as the libc layer's argument area is. */
  private readonly argumentArea = Buffer.alloc(4096);
  private readonly handlers = new Map<number, Handler>();
  private readonly open_ = new Map<number, string>();
  private nextFd = 40;

  constructor(devRoot: string, probeAnswers: Partial<Record<IoctlName, ErrnoName>> = PROBE_ANSWERS_7_2) {
    this.nodes.add(`${devRoot}/iommu`);
    for (const [name, errno] of Object.entries(probeAnswers) as [IoctlName, ErrnoName][]) this.on(name, () => errno);
  }

  /** Replaces the handler of one ioctl. */
  on(name: IoctlName, handler: Handler): this {
    this.handlers.set(IOCTL[name], handler);
    return this;
  }

  /** Forgets recorded calls (after probe(), say). */
  clearLog(): void {
    this.ioctls.length = 0;
    this.opened.length = 0;
    this.closed.length = 0;
  }

  openFds(): number[] {
    return [...this.open_.keys()];
  }

  calls(name: IoctlName): IoctlRecord[] {
    return this.ioctls.filter((r) => r.name === name);
  }

  open(path: string, _flags: number, site: CallSite): number {
    if (!this.nodes.has(path)) throw new KernelError('ENOENT', site.op, `${site.what}: ${path}`);
    const fd = this.nextFd++;
    this.open_.set(fd, path);
    this.opened.push({ fd, path });
    return fd;
  }

  async close(fd: number): Promise<void> {
    this.closed.push(fd);
    this.open_.delete(fd);
  }

  ioctlArgument(size: number): Buffer | undefined {
    return size > this.argumentArea.length ? undefined : this.argumentArea.subarray(0, size).fill(0);
  }

  ioctl(fd: number, request: number, arg: Buffer | null, site: CallSite): number {
    return this.run(fd, request, arg, site, false);
  }

  async ioctlAsync(fd: number, request: number, arg: Buffer | null, site: CallSite): Promise<number> {
    if (arg !== null && arg.buffer === this.argumentArea.buffer) throw new Error(`${site.what}: an ioctlArgument() buffer is for sync calls only`);
    await Promise.resolve();
    return this.run(fd, request, arg, site, true);
  }

  uname(): Utsname {
    return { sysname: 'Linux', release: this.release, machine: 'x86_64' };
  }

  private run(fd: number, request: number, arg: Buffer | null, site: CallSite, async: boolean): number {
    const name = NAME_BY_NUMBER.get(request) ?? (`0x${request.toString(16)}` as const);
    this.ioctls.push({ fd, name, async, sent: arg ? Buffer.from(arg) : undefined, site });
    if (!this.open_.has(fd)) throw new KernelError('EBADF', site.op, site.what);
    const handler = this.handlers.get(request);
    const result = handler ? handler(arg, fd) : 'ENOTTY';
    if (typeof result === 'string') throw new KernelError(result, site.op, site.what);
    return result ?? 0;
  }
}

type Copy = (dst: bigint | Buffer, src: bigint | Buffer, n: number) => unknown;
let copyOut: Copy | undefined;
let copyIn: Copy | undefined;

function libc() {
  return koffi.load('libc.so.6');
}

/** Writes `bytes` at a user pointer the backend put in a struct, as copy_to_user would. */
export function writeUser(address: bigint, bytes: Buffer): void {
  copyOut ??= libc().func('void *memcpy(uintptr_t dst, const uint8_t *src, size_t n)') as unknown as Copy;
  copyOut(address, bytes, bytes.length);
}

/** Reads `length` bytes at a user pointer, as copy_from_user would. */
export function readUser(address: bigint, length: number): Buffer {
  copyIn ??= libc().func('void *memcpy(_Out_ uint8_t *dst, uintptr_t src, size_t n)') as unknown as Copy;
  const out = Buffer.alloc(length);
  copyIn(out, address, length);
  return out;
}

/** Writes only the given fields into a struct the backend sent, as the kernel writes its outputs back. */
export function writeFields<L extends Layout>(arg: Buffer, codec: StructCodec<L>, values: StructInput<L>): void {
  for (const [name, value] of Object.entries(values)) {
    const f = codec.fields[name]!;
    codec.encode({ [name]: value } as StructInput<L>).copy(arg, f.offset, f.offset, f.offset + f.size);
  }
}
