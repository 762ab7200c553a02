/**
 * The systemd wire protocol of restart without teardown, with the daemon as a
 * child process and this test as its service manager (test/helpers/fake-systemd.ts):
 * FDSTORE=1 with SCM_RIGHTS and FDNAME= per file, FDSTOREREMOVE=1 on close,
 * and a restart after SIGKILL that passes the stored fds back through
 * LISTEN_FDS/LISTEN_FDNAMES with LISTEN_PID set to the new process.
 *
 * The sim kernel lives in the daemon's process, so the restarted daemon has a
 * fresh sim that knows none of these fds: every one of them must come back,
 * under its name, and be quarantined (not dropped, not closed) until an admin
 * releases it. The real-kernel lane (test/kernel/restart.guest.test.ts) covers
 * a restart that reconciles.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { connect, createClient } from '../../src/rpc/client.js';
import { buildForChildProcess } from '../helpers/built-daemon.js';
import { FakeSystemd } from '../helpers/fake-systemd.js';
import { meta, TENANT } from '../helpers/lifecycle.js';

const DEVICES = ['0000:01:00.0', '0000:02:00.0'];

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));
}

describe('restart through systemd’s fd store (child process)', () => {
  let mainJs: string;
  let dir: string;
  let systemd: FakeSystemd;
  let configFile: string;
  const children: ChildProcess[] = [];
  const channels: grpc.Client[] = [];

  beforeAll(() => {
    mainJs = buildForChildProcess();
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-sd-'));
    systemd = new FakeSystemd(path.join(dir, 'notify.sock'));
    configFile = path.join(dir, 'config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        backend: 'sim',
        socket: { path: path.join(dir, 'broker.sock') },
        metrics: { address: '' },
        audit: { path: '' },
        log: { level: 'warn' },
        assignments: Object.fromEntries(DEVICES.map((d) => [d, TENANT])),
        restart: { journalPath: path.join(dir, 'state', 'journal'), sync: 'fdatasync' },
      }),
    );
  }, 120_000);
  afterAll(async () => {
    for (const ch of channels) ch.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    systemd?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts `vfio-broker serve` as the service's main process; LISTEN_PID is set by the shell to its own pid, which exec keeps. */
  async function start(listen?: { fds: number[]; names: string[] }): Promise<ChildProcess> {
    const readyBefore = systemd.messages.filter((m) => m.fields.get('READY') === '1').length;
    const script = `import(${JSON.stringify(mainJs)}).then((m) => m.main())`;
    const env: NodeJS.ProcessEnv = { ...process.env, NOTIFY_SOCKET: systemd.socketPath };
    if (listen) Object.assign(env, { LISTEN_FDS: String(listen.fds.length), LISTEN_FDNAMES: listen.names.join(':') });
    const child = spawn('sh', ['-c', 'LISTEN_PID=$$ exec "$0" --input-type=module -e "$1" -- vfio-broker serve --config "$2"', process.execPath, script, configFile], {
      env,
      stdio: ['ignore', 'pipe', 'pipe', ...(listen?.fds ?? [])],
    });
    children.push(child);
    let err = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.stdout?.resume();
    let n = 0;
    await Promise.race([
      systemd.waitFor((m) => m.fields.get('READY') === '1' && ++n > readyBefore, 30_000),
      exited(child).then((code) => Promise.reject(new Error(`daemon exited (${code}): ${err}`))),
    ]);
    return child;
  }

  function clients() {
    const ch = connect(`unix:${path.join(dir, 'broker.sock')}`);
    channels.push(ch);
    return { broker: createClient(BrokerService, ch), admin: createClient(AdminService, ch) };
  }

  it('stores every file under its name, removes it on close, and gets each back by name after SIGKILL', async () => {
    const first = await start();
    const { broker } = clients();
    const { contextId } = await broker.openContext({ label: 'vm' }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: DEVICES[0]! }, meta)).device!.handle;
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!.handle;
    await broker.attachDevice({ contextId, device, target: ioas }, meta);
    const second = (await broker.bindDevice({ contextId, deviceId: DEVICES[1]! }, meta)).device!.handle;

    const iommufd = `i.${contextId}`;
    const dev1 = `d.${contextId}.${device}`;
    const dev2 = `d.${contextId}.${second}`;
    await systemd.waitFor((m) => m.fields.get('FDNAME') === dev2);
    const stored = systemd.messages.filter((m) => m.fields.get('FDSTORE') === '1');
    expect(stored.map((m) => [m.fields.get('FDNAME'), m.fields.get('FDPOLL'), m.fds.length])).toEqual([
      [iommufd, '0', 1],
      [dev1, '0', 1],
      [dev2, '0', 1],
    ]);
    // The sim stands in a memfd for each kernel file: what the store holds is that very file.
    expect(readlinkSync(`/proc/self/fd/${systemd.store.get(iommufd)![0]}`)).toBe('/memfd:iommufd-sim (deleted)');
    expect(readlinkSync(`/proc/self/fd/${systemd.store.get(dev1)![0]}`)).toBe(`/memfd:vfio-sim:${DEVICES[0]} (deleted)`);

    await broker.unbindDevice({ contextId, device: second }, meta);
    const removed = await systemd.waitFor((m) => m.fields.get('FDSTOREREMOVE') === '1' && m.fields.get('FDNAME') === dev2);
    // A barrier right after: the daemon closed its own copy only once the store had dropped its.
    expect(systemd.messages[systemd.messages.indexOf(removed) + 1]?.fields.get('BARRIER')).toBe('1');
    expect([...systemd.store.keys()]).toEqual([iommufd, dev1]);

    first.kill('SIGKILL');
    await exited(first);

    // A fresh sim knows none of these files: both come back, by name, and are held in quarantine.
    const restarted = await start(systemd.listenFds());
    const { admin } = clients();
    const status = await admin.getStatus({});
    expect(status.restoredContexts).toBe(0);
    expect(status.quarantined.map((q) => [q.reason, q.contextId, q.fdName, q.kind]).sort()).toEqual(
      [
        ['adopt_failed', contextId, iommufd, ''],
        ['adopt_failed', contextId, dev1, 'DEVICE'],
      ].sort(),
    );
    expect([...systemd.store.keys()]).toEqual([iommufd, dev1]);

    // An admin releases them: the daemon closes its copies and asks the store to drop its own.
    await admin.forceCloseContext({ contextId, reason: 'lost with the previous sim' });
    await systemd.waitFor((m) => m.fields.get('FDSTOREREMOVE') === '1' && m.fields.get('FDNAME') === iommufd);
    await systemd.waitFor((m) => m.fields.get('FDSTOREREMOVE') === '1' && m.fields.get('FDNAME') === dev1);
    expect(systemd.store.size).toBe(0);
    expect((await admin.getStatus({})).quarantined).toEqual([]);

    restarted.kill('SIGTERM');
    expect(await exited(restarted)).toBe(0);
  }, 120_000);

  it('ignores LISTEN_FDS meant for another process (LISTEN_PID)', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', `import(${JSON.stringify(mainJs)}).then((m) => m.main())`, '--', 'vfio-broker', 'serve', '--config', configFile], {
      env: { ...process.env, NOTIFY_SOCKET: systemd.socketPath, LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'i.ctx-000000000000000000000000' },
      stdio: ['ignore', 'ignore', 'ignore', 'ignore'],
    });
    children.push(child);
    const before = systemd.messages.length;
    await systemd.waitFor((m) => m.fields.get('READY') === '1' && systemd.messages.indexOf(m) >= before, 30_000);
    const status = await clients().admin.getStatus({});
    expect(status.quarantined.filter((q) => q.fdName === 'i.ctx-000000000000000000000000')).toEqual([]);
    child.kill('SIGTERM');
    expect(await exited(child)).toBe(0);
  }, 60_000);
});
