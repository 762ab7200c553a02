/**
 * libc `open`, `close`, `ioctl` and `uname` through koffi, with errno; and
 * `eventfd`/`poll` for vfio-pci's request IRQ (EventSyscalls).
 *
 * Failures become `KernelError(errnoName, op)`. errno numbers are translated
 * with koffi's table for the running platform, so the names stay right on
 * architectures whose numbering differs from x86_64 (mips, alpha, sparc).
 *
 * Sync vs async: a sync koffi call runs on the event-loop thread. Calls that
 * can sleep in the kernel go through `fn.async`, which runs them on a libuv
 * worker and captures that thread's errno for the callback (koffi's
 * AsyncCall::Complete restores it before calling back). Which calls are slow
 * is decided by the backend; this layer offers both forms. Callers serialise
 * per context, so issuing one call per context at a time keeps kernel order.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { constants as fsConstants } from 'node:fs';
import { endianness } from 'node:os';
import { errnoName, isErrnoName, type ErrnoName } from '../errno.js';
import { KernelError, type KernelOp } from '../types.js';

/** What failed, for `KernelError`: the KernelBackend op and the syscall/ioctl name for the detail. */
export interface CallSite {
  op: KernelOp;
  what: string;
}

export interface Utsname {
  sysname: string;
  release: string;
  machine: string;
}

/**
 * The syscall surface the backend uses; `createLibcSyscalls()` is the real
 * one, tests substitute a scripted kernel.
 */
export interface Syscalls {
  /** open(2); returns the fd. */
  open(path: string, flags: number, site: CallSite): number;
  /** close(2) off the event loop. Never rejects: Linux frees the fd even when close reports an error. */
  close(fd: number): Promise<void>;
  /** ioctl(2) on the event-loop thread, for calls that never sleep for long. Returns the result (≥ 0). */
  ioctl(fd: number, request: number, arg: Buffer | null, site: CallSite): number;
  /**
   * A zeroed `size`-byte buffer for the argument of one sync `ioctl`, or
   * undefined when this layer has none that large. It is valid only until the
   * next call, so fill it, issue the ioctl and read it back without yielding.
   */
  ioctlArgument?(size: number): Buffer | undefined;
  /** ioctl(2) on a worker thread. `arg` (and anything it points to) must stay referenced until it settles. */
  ioctlAsync(fd: number, request: number, arg: Buffer | null, site: CallSite): Promise<number>;
  uname(): Utsname;
  /** eventfd and poll, for vfio-pci's request IRQ (device-request.ts); a syscall layer without them turns that off. */
  events?: EventSyscalls;
}

/**
 * eventfd(2) and poll(2). One poll on a worker thread waits for every armed
 * eventfd at once (device-request.ts), so waiting never blocks the event loop
 * and never holds more than one libuv worker.
 */
export interface EventSyscalls {
  /** A new eventfd, counter 0, close-on-exec and non-blocking. */
  eventfd(site: CallSite): number;
  /** Adds `value` to the counter (wakes pollers). */
  signal(fd: number, value?: bigint): void;
  /** Reads and resets the counter; 0n when it was already 0. */
  drain(fd: number): bigint;
  /** close(2) on the event loop: an eventfd's close never blocks. */
  closeNow(fd: number): void;
  /**
   * poll(2) for POLLIN on a worker thread; resolves with each fd's revents
   * (POLLIN, POLLERR, POLLHUP, POLLNVAL bits), all 0 after EINTR.
   */
  pollIn(fds: readonly number[], timeoutMs: number): Promise<number[]>;
}

/**
 * O_RDWR | O_CLOEXEC. O_CLOEXEC is not in fs.constants; 0o2000000 is its
 * value on x86, arm, arm64, riscv, s390, ppc, mips and loongarch (alpha,
 * sparc and parisc differ, and Node does not run there).
 */
export const O_CLOEXEC = 0o2000000;
export const OPEN_RDWR_CLOEXEC = fsConstants.O_RDWR | O_CLOEXEC;

/** poll(2) event bits (asm-generic/poll.h; the same on every Linux architecture Node runs on). */
export const POLLIN = 0x1;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;
/** EFD_CLOEXEC is O_CLOEXEC and EFD_NONBLOCK is O_NONBLOCK (include/uapi/linux/eventfd.h). */
const EFD_CLOEXEC = O_CLOEXEC;
const EFD_NONBLOCK = fsConstants.O_NONBLOCK;
/** struct pollfd: int fd, short events, short revents. */
const POLLFD_BYTES = 8;
const LE = endianness() === 'LE';

/** errno number → name via the platform table, then errno.ts's generic numbering. */
export function errnoToName(num: number): ErrnoName | `ERRNO_${number}` {
  const byName = nativeErrnoNames().get(num);
  if (byName !== undefined) return byName;
  return errnoName(num);
}

let nativeNames: Map<number, ErrnoName> | undefined;
function nativeErrnoNames(): Map<number, ErrnoName> {
  if (nativeNames === undefined) {
    nativeNames = new Map();
    for (const [name, num] of Object.entries(koffi.os.errno)) {
      // EDEADLOCK aliases EDEADLK and EWOULDBLOCK aliases EAGAIN; the first name wins.
      if (isErrnoName(name) && !nativeNames.has(num)) nativeNames.set(num, name);
    }
  }
  return nativeNames;
}

function fail(errno: number, site: CallSite, extra?: string): KernelError {
  return new KernelError(errnoToName(errno), site.op, extra ? `${site.what}: ${extra}` : site.what);
}

type NativeFunction = ReturnType<LibraryHandle['func']>;

interface LibcFunctions {
  open: NativeFunction;
  close: NativeFunction;
  ioctl: NativeFunction;
  /** The same ioctl with its argument as an address, for the fixed argument area. */
  ioctlAt: NativeFunction;
  uname: NativeFunction;
  eventfd: NativeFunction;
  read: NativeFunction;
  write: NativeFunction;
  poll: NativeFunction;
}

/** The _Out_ struct for uname(2): six 65-byte strings on Linux (__NEW_UTS_LEN + 1). */
const UTS_FIELD = 65;

let libc: LibcFunctions | undefined;

/** Loads libc lazily so importing this module never touches the FFI (e.g. on the sim backend). */
function loadLibc(): LibcFunctions {
  if (libc !== undefined) return libc;
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libc.so.6');
  } catch {
    // musl and other libcs: the symbols are already in the process (dlopen(NULL)).
    lib = koffi.load(null);
  }
  const str = (n: number) => koffi.array('char', n, 'String');
  // Anonymous type: a named one would collide if this module is evaluated twice in one process.
  const utsname = koffi.struct({
    sysname: str(UTS_FIELD),
    nodename: str(UTS_FIELD),
    release: str(UTS_FIELD),
    version: str(UTS_FIELD),
    machine: str(UTS_FIELD),
    domainname: str(UTS_FIELD),
  });
  libc = {
    open: lib.func('int open(const char *path, int flags, int mode)'),
    close: lib.func('int close(int fd)'),
    // glibc declares ioctl variadic, and koffi cannot call variadic functions
    // asynchronously. On the Linux x86_64 and aarch64 ABIs a pointer passed as
    // the first variadic argument travels in the same register as a fixed
    // third parameter, so this fixed prototype is call-compatible.
    ioctl: lib.func('int ioctl(int fd, unsigned long request, void *arg)'),
    ioctlAt: lib.func('int ioctl(int fd, unsigned long request, intptr_t arg)'),
    uname: lib.func('uname', 'int', [koffi.out(koffi.pointer(utsname))]),
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
    read: lib.func('long read(int fd, void *buf, unsigned long count)'),
    write: lib.func('long write(int fd, void *buf, unsigned long count)'),
    poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)'),
  };
  return libc;
}

/**
 * Sync ioctl arguments live in one off-heap area whose address is taken
 * once and passed as an integer. Handing koffi a Buffer costs about 60 ns
 * more per call (type checks and a backing-store lookup through N-API), and a
 * freshly allocated struct of 64 bytes or less is a V8 on-heap typed array
 * that koffi must first move off the heap, which cost 600–900 ns more
 * (bench/ffi.ts measures both). The area is never freed or moved, and calls
 * on the event loop cannot interleave, so one area serves every sync call.
 */
const ARGUMENT_AREA_BYTES = 4096;

interface ArgumentArea {
  bytes: Buffer;
  /** The same memory as doubles: zeroing it eight bytes per store is 4× cheaper than Buffer.fill for small structs. */
  doubles: Float64Array;
  address: number;
  /** Views by size, each at offset 0, made once: struct sizes are few. */
  views: (Buffer | undefined)[];
  /** The view handed out last: the one a sync ioctl passes by address. Any other Buffer goes through koffi as a Buffer. */
  current: Buffer | undefined;
}

function createArgumentArea(): ArgumentArea {
  // allocUnsafeSlow: its own ArrayBuffer, outside Buffer's shared pool and the V8 heap.
  const bytes = Buffer.allocUnsafeSlow(ARGUMENT_AREA_BYTES);
  const doubles = new Float64Array(bytes.buffer, bytes.byteOffset, ARGUMENT_AREA_BYTES / 8);
  return { bytes, doubles, address: Number(koffi.address(bytes)), views: new Array<Buffer | undefined>(ARGUMENT_AREA_BYTES + 1).fill(undefined), current: undefined };
}

function zeroPrefix(area: ArgumentArea, size: number): void {
  const whole = size >>> 3;
  for (let i = 0; i < whole; i++) area.doubles[i] = 0;
  for (let i = whole << 3; i < size; i++) area.bytes[i] = 0;
}

/** Whether `arg` is the area's current view (an identity check: `.buffer` is a 40 ns getter). */
function inArea(area: ArgumentArea | undefined, arg: Buffer | null): area is ArgumentArea {
  return area !== undefined && arg !== null && area.current === arg;
}

/** The real syscalls, through koffi. */
export function createLibcSyscalls(): Syscalls {
  let area: ArgumentArea | undefined;
  return {
    open(path, flags, site) {
      const { open } = loadLibc();
      const fd = open(path, flags, 0) as number;
      if (fd < 0) throw fail(koffi.errno(), site, path);
      return fd;
    },

    close(fd) {
      const { close } = loadLibc();
      return new Promise<void>((resolve) => {
        close.async(fd, () => resolve());
      });
    },

    ioctlArgument(size) {
      if (size > ARGUMENT_AREA_BYTES) return undefined;
      area ??= createArgumentArea();
      zeroPrefix(area, size);
      let view = area.views[size];
      if (view === undefined) {
        view = area.bytes.subarray(0, size);
        area.views[size] = view;
      }
      area.current = view;
      return view;
    },

    ioctl(fd, request, arg, site) {
      const libc = loadLibc();
      const rc = (inArea(area, arg) ? libc.ioctlAt(fd, request, area.address) : libc.ioctl(fd, request, arg)) as number;
      if (rc < 0) throw fail(koffi.errno(), site);
      return rc;
    },

    ioctlAsync(fd, request, arg, site) {
      const { ioctl } = loadLibc();
      if (area !== undefined && arg !== null && arg.buffer === area.bytes.buffer) {
        // The worker would read the area while the event loop reuses it.
        return Promise.reject(new Error(`${site.what}: an ioctlArgument() buffer is for sync calls only`));
      }
      return new Promise<number>((resolve, reject) => {
        ioctl.async(fd, request, arg, (err: unknown, rc: number) => {
          if (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
            return;
          }
          // Read errno inside the callback: koffi set it from the worker thread for exactly this window.
          if (rc < 0) reject(fail(koffi.errno(), site));
          else resolve(rc);
        });
      });
    },

    uname() {
      const { uname } = loadLibc();
      const out: Record<string, string> = {};
      if ((uname(out) as number) < 0) throw new Error(`uname(2) failed: ${errnoToName(koffi.errno())}`);
      return { sysname: out['sysname'] ?? '', release: out['release'] ?? '', machine: out['machine'] ?? '' };
    },

    events: libcEvents,
  };
}

/** Everything but pollIn touches only a non-blocking eventfd, so it runs on the event loop. */
const libcEvents: EventSyscalls = {
  eventfd(site) {
    const fd = loadLibc().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) as number;
    if (fd < 0) throw fail(koffi.errno(), site, 'eventfd');
    return fd;
  },

  signal(fd, value = 1n) {
    const buf = Buffer.alloc(8);
    if (LE) buf.writeBigUInt64LE(value);
    else buf.writeBigUInt64BE(value);
    // EAGAIN only when the counter would overflow 2^64-2: a wake-up is pending anyway.
    loadLibc().write(fd, buf, 8);
  },

  drain(fd) {
    const buf = Buffer.alloc(8);
    const n = Number(loadLibc().read(fd, buf, 8));
    if (n !== 8) return 0n; // EAGAIN: the counter was 0
    return LE ? buf.readBigUInt64LE() : buf.readBigUInt64BE();
  },

  closeNow(fd) {
    loadLibc().close(fd);
  },

  pollIn(fds, timeoutMs) {
    const { poll } = loadLibc();
    const set = Buffer.alloc(fds.length * POLLFD_BYTES);
    fds.forEach((fd, i) => {
      if (LE) {
        set.writeInt32LE(fd, i * POLLFD_BYTES);
        set.writeInt16LE(POLLIN, i * POLLFD_BYTES + 4);
      } else {
        set.writeInt32BE(fd, i * POLLFD_BYTES);
        set.writeInt16BE(POLLIN, i * POLLFD_BYTES + 4);
      }
    });
    return new Promise<number[]>((resolve, reject) => {
      // `set` stays referenced by this closure until the worker is done with it.
      poll.async(set, fds.length, timeoutMs, (err: unknown, rc: number) => {
        if (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        if (rc < 0) {
          const errno = errnoToName(koffi.errno());
          if (errno === 'EINTR') resolve(fds.map(() => 0));
          else reject(new Error(`poll(2) failed: ${errno}`));
          return;
        }
        resolve(fds.map((_, i) => (LE ? set.readUInt16LE(i * POLLFD_BYTES + 6) : set.readUInt16BE(i * POLLFD_BYTES + 6))));
      });
    });
  },
};
