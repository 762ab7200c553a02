/** The Unix socket: stale files from a dead daemon are removed, live ones and non-sockets refused. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { prepareSocketPath } from '../../src/rpc/server.js';
import { startTestDaemon } from '../helpers/daemon.js';

/** Leaves a socket file behind the way a crashed daemon does: listen, then SIGKILL. */
async function staleSocket(file: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(file)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => child.stdout.once('data', r));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}

describe('socket preparation', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-sock-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('removes a stale socket left by a killed daemon and serves on it', async () => {
    const file = path.join(dir, 'broker.sock');
    await staleSocket(file);
    expect(statSync(file).isSocket()).toBe(true);
    const td = await startTestDaemon('linux-6.17', (c) => {
      c.socket.path = file;
    });
    try {
      const status = await td.admin.getStatus({});
      expect(status.backend).toBe('sim');
    } finally {
      await td.stop();
    }
    expect(existsSync(file)).toBe(false);
  });

  it('refuses to take over a socket another process is serving', async () => {
    const td = await startTestDaemon();
    try {
      await expect(prepareSocketPath(td.socketPath)).rejects.toThrow(/another process is serving/);
    } finally {
      await td.stop();
    }
  });

  it('refuses to delete a path that is not a socket', async () => {
    const file = path.join(dir, 'not-a-socket');
    writeFileSync(file, 'data');
    await expect(prepareSocketPath(file)).rejects.toThrow(/not a socket/);
    expect(existsSync(file)).toBe(true);
  });
});
