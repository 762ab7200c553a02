/** Managed devices: PrepareDevice hands a function to vfio-pci, ReleaseDevice gives it back. */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { meta, TENANT } from '../helpers/lifecycle.js';

const PF = '0000:03:00.0'; // the demo inventory's NIC PF, on its kernel driver "ice"

describe('managed devices', () => {
  let td: TestDaemon;
  afterEach(async () => {
    await td.stop();
  });

  it('prepares a device for VFIO, lets its tenant bind it, refuses release while bound, then gives it back', async () => {
    td = await startTestDaemon();
    const before = (await td.admin.listDevices({})).devices.find((d) => d.id === PF)!;
    expect(before).toMatchObject({ driver: 'ice', cdev: '' });
    await td.admin.assignDevice({ deviceId: PF, tenant: TENANT });
    const { contextId } = await td.broker.openContext({}, meta);
    const notVfio = (await td.broker.bindDevice({ contextId, deviceId: PF }, meta).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(errorInfoOf(notVfio)?.reason).toBe('DEVICE_NOT_VFIO');

    const prepared = (await td.admin.prepareDevice({ deviceId: PF })).device!;
    expect(prepared.driver).toBe('vfio-pci');
    expect(prepared.cdev).toMatch(/^vfio\d+$/);
    const device = (await td.broker.bindDevice({ contextId, deviceId: PF }, meta)).device!.handle;
    expect((await td.admin.listDevices({})).devices.find((d) => d.id === PF)?.state).toBe(DeviceState.BOUND);

    const busy = (await td.admin.releaseDevice({ deviceId: PF }).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(busy.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(errorInfoOf(busy)?.reason).toBe('DEVICE_BUSY');

    await td.broker.unbindDevice({ contextId, device }, meta);
    const released = (await td.admin.releaseDevice({ deviceId: PF })).device!;
    expect(released).toMatchObject({ driver: 'ice', cdev: '', state: DeviceState.ASSIGNED });
  });
});
