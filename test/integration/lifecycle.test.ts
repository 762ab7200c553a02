import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ObjectState, ObjectType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, closeOrder, meta } from '../helpers/lifecycle.js';

async function rpcError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}

describe('a VM lifecycle over gRPC', () => {
  let td: TestDaemon;
  beforeEach(async () => {
    td = await startTestDaemon('linux-6.17');
  });
  afterEach(async () => {
    await td.stop();
  });

  it('builds the full device graph, lists it, and tears it down in the legal order on close', async () => {
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);

    const { objects } = await td.broker.listObjects({ contextId: vm.contextId }, meta);
    const byHandle = new Map(objects.map((o) => [o.handle, o]));
    expect(byHandle.get(vm.device)?.type).toBe(ObjectType.DEVICE);
    expect(byHandle.get(vm.device)?.attachedHwpt).toBe(vm.nested);
    expect(byHandle.get(vm.vdevice)?.holds).toEqual([vm.viommu, vm.device]);
    expect(byHandle.get(vm.viommu)?.holds).toEqual([vm.nestParent]);
    expect(byHandle.get(vm.nested)?.heldBy).toEqual([vm.device]);
    // Attaching the device to the nested HWPT left the automatic HWPT with no user: the kernel freed it.
    expect(byHandle.has(vm.autoHwpt)).toBe(false);
    expect(registryMatchesKernel(td, vm.contextId).registry).toEqual(registryMatchesKernel(td, vm.contextId).kernel);

    const hw = await td.broker.getHwInfo({ contextId: vm.contextId, device: vm.device }, meta);
    expect(hw.hwInfoType).toBe(0xfeedbeef);

    const { devices } = await td.admin.listDevices({});
    expect(devices.find((d) => d.id === deviceId)?.state).toBe(DeviceState.BOUND);

    const { teardown } = await td.broker.closeContext({ contextId: vm.contextId }, meta);
    const order = teardown!.steps.map((s) => [s.action, s.handle]);
    expect(order).toEqual(closeOrder(vm));
    expect(teardown!.vdevicesDestroyed).toBe(1);
    expect(td.daemon.sim!.liveObjectCount()).toBe(0);
    expect(td.daemon.sim!.openFileCount()).toBe(0);
    const after = await td.admin.listDevices({});
    expect(after.devices.find((d) => d.id === deviceId)?.state).toBe(DeviceState.ASSIGNED);
    const gone = await rpcError(td.broker.listObjects({ contextId: vm.contextId }, meta));
    expect(gone.code).toBe(grpc.status.NOT_FOUND);
    expect(errorInfoOf(gone)?.reason).toBe('CONTEXT_NOT_FOUND');
  });

  it('never reuses a handle even though the kernel reuses the ID', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    const first = (await td.broker.allocIoas({ contextId }, meta)).ioas!;
    await td.broker.destroyObject({ contextId, handle: first.handle }, meta);
    const second = (await td.broker.allocIoas({ contextId }, meta)).ioas!;
    expect(second.kernelId).toBe(first.kernelId);
    expect(second.handle).not.toBe(first.handle);
    const stale = await rpcError(td.broker.destroyObject({ contextId, handle: first.handle }, meta));
    expect(stale.code).toBe(grpc.status.NOT_FOUND);
    expect(errorInfoOf(stale)?.reason).toBe('OBJECT_NOT_FOUND');
  });

  it('maps EBUSY to FAILED_PRECONDITION OBJECT_IN_USE naming the holders', async () => {
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    const err = await rpcError(td.broker.destroyObject({ contextId: vm.contextId, handle: vm.viommu }, meta));
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    const info = errorInfoOf(err)!;
    expect(info.reason).toBe('OBJECT_IN_USE');
    expect(info.domain).toBe('vfio-broker');
    expect(info.metadata['errno']).toBe('EBUSY');
    expect(info.metadata['objects']!.split(',').map(BigInt).sort()).toEqual([vm.viommu, vm.vdevice, vm.nested].sort());
  });

  it('maps a duplicate virt_id (EEXIST) to ALREADY_EXISTS and an unsupported vIOMMU type (EOPNOTSUPP) to UNIMPLEMENTED', async () => {
    const [a, b] = await assignDevices(td, 2);
    const vm = await buildVm(td, a!);
    const second = (await td.broker.bindDevice({ contextId: vm.contextId, deviceId: b! }, meta)).device!.handle;
    const dup = await rpcError(td.broker.allocVdevice({ contextId: vm.contextId, viommu: vm.viommu, device: second, virtId: 0x99n }, meta));
    expect(dup.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(errorInfoOf(dup)?.metadata['errno']).toBe('EEXIST');
    const unsupported = await rpcError(td.broker.allocViommu({ contextId: vm.contextId, device: vm.device, nestParent: vm.nestParent, type: 1 }, meta));
    expect(unsupported.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(errorInfoOf(unsupported)?.reason).toBe('KERNEL_UNSUPPORTED');
  });

  it('answers bad input with INVALID_ARGUMENT or NOT_FOUND naming the field', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    const ioas = (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle;
    const cases: [Promise<unknown>, grpc.status, string, string][] = [
      [td.broker.allocIoas({ contextId: '' }, meta), grpc.status.INVALID_ARGUMENT, 'MISSING_FIELD', 'context_id'],
      [td.broker.allocIoas({ contextId: 'ctx-000000000000000000000000' }, meta), grpc.status.NOT_FOUND, 'CONTEXT_NOT_FOUND', 'context_id'],
      [td.broker.attachDevice({ contextId, device: ioas, target: ioas }, meta), grpc.status.INVALID_ARGUMENT, 'WRONG_OBJECT_TYPE', 'device'],
      [td.broker.attachDevice({ contextId, device: 0n, target: ioas }, meta), grpc.status.INVALID_ARGUMENT, 'MISSING_FIELD', 'device'],
      [td.broker.destroyObject({ contextId, handle: 999n }, meta), grpc.status.NOT_FOUND, 'OBJECT_NOT_FOUND', 'handle'],
      [td.broker.bindDevice({ contextId, deviceId: 'nonsense' }, meta), grpc.status.INVALID_ARGUMENT, 'INVALID_FIELD', 'device_id'],
      [td.broker.bindDevice({ contextId, deviceId: '0000:ff:1f.7' }, meta), grpc.status.NOT_FOUND, 'DEVICE_NOT_FOUND', 'device_id'],
      [td.broker.openContext({ leaseSeconds: 10_000_000 }, meta), grpc.status.INVALID_ARGUMENT, 'INVALID_FIELD', 'lease_seconds'],
    ];
    for (const [call, code, reason, field] of cases) {
      const err = await rpcError(call);
      expect({ code: err.code, reason: errorInfoOf(err)?.reason, field: errorInfoOf(err)?.metadata['field'] }).toEqual({ code, reason, field });
      expect(err.details.length).toBeGreaterThan(10);
    }
    const { devices } = await td.admin.listDevices({});
    const unassigned = devices.find((d) => d.cdev !== '' && d.tenant === '')!;
    const notMine = await rpcError(td.broker.bindDevice({ contextId, deviceId: unassigned.id }, meta));
    expect(notMine.code).toBe(grpc.status.NOT_FOUND);
    expect(errorInfoOf(notMine)?.reason).toBe('DEVICE_NOT_ASSIGNED');
  });

  it('refuses DestroyObject on a device and points to UnbindDevice', async () => {
    const [deviceId] = await assignDevices(td, 1);
    const { contextId } = await td.broker.openContext({}, meta);
    const device = (await td.broker.bindDevice({ contextId, deviceId: deviceId! }, meta)).device!.handle;
    const err = await rpcError(td.broker.destroyObject({ contextId, handle: device }, meta));
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(errorInfoOf(err)?.reason).toBe('NOT_DESTROYABLE');
    expect(err.details).toMatch(/UnbindDevice/);
  });

  it('keeps the object state as LIVE for live objects in ListObjects', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    await td.broker.allocIoas({ contextId }, meta);
    const { objects } = await td.broker.listObjects({ contextId }, meta);
    expect(objects.map((o) => o.state)).toEqual([ObjectState.LIVE]);
  });
});
