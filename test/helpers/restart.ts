/**
 * Restart without teardown, in one process: the sim kernel and the fd store
 * outlive the daemon, as the real kernel and systemd's store outlive a
 * daemon process. `crash()` is what SIGKILL does: from that instant the old
 * daemon makes no kernel call, writes no journal line and changes nothing in
 * the store; only its listeners are closed so the next daemon can bind them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryFdStore } from '../../src/broker/fd-store.js';
import { defaultConfig, type Config } from '../../src/config/config.js';
import { startDaemon } from '../../src/daemon.js';
import type { SimKernel } from '../../src/kernel/sim/index.js';
import { createLogger } from '../../src/obs/log.js';
import { connectClients, type TestDaemon } from './daemon.js';

/** A view of `sim` that stops dead on kill(): every call after it never returns. */
export function killable(sim: SimKernel): { kernel: SimKernel; kill(): void } {
  let dead = false;
  const kernel = new Proxy(sim, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => (dead ? new Promise(() => undefined) : (value as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
  return { kernel, kill: () => (dead = true) };
}

/**
 * The sim's next call of `method`, as a daemon issues it: when it starts and
 * when it settles. The method is the prototype's again from that call on.
 * Lets a test kill the daemon while that call is in the kernel, whatever the
 * machine's load, instead of guessing with a sleep.
 */
export function nextCall(sim: SimKernel, method: 'ioasAlloc' | 'attachPt'): { started: Promise<void>; settled: Promise<void> } {
  const own = sim as unknown as Record<string, unknown>;
  const original = sim[method] as (...args: unknown[]) => Promise<unknown>;
  let start!: () => void;
  let settle!: () => void;
  const started = new Promise<void>((resolve) => (start = resolve));
  const settled = new Promise<void>((resolve) => (settle = resolve));
  own[method] = function (this: SimKernel, ...args: unknown[]) {
    delete own[method];
    start();
    const result = original.apply(this, args);
    result.then(settle, settle);
    return result;
  };
  return { started, settled };
}

export interface Incarnation extends TestDaemon {
  store: MemoryFdStore;
  /** SIGKILL: nothing of this daemon runs any more. */
  crash(): Promise<void>;
}

export interface Host {
  sim: SimKernel;
  dir: string;
  journalPath: string;
  socketPath: string;
  /** Starts a daemon on the host: the first on an empty store, later ones on what the last one left. */
  start(tweak?: (c: Config) => void): Promise<Incarnation>;
  /** The store as the next daemon will find it (tests may change it, as a crash could). */
  store: MemoryFdStore;
  cleanup(): void;
}

export function restartHost(sim: SimKernel): Host {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-restart-'));
  const host: Host = {
    sim,
    dir,
    journalPath: path.join(dir, 'state', 'journal'),
    socketPath: path.join(dir, 'broker.sock'),
    store: new MemoryFdStore(),
    async start(tweak = () => undefined) {
      const config = defaultConfig();
      config.socket.path = host.socketPath;
      config.teardown.clientGoneGraceSeconds = 30;
      config.shutdown.drainSeconds = 2;
      config.metrics.address = '';
      config.audit.path = '';
      config.restart.journalPath = host.journalPath;
      config.restart.sync = 'none';
      tweak(config);
      const store = host.store;
      const k = killable(sim);
      const daemon = await startDaemon({ config, log: createLogger(process.env['VFIO_BROKER_TEST_LOG'] ?? 'silent'), kernel: k.kernel, fdStore: store });
      const clients = connectClients(config.socket.path);
      return {
        daemon,
        store,
        socketPath: config.socket.path,
        auditPath: '',
        ...clients,
        async stop() {
          clients.closeAll();
          await daemon.stop();
        },
        async crash() {
          k.kill();
          daemon.restart?.journal.freeze();
          store.freeze();
          host.store = store.handBack();
          clients.closeAll();
          await daemon.abandon();
        },
      };
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return host;
}
