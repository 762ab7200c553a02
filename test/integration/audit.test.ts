/**
 * The audit log is written before a mutation is acknowledged: kill the daemon
 * with SIGKILL right after N acknowledged mutations and all N lines are there.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { connect, createClient } from '../../src/rpc/client.js';
import { buildForChildProcess, spawnCli } from '../helpers/built-daemon.js';
import { meta, TENANT } from '../helpers/lifecycle.js';

describe('audit log durability', () => {
  let mainJs: string;
  let dir: string;
  beforeAll(() => {
    mainJs = buildForChildProcess();
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-audit-'));
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('has one line per acknowledged mutation after SIGKILL', async () => {
    const socket = path.join(dir, 'broker.sock');
    const auditLog = path.join(dir, 'audit.log');
    const daemon = spawnCli(mainJs, ['serve', '--socket', socket, '--audit-log', auditLog, '--metrics-address', '', '--log-level', 'warn']);
    const channel = connect(`unix:${socket}`);
    const broker = createClient(BrokerService, channel);
    const admin = createClient(AdminService, channel);
    try {
      for (let i = 0; ; i++) {
        const up = await admin.getStatus({}).then(() => true, () => false);
        if (up) break;
        if (i > 200) throw new Error('daemon did not start');
        await new Promise((r) => setTimeout(r, 50));
      }
      // N acknowledged mutations, some failing: failures are audited too.
      const acknowledged: string[] = [];
      await admin.assignDevice({ deviceId: '0000:01:00.0', tenant: TENANT });
      acknowledged.push('AdminService/AssignDevice');
      const { contextId } = await broker.openContext({ label: 'audited' }, meta);
      acknowledged.push('BrokerService/OpenContext');
      const device = (await broker.bindDevice({ contextId, deviceId: '0000:01:00.0' }, meta)).device!.handle;
      acknowledged.push('BrokerService/BindDevice');
      for (let i = 0; i < 20; i++) {
        await broker.allocIoas({ contextId }, meta);
        acknowledged.push('BrokerService/AllocIoas');
      }
      await broker.destroyObject({ contextId, handle: device }, meta).catch((e: grpc.ServiceError) => expect(e.code).toBe(grpc.status.FAILED_PRECONDITION));
      acknowledged.push('BrokerService/DestroyObject');
      await broker.listObjects({ contextId }, meta); // a read: not audited

      daemon.kill('SIGKILL');
      await new Promise((r) => daemon.once('exit', r));

      const lines = readFileSync(auditLog, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.map((l) => l['operation'])).toEqual(acknowledged);
      expect(lines.every((l) => typeof l['time'] === 'string' && l['tenant'] !== undefined && typeof l['peer'] === 'string')).toBe(true);
      expect(lines[2]).toMatchObject({ tenant: TENANT, contextId, result: 'ok', code: 'OK', objects: { device_id: '0000:01:00.0', 'out.device': '1' } });
      expect(lines.at(-1)).toMatchObject({ result: 'error', code: 'FAILED_PRECONDITION', reason: 'NOT_DESTROYABLE', objects: { handle: '1' } });
    } finally {
      channel.close();
      daemon.kill('SIGKILL');
    }
  });
});
