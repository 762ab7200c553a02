/**
 * What a restart could not reconcile between the journal and the kernel
 * (restore.ts decides; see QUARANTINE_REASONS). A quarantined entry is never
 * destroyed behind anyone's back: the files it holds stay open (and in the
 * fd store), its kernel objects stay as they are, and it is reported in
 * GetStatus, in `vfio_broker_quarantined{reason}` and in a warning log line.
 * Closing its context (CloseContext, ForceCloseContext, also on a context
 * that did not come back) releases what it holds, as a context close would.
 */
import { closeSync } from 'node:fs';
import type { Logger } from 'pino';
import type { DeviceFile, IommufdFile, KernelBackend } from '../kernel/types.js';
import type { JQuarantine } from './journal-records.js';

export const QUARANTINE_REASONS = [
  // A context's iommufd did not come back from the fd store: its objects cannot be reached.
  'iommufd_missing',
  // A journaled device's fd did not come back.
  'fd_missing',
  // The device fd came back unbound.
  'device_unbound',
  // The fd came back as another device than the journal says.
  'wrong_device',
  // The journal's object is no longer in the kernel.
  'gone',
  // The ID is alive with another type of object.
  'wrong_type',
  // An operation on it was in flight when the daemon died: its attachment or mappings are unknown.
  'in_flight',
  // An object an interrupted operation created, which the journal never confirmed.
  'unconfirmed',
  // An fd in the store with no journal entry.
  'fd_without_journal',
  // The kernel did not take the fd back as an iommufd or VFIO device.
  'adopt_failed',
  // A probe answered something the uAPI does not document.
  'probe_failed',
  // The journal is from an earlier boot: every kernel object it names died with it.
  'host_rebooted',
  // Lines of the journal could not be read.
  'journal_damaged',
] as const;
export type QuarantineReason = (typeof QUARANTINE_REASONS)[number];

/** What an entry keeps open: a file the backend adopted, or an fd it would not take. */
export type HeldFile = { kind: 'file'; file: IommufdFile | DeviceFile } | { kind: 'fd'; fd: number };

export interface QuarantineItem {
  entry: JQuarantine;
  held?: HeldFile | undefined;
  /** The inventory device it keeps bound, if any. */
  deviceId?: string | undefined;
}

export interface QuarantineView {
  id: number;
  reason: string;
  detail: string;
  contextId: string | undefined;
  tenant: string | undefined;
  handle: number | undefined;
  kind: string | undefined;
  kernelId: number | undefined;
  fdName: string | undefined;
}

export interface QuarantineEnv {
  /** Closes through the store-aware backend, so the stored copy goes too. */
  kernel: KernelBackend;
  /** Removes a stored name whose fd the backend never took. */
  removeStored(name: string): void | Promise<void>;
  /** The device is no longer held: the inventory may hand it out again. */
  deviceReleased(deviceId: string): void;
  /** Journals the release. */
  released(ids: number[]): void;
  log: Logger;
}

export class Quarantine {
  private readonly items = new Map<number, QuarantineItem>();

  constructor(private readonly env: QuarantineEnv) {}

  add(item: QuarantineItem): void {
    this.items.set(item.entry.q, item);
    const e = item.entry;
    this.env.log.warn(
      { quarantine: e.q, reason: e.reason, contextId: e.c, handle: e.h, kind: e.k, kernelId: e.id, fdName: e.fd },
      `quarantined after restart: ${e.detail}`,
    );
  }

  get size(): number {
    return this.items.size;
  }

  list(): QuarantineView[] {
    return [...this.items.values()].map(({ entry: e }) => ({
      id: e.q,
      reason: e.reason,
      detail: e.detail,
      contextId: e.c,
      tenant: e.tenant,
      handle: e.h,
      kind: e.k,
      kernelId: e.id,
      fdName: e.fd,
    }));
  }

  countsByReason(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const { entry } of this.items.values()) counts.set(entry.reason, (counts.get(entry.reason) ?? 0) + 1);
    return counts;
  }

  hasContext(contextId: string): boolean {
    for (const { entry } of this.items.values()) if (entry.c === contextId) return true;
    return false;
  }

  /** Releases every entry of a context being closed; returns how many. */
  releaseContext(contextId: string): Promise<number> {
    return this.release([...this.items.values()].filter((i) => i.entry.c === contextId));
  }

  /** Releases everything (a shutdown that tears every context down). */
  releaseAll(): Promise<number> {
    return this.release([...this.items.values()]);
  }

  /** Devices first: a context's iommufd is released only once its devices are closed (§4.4). */
  private async release(items: QuarantineItem[]): Promise<number> {
    const order = (i: QuarantineItem) => (i.held?.kind === 'file' && i.held.file.kind === 'iommufd' ? 1 : 0);
    items.sort((a, b) => order(a) - order(b));
    for (const item of items) {
      const { held, entry } = item;
      try {
        if (held?.kind === 'file') {
          if (held.file.kind === 'device') await this.env.kernel.closeDevice(held.file);
          else await this.env.kernel.closeIommufd(held.file);
        } else if (held?.kind === 'fd') {
          if (entry.fd) await this.env.removeStored(entry.fd);
          closeSync(held.fd);
        }
      } catch (err) {
        this.env.log.error({ err, quarantine: entry.q }, 'closing a quarantined file failed');
      }
      if (item.deviceId) this.env.deviceReleased(item.deviceId);
      this.items.delete(entry.q);
      this.env.log.info({ quarantine: entry.q, reason: entry.reason, contextId: entry.c }, 'quarantined entry released');
    }
    if (items.length > 0) this.env.released(items.map((i) => i.entry.q));
    return items.length;
  }
}
