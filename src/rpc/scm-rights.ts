/**
 * Passing fds over Unix sockets (SCM_RIGHTS) through koffi. Node cannot:
 * net.Socket reads with read(2), which drops ancillary data, and only IPC
 * pipes between Node processes carry handles. So `struct msghdr`, `iovec`
 * and `cmsghdr` are built by hand here, in the x86_64 (LP64) layout:
 *
 *   msghdr  (56): name@0 ptr, namelen@8 u32, iov@16 ptr, iovlen@24 size_t,
 *                 control@32 ptr, controllen@40 size_t, flags@48 int
 *   iovec   (16): base@0 ptr, len@8 size_t
 *   cmsghdr (16): len@0 size_t, level@8 int, type@12 int, then the data,
 *                 padded to 8 (CMSG_SPACE); cmsg_len = 16 + data (CMSG_LEN)
 *
 * aarch64 and the other LP64 Linux ABIs share it; 32-bit ones do not.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { errnoName } from '../kernel/errno.js';

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SO_RCVTIMEO = 20;
export const MSG_DONTWAIT = 0x40;
const MSG_CTRUNC = 0x8;
/** A peer that went away gives EPIPE, not a process-killing SIGPIPE. */
const MSG_NOSIGNAL = 0x4000;
/** Received fds are close-on-exec from the start: no child inherits them. */
const MSG_CMSG_CLOEXEC = 0x40000000;

const MSGHDR_BYTES = 56;
const IOVEC_BYTES = 16;
const CMSG_HEADER = 16;
const SUN_PATH_MAX = 108;

const align8 = (n: number) => (n + 7) & ~7;
const cmsgSpace = (fds: number) => CMSG_HEADER + align8(fds * 4);

/** A failed socket call, with the errno name (EAGAIN, EPIPE, ...). */
export class SocketCallError extends Error {
  override readonly name = 'SocketCallError';
  constructor(
    readonly errno: string,
    what: string,
  ) {
    super(`${what}: ${errno}`);
  }
}

type Fn = ReturnType<LibraryHandle['func']>;
interface Libc {
  socket: Fn;
  connect: Fn;
  sendmsg: Fn;
  recvmsg: Fn;
  setsockopt: Fn;
  close: Fn;
}
let libc: Libc | undefined;

function load(): Libc {
  if (libc) return libc;
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libc.so.6');
  } catch {
    lib = koffi.load(null); // musl: already in the process
  }
  libc = {
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    connect: lib.func('int connect(int fd, void *addr, uint32_t len)'),
    sendmsg: lib.func('long sendmsg(int fd, void *msg, int flags)'),
    recvmsg: lib.func('long recvmsg(int fd, void *msg, int flags)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
    close: lib.func('int close(int fd)'),
  };
  return libc;
}

function failure(what: string): SocketCallError {
  return new SocketCallError(errnoName(koffi.errno()), what);
}

/** The buffers of one message; all must stay referenced until the call returns. */
interface Message {
  msg: Buffer;
  iov: Buffer;
  data: Buffer;
  control: Buffer | undefined;
}

function message(data: Buffer, control: Buffer | undefined): Message {
  const iov = Buffer.alloc(IOVEC_BYTES);
  iov.writeBigUInt64LE(BigInt(koffi.address(data)), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const msg = Buffer.alloc(MSGHDR_BYTES);
  msg.writeBigUInt64LE(BigInt(koffi.address(iov)), 16);
  msg.writeBigUInt64LE(1n, 24);
  if (control) {
    msg.writeBigUInt64LE(BigInt(koffi.address(control)), 32);
    msg.writeBigUInt64LE(BigInt(control.length), 40);
  }
  return { msg, iov, data, control };
}

/** Sends `data` with `fds` attached (one SCM_RIGHTS message); returns the bytes sent. */
export function sendWithFds(fd: number, data: Buffer, fds: readonly number[] = []): number {
  // A copy of our own: a small Buffer.from() may sit inside Node's shared pool.
  const payload = Buffer.alloc(data.length);
  data.copy(payload);
  let control: Buffer | undefined;
  if (fds.length > 0) {
    control = Buffer.alloc(cmsgSpace(fds.length));
    control.writeBigUInt64LE(BigInt(CMSG_HEADER + fds.length * 4), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control!.writeInt32LE(f, CMSG_HEADER + i * 4));
  }
  const m = message(payload, control);
  const sent = Number(load().sendmsg(fd, m.msg, MSG_NOSIGNAL | MSG_DONTWAIT));
  if (sent < 0) throw failure('sendmsg');
  return sent;
}

export interface Received {
  data: Buffer;
  /** fds that arrived with the data; the receiver owns (and must close) them. */
  fds: number[];
  /** The peer sent more fds than fit (MSG_CTRUNC): the kernel dropped the rest. */
  truncated: boolean;
}

function receiveBuffers(maxBytes: number, maxFds: number): Message {
  return message(Buffer.alloc(maxBytes), Buffer.alloc(cmsgSpace(maxFds)));
}

function parse(m: Message, n: number): Received {
  const fds: number[] = [];
  const controlLen = Number(m.msg.readBigUInt64LE(40));
  const control = m.control!;
  for (let off = 0; off + CMSG_HEADER <= controlLen; ) {
    const len = Number(control.readBigUInt64LE(off));
    if (len < CMSG_HEADER) break;
    if (control.readInt32LE(off + 8) === SOL_SOCKET && control.readInt32LE(off + 12) === SCM_RIGHTS) {
      for (let p = off + CMSG_HEADER; p + 4 <= off + len; p += 4) fds.push(control.readInt32LE(p));
    }
    off += align8(len);
  }
  return { data: Buffer.from(m.data.subarray(0, n)), fds, truncated: (m.msg.readInt32LE(48) & MSG_CTRUNC) !== 0 };
}

/**
 * One non-blocking recvmsg: the data and fds that were there, an empty
 * `data` at end of stream, or undefined when nothing has arrived yet.
 */
export function receiveNow(fd: number, maxBytes: number, maxFds: number): Received | undefined {
  const m = receiveBuffers(maxBytes, maxFds);
  const n = Number(load().recvmsg(fd, m.msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (n < 0) {
    const errno = errnoName(koffi.errno());
    if (errno === 'EAGAIN' || errno === 'EINTR') return undefined;
    throw new SocketCallError(errno, 'recvmsg');
  }
  return parse(m, n);
}

/** A blocking recvmsg on a worker thread (bounded by the socket's SO_RCVTIMEO). */
export function receive(fd: number, maxBytes: number, maxFds: number): Promise<Received> {
  const m = receiveBuffers(maxBytes, maxFds);
  return new Promise((resolve, reject) => {
    load().recvmsg.async(fd, m.msg, MSG_CMSG_CLOEXEC, (err: unknown, n: number) => {
      if (err) reject(err instanceof Error ? err : new Error(String(err)));
      // koffi restores the worker's errno for exactly this callback.
      else if (Number(n) < 0) reject(failure('recvmsg'));
      else resolve(parse(m, Number(n)));
    });
  });
}

/** A connected, blocking AF_UNIX stream socket (connect runs on a worker thread). */
export async function connectUnix(path: string, receiveTimeoutMs: number): Promise<number> {
  const name = Buffer.from(path);
  if (name.length >= SUN_PATH_MAX) throw new SocketCallError('ENAMETOOLONG', `connect ${path}`);
  const { socket, connect, setsockopt } = load();
  const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw failure('socket');
  const timeval = Buffer.alloc(16);
  timeval.writeBigInt64LE(BigInt(Math.floor(receiveTimeoutMs / 1000)), 0);
  timeval.writeBigInt64LE(BigInt((receiveTimeoutMs % 1000) * 1000), 8);
  if ((setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval, 16) as number) < 0) {
    const err = failure('setsockopt(SO_RCVTIMEO)');
    closeFd(fd);
    throw err;
  }
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  const rc = await new Promise<number>((resolve, reject) => {
    connect.async(fd, addr, 2 + name.length + 1, (err: unknown, r: number) => (err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(r < 0 ? -koffi.errno() : r)));
  });
  if (rc < 0) {
    closeFd(fd);
    throw new SocketCallError(errnoName(-rc), `connect ${path}`);
  }
  return fd;
}

export function closeFd(fd: number): void {
  load().close(fd);
}
