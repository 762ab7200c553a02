/**
 * systemd's side of sd_notify, for tests: a NOTIFY_SOCKET datagram socket
 * that collects each message and the fds sent with it (SCM_RIGHTS), and
 * keeps a file descriptor store the way the service manager does
 * (FDSTORE=1 adds under FDNAME, FDSTOREREMOVE=1 drops every fd of a name).
 * Received fds are close-on-exec in this process; a restart passes them
 * explicitly (stdio positions 3..) with LISTEN_FDS/LISTEN_FDNAMES.
 */
import koffi from 'koffi';
import { closeSync } from 'node:fs';
import { receiveNow } from '../../src/rpc/scm-rights.js';
import { sockaddrUn } from '../../src/obs/sd-notify.js';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

type Fn = (...args: unknown[]) => unknown;
let libc: { socket: Fn; bind: Fn; close: Fn } | undefined;
function load() {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      bind: lib.func('int bind(int fd, const void *addr, unsigned int len)'),
      close: lib.func('int close(int fd)'),
    };
  }
  return libc;
}

export interface NotifyMessage {
  fields: Map<string, string>;
  fds: number[];
}

export class FakeSystemd {
  readonly messages: NotifyMessage[] = [];
  /** The fd store: name → fds, in the order they were stored. */
  readonly store = new Map<string, number[]>();
  private readonly fd: number;
  private readonly timer: NodeJS.Timeout;
  private readonly waiters: { match: (m: NotifyMessage) => boolean; resolve: (m: NotifyMessage) => void }[] = [];

  constructor(readonly socketPath: string) {
    const { socket, bind, close } = load();
    this.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
    if (this.fd < 0) throw new Error(`socket failed: errno ${koffi.errno()}`);
    const addr = sockaddrUn(socketPath);
    if ((bind(this.fd, addr, addr.length) as number) < 0) {
      const errno = koffi.errno();
      close(this.fd);
      throw new Error(`bind ${socketPath} failed: errno ${errno}`);
    }
    this.timer = setInterval(() => this.drain(), 5);
  }

  private drain(): void {
    for (;;) {
      const got = receiveNow(this.fd, 4096, 16);
      if (!got) return;
      const fields = new Map<string, string>();
      for (const line of got.data.toString('utf8').split('\n')) {
        const eq = line.indexOf('=');
        if (eq > 0) fields.set(line.slice(0, eq), line.slice(eq + 1));
      }
      const msg = { fields, fds: got.fds };
      this.messages.push(msg);
      this.apply(msg);
      for (const w of [...this.waiters]) {
        if (!w.match(msg)) continue;
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    }
  }

  private apply(msg: NotifyMessage): void {
    const name = msg.fields.get('FDNAME') ?? 'stored';
    if (msg.fields.get('FDSTORE') === '1') {
      this.store.set(name, [...(this.store.get(name) ?? []), ...msg.fds]);
      return;
    }
    for (const fd of msg.fds) closeSync(fd); // fds on any other message are not kept (systemd closes them too)
    if (msg.fields.get('FDSTOREREMOVE') === '1') {
      for (const fd of this.store.get(name) ?? []) closeSync(fd);
      this.store.delete(name);
    }
  }

  /** Resolves with the first message (already received or to come) that matches. */
  waitFor(match: (m: NotifyMessage) => boolean, timeoutMs = 10_000): Promise<NotifyMessage> {
    const seen = this.messages.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no such sd_notify message')), timeoutMs);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(t), resolve(m)) });
    });
  }

  /** What the service manager passes at the next start: fds in stdio positions 3.., and their names. */
  listenFds(): { fds: number[]; names: string[] } {
    const fds: number[] = [];
    const names: string[] = [];
    for (const [name, list] of this.store) for (const fd of list) (fds.push(fd), names.push(name));
    return { fds, names };
  }

  close(): void {
    clearInterval(this.timer);
    for (const list of this.store.values()) for (const fd of list) closeSync(fd);
    this.store.clear();
    load().close(this.fd);
  }
}
