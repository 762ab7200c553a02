/**
 * sd_notify(3) without libsystemd: one datagram per message to the socket in
 * NOTIFY_SOCKET. Node's dgram module has no AF_UNIX support, so the three
 * syscalls go through koffi.
 */
import koffi from 'koffi';

type Fn = (...args: unknown[]) => unknown;

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
const SUN_PATH_MAX = 108;

let libc: { socket: Fn; sendto: Fn; close: Fn } | undefined;

function syscalls() {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      sendto: lib.func('long sendto(int fd, const void *buf, unsigned long len, int flags, const void *addr, unsigned int addrlen)'),
      close: lib.func('int close(int fd)'),
    };
  }
  return libc;
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

  send(state: string): void {
    const { socket, sendto, close } = syscalls();
    const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
    if (fd < 0) throw new Error(`sd_notify: socket() failed (errno ${koffi.errno()})`);
    try {
      const addr = sockaddrUn(this.socketPath);
      const payload = Buffer.from(state);
      const sent = sendto(fd, payload, payload.length, MSG_NOSIGNAL, addr, addr.length) as number;
      if (sent < 0) throw new Error(`sd_notify: sendto(${this.socketPath}) failed (errno ${koffi.errno()})`);
    } finally {
      close(fd);
    }
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
