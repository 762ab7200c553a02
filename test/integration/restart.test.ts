/**
 * Restart without teardown on the sim, in one process (test/helpers/restart.ts):
 * the daemon is killed, a new one starts on the same kernel with the files the
 * store kept and the journal, and every context carries on with the same IDs
 * and handles. Mismatches between journal, store and kernel are quarantined.
 */
import * as grpc from '@grpc/grpc-js';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { deviceName, iommufdName } from '../../src/broker/fd-store.js';
import { asHandle } from '../../src/broker/ids.js';
import { createSimKernel, type SimKernel } from '../../src/kernel/sim/index.js';
import { kernelId } from '../../src/kernel/types.js';
import { DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { HwptKind } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, closeOrder, meta, type VmGraph } from '../helpers/lifecycle.js';
import { restartHost, type Host, type Incarnation } from '../helpers/restart.js';

/** Everything the sim has, per context: what no restart may change. */
function kernelState(sim: SimKernel, td: Incarnation, contextIds: string[]) {
  return contextIds.map((id) => {
    const ctx = td.daemon.broker.inspectContext(id);
    return ctx ? sim.objects(ctx.iommufd).map((o) => ({ ...o, mappings: o.type === 'IOAS' ? sim.mappings(ctx.iommufd, o.id) : [] })) : [];
  });
}

function handles(td: Incarnation, id: string): string[] {
  const ctx = td.daemon.broker.inspectContext(id)!;
  return [...ctx.registry.all()].map((o) => `${o.handle}:${o.kind}:${o.kernelId}:${o.state}`).sort();
}

describe('restart without teardown (sim, one process)', () => {
  let host: Host;
  let sim: SimKernel;
  let td: Incarnation;

  beforeEach(async () => {
    sim = createSimKernel({ profile: 'linux-6.17' });
    host = restartHost(sim);
    td = await host.start();
  });
  afterEach(async () => {
    await td.stop().catch(() => undefined);
    host.cleanup();
  });

  async function restart(): Promise<Incarnation> {
    await td.crash();
    td = await host.start();
    return td;
  }

  it('keeps every context, handle and kernel object, and the contexts keep working', async () => {
    const devices = await assignDevices(td, 2);
    const vms: VmGraph[] = [];
    for (const d of devices) vms.push(await buildVm(td, d));
    const ids = vms.map((v) => v.contextId);
    const before = kernelState(sim, td, ids);
    const handlesBefore = ids.map((id) => handles(td, id));

    await restart();

    expect(kernelState(sim, td, ids)).toEqual(before);
    expect(ids.map((id) => handles(td, id))).toEqual(handlesBefore);
    for (const id of ids) {
      const { registry, kernel } = registryMatchesKernel(td, id);
      expect(registry).toEqual(kernel);
    }
    const status = await td.admin.getStatus({});
    expect(status.quarantined).toEqual([]);
    expect(status.restoredContexts).toBe(2);
    expect(status.contexts).toBe(2);
    const { devices: listed } = await td.admin.listDevices({});
    for (const d of devices) expect(listed.find((x) => x.id === d)?.state).toBe(DeviceState.BOUND);

    // Further operations work, and handles continue after the last one handed out.
    const vm = vms[0]!;
    const ioas = (await td.broker.allocIoas({ contextId: vm.contextId }, meta)).ioas!;
    expect(ioas.handle).toBeGreaterThan(vm.nested);
    await td.broker.destroyObject({ contextId: vm.contextId, handle: ioas.handle }, meta);
    const { objects } = await td.broker.listObjects({ contextId: vm.contextId }, meta);
    expect(objects.find((o) => o.handle === vm.vdevice)?.holds).toEqual([vm.viommu, vm.device]);

    // Teardown still runs in the legal order, and leaves nothing behind.
    const { teardown } = await td.broker.closeContext({ contextId: vm.contextId }, meta);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual(closeOrder(vm));
    expect(td.store.held.has(iommufdName(vm.contextId))).toBe(false);
    expect(td.store.held.has(deviceName(vm.contextId, Number(vm.device)))).toBe(false);
    await td.broker.closeContext({ contextId: vms[1]!.contextId }, meta);
    expect(sim.liveObjectCount()).toBe(0);
    expect(sim.openFileCount()).toBe(0);
    expect(td.store.held.size).toBe(0);
  });

  it('survives several restarts, and a tombstoned vDEVICE handle still says why it is dead', async () => {
    const [d1, d2] = await assignDevices(td, 2);
    const vm = await buildVm(td, d1!);
    const second = (await td.broker.bindDevice({ contextId: vm.contextId, deviceId: d2! }, meta)).device!.handle;
    await restart();
    await td.broker.unbindDevice({ contextId: vm.contextId, device: vm.device }, meta);
    await restart();
    await restart();
    const err = await td.broker.destroyObject({ contextId: vm.contextId, handle: vm.vdevice }, meta).catch((e: grpc.ServiceError) => e);
    expect(errorInfoOf(err as grpc.ServiceError)?.reason).toBe('VDEVICE_DESTROYED_ON_UNBIND');
    const { registry, kernel } = registryMatchesKernel(td, vm.contextId);
    expect(registry).toEqual(kernel);
    // The restored tombstone is dead: not counted against the tenant's objects, holding nothing.
    const restored = td.daemon.broker.inspectContext(vm.contextId)!.registry;
    expect(restored.liveCount).toBe([...restored.all()].filter((o) => o.state === 'live').length);
    // The tenant's count, which the object quota checks, is that context's count once, after three restarts.
    expect(td.daemon.broker.liveObjectsOf(td.daemon.broker.inspectContext(vm.contextId)!.tenant)).toBe(restored.liveCount);
    expect([...restored.liveOfKind('VDEVICE')]).toEqual([]);
    expect(restored.holders(asHandle(vm.viommu))).toEqual([]);
    expect((await td.broker.attachDevice({ contextId: vm.contextId, device: second, target: vm.ioas }, meta)).hwpt).toBeDefined();
    expect((await td.admin.getStatus({})).quarantined).toEqual([]);
  });

  it('quarantines what does not reconcile, reports it, and destroys nothing', async () => {
    const [d1, d2, d3, d4] = await assignDevices(td, 4);
    const a = await buildVm(td, d1!);
    const b = await buildVm(td, d2!);
    const c = await buildVm(td, d3!);
    const ctxA = td.daemon.broker.inspectContext(a.contextId)!;
    const ctxB = td.daemon.broker.inspectContext(b.contextId)!;
    const spare = (await td.broker.allocHwpt({ contextId: a.contextId, device: a.device, kind: HwptKind.PAGING, parent: a.ioas }, meta)).hwpt!;
    const extraIoas = (await td.broker.allocIoas({ contextId: a.contextId }, meta)).ioas!;
    await td.crash();

    // While no daemon runs: an ID freed and taken by another type, an object gone,
    // a stored fd removed, a context's iommufd lost, and an fd nobody journaled.
    await sim.destroy(ctxA.iommufd, kernelId(Number(spare.kernelId)));
    expect(await sim.ioasAlloc(ctxA.iommufd)).toBe(Number(spare.kernelId));
    await sim.destroy(ctxA.iommufd, kernelId(Number(extraIoas.kernelId)));
    host.store.remove(deviceName(b.contextId, Number(b.device)));
    host.store.remove(iommufdName(c.contextId));
    const stray = await sim.openDevice((await sim.listPciFunctions()).find((f) => f.bdf === d4)!.cdev!);
    host.store.put('d.ctx-000000000000000000000000.9', sim.storeFd(stray)!);
    const kernelBefore = { a: sim.objects(ctxA.iommufd), b: sim.objects(ctxB.iommufd) };

    td = await host.start();
    expect(sim.objects(ctxA.iommufd)).toEqual(kernelBefore.a);
    expect(sim.objects(ctxB.iommufd)).toEqual(kernelBefore.b);
    const status = await td.admin.getStatus({});
    const reasons = status.quarantined.map((q) => `${q.reason}:${q.contextId === '' ? '-' : q.contextId.slice(0, 8)}:${q.kind}`).sort();
    expect(reasons).toEqual(
      [
        `wrong_type:${a.contextId.slice(0, 8)}:HWPT_PAGING`,
        `gone:${a.contextId.slice(0, 8)}:IOAS`,
        `fd_missing:${b.contextId.slice(0, 8)}:DEVICE`,
        `iommufd_missing:${c.contextId.slice(0, 8)}:`,
        `iommufd_missing:${c.contextId.slice(0, 8)}:DEVICE`,
        'fd_without_journal:-:',
      ].sort(),
    );
    expect(status.quarantined.find((q) => q.reason === 'wrong_type')?.detail).toContain('now names IOAS');
    // Devices held by quarantine are shown as such.
    const { devices } = await td.admin.listDevices({});
    expect(devices.find((d) => d.id === d3)?.state).toBe(DeviceState.QUARANTINED);
    expect(devices.find((d) => d.id === d2)?.state).toBe(DeviceState.QUARANTINED);
    const metrics = await td.daemon.metrics.registry.getSingleMetricAsString('vfio_broker_quarantined');
    expect(metrics).toContain('vfio_broker_quarantined{reason="iommufd_missing"} 2');

    // Context A still works; its quarantined and gone objects are not served.
    expect((await td.broker.allocIoas({ contextId: a.contextId }, meta)).ioas).toBeDefined();
    // The lost context's device stays bound (held) until an admin force-closes it.
    const simDevicesOpen = sim.openFileCount();
    await td.admin.forceCloseContext({ contextId: c.contextId, reason: 'test' });
    expect(sim.openFileCount()).toBeLessThan(simDevicesOpen);
    expect((await td.admin.listDevices({})).devices.find((d) => d.id === d3)?.state).toBe(DeviceState.ASSIGNED);
    expect((await td.admin.getStatus({})).quarantined.some((q) => q.contextId === c.contextId)).toBe(false);
  });

  it('a journal that cannot write refuses new changes before the kernel, but never stops a teardown', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    const ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!;
    const file = td.daemon.broker.inspectContext(contextId)!.iommufd;
    await td.daemon.restart!.journal.close();
    const refused = await td.broker.allocIoas({ contextId }, meta).catch((e: grpc.ServiceError) => e);
    expect(errorInfoOf(refused as grpc.ServiceError)?.reason).toBe('INTERNAL');
    expect(sim.objects(file).map((o) => o.id)).toEqual([Number(ioas.kernelId)]);
    await td.broker.closeContext({ contextId }, meta);
    expect(sim.liveObjectCount()).toBe(0);
  });

  it('reports contexts of a journal written before the host rebooted', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    await td.crash();
    const [first, ...rest] = readFileSync(host.journalPath, 'utf8').split('\n');
    writeFileSync(host.journalPath, [JSON.stringify({ ...JSON.parse(first!), boot: 'an-earlier-boot' }), ...rest].join('\n'));
    td = await host.start();
    const { quarantined } = await td.admin.getStatus({});
    expect(quarantined.find((q) => q.reason === 'host_rebooted')).toMatchObject({ contextId });
  });
});

describe('restart journal without an fd store (no NOTIFY_SOCKET)', () => {
  let td: TestDaemon | undefined;
  afterEach(async () => {
    await td?.stop();
  });

  /** This process's fds on the sim's device memfds (the daemon runs in-process). */
  const simDeviceFds = () => readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith('/memfd:vfio-sim:');
    } catch {
      return false;
    }
  });

  it('journals every change but asks the backend for no fd to keep', async () => {
    const before = simDeviceFds().length;
    td = await startTestDaemon('linux-6.17', (c) => (c.restart.journalPath = path.join(path.dirname(c.socket.path), 'journal')));
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    // Nowhere to keep a copy, so no device file was turned into a real fd for one.
    expect(simDeviceFds().length).toBe(before);
    const journal = readFileSync(path.join(path.dirname(td.socketPath), 'journal'), 'utf8');
    expect(journal).toContain(`"c":"${vm.contextId}"`);
    expect(journal).toContain('"t":"done"');
  });
});
