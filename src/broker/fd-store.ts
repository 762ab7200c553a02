/**
 * Where the daemon keeps copies of its files while it restarts: systemd's
 * file descriptor store (src/obs/sd-notify.ts), or, in tests, a store in
 * this process (MemoryFdStore). A stored copy keeps the kernel file alive,
 * so a VM keeps its DMA while no daemon runs.
 *
 * Names say what a file is for, so a restarted daemon can match each fd
 * with its journal entry: `i.CONTEXT` for a context's iommufd and
 * `d.CONTEXT.HANDLE` for a bound device. (The store's names may not contain
 * ':', its separator in LISTEN_FDNAMES.)
 */
import type { DeviceFile, IommufdFile, KernelBackend } from '../kernel/types.js';

export interface FdStore {
  /** `systemd`, `memory`, or `none` (a journal without an fd store keeps no copies): for logs and status. */
  readonly kind: string;
  /** The fds handed back at this start, by name; each stays in the store until removed. */
  readonly restored: ReadonlyMap<string, number>;
  /** Stores a copy of `fd` under `name`. */
  put(name: string, fd: number): void;
  /** Drops every copy stored under `name`; a promise settles once the store has let go of them. */
  remove(name: string): void | Promise<void>;
}

export const iommufdName = (contextId: string) => `i.${contextId}`;
export const deviceName = (contextId: string, handle: number) => `d.${contextId}.${handle}`;

/** What a stored name says: whose file, and which. */
export function parseFdName(name: string): { kind: 'iommufd'; contextId: string } | { kind: 'device'; contextId: string; handle: number } | undefined {
  const i = /^i\.(ctx-[0-9a-f]{24})$/.exec(name);
  if (i) return { kind: 'iommufd', contextId: i[1]! };
  const d = /^d\.(ctx-[0-9a-f]{24})\.([1-9][0-9]{0,15})$/.exec(name);
  if (d) return { kind: 'device', contextId: d[1]!, handle: Number(d[2]) };
  return undefined;
}

/**
 * The store in this process, for tests that restart a daemon without
 * leaving the process: the fds it holds are the (still open) fds of the
 * daemon that died, as if a service manager held copies of them.
 */
export class MemoryFdStore implements FdStore {
  readonly kind = 'memory';
  readonly held: Map<string, number>;
  private frozen = false;
  private handedBack: ReadonlyMap<string, number> | undefined;

  constructor(held: ReadonlyMap<string, number> = new Map()) {
    this.held = new Map(held);
  }

  /** What the store holds when the daemon first asks, as a service manager passes it at exec. */
  get restored(): ReadonlyMap<string, number> {
    this.handedBack ??= new Map(this.held);
    return this.handedBack;
  }

  put(name: string, fd: number): void {
    if (!this.frozen) this.held.set(name, fd);
  }

  remove(name: string): void {
    if (!this.frozen) this.held.delete(name);
  }

  /** The daemon died: from now on nothing changes what the store holds. */
  freeze(): void {
    this.frozen = true;
  }

  /** The store as the next daemon finds it: everything held is handed back. */
  handBack(): MemoryFdStore {
    return new MemoryFdStore(this.held);
  }
}

/** Which stored name each open file has, so closing it also takes it out of the store. */
export type FdNames = Map<IommufdFile | DeviceFile, string>;

/**
 * The backend with one change: closing a stored file removes it from the
 * store first. The store's copy would otherwise keep the kernel file open:
 * a device would stay bound and a context's objects alive after their
 * teardown had closed the daemon's own copy.
 */
export function closingFromStore(kernel: KernelBackend, store: FdStore, names: FdNames, onError: (err: unknown, name: string) => void): KernelBackend {
  // close(2) never fails (§4.5), so neither may this: a store that cannot be told is reported, and the close goes on.
  const forget = async (file: IommufdFile | DeviceFile) => {
    const name = names.get(file);
    if (name === undefined) return;
    names.delete(file);
    await Promise.resolve()
      .then(() => store.remove(name))
      .catch((err: unknown) => onError(err, name));
  };
  return new Proxy(kernel, {
    get(target, prop, receiver) {
      if (prop === 'closeDevice') {
        return async (file: DeviceFile) => {
          await forget(file);
          return target.closeDevice(file);
        };
      }
      if (prop === 'closeIommufd') {
        return async (file: IommufdFile) => {
          await forget(file);
          return target.closeIommufd(file);
        };
      }
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}
