/**
 * Identity from SO_PEERCRED, end to end: separate client processes running as
 * other uids, against the daemon's own Unix listener (which rests on grpc-js
 * connection injection and getPeer(); grpc-js is pinned for that reason).
 */
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildForChildProcess, runCli } from '../helpers/built-daemon.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

const SOCKET_GID = 4242;
const ACME = { uid: 41001, gid: SOCKET_GID };
const GLOBEX = { uid: 41002, gid: SOCKET_GID };
const STRANGER = { uid: 41003, gid: SOCKET_GID };
const root = process.getuid?.() === 0;

describe.runIf(root)('caller identity from Unix peer credentials', () => {
  let td: TestDaemon;
  let mainJs: string;
  let cli: (as: { uid: number; gid: number } | undefined, ...args: string[]) => ReturnType<typeof runCli>;
  beforeAll(async () => {
    mainJs = buildForChildProcess();
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-id-'));
    chmodSync(dir, 0o755); // other uids must reach the socket; the socket's own mode and group decide
    td = await startTestDaemon('linux-6.17', (c) => {
      c.socket.path = path.join(dir, 'broker.sock');
      c.socket.gid = SOCKET_GID;
      c.identity.rules = [
        { uid: ACME.uid, tenant: 'acme' },
        { uid: GLOBEX.uid, tenant: 'globex' },
      ];
    });
    cli = (as, ...args) => runCli(mainJs, [...args, '--socket', td.socketPath], as);
  }, 120_000);
  afterAll(async () => {
    await td?.stop();
  });

  it('maps uids to tenants and keeps each tenant to its own objects', async () => {
    await td.admin.assignDevice({ deviceId: '0000:01:00.0', tenant: 'acme' });
    const open = await cli(ACME, 'open', '--label', 'acme-vm');
    expect(open.err).toBe('');
    const ctx = open.out.trim();
    expect((await cli(ACME, 'bind', ctx, '0000:01:00.0')).out).toMatch(/^DEVICE handle 1/);
    expect((await cli(ACME, 'alloc-ioas', ctx)).code).toBe(0);

    // Another tenant learns nothing about acme's context: NOT_FOUND, as for a context that never existed.
    const peek = await cli(GLOBEX, 'objects', ctx);
    expect(peek.code).toBe(1);
    expect(peek.err).toMatch(/NOT_FOUND.*reason=CONTEXT_NOT_FOUND/);
    const destroy = await cli(GLOBEX, 'destroy', ctx, '2');
    expect(destroy.err).toMatch(/NOT_FOUND/);

    // ... nor binds acme's device into its own context.
    const globexCtx = (await cli(GLOBEX, 'open')).out.trim();
    const steal = await cli(GLOBEX, 'bind', globexCtx, '0000:01:00.0');
    expect(steal.err).toMatch(/NOT_FOUND.*reason=DEVICE_NOT_ASSIGNED/);

    // A tenant cannot claim another tenant's name, nor call the admin API.
    expect((await cli(GLOBEX, 'open', '--tenant', 'acme')).err).toMatch(/PERMISSION_DENIED.*cannot act for "acme"/);
    expect((await cli(ACME, 'devices')).err).toMatch(/PERMISSION_DENIED/);
    expect((await cli(ACME, 'force-close', ctx)).err).toMatch(/PERMISSION_DENIED/);

    // The admin (this process: root) sees both tenants' contexts.
    const contexts = td.daemon.broker.listContexts().map((c) => c.tenant).sort();
    expect(contexts).toEqual(['acme', 'globex']);

    // The audit log names the peer by its credentials.
    const lines = readFileSync(td.auditPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { peer: string; tenant: string; operation: string });
    const bind = lines.find((l) => l.operation === 'BrokerService/BindDevice' && l.tenant === 'acme');
    expect(bind?.peer).toMatch(new RegExp(`^uid=${ACME.uid} gid=${SOCKET_GID} pid=\\d+$`));
  });

  it('refuses a uid that no rule maps', async () => {
    const r = await cli(STRANGER, 'open');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(new RegExp(`PERMISSION_DENIED: uid=${STRANGER.uid} .* is not mapped`));
  });

  it('refuses a uid outside the socket group at the socket itself', async () => {
    const r = await cli({ uid: 41004, gid: 41004 }, 'open');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/permission|EACCES/i);
  });
});
