import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { TeardownAction } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { asTenant } from '../../src/broker/ids.js';
import { asTenantMetadata, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

async function refused(p: Promise<unknown>): Promise<grpc.ServiceError> {
  return p.then(
    () => {
      throw new Error('expected RESOURCE_EXHAUSTED');
    },
    (e: grpc.ServiceError) => e,
  );
}

describe('quotas over gRPC', () => {
  let td: TestDaemon;
  afterEach(async () => {
    await td.stop();
  });

  it('refuses contexts and objects past a tenant quota with RESOURCE_EXHAUSTED naming the quota', async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      c.quotas.tenants = { small: { contexts: 1, objects: 2 } };
    });
    const small = { metadata: asTenantMetadata('small') };
    const other = { metadata: asTenantMetadata('other') };
    const { contextId } = await td.broker.openContext({}, small);
    const ctxErr = await refused(td.broker.openContext({}, small));
    expect(ctxErr.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(errorInfoOf(ctxErr)).toMatchObject({ reason: 'QUOTA_EXCEEDED', metadata: { quota: 'contexts', limit: '1' } });
    await td.broker.openContext({}, other); // other tenants are unaffected

    await td.broker.allocIoas({ contextId }, small);
    await td.broker.allocIoas({ contextId }, small);
    const objErr = await refused(td.broker.allocIoas({ contextId }, small));
    expect(errorInfoOf(objErr)).toMatchObject({ reason: 'QUOTA_EXCEEDED', metadata: { quota: 'objects', limit: '2' } });
    // Nothing was created by the refused call.
    expect((await td.broker.listObjects({ contextId }, small)).objects).toHaveLength(2);
    expect(td.daemon.sim!.objects(td.daemon.broker.inspectContext(contextId)!.iommufd)).toHaveLength(2);
  });

  it('counts a tenant\'s objects across its contexts as they are created, destroyed and closed with', async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      c.quotas.tenants = { small: { contexts: 2, objects: 3 } };
    });
    const small = { metadata: asTenantMetadata('small') };
    const first = (await td.broker.openContext({}, small)).contextId;
    const second = (await td.broker.openContext({}, small)).contextId;
    const a = (await td.broker.allocIoas({ contextId: first }, small)).ioas!.handle;
    await td.broker.allocIoas({ contextId: first }, small);
    await td.broker.allocIoas({ contextId: second }, small);
    expect(td.daemon.broker.liveObjectsOf(asTenant('small'))).toBe(3);
    await refused(td.broker.allocIoas({ contextId: second }, small));

    // A destroyed object gives its place back.
    await td.broker.destroyObject({ contextId: first, handle: a }, small);
    await td.broker.allocIoas({ contextId: second }, small);
    expect(td.daemon.broker.liveObjectsOf(asTenant('small'))).toBe(3);

    // A close whose destroy fails still takes every object of the context off the count: the iommufd's close freed them.
    td.daemon.sim!.faults.failRandomly(1, ['EBUSY'], 1, { ops: ['destroy'] });
    const { teardown } = await td.broker.closeContext({ contextId: first }, small);
    td.daemon.sim!.faults.clear();
    expect(teardown!.steps.map((s) => s.action)).toEqual([TeardownAction.CLOSE_IOMMUFD]);
    expect(td.daemon.broker.liveObjectsOf(asTenant('small'))).toBe(2);
    const third = (await td.broker.openContext({}, small)).contextId;
    await td.broker.allocIoas({ contextId: third }, small);
    const err = await refused(td.broker.allocIoas({ contextId: third }, small));
    expect(errorInfoOf(err)).toMatchObject({ reason: 'QUOTA_EXCEEDED', metadata: { quota: 'objects', limit: '3' } });
  });

  it('lets a tenant over its request rate still close its context, and frees what it held', async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      // A bucket that, once spent, does not refill within the test. Admins are exempt from the
      // rate, and this process's uid is a built-in admin unless a rule maps it to a tenant.
      c.quotas.tenants = { small: { requestsPerSecond: 0.001, burst: 2 } };
      c.identity.rules = [{ uid: process.getuid!(), tenant: 'small' }];
    });
    const small = { metadata: asTenantMetadata('small') };
    const { contextId } = await td.broker.openContext({}, small);
    await td.broker.allocIoas({ contextId }, small);
    const err = await refused(td.broker.allocIoas({ contextId }, small));
    expect(errorInfoOf(err)).toMatchObject({ reason: 'QUOTA_EXCEEDED', metadata: { quota: 'request_rate' } });
    const iommufd = td.daemon.broker.inspectContext(contextId)!.iommufd;
    expect(td.daemon.sim!.objects(iommufd)).toHaveLength(1);

    const { teardown } = await td.broker.closeContext({ contextId }, small);
    expect(teardown!.steps.length).toBeGreaterThan(0);
    expect(td.daemon.broker.contextCount).toBe(0);
    expect(td.daemon.broker.liveObjectsOf(asTenant('small'))).toBe(0);
    expect(td.daemon.sim!.liveContextCount()).toBe(0);
  });
});
