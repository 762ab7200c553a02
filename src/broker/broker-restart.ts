/**
 * The broker's side of restart without teardown: what each operation tells
 * the journal before it runs (its intent), and how the contexts a restart
 * reconciled become served contexts again.
 */
import { Context } from './context.js';
import type { QueueWaitObserver } from './executor.js';
import { asHandle, type Handle } from './ids.js';
import type { Inventory } from './inventory.js';
import type { OpIntent } from './journal-recorder.js';
import { mappedBytes } from './operations.js';
import { Quarantine } from './quarantine.js';
import type { BrokerOptions } from './broker-types.js';
import type { TeardownReport } from './events.js';
import type { Logger } from 'pino';
import type { Quotas } from './quotas.js';
import type { RestoreOutcome } from './restore.js';
import type { TopologyStep } from './topology.js';

/** An intent naming the objects whose attachment or mappings the operation changes. */
export function intentOf(op: string, creates: number, unsure: readonly Handle[] = []): OpIntent {
  return { op, unsure, creates };
}

/** Every live device of a context: a teardown may move or detach any of them. */
export function devicesOf(ctx: Context): Handle[] {
  return [...ctx.registry.liveOfKind('DEVICE')].map((d) => d.handle);
}

/** A topology creates at most one object per step, and re-attaches the existing devices it names. */
export function topologyIntent(steps: readonly TopologyStep[]): OpIntent {
  const unsure: Handle[] = [];
  for (const step of steps) {
    const a = step.action;
    if (a?.type === 'attach' && a.device.startsWith('handle:')) unsure.push(asHandle(Number(a.device.slice('handle:'.length))));
  }
  return { op: 'apply_topology', unsure, creates: steps.length };
}

/** The inventory device a released quarantine entry held: unbound, usable again. */
export function releaseInventoryDevice(inventory: Inventory, deviceId: string): void {
  try {
    const device = inventory.resolve(deviceId, 'device_id');
    device.quarantined = false;
    device.boundTo = undefined;
  } catch {
    // Not in this host's inventory (any more): nothing to update.
  }
}

export interface AdoptEnv {
  register(ctx: Context): void;
  inventory: Inventory;
  quarantine: Quarantine;
  quotas: Quotas;
  queueWait: QueueWaitObserver | undefined;
}

/**
 * Builds served contexts from a restore outcome: the registry as the journal
 * had it (what the kernel confirmed), handles continuing after the last one
 * handed out, devices bound in the inventory, mapped bytes pinned again.
 */
export function adoptRestored(outcome: RestoreOutcome, env: AdoptEnv): void {
  for (const r of outcome.contexts) {
    const ctx = new Context(r.id, r.tenant, r.label, r.lease, r.iommufd, env.queueWait);
    for (const obj of r.objects) ctx.registry.add(obj);
    // Handles are never reused, across a restart too.
    while (ctx.registry.lastIssued < r.last) ctx.registry.nextHandle();
    ctx.registry.changed = undefined;
    let pinned = r.quarantinedBytes;
    for (const obj of ctx.registry.liveOfKind('IOAS')) pinned += mappedBytes(obj);
    for (const device of ctx.registry.liveOfKind('DEVICE')) env.inventory.resolve(device.deviceId, 'device_id').boundTo = ctx.id;
    // Already pinned in the kernel: counted even past the tenant's limit (releasePinned adds a negative amount).
    env.quotas.releasePinned(ctx.tenant, -Number(pinned));
    ctx.pinnedBytes = pinned;
    env.register(ctx);
  }
  for (const item of outcome.quarantine) {
    env.quarantine.add(item);
    if (item.deviceId === undefined) continue;
    try {
      const device = env.inventory.resolve(item.deviceId, 'device_id');
      // A stray copy of a device that a restored context serves does not take it away from that context.
      if (device.boundTo !== undefined && device.boundTo !== item.entry.c) continue;
      device.quarantined = true;
      device.boundTo = item.entry.c !== undefined && outcome.contexts.some((c) => c.id === item.entry.c) ? (item.entry.c as Context['id']) : undefined;
    } catch {
      // A device no longer in the inventory: the entry still reports it.
    }
  }
}

/** The broker's quarantine: closes through the broker's (store-aware) backend and journals releases. */
export function newQuarantine(options: BrokerOptions, log: Logger): Quarantine {
  return new Quarantine({
    kernel: options.kernel,
    removeStored: options.removeStored ?? (() => undefined),
    deviceReleased: (deviceId) => releaseInventoryDevice(options.inventory, deviceId),
    released: (ids) => options.restart?.released(ids),
    log,
  });
}

/** ForceCloseContext on a context that did not come back from a restart: what its entries hold is closed. */
export async function releaseQuarantined(quarantine: Quarantine, log: Logger, contextId: string, why: string): Promise<TeardownReport> {
  log.warn({ contextId, why }, 'forced close of a context that did not come back from the restart');
  await quarantine.releaseContext(contextId);
  return { reason: 'forced', steps: [], vdevicesDestroyed: 0, vdevicesFoundTombstoned: 0, failures: [] };
}
