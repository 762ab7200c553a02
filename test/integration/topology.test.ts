/** ApplyTopology: one request for a VM's whole graph, all steps or none. */
import * as grpc from '@grpc/grpc-js';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HwptKind, ObjectType, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import type { TopologyStepSchema } from '../../src/gen/vfio_broker/v1/topology_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, meta, SELFTEST_HWPT_DATA, SELFTEST_HWPT_DATA_TYPE } from '../helpers/lifecycle.js';

type Step = MessageInitShape<typeof TopologyStepSchema>;

/** Two devices, one IOAS, nest parent, vIOMMU, a vDEVICE and nested HWPT each, attached. */
export function vmTopology(devices: string[], virtIds: bigint[] = [0x10n, 0x11n]): Step[] {
  const steps: Step[] = [{ name: 'ioas', action: { case: 'allocIoas', value: {} } }];
  devices.forEach((id, i) => {
    steps.push({ name: `dev${i}`, action: { case: 'bind', value: { deviceId: id } } });
    steps.push({ name: `auto${i}`, action: { case: 'attach', value: { device: `dev${i}`, target: 'ioas' } } });
  });
  steps.push({ name: 'parent', action: { case: 'allocHwpt', value: { device: 'dev0', kind: HwptKind.NEST_PARENT, parent: 'ioas' } } });
  steps.push({ name: 'viommu', action: { case: 'allocViommu', value: { device: 'dev0', nestParent: 'parent', type: ViommuType.SELFTEST } } });
  devices.forEach((_, i) => {
    steps.push({ name: `vdev${i}`, action: { case: 'allocVdevice', value: { viommu: 'viommu', device: `dev${i}`, virtId: virtIds[i]! } } });
    steps.push({
      name: `nested${i}`,
      action: { case: 'allocHwpt', value: { device: `dev${i}`, kind: HwptKind.NESTED, parent: 'viommu', dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA } },
    });
    steps.push({ name: `on${i}`, action: { case: 'attach', value: { device: `dev${i}`, target: `nested${i}` } } });
  });
  return steps;
}

describe('ApplyTopology', () => {
  let td: TestDaemon;
  let devices: string[];
  beforeEach(async () => {
    td = await startTestDaemon();
    devices = await assignDevices(td, 2);
  });
  afterEach(async () => {
    await td.stop();
  });

  it('creates the whole graph in one call and lists every handle', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    const { results } = await td.broker.applyTopology({ contextId, steps: vmTopology(devices) }, meta);
    expect(results.map((r) => r.name)).toEqual(vmTopology(devices).map((s) => s.name));
    const byName = new Map(results.map((r) => [r.name, r.object!]));
    expect(byName.get('dev1')?.type).toBe(ObjectType.DEVICE);
    expect(byName.get('vdev1')?.virtId).toBe(0x11n);
    const { objects } = await td.broker.listObjects({ contextId }, meta);
    const dev0 = objects.find((o) => o.handle === byName.get('dev0')!.handle)!;
    expect(dev0.attachedHwpt).toBe(byName.get('nested0')!.handle);
    const m = registryMatchesKernel(td, contextId);
    expect(m.registry).toEqual(m.kernel);
    // Handles named by "handle:N" reach objects made earlier.
    const more = await td.broker.applyTopology(
      { contextId, steps: [{ name: 'ioas2', action: { case: 'allocIoas', value: {} } }, { name: 'back', action: { case: 'attach', value: { device: `handle:${dev0.handle}`, target: 'ioas2' } } }] },
      meta,
    );
    expect(more.results[1]!.object!.automatic).toBe(true);
  });

  it('undoes every completed step when one fails, and names the failing step', async () => {
    const { contextId } = await td.broker.openContext({}, meta);
    await td.broker.allocIoas({ contextId }, meta);
    const before = registryMatchesKernel(td, contextId);
    // The second vDEVICE reuses virt_id 0x10: EEXIST at step vdev1.
    const err = (await td.broker.applyTopology({ contextId, steps: vmTopology(devices, [0x10n, 0x10n]) }, meta).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(err.details).toMatch(/^steps\[\d+\] \(vdev1\): .*every earlier step was undone/);
    expect(errorInfoOf(err)?.metadata['errno']).toBe('EEXIST');
    expect(registryMatchesKernel(td, contextId)).toEqual(before);
    const { devices: inventory } = await td.admin.listDevices({});
    expect(inventory.filter((d) => devices.includes(d.id)).map((d) => d.contextId)).toEqual(['', '']);
    // The same topology applies cleanly afterwards.
    await td.broker.applyTopology({ contextId, steps: vmTopology(devices) }, meta);
  });

  it('is all-or-nothing with a kernel failure injected at every call in turn', async () => {
    const sim = td.daemon.sim!;
    let n = 1;
    let failures = 0;
    for (; n < 200; n++) {
      const { contextId } = await td.broker.openContext({}, meta);
      const kernelBefore = registryMatchesKernel(td, contextId).kernel;
      const calls = sim.faults.callCount;
      sim.faults.failNth(n, 'ENOMEM');
      const err = await td.broker.applyTopology({ contextId, steps: vmTopology(devices) }, meta).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      const made = sim.faults.callCount - calls;
      sim.faults.clear();
      const m = registryMatchesKernel(td, contextId);
      expect(m.registry, `fault at call ${n}`).toEqual(m.kernel);
      if (err) {
        failures++;
        expect(errorInfoOf(err)?.metadata['errno'], err.details).toBe('ENOMEM');
        expect(m.kernel, `fault at call ${n} left objects`).toEqual(kernelBefore);
      }
      await td.broker.closeContext({ contextId }, meta);
      expect(sim.liveObjectCount()).toBe(0);
      if (made < n) break;
    }
    expect(failures).toBeGreaterThanOrEqual(15);
  });
});
