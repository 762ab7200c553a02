import type { Context } from './context.js';
import type { ObjectView } from './events.js';
import type { ContextId, TenantId } from './ids.js';
import type { BrokerObject } from './objects.js';
import { holdsOf } from './objects.js';
import type { Registry } from './registry.js';

export function viewOf(registry: Registry, obj: BrokerObject): ObjectView {
  const view: ObjectView = {
    handle: obj.handle,
    kind: obj.kind,
    state: obj.state,
    kernelId: obj.kernelId,
    holds: holdsOf(obj),
    heldBy: registry.holders(obj.handle),
  };
  switch (obj.kind) {
    case 'DEVICE':
      view.deviceId = obj.deviceId;
      if (obj.attached !== undefined) view.attachedHwpt = obj.attached;
      break;
    case 'HWPT_PAGING':
      view.automatic = obj.automatic;
      view.nestParent = obj.nestParent;
      break;
    case 'VDEVICE':
      view.virtId = obj.virtId;
      break;
    case 'IOAS':
    case 'HWPT_NESTED':
    case 'VIOMMU':
      break;
    default: {
      const unreachable: never = obj;
      throw new Error(`unknown object ${String(unreachable)}`);
    }
  }
  return view;
}

export function listViews(registry: Registry): ObjectView[] {
  return [...registry.all()].map((obj) => viewOf(registry, obj)).sort((a, b) => a.handle - b.handle);
}

export interface ContextSummary {
  id: ContextId;
  tenant: TenantId;
  label: string;
  openedAt: Date;
  objectCount: number;
  deviceIds: string[];
  watchers: number;
  leaseSeconds: number;
  queued: number;
}

export function contextSummary(ctx: Context): ContextSummary {
  return {
    id: ctx.id,
    tenant: ctx.tenant,
    label: ctx.label,
    openedAt: ctx.openedAt,
    objectCount: ctx.registry.liveCount,
    deviceIds: [...ctx.registry.liveOfKind('DEVICE')].map((d) => d.deviceId as string),
    watchers: ctx.watcherCount,
    leaseSeconds: ctx.leaseSeconds,
    queued: ctx.executor.depth,
  };
}

/** Live objects by kind across `contexts` (computed on demand, e.g. at scrape time). */
export function objectCounts(contexts: Iterable<Context>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const ctx of contexts) {
    for (const obj of ctx.registry.all()) {
      if (obj.state === 'live') counts.set(obj.kind, (counts.get(obj.kind) ?? 0) + 1);
    }
  }
  return counts;
}

export function liveObjects(contexts: Iterable<Context>): number {
  let n = 0;
  for (const ctx of contexts) n += ctx.registry.liveCount;
  return n;
}
