import * as grpc from '@grpc/grpc-js';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ObjectState, TeardownAction } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { KERNEL_PROFILES } from '../../src/kernel/types.js';
import { createLogger } from '../../src/obs/log.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, meta, unbindOrder } from '../helpers/lifecycle.js';

async function failure(p: Promise<unknown>): Promise<grpc.ServiceError> {
  return p.then(
    () => {
      throw new Error('expected failure');
    },
    (err: grpc.ServiceError) => err,
  );
}

describe.each(KERNEL_PROFILES)('unbind teardown on %s', (profile) => {
  let td: TestDaemon;
  afterEach(async () => {
    await td.stop();
  });

  it('runs the legal order and leaves the vDEVICE handle tombstoned with VDEVICE_DESTROYED_ON_UNBIND', async () => {
    td = await startTestDaemon(profile);
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);

    const events: string[] = [];
    const watch = td.broker.watchContext({ contextId: vm.contextId }, meta);
    const teardownSeen = new Promise<void>((resolve) => {
      watch.on('data', (ev) => {
        events.push(ev.event.case ?? 'none');
        if (ev.event.case === 'teardown') resolve();
      });
    });
    watch.on('error', () => undefined);

    const { teardown } = await td.broker.unbindDevice({ contextId: vm.contextId, device: vm.device }, meta);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual(unbindOrder(vm));
    expect(teardown!.vdevicesDestroyed).toBe(1);
    expect(teardown!.vdevicesFoundTombstoned).toBe(0);
    await teardownSeen;
    // One teardown event for the whole unbind, after the ready snapshot.
    expect(events.filter((e) => e === 'teardown')).toHaveLength(1);
    expect(events[0]).toBe('ready');

    // Every later RPC naming the dead vDEVICE says why it is gone.
    for (const call of [
      td.broker.destroyObject({ contextId: vm.contextId, handle: vm.vdevice }, meta),
      td.broker.attachDevice({ contextId: vm.contextId, device: vm.vdevice, target: vm.ioas }, meta),
    ]) {
      const err = await failure(call);
      expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(errorInfoOf(err)?.reason).toBe('VDEVICE_DESTROYED_ON_UNBIND');
    }
    const { objects } = await td.broker.listObjects({ contextId: vm.contextId }, meta);
    expect(objects.find((o) => o.handle === vm.vdevice)?.state).toBe(ObjectState.TOMBSTONED);
    // The vIOMMU, nest parent and IOAS remain, and are now destroyable in order.
    const m = registryMatchesKernel(td, vm.contextId);
    expect(m.registry).toEqual(m.kernel);
    await td.broker.destroyObject({ contextId: vm.contextId, handle: vm.viommu }, meta);
    await td.broker.destroyObject({ contextId: vm.contextId, handle: vm.nestParent }, meta);
    await td.broker.destroyObject({ contextId: vm.contextId, handle: vm.ioas }, meta);
    expect(registryMatchesKernel(td, vm.contextId).kernel).toEqual([]);
    watch.cancel();
  });

  it('counts a vDEVICE the kernel already destroyed as done, separately, when the broker could not destroy it first', async () => {
    td = await startTestDaemon(profile);
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    // Make every DESTROY of the vDEVICE fail before the device closes: the broker must still finish.
    const sim = td.daemon.sim!;
    for (const attempt of [1, 2, 3]) sim.faults.failNth(attempt, 'EINTR', { ops: ['destroy'] });
    const { teardown } = await td.broker.unbindDevice({ contextId: vm.contextId, device: vm.device }, meta);
    const actions = teardown!.steps.map((s) => s.action);
    expect(actions).toContain(TeardownAction.CLOSE_DEVICE);
    if (profile === 'linux-6.17') {
      // The kernel tombstoned it at unbind; the later DESTROY gave ENOENT.
      expect(teardown!.vdevicesFoundTombstoned).toBe(1);
      expect(teardown!.vdevicesDestroyed).toBe(0);
      expect(actions.at(-1)).toBe(TeardownAction.FOUND_TOMBSTONED);
    } else {
      // 6.13 lets the vDEVICE outlive the unbind: the broker destroys it afterwards.
      expect(teardown!.vdevicesFoundTombstoned).toBe(0);
      expect(teardown!.vdevicesDestroyed).toBe(1);
      expect(actions.at(-1)).toBe(TeardownAction.DESTROY);
    }
    const err = await failure(td.broker.destroyObject({ contextId: vm.contextId, handle: vm.vdevice }, meta));
    expect(errorInfoOf(err)?.reason).toBe('VDEVICE_DESTROYED_ON_UNBIND');
    const m = registryMatchesKernel(td, vm.contextId);
    expect(m.registry).toEqual(m.kernel);
  });
});

describe('teardown log lines', () => {
  let td: TestDaemon | undefined;
  afterEach(async () => {
    await td?.stop();
  });

  it('logs a routine UnbindDevice at debug, a failed step as a warning and a context close at info', async () => {
    const lines: { level: number; msg: string; reason?: string; failures?: number }[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as (typeof lines)[number]);
        done();
      },
    });
    td = await startTestDaemon('linux-6.17', () => undefined, createLogger('debug', sink));
    const teardownLines = () => lines.filter((l) => l.msg.startsWith('teardown done')).map((l) => [l.level, l.reason, l.failures]);
    const [first, second] = await assignDevices(td, 2);
    const vm = await buildVm(td, first!);
    await td.broker.unbindDevice({ contextId: vm.contextId, device: vm.device }, meta);

    const { device } = await td.broker.bindDevice({ contextId: vm.contextId, deviceId: second! }, meta);
    // Every attempt at the detach fails in the sim; the step is recorded as failed and skipped.
    const sim = td.daemon.sim!;
    for (const attempt of [1, 2, 3]) sim.faults.failNth(attempt, 'EINTR', { ops: ['detach_pt'] });
    await td.broker.attachDevice({ contextId: vm.contextId, device: device!.handle, target: vm.ioas }, meta);
    await td.broker.unbindDevice({ contextId: vm.contextId, device: device!.handle }, meta);

    await td.broker.closeContext({ contextId: vm.contextId }, meta);
    await new Promise((r) => setImmediate(r));
    // pino levels: 20 debug, 30 info, 40 warn.
    expect(teardownLines()).toEqual([
      [20, 'unbind', 0],
      [40, 'unbind', 1],
      [30, 'close', 0],
    ]);
  });
});
