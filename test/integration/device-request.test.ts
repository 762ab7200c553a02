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

    const report = await td.daemon.broker.deviceRequested(deviceId!);
    expect(report?.reason).toBe('device_request');
    expect(report?.steps.map((s) => s.action)).toEqual(['move_off_nested', 'destroy', 'destroy', 'detach', 'close_device']);
    await new Promise((r) => setTimeout(r, 50));
    const kinds = events.map((e) => e.event.case);
    expect(kinds.slice(-2)).toEqual(['teardown', 'deviceRemoved']);
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
