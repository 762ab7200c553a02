/**
 * The broker: contexts, their FIFOs, device assignment, and the lifecycle
 * rules (leases, vanished clients, shutdown). It knows nothing of gRPC.
 */
import type { Logger } from 'pino';
import type { KernelBackend, KernelCapabilities } from '../kernel/types.js';
import { Context } from './context.js';
import { BrokerError, kernelFailure } from './errors.js';
import type { ObjectView, SequencedEvent, TeardownReason, TeardownReport } from './events.js';
import type { BrokerOptions, Caller } from './broker-types.js';
import { newContextId, type ContextId, type Handle, type TenantId } from './ids.js';
import { ContextTable } from './context-table.js';
import { ContextRunner, contextClosed } from './context-runner.js';
import { Inventory, type DeviceView } from './inventory.js';
import * as ops from './operations.js';
import { runTeardown, type TeardownEnv, type TeardownScope } from './teardown.js';
import { contextSummary, listViews, liveObjects, objectCounts, type ContextSummary } from './views.js';
import { applyTopology, type TopologyResult, type TopologyStep } from './topology.js';
import { DEFAULT_QUOTA, Quotas } from './quotas.js';
import { Handoffs, localCaller, type Lease } from './handoff.js';
import { mapMemory, pinnedAccount, requireMapFile, unmapMemory, type MapMemoryArgs } from './memory.js';
import type { IoasMapping } from './objects.js';
import { changeDriver } from './managed.js';
import type { RestartRecorder } from './journal-recorder.js';
import type { Quarantine } from './quarantine.js';
import { adoptRestored, devicesOf, intentOf, newQuarantine, releaseQuarantined, topologyIntent } from './broker-restart.js';
import type { RestoreOutcome } from './restore.js';

export type { ContextSummary } from './views.js';

export type { BrokerObserver, BrokerOptions, Caller } from './broker-types.js';

export const MAX_LABEL_BYTES = 128;
export const MAX_LEASE_SECONDS = 86_400;

export class Broker {
  readonly kernel: KernelBackend;
  readonly inventory: Inventory;
  readonly capabilities: KernelCapabilities;
  readonly startedAt = new Date();
  private readonly contexts = new ContextTable();
  readonly quotas: Quotas;
  /** fd-socket tokens; the rpc layer's handoff server redeems them here. */
  readonly handoffs: Handoffs;
  /** What the last restart could not reconcile (quarantine.ts). */
  readonly quarantine: Quarantine;
  /** Contexts the last start restored from the journal. */
  restoredContexts = 0;
  private readonly log: Logger;
  private readonly env: ops.OpEnv;
  /** One for every teardown: built once, so a teardown makes no closures of its own. */
  private readonly teardownEnv: TeardownEnv;
  private readonly restart: RestartRecorder | undefined;
  private readonly requests: ContextRunner;
  private shuttingDown = false;

  constructor(private readonly options: BrokerOptions) {
    this.kernel = options.kernel;
    this.inventory = options.inventory;
    this.capabilities = options.capabilities;
    this.log = options.log;
    this.quotas = options.quotas ?? new Quotas(DEFAULT_QUOTA);
    options.kernel.onDeviceRequest?.((bdf) => {
      this.deviceRequested(bdf).catch((err: unknown) => this.log.error({ err, bdf }, 'device request handling failed'));
    });
    this.handoffs = new Handoffs({
      socketPath: options.handoff?.socketPath ?? '',
      leaseMs: options.handoff?.leaseMs ?? 10_000,
      kernel: options.kernel,
      contextOf: (id) => this.contexts.get(id),
    });
    this.restart = options.restart;
    this.quarantine = newQuarantine(options, this.log);
    this.env = {
      kernel: options.kernel,
      inventory: options.inventory,
      admitObject: (ctx) => this.quotas.checkObjects(ctx.tenant, this.liveObjectsOf(ctx.tenant)),
      pinned: pinnedAccount(this.quotas),
      uploads: this.handoffs,
    };
    this.requests = new ContextRunner(this.env, this.restart, (caller, id) => this.admit(caller, id));
    this.teardownEnv = {
      kernel: options.kernel,
      log: this.log,
      onDeviceClosed: (device, contextId) => {
        const inv = this.inventory.resolve(device.deviceId, 'device_id');
        if (inv.boundTo === contextId) inv.boundTo = undefined;
      },
    };
  }

  /** Read-only access for diagnostics and tests; requests go through the methods below. */
  inspectContext(id: string): Pick<Context, 'registry' | 'iommufd' | 'state' | 'tenant'> | undefined {
    return this.contexts.get(id);
  }

  get contextCount(): number {
    return this.contexts.size;
  }

  /** Live objects by kind across all contexts (computed on demand, e.g. at scrape time). */
  objectCounts(): Map<string, number> {
    return objectCounts(this.contexts.values());
  }

  get objectCount(): number {
    return liveObjects(this.contexts.values());
  }

  /** Live objects across one tenant's contexts. */
  liveObjectsOf(tenant: TenantId): number {
    return this.contexts.liveObjectsOf(tenant);
  }

  async openContext(caller: Caller, label: string, leaseSeconds: number): Promise<ContextId> {
    this.refuseWhenShuttingDown();
    if (!caller.admin) this.quotas.admitRequest(caller.tenant);
    this.quotas.checkContexts(caller.tenant, this.contexts.contextsOf(caller.tenant));
    if (Buffer.byteLength(label) > MAX_LABEL_BYTES) {
      throw new BrokerError('INVALID_FIELD', `label: ${Buffer.byteLength(label)} bytes is over the ${MAX_LABEL_BYTES}-byte limit`, { field: 'label' });
    }
    if (!Number.isInteger(leaseSeconds) || leaseSeconds < 0 || leaseSeconds > MAX_LEASE_SECONDS) {
      throw new BrokerError('INVALID_FIELD', `lease_seconds: ${leaseSeconds} is out of range 0..${MAX_LEASE_SECONDS}`, { field: 'lease_seconds' });
    }
    let iommufd;
    try {
      iommufd = await this.kernel.openIommufd();
    } catch (err) {
      throw kernelFailure(err, 'opening /dev/iommu', []);
    }
    const ctx = new Context(newContextId(), caller.tenant, label, leaseSeconds, iommufd, this.options.observer?.queueWait);
    this.register(ctx);
    await this.restart?.opened(ctx);
    this.log.info({ contextId: ctx.id, tenant: caller.tenant, label }, 'context opened');
    return ctx.id;
  }

  closeContext(caller: Caller, id: string): Promise<TeardownReport> {
    const ctx = this.contextFor(caller, id);
    return ctx.executor.run(() => this.teardownContext(ctx, 'close'));
  }

  forceCloseContext(id: string, why: string): Promise<TeardownReport> {
    const ctx = this.contexts.get(id);
    // A context that did not come back from a restart: release what its quarantined entries hold.
    if (!ctx && this.quarantine.hasContext(id)) return releaseQuarantined(this.quarantine, this.log, id, why);
    if (!ctx) throw new BrokerError('CONTEXT_NOT_FOUND', `context_id: no context ${id}`, { field: 'context_id', contextId: id });
    this.log.warn({ contextId: ctx.id, tenant: ctx.tenant, why }, 'forced close');
    return ctx.executor.run(() => this.teardownContext(ctx, 'forced'));
  }

  bindDevice(caller: Caller, id: string, deviceId: string): Promise<ObjectView> {
    return this.requests.mutate(caller, id, intentOf('bind', 1), ops.bindDevice, [deviceId]);
  }

  unbindDevice(caller: Caller, id: string, device: Handle): Promise<TeardownReport> {
    return this.requests.mutate(caller, id, intentOf('unbind', 0, [device]), this.unbindTask, [device]);
  }

  attachDevice(caller: Caller, id: string, device: Handle, target: Handle) {
    return this.requests.mutate(caller, id, intentOf('attach', 1, [device]), ops.attachDevice, [device, target]);
  }

  detachDevice(caller: Caller, id: string, device: Handle) {
    return this.requests.mutate(caller, id, intentOf('detach', 0, [device]), ops.detachDevice, [device]);
  }

  allocIoas(caller: Caller, id: string): Promise<ObjectView> {
    return this.requests.mutate(caller, id, intentOf('alloc_ioas', 1), ops.allocIoas, []);
  }

  allocHwpt(caller: Caller, id: string, args: ops.AllocHwptArgs): Promise<ObjectView> {
    return this.requests.mutate(caller, id, intentOf('alloc_hwpt', 1), ops.allocHwpt, [args]);
  }

  allocViommu(caller: Caller, id: string, device: Handle, nestParent: Handle, type: ops.ViommuType | undefined): Promise<ObjectView> {
    return this.requests.mutate(caller, id, intentOf('alloc_viommu', 1), ops.allocViommu, [device, nestParent, type]);
  }

  allocVdevice(caller: Caller, id: string, viommu: Handle, device: Handle, virtId: bigint): Promise<ObjectView> {
    return this.requests.mutate(caller, id, intentOf('alloc_vdevice', 1), ops.allocVdevice, [viommu, device, virtId]);
  }

  /** A one-time token for the bound device's fd, redeemable on the fd socket by this caller's process only. */
  leaseDeviceFd(caller: Caller, id: string, device: Handle): Promise<Lease> {
    return this.requests.inContext(caller, id, async (ctx) => {
      const owner = localCaller(caller, 'LeaseDeviceFd');
      ctx.registry.resolve(device, ['DEVICE'], 'device');
      return this.handoffs.issue(ctx, owner, { kind: 'device_fd', device });
    });
  }

  /** A one-time token for sending a memfd on the fd socket, for MapMemory. */
  prepareMemoryUpload(caller: Caller, id: string): Promise<Lease> {
    return this.requests.inContext(caller, id, async (ctx) => {
      const owner = localCaller(caller, 'PrepareMemoryUpload');
      requireMapFile(this.capabilities);
      return this.handoffs.issue(ctx, owner, { kind: 'memory_upload' });
    });
  }

  mapMemory(caller: Caller, id: string, args: MapMemoryArgs): Promise<IoasMapping> {
    // Mappings are not registry changes: `also` tells the journal the IOAS changed.
    return this.requests.mutate(caller, id, intentOf('map', 0, [args.ioas]), this.mapTask, [args], [args.ioas]);
  }

  unmapMemory(caller: Caller, id: string, ioas: Handle, iova: bigint, length: bigint): Promise<bigint> {
    return this.requests.mutate(caller, id, intentOf('unmap', 0, [ioas]), unmapMemory, [ioas, iova, length], [ioas]);
  }

  /**
   * The host wants a device back: tear it down in the legal order in whatever
   * context holds it, close its fd (which lets the kernel's unbind proceed)
   * and tell the owner. Returns the report, or undefined if it was not bound.
   */
  async deviceRequested(bdf: string): Promise<TeardownReport | undefined> {
    const device = this.inventory.resolve(bdf, 'device_id');
    const ctx = device.boundTo ? this.contexts.get(device.boundTo) : undefined;
    if (!ctx) return undefined;
    return ctx.executor.run(async () => {
      const obj = [...ctx.registry.liveOfKind('DEVICE')].find((d) => d.deviceId === device.id);
      if (!obj || ctx.state !== 'open') return undefined;
      this.log.warn({ contextId: ctx.id, deviceId: device.id }, 'host requested the device back: tearing it down');
      const report = await this.requests.journaled(ctx, { op: 'device_request', unsure: [obj.handle], creates: 0 }, () => this.teardown(ctx, { kind: 'device', device: obj }, 'device_request'));
      ctx.emit({ type: 'device_removed', device: obj.handle, deviceId: device.id });
      return report;
    });
  }

  /** A whole device graph in one request; all steps or none (topology.ts). */
  applyTopology(caller: Caller, id: string, steps: readonly TopologyStep[]): Promise<TopologyResult[]> {
    return this.requests.mutate(caller, id, topologyIntent(steps), applyTopology, [steps]);
  }

  destroyObject(caller: Caller, id: string, handle: Handle): Promise<void> {
    return this.requests.mutate(caller, id, intentOf('destroy', 0), ops.destroyObject, [handle]);
  }

  getHwInfo(caller: Caller, id: string, device: Handle) {
    return this.requests.inContext(caller, id, (ctx) => ops.getHwInfo(this.env, ctx, device));
  }

  /** Reads go through the FIFO too, so they see every earlier request's effect. */
  listObjects(caller: Caller, id: string): Promise<ObjectView[]> {
    return this.requests.inContext(caller, id, async (ctx) => listViews(ctx.registry));
  }

  /**
   * Subscribes to a context's events. The snapshot and the subscription are
   * taken in the context's FIFO, so no event falls between them. While any
   * watcher remains the client is present; when the last leaves without
   * CloseContext, the context is torn down after the grace period.
   */
  watch(caller: Caller, id: string, listener: (event: SequencedEvent) => void): Promise<{ snapshot: ObjectView[]; stop: () => void }> {
    return this.requests.inContext(caller, id, async (ctx) => {
      const unsubscribe = ctx.subscribe(listener);
      let stopped = false;
      const stop = () => {
        if (stopped) return;
        stopped = true;
        unsubscribe();
        if (ctx.state === 'open' && ctx.watcherCount === 0) {
          ctx.armAbandonTimer(this.options.clientGoneGraceMs, () => this.onAbandoned(ctx));
        }
      };
      return { snapshot: listViews(ctx.registry), stop };
    });
  }

  listDevices(): DeviceView[] {
    return this.inventory.list();
  }

  assignDevice(deviceId: string, tenant: TenantId): DeviceView {
    const device = this.inventory.resolve(deviceId, 'device_id');
    this.inventory.assign(device, tenant);
    this.restart?.assigned(device.id, tenant);
    this.log.info({ deviceId: device.id, tenant }, 'device assigned');
    return this.inventory.view(device);
  }

  /** Managed device: hands it to vfio-pci so it can be bound (libvirt's managed hostdevs). */
  prepareDevice(deviceId: string): Promise<DeviceView> {
    return changeDriver(this.kernel, this.inventory, this.log, deviceId, 'prepare');
  }

  /** Gives a managed device back to the driver it had; refused while bound. */
  releaseDevice(deviceId: string): Promise<DeviceView> {
    return changeDriver(this.kernel, this.inventory, this.log, deviceId, 'release');
  }

  unassignDevice(deviceId: string): DeviceView {
    const device = this.inventory.resolve(deviceId, 'device_id');
    this.inventory.unassign(device);
    this.restart?.assigned(device.id, null);
    this.log.info({ deviceId: device.id }, 'device unassigned');
    return this.inventory.view(device);
  }

  listContexts(tenant?: TenantId): ContextSummary[] {
    return this.contexts.list(tenant).map(contextSummary);
  }

  /** Refuses new work; with `teardownAll`, closes every context in the legal order. */
  async shutdown(teardownAll: boolean): Promise<void> {
    this.shuttingDown = true;
    const contexts = [...this.contexts.values()];
    if (teardownAll) {
      await Promise.all(contexts.map((ctx) => ctx.executor.run(() => this.teardownContext(ctx, 'forced'))));
      await this.quarantine.releaseAll();
    }
    for (const ctx of contexts) ctx.stopTimers();
    this.handoffs.close();
  }

  private refuseWhenShuttingDown(): void {
    if (this.shuttingDown) throw new BrokerError('SHUTTING_DOWN', 'the broker is shutting down; retry against the restarted daemon');
  }

  /** The caller's context, its lease renewed; CloseContext skips the rate limit (admit) so a client can always let go. */
  private contextFor(caller: Caller, id: string): Context {
    this.refuseWhenShuttingDown();
    const ctx = this.contexts.find(caller, id);
    ctx.renewLease(() => this.onLeaseExpired(ctx));
    return ctx;
  }

  /** Rate limit, then the caller's context: what every request passes before it queues. */
  private admit(caller: Caller, id: string): Context {
    if (!caller.admin) this.quotas.admitRequest(caller.tenant);
    return this.contextFor(caller, id);
  }

  private readonly unbindTask = (_env: ops.OpEnv, ctx: Context, device: Handle): Promise<TeardownReport> =>
    this.teardown(ctx, { kind: 'device', device: ctx.registry.resolve(device, ['DEVICE'], 'device') }, 'unbind');

  private readonly mapTask = (env: ops.OpEnv, ctx: Context, args: MapMemoryArgs): Promise<IoasMapping> => {
    requireMapFile(this.capabilities);
    return mapMemory(env, ctx, args);
  };

  private async teardown(ctx: Context, scope: TeardownScope, reason: TeardownReason): Promise<TeardownReport> {
    const report = await runTeardown(ctx, this.teardownEnv, scope, reason);
    ctx.emit({ type: 'teardown', report });
    this.options.observer?.teardown?.(report);
    return report;
  }

  /** Runs inside the context's FIFO. Idempotent: a second close finds nothing to do. */
  private async teardownContext(ctx: Context, reason: TeardownReason): Promise<TeardownReport> {
    if (ctx.state !== 'open') throw contextClosed(ctx);
    ctx.state = 'closing';
    ctx.stopTimers();
    try {
      // Teardown always runs: a journal that cannot record it does not stop it.
      this.restart?.before(ctx, { op: `close:${reason}`, unsure: devicesOf(ctx), creates: 0 });
    } catch (err) {
      this.log.error({ err, contextId: ctx.id }, 'tearing a context down without a journal record');
    }
    try {
      return await this.teardown(ctx, { kind: 'context' }, reason);
    } finally {
      // What a restart quarantined in this context goes with it.
      await this.quarantine.releaseContext(ctx.id);
      if (this.restart) {
        ctx.registry.changed = undefined;
        await this.restart.closed(ctx);
      }
      // Closing the iommufd unmapped everything, whatever teardown managed before.
      this.env.pinned.release(ctx, ctx.pinnedBytes);
      this.handoffs.dropContext(ctx.id);
      ctx.state = 'closed';
      this.contexts.remove(ctx);
      ctx.emit({ type: 'closed', reason });
    }
  }

  private register(ctx: Context): void {
    this.contexts.add(ctx);
    ctx.renewLease(() => this.onLeaseExpired(ctx));
  }

  /** Serves what a restart reconciled (restore.ts): same context IDs, same handles; the rest is quarantined. */
  adoptRestored(outcome: RestoreOutcome): void {
    adoptRestored(outcome, {
      register: (ctx) => this.register(ctx),
      inventory: this.inventory,
      quarantine: this.quarantine,
      quotas: this.quotas,
      queueWait: this.options.observer?.queueWait,
    });
    this.restoredContexts = outcome.contexts.length;
  }

  private onAbandoned(ctx: Context): void {
    if (ctx.state !== 'open' || ctx.watcherCount > 0) return;
    this.log.warn({ contextId: ctx.id, tenant: ctx.tenant }, 'client gone: tearing the context down');
    ctx.executor.run(() => this.teardownContext(ctx, 'client_gone')).catch(() => undefined);
  }

  private onLeaseExpired(ctx: Context): void {
    if (ctx.watcherCount > 0) {
      ctx.renewLease(() => this.onLeaseExpired(ctx));
      return;
    }
    this.onAbandoned(ctx);
  }
}
