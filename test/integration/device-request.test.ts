/** The host takes a device back: legal-order teardown, fd closed, owner told. */
import { afterEach, describe, expect, it } from 'vitest';
import type { WatchContextResponse } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { ObjectState, TeardownAction, TeardownReason } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, meta } from '../helpers/lifecycle.js';

describe('device request (host reclaim)', () => {
  let td: TestDaemon;
  afterEach(async () => {
    await td.stop();
  });

  it('tears the device down in order, closes it and sends the owner teardown and device_removed events', async () => {
    td = await startTestDaemon();
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    const events: WatchContextResponse[] = [];
    const watch = td.broker.watchContext({ contextId: vm.contextId }, meta);
    watch.on('data', (e: WatchContextResponse) => events.push(e));
    watch.on('error', () => undefined);
    await new Promise((r) => watch.once('data', r));

    // The host unbinds the driver: the kernel asks for the device and blocks until its fd closes.
    let released = false;
    const unbind = td.daemon.sim!.hostUnbind(deviceId!).then(() => (released = true));
    await unbind;
    expect(released).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    const counted = (await td.daemon.metrics.teardowns.get()).values.find((v) => v.labels['reason'] === 'device_request');
    expect(counted?.value).toBe(1);
    const kinds = events.map((e) => e.event.case);
    expect(kinds.slice(-2)).toEqual(['teardown', 'deviceRemoved']);
    const steps = events.find((e) => e.event.case === 'teardown')!;
    expect(steps.event.case === 'teardown' && steps.event.value.report?.steps.map((s) => TeardownAction[s.action])).toEqual([
      'MOVE_OFF_NESTED',
      'DESTROY',
      'DESTROY',
      'DETACH',
      'CLOSE_DEVICE',
    ]);
    const teardown = events.find((e) => e.event.case === 'teardown')!;
    expect(teardown.event.case === 'teardown' && teardown.event.value.report?.reason).toBe(TeardownReason.DEVICE_REQUEST);
    expect(teardown.event.case === 'teardown' && teardown.event.value.report?.steps.at(-1)?.action).toBe(TeardownAction.CLOSE_DEVICE);
    const removed = events.at(-1)!;
    expect(removed.event.case === 'deviceRemoved' && removed.event.value.deviceId).toBe(deviceId);

    const { objects } = await td.broker.listObjects({ contextId: vm.contextId }, meta);
    expect(objects.find((o) => o.handle === vm.vdevice)?.state).toBe(ObjectState.TOMBSTONED);
    const m = registryMatchesKernel(td, vm.contextId);
    expect(m.registry).toEqual(m.kernel);
    expect(td.daemon.broker.listDevices().find((d) => d.id === deviceId)?.state).toBe('assigned');
    // A device that is not bound anywhere needs nothing.
    expect(await td.daemon.broker.deviceRequested(deviceId!)).toBeUndefined();
    watch.cancel();
  });
});
