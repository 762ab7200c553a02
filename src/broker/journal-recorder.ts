/**
 * What the broker tells the restart journal and the fd store, operation by
 * operation (broker.ts calls it; journal-records.ts has the record format):
 *
 *   before(): `intent` written (write-ahead), then the operation's kernel calls,
 *   after():  new device fds stored, then `done` appended and flushed,
 *   then the client hears the result.
 *
 * The registry marks the handles an operation changes (Registry.changed), so
 * `done` carries exactly those objects. A journal that cannot write refuses
 * new operations at `before()` (nothing happened yet); a failure at `after()`
 * is logged and counted but does not turn a completed change into an error:
 * the kernel and the registry already agree, and a restart would quarantine
 * and report what the journal missed instead of guessing.
 */
import type { Logger } from 'pino';
import type { DeviceFile, IommufdFile } from '../kernel/types.js';
import type { Context } from './context.js';
import { BrokerError } from './errors.js';
import { deviceName, iommufdName, type FdNames, type FdStore } from './fd-store.js';
import type { Handle } from './ids.js';
import { toJObject, type JObject, type JQuarantine, type JRecord } from './journal-records.js';
import type { Journal } from './journal.js';

/** What an operation may leave uncertain if the daemon dies during it (see restore.ts). */
export interface OpIntent {
  op: string;
  /** Objects whose unobservable state it changes: device attachments, IOAS mappings. */
  unsure: readonly Handle[];
  /** How many objects it may create (their IDs are found by probing after a crash). */
  creates: number;
}

export interface RecorderOptions {
  journal: Journal;
  store: FdStore;
  names: FdNames;
  /** The backend's fd for a file (KernelBackend.storeFd). */
  storeFd(file: IommufdFile | DeviceFile): number | undefined;
  log: Logger;
}

export class RestartRecorder {
  /** `done`/`open`/`close` records that could not be written since start. */
  failures = 0;

  constructor(private readonly o: RecorderOptions) {}

  get journal(): Journal {
    return this.o.journal;
  }

  /** A new context: its iommufd into the store, then its record. */
  async opened(ctx: Context): Promise<void> {
    this.store(ctx.iommufd, iommufdName(ctx.id));
    await this.commit({ t: 'open', c: ctx.id, tenant: ctx.tenant, label: ctx.label, lease: ctx.leaseSeconds });
  }

  /** Before the operation's first kernel call. Throws (and nothing happens) when the journal cannot write. */
  before(ctx: Context, intent: OpIntent): void {
    ctx.registry.changed = new Set();
    try {
      this.o.journal.writeNow({ t: 'intent', c: ctx.id, op: intent.op, unsure: [...intent.unsure], creates: intent.creates });
    } catch (err) {
      ctx.registry.changed = undefined;
      throw new BrokerError('INTERNAL', `the restart journal cannot record ${intent.op}: ${(err as Error).message}; nothing was changed`, { contextId: ctx.id });
    }
  }

  /** After the operation, whether it succeeded or not. `also`: handles it changed outside the registry (mappings). */
  async after(ctx: Context, also: readonly Handle[] = []): Promise<void> {
    const changed = ctx.registry.changed ?? new Set<Handle>();
    ctx.registry.changed = undefined;
    for (const h of also) changed.add(h);
    const objs: JObject[] = [];
    const gone: number[] = [];
    for (const handle of changed) {
      const obj = ctx.registry.get(handle);
      if (!obj) {
        gone.push(handle);
        continue;
      }
      objs.push(toJObject(obj));
      // Stored before `done`: a crash in between leaves an fd without entry, which restore keeps and reports.
      if (obj.kind === 'DEVICE' && obj.state === 'live' && !this.o.names.has(obj.file)) this.store(obj.file, deviceName(ctx.id, handle));
    }
    await this.commit({ t: 'done', c: ctx.id, objs, gone, last: ctx.registry.lastIssued });
  }

  /** The context is gone (its files were closed, and so removed from the store). */
  async closed(ctx: Context): Promise<void> {
    await this.commit({ t: 'close', c: ctx.id });
  }

  /** AssignDevice/UnassignDevice at run time; null is an unassign. Not awaited: policy, not kernel state. */
  assigned(deviceId: string, tenant: string | null): void {
    void this.commit({ t: 'assign', dev: deviceId, tenant });
  }

  quarantined(entry: JQuarantine): void {
    void this.commit({ t: 'quarantine', e: entry });
  }

  released(ids: number[]): void {
    void this.commit({ t: 'unquarantine', q: ids });
  }

  private store(file: IommufdFile | DeviceFile, name: string): void {
    // Without an fd store (no NOTIFY_SOCKET) there is nowhere to keep a copy: asking the backend
    // for one would only cost (the sim makes its memfds on demand).
    if (this.o.store.kind === 'none') return;
    const fd = this.o.storeFd(file);
    if (fd === undefined) {
      this.o.log.warn({ name }, 'file not stored for restart: the backend has no fd for it');
      return;
    }
    try {
      this.o.store.put(name, fd);
      this.o.names.set(file, name);
    } catch (err) {
      this.o.log.error({ err, name }, 'storing a file for restart failed: a restart would tear it down');
    }
  }

  private async commit(rec: JRecord): Promise<void> {
    try {
      await this.o.journal.append(rec);
    } catch (err) {
      this.failures++;
      this.o.log.error({ err, record: rec.t }, 'restart journal write failed: a restart will quarantine what it missed');
    }
  }
}
