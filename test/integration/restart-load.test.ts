/**
 * The daemon killed in the middle of operations (sim, one process): kernel
 * calls already issued complete (as an ioctl does when its process is
 * killed), the journal has their intent but not their result, and the next
 * daemon must neither lose nor destroy anything.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSimKernel, type SimKernel } from '../../src/kernel/sim/index.js';
import { HwptKind, TeardownAction } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { assignDevices, buildVm, meta } from '../helpers/lifecycle.js';
import { nextCall, restartHost, type Host, type Incarnation } from '../helpers/restart.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Kernel objects of each context, mappings included: what the restart must leave exactly as it was. */
function kernelState(sim: SimKernel, td: Incarnation, ids: string[]) {
  return ids.map((id) => {
    const ctx = td.daemon.broker.inspectContext(id);
    return ctx ? sim.objects(ctx.iommufd).map((o) => ({ ...o, mappings: o.type === 'IOAS' ? sim.mappings(ctx.iommufd, o.id) : [] })) : [];
  });
}

/** Every kernel object is served (registry) or quarantined, and nothing is in both. */
async function accountedFor(sim: SimKernel, td: Incarnation, id: string): Promise<void> {
  const ctx = td.daemon.broker.inspectContext(id)!;
  const served = [...ctx.registry.all()].filter((o) => o.state === 'live').map((o) => Number(o.kernelId));
  const { quarantined } = await td.admin.getStatus({});
  const held = quarantined.filter((q) => q.contextId === id && q.reason !== 'gone' && q.kernelId !== 0).map((q) => q.kernelId);
  const kernel = sim.objects(ctx.iommufd).map((o) => o.id);
  expect([...served, ...held].sort((a, b) => a - b), quarantined.map((q) => `${q.reason}:${q.kind}:${q.kernelId}`).join(' ')).toEqual(kernel);
}

describe('killed mid-operation (sim, one process)', () => {
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

  it('an attach in flight: the device is quarantined with its fd, the HWPT it made is found, nothing is destroyed', async () => {
    const [deviceId] = await assignDevices(td, 1);
    const { contextId } = await td.broker.openContext({}, meta);
    const device = (await td.broker.bindDevice({ contextId, deviceId: deviceId! }, meta)).device!.handle;
    const ioas1 = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    await td.broker.attachDevice({ contextId, device, target: ioas1 }, meta);
    const ioas2 = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    sim.faults.setLatency(40, { ops: ['attach_pt'] });
    const attach = nextCall(sim, 'attachPt');
    void td.broker.attachDevice({ contextId, device, target: ioas2 }, meta).catch(() => undefined);
    await attach.started;
    await td.crash();
    await attach.settled; // the ioctl the dead daemon issued completes
    sim.faults.clear();
    const ctxFile = td.daemon.broker.inspectContext(contextId)!.iommufd;
    const before = sim.objects(ctxFile);

    td = await host.start();
    expect(sim.objects(ctxFile)).toEqual(before);
    const { quarantined } = await td.admin.getStatus({});
    const byReason = Object.fromEntries(quarantined.map((q) => [q.reason, q]));
    expect(byReason['in_flight']).toMatchObject({ contextId, handle: device, kind: 'DEVICE' });
    expect(byReason['unconfirmed']).toMatchObject({ contextId, kind: 'HWPT_PAGING' });
    expect(byReason['gone']).toMatchObject({ contextId, kind: 'HWPT_PAGING' }); // the replaced automatic HWPT
    await accountedFor(sim, td, contextId);

    // The context still works, and closing it releases the quarantined device too.
    await td.broker.destroyObject({ contextId, handle: (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle }, meta);
    await td.broker.closeContext({ contextId }, meta);
    expect(sim.liveObjectCount()).toBe(0);
    expect(sim.openFileCount()).toBe(0);
    expect((await td.admin.getStatus({})).quarantined).toEqual([]);
    expect(td.store.held.size).toBe(0);
  });

  it('an allocation in flight: the object the kernel made is reported, not adopted and not destroyed', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    const ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!;
    sim.faults.setLatency(30, { ops: ['ioas_alloc'] });
    const alloc = nextCall(sim, 'ioasAlloc');
    void td.broker.allocIoas({ contextId }, meta).catch(() => undefined);
    await alloc.started;
    await td.crash();
    await alloc.settled; // the ioctl the dead daemon issued completes
    sim.faults.clear();
    td = await host.start();
    const { quarantined } = await td.admin.getStatus({});
    expect(quarantined.map((q) => [q.reason, q.kind, q.kernelId])).toEqual([['unconfirmed', 'IOAS', ioas.kernelId + 1]]);
    await accountedFor(sim, td, contextId);
    const next = (await td.broker.allocIoas({ contextId }, meta)).ioas!;
    expect(next.handle).toBeGreaterThan(ioas.handle);
    await td.broker.closeContext({ contextId }, meta);
    expect(sim.liveObjectCount()).toBe(0);
  });

  it('under load: every context survives a kill at a random moment, keeps working and still tears down in order', async () => {
    const devices = await assignDevices(td, 4);
    const ids: string[] = [];
    const graphs = [];
    for (const [i, d] of devices.entries()) {
      if (i % 2 === 0) {
        const vm = await buildVm(td, d);
        ids.push(vm.contextId);
        graphs.push({ contextId: vm.contextId, device: vm.device, ioas: vm.ioas });
      } else {
        const { contextId } = await td.broker.openContext({ label: `load-${i}` }, meta);
        const device = (await td.broker.bindDevice({ contextId, deviceId: d }, meta)).device!.handle;
        const ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
        await td.broker.attachDevice({ contextId, device, target: ioas }, meta);
        ids.push(contextId);
        graphs.push({ contextId, device, ioas });
      }
    }
    // Kernel calls take a moment, so some are in flight when the daemon dies.
    sim.faults.setLatency(1);
    let running = true;
    const ops = { ok: 0, failed: 0 };
    const loops = graphs.map(async (g, i) => {
      const b = td.broker;
      while (running) {
        try {
          const x = (await b.allocIoas({ contextId: g.contextId }, meta)).ioas!.handle;
          const h = (await b.allocHwpt({ contextId: g.contextId, device: g.device, kind: HwptKind.PAGING, parent: x }, meta)).hwpt!.handle;
          if (i % 2 === 1) {
            await b.attachDevice({ contextId: g.contextId, device: g.device, target: x }, meta);
            await b.attachDevice({ contextId: g.contextId, device: g.device, target: g.ioas }, meta);
          }
          await b.destroyObject({ contextId: g.contextId, handle: h }, meta);
          await b.destroyObject({ contextId: g.contextId, handle: x }, meta);
          ops.ok++;
        } catch {
          ops.failed++;
          return;
        }
      }
    });
    // Load first (a slow, shared machine may take a while to finish one round), then a random moment.
    for (const deadline = Date.now() + 20_000; ops.ok === 0 && ops.failed === 0 && Date.now() < deadline; ) await sleep(10);
    await sleep(Math.floor(Math.random() * 150));
    await td.crash();
    running = false;
    await Promise.race([Promise.all(loops), sleep(200)]);
    await sleep(30); // kernel calls the dead daemon issued complete
    sim.faults.clear();
    expect(ops.ok).toBeGreaterThan(0);
    const before = kernelState(sim, td, ids);
    const files = sim.openFileCount();

    td = await host.start();
    expect(kernelState(sim, td, ids)).toEqual(before);
    expect(sim.openFileCount()).toBe(files);
    const status = await td.admin.getStatus({});
    expect(status.restoredContexts).toBe(ids.length);
    for (const id of ids) await accountedFor(sim, td, id);
    for (const q of status.quarantined) expect(['in_flight', 'unconfirmed', 'gone']).toContain(q.reason);

    for (const g of graphs) {
      const x = (await td.broker.allocIoas({ contextId: g.contextId }, meta)).ioas!.handle;
      await td.broker.destroyObject({ contextId: g.contextId, handle: x }, meta);
      const { objects } = await td.broker.listObjects({ contextId: g.contextId }, meta);
      expect(objects.some((o) => o.handle === g.ioas)).toBe(true);
    }
    for (const id of ids) {
      const { teardown } = await td.broker.closeContext({ contextId: id }, meta);
      const steps = teardown!.steps.map((s) => s.action);
      // The legal order: every move, destroy and detach before the first device close, the iommufd last.
      const firstClose = steps.indexOf(TeardownAction.CLOSE_DEVICE);
      const lastChange = Math.max(...[TeardownAction.MOVE_OFF_NESTED, TeardownAction.DESTROY, TeardownAction.DETACH].map((a) => steps.lastIndexOf(a)));
      if (firstClose >= 0) expect(lastChange).toBeLessThan(firstClose);
      expect(steps[steps.length - 1]).toBe(TeardownAction.CLOSE_IOMMUFD);
    }
    expect(sim.liveObjectCount()).toBe(0);
    expect(sim.openFileCount()).toBe(0);
    expect(sim.liveContextCount()).toBe(0);
    expect(td.store.held.size).toBe(0);
    expect((await td.admin.getStatus({})).quarantined).toEqual([]);
  });
});
