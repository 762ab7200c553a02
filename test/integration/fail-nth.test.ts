/**
 * Like the kernel's iommufd_fail_nth: run a whole VM lifecycle with the Nth
 * kernel call failing, for every N until a run sees no fault. After the failed
 * request the registry must equal the kernel; after CloseContext nothing leaks.
 */
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HwptKind, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, meta, SELFTEST_HWPT_DATA, SELFTEST_HWPT_DATA_TYPE } from '../helpers/lifecycle.js';

/** The lifecycle; stops at the first failed request and returns its error. */
async function lifecycle(td: TestDaemon, contextId: string, deviceId: string): Promise<grpc.ServiceError | undefined> {
  const b = td.broker;
  try {
    const device = (await b.bindDevice({ contextId, deviceId }, meta)).device!.handle;
    const ioas = (await b.allocIoas({ contextId }, meta)).ioas!.handle;
    await b.attachDevice({ contextId, device, target: ioas }, meta);
    const parent = (await b.allocHwpt({ contextId, device, kind: HwptKind.NEST_PARENT, parent: ioas }, meta)).hwpt!.handle;
    await b.attachDevice({ contextId, device, target: parent }, meta);
    const viommu = (await b.allocViommu({ contextId, device, nestParent: parent, type: ViommuType.SELFTEST }, meta)).viommu!.handle;
    await b.allocVdevice({ contextId, viommu, device, virtId: 0x88n }, meta);
    const nested = (
      await b.allocHwpt({ contextId, device, kind: HwptKind.NESTED, parent: viommu, dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA }, meta)
    ).hwpt!.handle;
    await b.attachDevice({ contextId, device, target: nested }, meta);
    await b.getHwInfo({ contextId, device }, meta);
    await b.detachDevice({ contextId, device }, meta);
    await b.attachDevice({ contextId, device, target: nested }, meta);
    await b.unbindDevice({ contextId, device }, meta);
    await b.destroyObject({ contextId, handle: viommu }, meta);
    await b.destroyObject({ contextId, handle: parent }, meta);
    await b.destroyObject({ contextId, handle: ioas }, meta);
    return undefined;
  } catch (err) {
    return err as grpc.ServiceError;
  }
}

describe('kernel-call failure at every step of a lifecycle', () => {
  let td: TestDaemon;
  let deviceId: string;
  beforeAll(async () => {
    td = await startTestDaemon('linux-6.17');
    [deviceId] = (await assignDevices(td, 1)) as [string];
  });
  afterAll(async () => {
    await td.stop();
  });

  it('leaves registry equal to the kernel after each failure, and nothing behind after close', async () => {
    const sim = td.daemon.sim!;
    let failedRequests = 0;
    let n = 1;
    for (; n < 200; n++) {
      const { contextId } = await td.broker.openContext({ label: `fail-${n}` }, meta);
      const before = sim.faults.callCount;
      sim.faults.failNth(n, 'ENOMEM');
      const err = await lifecycle(td, contextId, deviceId);
      const callsMade = sim.faults.callCount - before;
      sim.faults.clear();
      if (err) {
        failedRequests++;
        const info = errorInfoOf(err);
        expect(info, `call ${n}: ${err.message}`).toBeDefined();
        expect(info!.metadata['errno'], `call ${n}: ${err.message}`).toBe('ENOMEM');
      }
      const m = registryMatchesKernel(td, contextId);
      expect(m.registry, `after fault at call ${n}`).toEqual(m.kernel);
      await td.broker.closeContext({ contextId }, meta);
      expect(sim.liveObjectCount(), `leak after fault at call ${n}`).toBe(0);
      expect(sim.openFileCount(), `open files after fault at call ${n}`).toBe(0);
      if (callsMade < n) break; // the fault never fired: every step has been covered
    }
    expect(n).toBeGreaterThan(15);
    expect(failedRequests).toBeGreaterThan(10);
    expect(td.daemon.broker.contextCount).toBe(0);
    const { devices } = await td.admin.listDevices({});
    expect(devices.find((d) => d.id === deviceId)?.contextId).toBe('');
  });
});
