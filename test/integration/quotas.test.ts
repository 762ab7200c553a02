import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { errorInfoOf } from '../../src/rpc/status.js';
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
});
