/**
 * sd_notify(3) without libsystemd: one datagram per message to the socket in
 * NOTIFY_SOCKET. Node's dgram module has no AF_UNIX support, so the
 * syscalls go through koffi. Also the service manager's file descriptor
 * store (FDSTORE=1 with SCM_RIGHTS, FDSTOREREMOVE=1) and sd_listen_fds(3)'s
 * side of it (LISTEN_FDS, LISTEN_FDNAMES), for restart without teardown.
 */
import koffi from 'koffi';
import net from 'node:net';
import type { FdStore } from '../broker/fd-store.js';

type Fn = (...args: unknown[]) => unknown;

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
const SUN_PATH_MAX = 108;

let libc: { socket: Fn; sendto: Fn; sendmsg: Fn; pipe2: Fn; close: Fn } | undefined;

function syscalls() {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      sendto: lib.func('long sendto(int fd, const void *buf, unsigned long len, int flags, const void *addr, unsigned int addrlen)'),
      sendmsg: lib.func('long sendmsg(int fd, void *msg, int flags)'),
      pipe2: lib.func('int pipe2(void *fds, int flags)'),
      close: lib.func('int close(int fd)'),
    };
  }
  return libc;
}

// x86_64/LP64 layouts, as in src/rpc/scm-rights.ts: msghdr (56) name@0 namelen@8
// iov@16 iovlen@24 control@32 controllen@40; iovec (16); cmsghdr (16) + data.
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const CMSG_HEADER = 16;

/** One datagram to `addr` carrying `payload` and `fds` (one SCM_RIGHTS message). */
function sendDatagramWithFds(fd: number, addr: Buffer, payload: Buffer, fds: readonly number[]): number {
  const data = Buffer.alloc(payload.length);
  payload.copy(data);
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(BigInt(koffi.address(data)), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const control = Buffer.alloc(CMSG_HEADER + ((fds.length * 4 + 7) & ~7));
  control.writeBigUInt64LE(BigInt(CMSG_HEADER + fds.length * 4), 0);
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  fds.forEach((f, i) => control.writeInt32LE(f, CMSG_HEADER + i * 4));
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(BigInt(koffi.address(addr)), 0);
  msg.writeUInt32LE(addr.length, 8);
  msg.writeBigUInt64LE(BigInt(koffi.address(iov)), 16);
  msg.writeBigUInt64LE(1n, 24);
  msg.writeBigUInt64LE(BigInt(koffi.address(control)), 32);
  msg.writeBigUInt64LE(BigInt(control.length), 40);
  // data, iov, control and addr stay referenced until sendmsg returns.
  return syscalls().sendmsg(fd, msg, MSG_NOSIGNAL) as number;
}

/** struct sockaddr_un for a path, or for an abstract name written as `@name`. */
export function sockaddrUn(socketPath: string): Buffer {
  const abstract = socketPath.startsWith('@');
  const name = Buffer.from(abstract ? socketPath.slice(1) : socketPath);
  const pathLen = name.length + (abstract ? 1 : 0);
  if (pathLen >= SUN_PATH_MAX) throw new Error(`NOTIFY_SOCKET path is too long (${pathLen} bytes)`);
  const addr = Buffer.alloc(2 + pathLen + (abstract ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, abstract ? 3 : 2);
  return addr;
}

export class SdNotifier {
  private watchdog: NodeJS.Timeout | undefined;

  private constructor(private readonly socketPath: string) {}

  /** A notifier when running under systemd (NOTIFY_SOCKET set), otherwise undefined. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): SdNotifier | undefined {
    const socketPath = env['NOTIFY_SOCKET'];
    return socketPath ? new SdNotifier(socketPath) : undefined;
  }

  /** Sends one message; with `fds`, they travel with it (SCM_RIGHTS), as sd_pid_notify_with_fds does. */
  send(state: string, fds: readonly number[] = []): void {
    const { socket, sendto, close } = syscalls();
    const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
    if (fd < 0) throw new Error(`sd_notify: socket() failed (errno ${koffi.errno()})`);
    try {
      const addr = sockaddrUn(this.socketPath);
      const payload = Buffer.from(state);
      const sent = fds.length > 0 ? sendDatagramWithFds(fd, addr, payload, fds) : (sendto(fd, payload, payload.length, MSG_NOSIGNAL, addr, addr.length) as number);
      if (sent < 0) throw new Error(`sd_notify: sending to ${this.socketPath} failed (errno ${koffi.errno()})`);
    } finally {
      close(fd);
    }
  }

  /**
   * sd_notify_barrier(3): resolves true once the service manager has handled
   * every earlier message. It closes every fd a message brings unless it
   * stores it, so the write end of a pipe sent with BARRIER=1 closes then,
   * and the read end sees end-of-file. False after `timeoutMs`.
   */
  barrier(timeoutMs = 5000): Promise<boolean> {
    const pair = Buffer.alloc(8);
    if ((syscalls().pipe2(pair, SOCK_CLOEXEC) as number) < 0) return Promise.reject(new Error(`sd_notify: pipe2 failed (errno ${koffi.errno()})`));
    const [readEnd, writeEnd] = [pair.readInt32LE(0), pair.readInt32LE(4)];
    try {
      this.send('BARRIER=1', [writeEnd]);
    } catch (err) {
      syscalls().close(readEnd);
      return Promise.reject(err);
    } finally {
      syscalls().close(writeEnd);
    }
    return new Promise((resolve) => {
      const pipe = new net.Socket({ fd: readEnd, readable: true, writable: false });
      const timer = setTimeout(() => done(false), timeoutMs);
      const done = (ok: boolean) => {
        clearTimeout(timer);
        pipe.destroy();
        resolve(ok);
      };
      pipe.on('end', () => done(true));
      pipe.on('error', () => done(false));
      pipe.resume();
    });
  }

  /** Pings the watchdog at half the interval systemd asked for (WATCHDOG_USEC). */
  startWatchdog(env: NodeJS.ProcessEnv = process.env): boolean {
    const usec = Number(env['WATCHDOG_USEC']);
    const pid = env['WATCHDOG_PID'];
    if (!Number.isFinite(usec) || usec <= 0 || (pid !== undefined && Number(pid) !== process.pid)) return false;
    this.watchdog = setInterval(() => this.send('WATCHDOG=1'), Math.max(1, Math.floor(usec / 2000)));
    this.watchdog.unref();
    return true;
  }

  stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = undefined;
  }
}

/** The first fd sd_listen_fds(3) passes (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

/**
 * The fds the service manager passed at start, by name (sd_listen_fds_with_names):
 * only when LISTEN_PID names this process, since the variables may have been
 * inherited from a parent they were meant for. The variables are removed, so
 * nothing this process starts inherits them. Unnamed fds are called
 * `unknown`, as systemd does; a repeated name gets `#N` appended so both fds
 * are kept (and reported).
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): Map<string, number> {
  const fds = new Map<string, number>();
  const forUs = env['LISTEN_PID'] === String(pid);
  const count = Number(env['LISTEN_FDS']);
  const names = (env['LISTEN_FDNAMES'] ?? '').split(':');
  delete env['LISTEN_PID'];
  delete env['LISTEN_FDS'];
  delete env['LISTEN_FDNAMES'];
  if (!forUs || !Number.isInteger(count) || count <= 0) return fds;
  for (let i = 0; i < count; i++) {
    const base = names[i] || 'unknown';
    let name = base;
    for (let n = 2; fds.has(name); n++) name = `${base}#${n}`;
    fds.set(name, LISTEN_FDS_START + i);
  }
  return fds;
}

/**
 * systemd's file descriptor store (FileDescriptorStoreMax=): each stored fd is
 * a copy the service manager keeps while the daemon restarts, and hands back
 * through LISTEN_FDS. FDPOLL=0: these are not streams, so a poll event says
 * nothing about whether the file is still needed (systemd would otherwise
 * drop a stored fd on POLLHUP/POLLERR).
 */
export class SystemdFdStore implements FdStore {
  readonly kind = 'systemd';

  constructor(
    private readonly notifier: SdNotifier,
    readonly restored: ReadonlyMap<string, number>,
  ) {}

  put(name: string, fd: number): void {
    this.notifier.send(`FDSTORE=1\nFDNAME=${name}\nFDPOLL=0`, [fd]);
  }

  /**
   * Waits until systemd has dropped its copies (a barrier), so that the
   * daemon's own close right after is the last one: a device is then free
   * again as soon as UnbindDevice answers, as without a store.
   */
  async remove(name: string): Promise<void> {
    this.notifier.send(`FDSTOREREMOVE=1\nFDNAME=${name}`);
    await this.notifier.barrier();
  }
}
