/** Health and reflection as an outside tool sees them: buf curl with no .proto files at hand. */
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

const run = promisify(execFile);
const buf = path.resolve(import.meta.dirname, '../../node_modules/.bin/buf');

describe('reflection and health over the Unix socket', () => {
  let td: TestDaemon;
  let curl: (...args: string[]) => Promise<string>;
  beforeAll(async () => {
    td = await startTestDaemon();
    curl = async (...args) =>
      (await run(buf, ['curl', '--protocol', 'grpc', '--http2-prior-knowledge', '--unix-socket', td.socketPath, ...args], { timeout: 15_000 })).stdout;
  });
  afterAll(async () => {
    await td.stop();
  });

  it('lists every service through reflection', async () => {
    const services = (await curl('--list-services', 'http://localhost')).trim().split('\n').sort();
    expect(services).toEqual(
      ['grpc.health.v1.Health', 'vfio_broker.v1.AdminService', 'vfio_broker.v1.BrokerService'].sort(),
    );
  });

  it('answers a health check per service', async () => {
    for (const service of ['', 'vfio_broker.v1.BrokerService', 'vfio_broker.v1.AdminService']) {
      const out = await curl('-d', JSON.stringify({ service }), 'http://localhost/grpc.health.v1.Health/Check');
      expect(JSON.parse(out)).toEqual({ status: 'SERVING' });
    }
  });

  it('serves a broker call described only by reflection', async () => {
    const out = JSON.parse(await curl('-d', '{}', 'http://localhost/vfio_broker.v1.AdminService/GetStatus'));
    expect(out.backend).toBe('sim');
    expect(out.kernelProfile).toBe('linux-6.17');
  });

  it('creates the socket with the configured mode', () => {
    expect(statSync(td.socketPath).mode & 0o777).toBe(0o660);
  });
});
