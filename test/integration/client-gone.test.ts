import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { TENANT_HEADER } from '../../src/rpc/identity.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, meta, TENANT } from '../helpers/lifecycle.js';

async function until(check: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A separate VMM process that opens WatchContext and then is SIGKILLed: the
 * kernel closes its socket, which is what a crashed VMM looks like.
 */
const VMM_SCRIPT = `
const grpc = require('@grpc/grpc-js');
const [socket, contextId, header, tenant] = process.argv.slice(1);
const id = Buffer.from(contextId);
const request = Buffer.concat([Buffer.from([0x0a, id.length]), id]); // WatchContextRequest{context_id}
const client = new grpc.Client('unix:' + socket, grpc.credentials.createInsecure());
const md = new grpc.Metadata(); md.set(header, tenant);
const call = client.makeServerStreamRequest('/vfio_broker.v1.BrokerService/WatchContext', (b) => b, (b) => b, request, md, {});
call.on('data', () => process.stdout.write('watching\\n'));
call.on('error', () => {});
`;

describe('a client that disconnects without CloseContext', () => {
  let td: TestDaemon;
  afterEach(async () => {
    await td.stop();
  });

  it('has its context torn down after the grace period when the VMM process is killed', async () => {
    td = await startTestDaemon('linux-6.17');
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    const vmm = spawn(process.execPath, ['-e', VMM_SCRIPT, td.socketPath, vm.contextId, TENANT_HEADER, TENANT], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve) => vmm.stdout.once('data', resolve));
    expect(td.daemon.broker.listContexts()[0]?.watchers).toBe(1);

    vmm.kill('SIGKILL');

    await until(() => td.daemon.broker.contextCount === 0);
    expect(td.daemon.sim!.liveObjectCount()).toBe(0);
    expect(td.daemon.sim!.openFileCount()).toBe(0);
    const { devices } = await td.admin.listDevices({});
    expect(devices.find((d) => d.id === deviceId)?.state).toBe(DeviceState.ASSIGNED);
  });

  it('keeps the context when the client reconnects within the grace period', async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      c.teardown.clientGoneGraceSeconds = 1;
    });
    const { contextId } = await td.broker.openContext({}, meta);
    const first = td.broker.watchContext({ contextId }, meta);
    first.on('error', () => undefined);
    await new Promise((r) => first.once('data', r));
    first.cancel();
    await until(() => td.daemon.broker.listContexts()[0]?.watchers === 0);
    const second = td.broker.watchContext({ contextId }, meta);
    second.on('error', () => undefined);
    await new Promise((r) => second.once('data', r));
    await new Promise((r) => setTimeout(r, 1300));
    expect(td.daemon.broker.contextCount).toBe(1);
    second.cancel();
  });

  it('tears down a context whose lease ran out with no watcher', async () => {
    td = await startTestDaemon('linux-6.17');
    const { contextId } = await td.broker.openContext({ leaseSeconds: 1 }, meta);
    await td.broker.allocIoas({ contextId }, meta);
    await until(() => td.daemon.broker.contextCount === 0, 4000);
    expect(td.daemon.sim!.liveObjectCount()).toBe(0);
  });
});
