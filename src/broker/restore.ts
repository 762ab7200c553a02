/**
 * Restart reconcile: the replayed journal, the fds the store handed back and
 * the kernel are made to agree before the daemon serves again.
 *
 * Every fd is matched by name (fd-store.ts) and taken back by the backend,
 * which checks what it really is (KernelBackend.adoptFile). Every live
 * object's kernel ID is probed without side effects (src/kernel/object-probe.ts).
 * What agrees becomes the contexts the broker serves, with the same context
 * IDs and handles. What does not is quarantined (quarantine.ts): kept as it
 * is in the kernel and in the store, reported, never dropped or destroyed.
 *
 * An operation that was in flight (an `intent` without `done`) leaves two
 * unknowns: the state the kernel cannot be asked about (which HWPT a device
 * is attached to, which ranges an IOAS maps), so the objects it named are
 * quarantined; and objects it may have created, which sit at the lowest free
 * IDs (kernel-uapi.md §0) and are found by probing those.
 */
import type { Logger } from 'pino';
import { classify, lowestFreeIds, probeObject, type ProbeOutcome } from '../kernel/object-probe.js';
import { kernelId, type DeviceFile, type IommufdFile, type KernelBackend } from '../kernel/types.js';
import { deviceName, iommufdName, parseFdName, type FdNames } from './fd-store.js';
import type { ContextId, TenantId } from './ids.js';
import { fromJObject, mappedBytesOf, type ContextState, type JObject, type JQuarantine } from './journal-records.js';
import type { JournalReplay } from './journal.js';
import type { BrokerObject } from './objects.js';
import type { HeldFile, QuarantineItem, QuarantineReason } from './quarantine.js';

export interface RestoreInput {
  replay: JournalReplay;
  /** This boot's id (journal.ts bootId). */
  boot: string;
  /** fds handed back by the store, by name. */
  fds: ReadonlyMap<string, number>;
  /** The backend itself (adoptFile, lookupProbe, deviceBound). */
  kernel: KernelBackend;
  /** The inventory: whether a device is in it, its cdev, and the device behind a cdev. */
  knows(deviceId: string): boolean;
  cdevOf(deviceId: string): string | undefined;
  deviceOfCdev(cdev: string): string | undefined;
  log: Logger;
}

export interface RestoredContext {
  id: ContextId;
  tenant: TenantId;
  label: string;
  lease: number;
  last: number;
  iommufd: IommufdFile;
  objects: BrokerObject[];
  /** Bytes still mapped by its quarantined IOASes: pinned all the same. */
  quarantinedBytes: bigint;
}

export interface RestoreOutcome {
  contexts: RestoredContext[];
  quarantine: QuarantineItem[];
  /** The store name of every file taken back, for the store-aware backend. */
  names: FdNames;
  /** Operations the daemon died in. */
  inFlight: { contextId: string; op: string }[];
  nextQ: number;
}

type Adopted = { file: IommufdFile | DeviceFile } | { error: string };

export async function restore(input: RestoreInput): Promise<RestoreOutcome> {
  return new Restorer(input).run();
}

class Restorer {
  private readonly unclaimed: Map<string, number>;
  private readonly out: RestoreOutcome;

  constructor(private readonly input: RestoreInput) {
    this.unclaimed = new Map(input.fds);
    this.out = { contexts: [], quarantine: [], names: new Map(), inFlight: [], nextQ: input.replay.state.nextQ };
  }

  async run(): Promise<RestoreOutcome> {
    const { state, damaged } = this.input.replay;
    if (damaged.length > 0) {
      this.quarantine({ reason: 'journal_damaged', detail: `journal lines ${damaged.slice(0, 10).join(', ')} could not be read; everything is probed, so what they said shows up as gone or without journal entry` });
    }
    for (const old of state.quarantine.values()) await this.carryOver(old);
    const rebooted = state.boot !== '' && this.input.boot !== '' && state.boot !== this.input.boot;
    for (const ctx of state.contexts.values()) {
      if (rebooted) {
        this.quarantine({ reason: 'host_rebooted', c: ctx.id, tenant: ctx.tenant, detail: `context ${ctx.id} (${ctx.objects.size} objects) died with the previous boot` });
      } else {
        await this.context(ctx);
      }
    }
    for (const [name, fd] of this.unclaimed) await this.orphan(name, fd);
    return this.out;
  }

  private quarantine(e: Omit<JQuarantine, 'q'> & { reason: QuarantineReason }, held?: HeldFile, deviceId?: string, q?: number): void {
    this.out.quarantine.push({ entry: { q: q ?? this.out.nextQ++, ...e }, held, deviceId });
  }

  private claim(name: string): number | undefined {
    const fd = this.unclaimed.get(name);
    if (fd !== undefined) this.unclaimed.delete(name);
    return fd;
  }

  private async adopt(fd: number, name: string): Promise<Adopted> {
    if (!this.input.kernel.adoptFile) return { error: `the ${this.input.kernel.name} backend cannot take fds back` };
    try {
      const file = await this.input.kernel.adoptFile(fd);
      this.out.names.set(file, name);
      return { file };
    } catch (err) {
      return { error: (err as Error).message };
    }
  }

  /** Holds an fd as what the backend says it is, or as a bare fd it would not take. */
  private async hold(fd: number, name: string): Promise<{ held: HeldFile; deviceId: string | undefined; error?: string }> {
    const a = await this.adopt(fd, name);
    if ('error' in a) return { held: { kind: 'fd', fd }, deviceId: undefined, error: a.error };
    const deviceId = a.file.kind === 'device' ? this.input.deviceOfCdev(a.file.cdev) : undefined;
    return { held: { kind: 'file', file: a.file }, deviceId };
  }

  /** An entry an earlier start quarantined: it keeps holding its file, under the same number. */
  private async carryOver(old: JQuarantine): Promise<void> {
    const fd = old.fd ? this.claim(old.fd) : undefined;
    if (fd === undefined) {
      this.quarantine({ ...old, reason: old.reason as QuarantineReason, detail: `${old.detail} (its fd did not come back this time)` }, undefined, undefined, old.q);
      return;
    }
    const { held, deviceId } = await this.hold(fd, old.fd!);
    this.quarantine({ ...old, reason: old.reason as QuarantineReason }, held, deviceId, old.q);
  }

  private async orphan(name: string, fd: number): Promise<void> {
    const parsed = parseFdName(name);
    const { held, deviceId, error } = await this.hold(fd, name);
    const restored = parsed && this.out.contexts.some((c) => c.id === parsed.contextId);
    this.quarantine(
      {
        reason: error ? 'adopt_failed' : 'fd_without_journal',
        fd: name,
        ...(restored ? { c: parsed.contextId } : {}),
        detail: error ? `stored fd ${name}: ${error}` : `stored fd ${name} has no journal entry (an operation that never finished, or a damaged journal)`,
      },
      held,
      deviceId,
    );
  }

  /** A context whose iommufd is not usable: its device fds are kept, so nothing is unbound behind anyone's back. */
  private async lost(ctx: ContextState, reason: QuarantineReason, detail: string, held?: HeldFile): Promise<void> {
    this.quarantine({ reason, c: ctx.id, tenant: ctx.tenant, ...(held ? { fd: iommufdName(ctx.id) } : {}), detail }, held);
    for (const r of ctx.objects.values()) {
      if (r.k !== 'DEVICE' || r.t) continue;
      const name = deviceName(ctx.id, r.h);
      const fd = this.claim(name);
      if (fd === undefined) continue;
      const h = await this.hold(fd, name);
      this.quarantine({ reason, c: ctx.id, tenant: ctx.tenant, h: r.h, k: 'DEVICE', id: r.id, fd: name, detail: `DEVICE ${r.h} (${r.dev}) of context ${ctx.id}, whose iommufd cannot be used` }, h.held, r.dev);
    }
  }

  private async context(ctx: ContextState): Promise<void> {
    const name = iommufdName(ctx.id);
    const fd = this.claim(name);
    if (fd === undefined) {
      await this.lost(ctx, 'iommufd_missing', `context ${ctx.id} (${ctx.objects.size} objects): its iommufd did not come back from the fd store`);
      return;
    }
    const a = await this.adopt(fd, name);
    if ('error' in a || a.file.kind !== 'iommufd') {
      const why = 'error' in a ? a.error : `fd ${name} is a ${a.file.kind} file`;
      await this.lost(ctx, 'adopt_failed', `context ${ctx.id}: ${why}`, 'error' in a ? { kind: 'fd', fd } : { kind: 'file', file: a.file });
      return;
    }
    const restored = new ContextRestore(this, ctx, a.file);
    await restored.run();
    this.out.contexts.push(restored.result());
    if (ctx.intent) this.out.inFlight.push({ contextId: ctx.id, op: ctx.intent.op });
  }

  // ---- for ContextRestore ----
  quarantineFor(ctx: ContextState, r: JObject | undefined, reason: QuarantineReason, detail: string, held?: HeldFile, extra: Partial<Omit<JQuarantine, 'reason'>> = {}): void {
    const obj = r ? { h: r.h, k: r.k, id: r.id } : {};
    // A device still bound (its fd held here, or another copy of it alive) is not free for another bind.
    const bound = r?.k === 'DEVICE' && (held !== undefined || reason === 'fd_missing');
    this.quarantine({ reason, c: ctx.id, tenant: ctx.tenant, ...obj, ...extra, detail }, held, bound ? r.dev : undefined);
  }
  claimFd(name: string): number | undefined {
    return this.claim(name);
  }
  adoptFd(fd: number, name: string): Promise<Adopted> {
    return this.adopt(fd, name);
  }
  get env(): RestoreInput {
    return this.input;
  }
}

/** One context whose iommufd came back: every object probed, the in-flight operation settled. */
class ContextRestore {
  private readonly objects: BrokerObject[] = [];
  /** Kernel IDs found alive: what an interrupted creation could not have used. */
  private readonly alive = new Set<number>();
  private readonly unsure: Set<number>;
  private quarantinedBytes = 0n;

  constructor(
    private readonly r: Restorer,
    private readonly ctx: ContextState,
    private readonly iommufd: IommufdFile,
  ) {
    this.unsure = new Set(ctx.intent?.unsure ?? []);
  }

  async run(): Promise<void> {
    const records = [...this.ctx.objects.values()].sort((a, b) => a.h - b.h);
    for (const rec of records) {
      if (rec.t) this.objects.push(fromJObject(rec, undefined)); // a dead vDEVICE handle: nothing in the kernel to ask
      else if (rec.k === 'DEVICE') await this.device(rec);
      else await this.object(rec);
    }
    this.checkAttachments();
    const intent = this.ctx.intent;
    if (intent && intent.creates > 0) await this.unconfirmed(intent.creates);
  }

  result(): RestoredContext {
    const { ctx } = this;
    return { id: ctx.id, tenant: ctx.tenant, label: ctx.label, lease: ctx.lease, last: ctx.last, iommufd: this.iommufd, objects: this.objects, quarantinedBytes: this.quarantinedBytes };
  }

  private async probe(rec: JObject): Promise<ProbeOutcome | undefined> {
    try {
      return await probeObject(this.r.env.kernel, this.iommufd, kernelId(rec.id), rec.k);
    } catch (err) {
      this.r.quarantineFor(this.ctx, rec, 'probe_failed', `${rec.k} ${rec.h} (kernel ID ${rec.id}): ${(err as Error).message}`);
      this.alive.add(rec.id);
      return undefined;
    }
  }

  /** The probe said the object is not what the journal says: reported, nothing restored. */
  private mismatch(rec: JObject, outcome: ProbeOutcome, held?: HeldFile): void {
    if (outcome.state === 'other') {
      this.alive.add(rec.id);
      this.r.quarantineFor(this.ctx, rec, 'wrong_type', `${rec.k} ${rec.h}: kernel ID ${rec.id} now names ${outcome.found}`, held);
    } else {
      this.r.quarantineFor(this.ctx, rec, 'gone', `${rec.k} ${rec.h}: kernel ID ${rec.id} no longer exists`, held);
    }
  }

  private async object(rec: JObject): Promise<void> {
    const outcome = await this.probe(rec);
    if (!outcome) return;
    if (outcome.state !== 'present') return this.mismatch(rec, outcome);
    this.alive.add(rec.id);
    if (this.unsure.has(rec.h) && rec.k === 'IOAS') {
      const bytes = mappedBytesOf(rec);
      this.quarantinedBytes += bytes;
      this.r.quarantineFor(this.ctx, rec, 'in_flight', `IOAS ${rec.h}: a map or unmap was in flight, so its mappings are unknown`, undefined, { bytes: bytes.toString(16) });
      return;
    }
    this.objects.push(fromJObject(rec, undefined));
  }

  private async device(rec: JObject): Promise<void> {
    const name = deviceName(this.ctx.id, rec.h);
    const fd = this.r.claimFd(name);
    if (fd === undefined) {
      const outcome = await this.probe(rec);
      if (!outcome) return;
      if (outcome.state !== 'present') return this.mismatch(rec, outcome);
      this.alive.add(rec.id);
      this.r.quarantineFor(this.ctx, rec, 'fd_missing', `DEVICE ${rec.h} (${rec.dev}): its fd did not come back, yet it is still bound (another copy of the fd, a VMM's, holds it)`);
      return;
    }
    const a = await this.r.adoptFd(fd, name);
    if ('error' in a || a.file.kind !== 'device') {
      const held: HeldFile = 'error' in a ? { kind: 'fd', fd } : { kind: 'file', file: a.file };
      return this.r.quarantineFor(this.ctx, rec, 'adopt_failed', `DEVICE ${rec.h}: ${'error' in a ? a.error : 'the fd is an iommufd'}`, held);
    }
    const file = a.file;
    const held: HeldFile = { kind: 'file', file };
    if (!this.r.env.knows(rec.dev ?? '')) {
      return this.r.quarantineFor(this.ctx, rec, 'wrong_device', `DEVICE ${rec.h}: ${rec.dev} is not in this host's inventory (allowlist changed?)`, held);
    }
    const expected = this.r.env.cdevOf(rec.dev ?? '');
    if (expected !== undefined && expected !== file.cdev) {
      return this.r.quarantineFor(this.ctx, rec, 'wrong_device', `DEVICE ${rec.h}: the fd is ${file.cdev}, the journal says ${rec.dev} (${expected})`, held);
    }
    if (this.r.env.kernel.deviceBound && !(await this.r.env.kernel.deviceBound(file).catch(() => false))) {
      return this.r.quarantineFor(this.ctx, rec, 'device_unbound', `DEVICE ${rec.h} (${rec.dev}): the fd came back unbound`, held);
    }
    const outcome = await this.probe(rec);
    if (!outcome) return;
    if (outcome.state !== 'present') return this.mismatch(rec, outcome, held);
    this.alive.add(rec.id);
    if (this.unsure.has(rec.h)) {
      return this.r.quarantineFor(this.ctx, rec, 'in_flight', `DEVICE ${rec.h} (${rec.dev}): an attach, detach or teardown was in flight, so its attachment is unknown`, held);
    }
    this.objects.push(fromJObject(rec, file));
  }

  /** A device attached to an HWPT that did not come back cannot be attached where the journal says. */
  private checkAttachments(): void {
    const live = new Set(this.objects.filter((o) => o.state === 'live').map((o) => o.handle as number));
    for (const [i, obj] of [...this.objects.entries()].reverse()) {
      if (obj.kind !== 'DEVICE' || obj.attached === undefined || live.has(obj.attached)) continue;
      this.objects.splice(i, 1);
      const rec = this.ctx.objects.get(obj.handle)!;
      this.r.quarantineFor(this.ctx, rec, 'in_flight', `DEVICE ${obj.handle} (${obj.deviceId}): the HWPT ${obj.attached} it was attached to did not come back, so its attachment is unknown`, { kind: 'file', file: obj.file });
    }
  }

  private async unconfirmed(creates: number): Promise<void> {
    // Slack for IDs a tombstone (§4.3) made the interrupted operation skip.
    for (const id of lowestFreeIds(this.alive, creates + 2)) {
      let found: string;
      try {
        found = await classify(this.r.env.kernel, this.iommufd, id);
      } catch (err) {
        this.r.quarantineFor(this.ctx, undefined, 'probe_failed', `kernel ID ${id}: ${(err as Error).message}`, undefined, { id });
        continue;
      }
      if (found === 'ABSENT') continue;
      this.r.quarantineFor(this.ctx, undefined, 'unconfirmed', `kernel ID ${id} (${found}) was created by the interrupted ${this.ctx.intent?.op ?? 'operation'} and never confirmed; it stays until the context closes`, undefined, { id, k: found });
    }
  }
}
