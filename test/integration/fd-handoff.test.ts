/**
 * LeaseDeviceFd and the fd socket, end to end: a real grpc-js server on a
 * temp socket, the fd socket beside it, and clients that receive the bound
 * device's fd by SCM_RIGHTS (the sim backs each device file with a memfd).
 * Refusals (replayed, expired, foreign uid or pid, unknown, malformed) send
 * nothing but one error line; every attempt is audited and counted.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, fstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeviceObject } from '../../src/broker/objects.js';
import { handoffExchange, HandoffRefused, redeemDeviceFd } from '../../src/rpc/handoff-client.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { buildForChildProcess } from '../helpers/built-daemon.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, meta } from '../helpers/lifecycle.js';

const root = process.getuid?.() === 0;
const SOCKET_GID = 4243;
const OTHER = { uid: 41011, gid: SOCKET_GID };
const DEVICE_MEMFD = /^\/memfd:vfio-sim:(\S+) \(deleted\)$/;

interface AuditLine {
  operation: string;
  result: string;
  code: string;
  reason?: string;
  peer: string;
  tenant: string;
  contextId?: string;
  objects: Record<string, string>;
}

function auditLines(td: TestDaemon, operation: string): AuditLine[] {
  return readFileSync(td.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as AuditLine).filter((l) => l.operation === operation);
}

async function handoffCount(td: TestDaemon, result: string): Promise<number> {
  const metric = await td.daemon.metrics.fdHandoffs.get();
  return metric.values.find((v) => v.labels['result'] === result)?.value ?? 0;
}

/** A bound device in a fresh context: its handle and the daemon's DeviceFile. */
async function boundDevice(td: TestDaemon, deviceId: string) {
  const { contextId } = await td.broker.openContext({ label: 'vm' }, meta);
  const device = (await td.broker.bindDevice({ contextId, deviceId }, meta)).device!.handle;
  const file = (td.daemon.broker.inspectContext(contextId)!.registry.get(Number(device) as never) as DeviceObject).file;
  return { contextId, device, file };
}

describe('fd handoff over the fd socket', () => {
  let dir: string;
  let td: TestDaemon;
  let deviceIds: string[];
  beforeAll(async () => {
    // Other uids must reach the sockets; their mode and group decide who may connect.
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-fd-'));
    chmodSync(dir, 0o755);
    td = await startTestDaemon('linux-6.17', (c) => {
      c.socket.path = path.join(dir, 'broker.sock');
      c.socket.gid = SOCKET_GID;
      c.identity.rules = [{ uid: OTHER.uid, tenant: 'other' }];
    });
    deviceIds = await assignDevices(td, 3);
  }, 60_000);
  afterAll(async () => {
    await td?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('hands the caller the bound device fd, once', async () => {
    const { contextId, device, file } = await boundDevice(td, deviceIds[0]!);
    const lease = await td.broker.leaseDeviceFd({ contextId, device }, meta);
    expect(lease.token).toMatch(/^[0-9a-f]{64}$/);
    expect(lease.socketPath).toBe(path.join(dir, 'broker-fd.sock'));
    const ttl = Number(lease.expiresAt!.seconds) * 1000 - Date.now();
    expect(ttl).toBeGreaterThan(5_000);
    expect(ttl).toBeLessThanOrEqual(10_000);

    const fd = await redeemDeviceFd(lease.socketPath, lease.token);
    try {
      // The same open file as the daemon's own copy of the device fd.
      expect(readlinkSync(`/proc/self/fd/${fd}`)).toMatch(DEVICE_MEMFD);
      expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe(`/memfd:vfio-sim:${deviceIds[0]} (deleted)`);
      const ours = fstatSync(fd);
      const daemons = fstatSync(td.daemon.kernel.osFd!(file)!);
      expect([ours.dev, ours.ino]).toEqual([daemons.dev, daemons.ino]);
    } finally {
      closeSync(fd);
    }
    // Closing the VMM's copy changes nothing: the broker keeps the device bound.
    expect(td.daemon.sim!.boundDevId(file)).toBeDefined();
    expect((await td.broker.listObjects({ contextId }, meta)).objects.map((o) => o.handle)).toContain(device);

    const replay = await handoffExchange(lease.socketPath, lease.token);
    expect(replay).toEqual({ text: expect.stringMatching(/^ERR replayed: /), fds: [] });
    await expect(redeemDeviceFd(lease.socketPath, lease.token)).rejects.toMatchObject({ name: 'HandoffRefused', result: 'replayed' });

    const lines = auditLines(td, 'Handoff/RedeemDeviceFd').filter((l) => l.contextId === contextId);
    expect(lines[0]).toMatchObject({ result: 'ok', code: 'OK', tenant: 'tenant-a', objects: { device: String(device), result: 'sent' } });
    expect(lines[0]!.peer).toBe(`uid=${process.getuid!()} gid=${process.getgid!()} pid=${process.pid}`);
    expect(lines.slice(1)).toEqual([
      expect.objectContaining({ result: 'error', code: 'FAILED_PRECONDITION', reason: 'HANDOFF_REPLAYED' }),
      expect.objectContaining({ result: 'error', reason: 'HANDOFF_REPLAYED' }),
    ]);
    // The lease itself is audited like any mutation, without its token.
    const leased = auditLines(td, 'BrokerService/LeaseDeviceFd').find((l) => l.contextId === contextId)!;
    expect(leased.objects).toMatchObject({ device: String(device), 'out.socket_path': lease.socketPath });
    expect(JSON.stringify(leased)).not.toContain(lease.token);
  });

  it('refuses unknown tokens and malformed lines, sending nothing', async () => {
    const unknown = await handoffExchange(path.join(dir, 'broker-fd.sock'), 'ab'.repeat(32));
    expect(unknown).toEqual({ text: expect.stringMatching(/^ERR unknown: /), fds: [] });
    const junk = await handoffExchange(path.join(dir, 'broker-fd.sock'), 'GIVE ME THE FD');
    expect(junk).toEqual({ text: expect.stringMatching(/^ERR malformed: /), fds: [] });
    expect(await handoffCount(td, 'unknown')).toBeGreaterThanOrEqual(1);
    expect(await handoffCount(td, 'malformed')).toBeGreaterThanOrEqual(1);
  });

  it('refuses a device unbound after the lease (gone), and names a dead handle at lease time', async () => {
    const { contextId, device } = await boundDevice(td, deviceIds[1]!);
    const lease = await td.broker.leaseDeviceFd({ contextId, device }, meta);
    await td.broker.unbindDevice({ contextId, device }, meta);
    const r = await handoffExchange(lease.socketPath, lease.token);
    expect(r).toEqual({ text: expect.stringMatching(/^ERR gone: DEVICE \d+ was unbound/), fds: [] });
    const err = (await td.broker.leaseDeviceFd({ contextId, device }, meta).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(errorInfoOf(err)?.reason).toBe('OBJECT_NOT_FOUND');
    await td.broker.closeContext({ contextId }, meta);
  });

  it('refuses another process, even of the same uid, and leaves the token to its owner', async () => {
    const mainJs = buildForChildProcess();
    const client = path.join(path.dirname(mainJs), '..', 'rpc', 'handoff-client.js');
    const runChild = (token: string, as?: { uid: number; gid: number }) =>
      new Promise<{ text?: string; fds?: number; error?: string }>((resolve, reject) => {
        const script = `import(${JSON.stringify(client)}).then((m) => m.handoffExchange(process.argv[1], process.argv[2])).then(
          (r) => console.log(JSON.stringify({ text: r.text, fds: r.fds.length })), (e) => console.log(JSON.stringify({ error: String(e) })))`;
        const child = spawn(process.execPath, ['--input-type=module', '-e', script, path.join(dir, 'broker-fd.sock'), token], { stdio: ['ignore', 'pipe', 'inherit'], ...(as ?? {}) });
        let out = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
        child.once('error', reject);
        child.once('exit', () => resolve(JSON.parse(out.trim() || '{}')));
      });
    const { contextId, device } = await boundDevice(td, deviceIds[2]!);
    const lease = await td.broker.leaseDeviceFd({ contextId, device }, meta);
    const before = await handoffCount(td, 'foreign');

    // Same uid, another pid.
    expect(await runChild(lease.token)).toEqual({ text: expect.stringMatching(/^ERR foreign: /), fds: 0 });
    if (root) {
      // Another uid (allowed to connect through the socket's group).
      expect(await runChild(lease.token, OTHER)).toEqual({ text: expect.stringMatching(/^ERR foreign: /), fds: 0 });
    }
    const expected = root ? 2 : 1;
    expect(await handoffCount(td, 'foreign')).toBe(before + expected);
    const foreign = auditLines(td, 'Handoff/RedeemDeviceFd').filter((l) => l.contextId === contextId);
    expect(foreign).toHaveLength(expected);
    expect(foreign.every((l) => l.result === 'error' && l.code === 'PERMISSION_DENIED' && l.reason === 'HANDOFF_FOREIGN')).toBe(true);
    if (root) expect(foreign[1]!.peer).toMatch(new RegExp(`^uid=${OTHER.uid} gid=${SOCKET_GID} pid=\\d+$`));

    // The owner still gets its fd: a foreign attempt does not burn the token.
    const fd = await redeemDeviceFd(lease.socketPath, lease.token);
    expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe(`/memfd:vfio-sim:${deviceIds[2]} (deleted)`);
    closeSync(fd);
  }, 120_000);

  it('counts every result on /metrics', async () => {
    const text = await (await fetch(`http://${td.daemon.metricsAddress}/metrics`)).text();
    expect(text).toMatch(/^vfio_broker_fd_handoffs_total\{result="sent"\} [1-9]/m);
    expect(text).toMatch(/^vfio_broker_fd_handoffs_total\{result="replayed"\} [1-9]/m);
    expect(text).toMatch(/^vfio_broker_fd_handoffs_total\{result="foreign"\} [1-9]/m);
    expect(text).toMatch(/^vfio_broker_fd_handoffs_total\{result="expired"\} 0/m);
  });
});

describe('fd handoff lease expiry', () => {
  let td: TestDaemon;
  afterAll(async () => {
    await td?.stop();
  });

  it('refuses an expired token and sends nothing', async () => {
    td = await startTestDaemon('linux-6.17', (c) => {
      c.handoff.leaseSeconds = 0.2;
    });
    const [deviceId] = await assignDevices(td, 1);
    const { contextId, device } = await boundDevice(td, deviceId!);
    const lease = await td.broker.leaseDeviceFd({ contextId, device }, meta);
    await new Promise((r) => setTimeout(r, 300));
    const r = await handoffExchange(lease.socketPath, lease.token);
    expect(r).toEqual({ text: expect.stringMatching(/^ERR expired: /), fds: [] });
    expect(await handoffCount(td, 'expired')).toBe(1);
    expect(await handoffCount(td, 'sent')).toBe(0);
    expect(auditLines(td, 'Handoff/RedeemDeviceFd')).toEqual([
      expect.objectContaining({ result: 'error', code: 'FAILED_PRECONDITION', reason: 'HANDOFF_EXPIRED', contextId, objects: { device: String(device), result: 'expired' } }),
    ]);
    await expect(redeemDeviceFd(lease.socketPath, lease.token)).rejects.toBeInstanceOf(HandoffRefused);
  });
});
