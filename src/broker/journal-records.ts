/**
 * The restart journal's records and their replay (journal.ts writes them).
 *
 * One JSON object per line. The journal keeps what the kernel cannot tell a
 * restarted daemon: which contexts exist and whose they are, the handles and
 * the kernel IDs behind them, each object's kind and references, device
 * attachments, IOAS mappings (for pinned-byte accounting), tombstoned
 * vDEVICE handles, and what was quarantined. Records:
 *
 * - `snap`: the whole state, first line after a compaction;
 * - `open` / `close`: a context and its owner (tenant, label, lease);
 * - `intent`: written before an operation's first kernel call, naming the
 *   objects whose unobservable state it may change (`unsure`: device
 *   attachments, IOAS mappings) and how many objects it may create;
 * - `done`: after the operation, every object it changed (`objs`) or
 *   forgot (`gone`), and the last handle handed out. An `intent` without its
 *   `done` is an operation the daemon died in (restore.ts);
 * - `assign` / `unassign`: runtime device assignments (AssignDevice);
 * - `unquarantine`: quarantined entries an administrator or a close released.
 */
import { kernelId, type DeviceFile } from '../kernel/types.js';
import type { ContextId, DeviceId, Handle, TenantId } from './ids.js';
import type { BrokerObject, IoasMapping, ObjectKind } from './objects.js';

/** One registry object. Numbers are handles and kernel IDs; bigints travel as hex strings. */
export interface JObject {
  h: number;
  k: ObjectKind;
  id: number;
  /** Tombstoned (a dead vDEVICE handle kept for its error). */
  t?: 1;
  dev?: string;
  att?: number;
  ioas?: number;
  auto?: 1;
  np?: 1;
  parent?: number;
  for?: number;
  vi?: number;
  d?: number;
  virt?: string;
  maps?: [string, string][];
}

export interface JContext {
  c: string;
  tenant: string;
  label: string;
  lease: number;
  /** Last handle handed out: handles are never reused, across restarts too. */
  last: number;
  objs: JObject[];
  /** An operation that had begun and not finished (kept across a compaction). */
  intent?: JIntent;
}

export interface JIntent {
  op: string;
  unsure: number[];
  creates: number;
}

/** Something a restart could not reconcile; see restore.ts for the reasons. */
export interface JQuarantine {
  /** Stable within the journal: the key `unquarantine` names. */
  q: number;
  reason: string;
  detail: string;
  c?: string;
  tenant?: string;
  h?: number;
  k?: string;
  id?: number;
  /** The fd-store name of the file it holds, if any. */
  fd?: string;
  /** Mapped bytes still pinned by it (hex). */
  bytes?: string;
}

export type JRecord =
  | { t: 'snap'; boot: string; ctx: JContext[]; assign: Record<string, string | null>; q: JQuarantine[]; nextQ: number }
  | { t: 'open'; c: string; tenant: string; label: string; lease: number }
  | { t: 'intent'; c: string; op: string; unsure: number[]; creates: number }
  | { t: 'done'; c: string; objs: JObject[]; gone: number[]; last: number }
  | { t: 'close'; c: string }
  | { t: 'assign'; dev: string; tenant: string | null }
  | { t: 'quarantine'; e: JQuarantine }
  | { t: 'unquarantine'; q: number[] };

const hex = (n: bigint) => n.toString(16);
const unhex = (s: string) => BigInt(`0x${s}`);

export function toJObject(obj: BrokerObject): JObject {
  const r: JObject = { h: obj.handle, k: obj.kind, id: obj.kernelId };
  if (obj.state === 'tombstoned') r.t = 1;
  switch (obj.kind) {
    case 'DEVICE':
      r.dev = obj.deviceId;
      if (obj.attached !== undefined) r.att = obj.attached;
      break;
    case 'IOAS':
      if (obj.mappings.size > 0) r.maps = [...obj.mappings.values()].map((m) => [hex(m.iova), hex(m.length)]);
      break;
    case 'HWPT_PAGING':
      r.ioas = obj.ioas;
      if (obj.automatic) r.auto = 1;
      if (obj.nestParent) r.np = 1;
      break;
    case 'HWPT_NESTED':
      r.parent = obj.parent;
      r.for = obj.allocatedFor;
      break;
    case 'VIOMMU':
      r.parent = obj.nestParent;
      break;
    case 'VDEVICE':
      r.vi = obj.viommu;
      r.d = obj.device;
      r.virt = hex(obj.virtId);
      break;
  }
  return r;
}

/** Bytes mapped by a journaled IOAS. */
export function mappedBytesOf(r: JObject): bigint {
  let n = 0n;
  for (const [, len] of r.maps ?? []) n += unhex(len);
  return n;
}

/** Back to a registry object; a DEVICE needs the file adopted from the fd store. */
export function fromJObject(r: JObject, file: DeviceFile | undefined): BrokerObject {
  const base = { handle: r.h as Handle, kernelId: kernelId(r.id), state: r.t ? ('tombstoned' as const) : ('live' as const) };
  switch (r.k) {
    case 'DEVICE':
      if (!file) throw new Error(`DEVICE ${r.h} needs its file`);
      return { ...base, kind: 'DEVICE', deviceId: r.dev as DeviceId, file, attached: r.att as Handle | undefined };
    case 'IOAS': {
      const mappings = new Map<bigint, IoasMapping>();
      for (const [iova, length] of r.maps ?? []) mappings.set(unhex(iova), { iova: unhex(iova), length: unhex(length) });
      return { ...base, kind: 'IOAS', mappings };
    }
    case 'HWPT_PAGING':
      return { ...base, kind: 'HWPT_PAGING', ioas: r.ioas as Handle, automatic: r.auto === 1, nestParent: r.np === 1 };
    case 'HWPT_NESTED':
      return { ...base, kind: 'HWPT_NESTED', parent: r.parent as Handle, allocatedFor: r.for as Handle };
    case 'VIOMMU':
      return { ...base, kind: 'VIOMMU', nestParent: r.parent as Handle };
    case 'VDEVICE':
      return { ...base, kind: 'VDEVICE', viommu: r.vi as Handle, device: r.d as Handle, virtId: unhex(r.virt ?? '0') };
  }
}

export interface ContextState {
  id: ContextId;
  tenant: TenantId;
  label: string;
  lease: number;
  last: number;
  objects: Map<number, JObject>;
  intent: JIntent | undefined;
}

/** What replaying the journal leaves: the graph the daemon had when it died. */
export class JournalState {
  boot = '';
  readonly contexts = new Map<string, ContextState>();
  /** Runtime assignment changes; null is an unassign (the config's assignment is overridden). */
  readonly assignments = new Map<string, string | null>();
  readonly quarantine = new Map<number, JQuarantine>();
  nextQ = 1;

  apply(rec: JRecord): void {
    switch (rec.t) {
      case 'snap':
        this.boot = rec.boot;
        this.contexts.clear();
        for (const c of rec.ctx) this.contexts.set(c.c, toState(c));
        this.assignments.clear();
        for (const [dev, tenant] of Object.entries(rec.assign)) this.assignments.set(dev, tenant);
        this.quarantine.clear();
        for (const q of rec.q) this.quarantine.set(q.q, q);
        this.nextQ = Math.max(rec.nextQ, ...rec.q.map((q) => q.q + 1));
        return;
      case 'open':
        this.contexts.set(rec.c, toState({ c: rec.c, tenant: rec.tenant, label: rec.label, lease: rec.lease, last: 0, objs: [] }));
        return;
      case 'intent': {
        const ctx = this.contexts.get(rec.c);
        if (ctx) ctx.intent = { op: rec.op, unsure: rec.unsure, creates: rec.creates };
        return;
      }
      case 'done': {
        const ctx = this.contexts.get(rec.c);
        if (!ctx) return;
        for (const o of rec.objs) ctx.objects.set(o.h, o);
        for (const h of rec.gone) ctx.objects.delete(h);
        ctx.last = Math.max(ctx.last, rec.last);
        ctx.intent = undefined;
        return;
      }
      case 'close':
        this.contexts.delete(rec.c);
        return;
      case 'assign':
        this.assignments.set(rec.dev, rec.tenant);
        return;
      case 'quarantine':
        this.quarantine.set(rec.e.q, rec.e);
        this.nextQ = Math.max(this.nextQ, rec.e.q + 1);
        return;
      case 'unquarantine':
        for (const q of rec.q) this.quarantine.delete(q);
        return;
    }
  }

  snapshot(boot: string): JRecord {
    return {
      t: 'snap',
      boot,
      ctx: [...this.contexts.values()].map((c) => ({
        c: c.id,
        tenant: c.tenant,
        label: c.label,
        lease: c.lease,
        last: c.last,
        objs: [...c.objects.values()],
        ...(c.intent ? { intent: c.intent } : {}),
      })),
      assign: Object.fromEntries(this.assignments),
      q: [...this.quarantine.values()],
      nextQ: this.nextQ,
    };
  }
}

function toState(c: JContext): ContextState {
  return {
    id: c.c as ContextId,
    tenant: c.tenant as TenantId,
    label: c.label,
    lease: c.lease,
    last: c.last,
    objects: new Map(c.objs.map((o) => [o.h, o])),
    intent: c.intent,
  };
}

/** A record is well formed enough to replay (the file may be damaged or hand-edited). */
export function isRecord(v: unknown): v is JRecord {
  if (typeof v !== 'object' || v === null) return false;
  const t = (v as { t?: unknown }).t;
  return typeof t === 'string' && ['snap', 'open', 'intent', 'done', 'close', 'assign', 'quarantine', 'unquarantine'].includes(t);
}
