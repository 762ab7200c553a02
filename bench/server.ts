/**
 * A bench server in its own process: `echo SOCKET` (the transport ceiling)
 * or `broker SOCKET OPTIONS_JSON` (the real daemon on the sim backend).
 * The parent asks it for its CPU time and for the sim's state over IPC.
 */
import * as grpc from '@grpc/grpc-js';
import { rmSync } from 'node:fs';
import pino from 'pino';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/obs/log.js';
import { prepareSocketPath, SERVER_OPTIONS } from '../src/rpc/server.js';
import { listenUnix } from '../src/rpc/unix-listener.js';
import { answerBindUnbindFromCache } from './lib/cached-broker.js';
import { serveParent } from './lib/child.js';
import { echoImpl, echoServiceDefinition } from './lib/echo.js';
import { benchDaemonConfig, type BenchDaemonOptions } from './lib/setup.js';
import { gcTotals } from './lib/gc.js';
import type { ServerUsage } from './lib/load.js';
import { cpuMicros } from './lib/stats.js';

const [mode, socketPath, optionsJson] = process.argv.slice(2);

async function startEcho(path: string): Promise<() => Promise<void>> {
  await prepareSocketPath(path);
  const server = new grpc.Server(SERVER_OPTIONS);
  server.addService(echoServiceDefinition, echoImpl);
  const unix = await listenUnix(server, path, pino({ level: 'warn' }));
  return async () => {
    unix.close();
    server.forceShutdown();
    rmSync(path, { force: true });
  };
}

async function main(): Promise<void> {
  gcTotals(); // count from the start
  if (!socketPath || (mode !== 'echo' && mode !== 'broker')) throw new Error('usage: server.js echo|broker SOCKET [OPTIONS_JSON]');
  let stop: () => Promise<void>;
  let daemon: Daemon | undefined;
  if (mode === 'echo') {
    stop = await startEcho(socketPath);
  } else {
    const options = JSON.parse(optionsJson ?? '{}') as BenchDaemonOptions;
    const config = benchDaemonConfig({ ...options, socketPath });
    // Logs go to this process's stdout, which the parent points at a file.
    daemon = await startDaemon({ config, log: createLogger(config.log.level) });
    if (options.cachedBindUnbind) answerBindUnbindFromCache(daemon.broker);
    stop = () => daemon!.stop();
  }
  serveParent({
    usage: (): ServerUsage => ({ cpuUs: cpuMicros(), gc: gcTotals() }),
    gc: () => {
      global.gc?.();
      return process.memoryUsage();
    },
    sim: () => {
      const sim = daemon?.sim;
      if (!daemon || !sim) return undefined;
      return {
        liveObjects: sim.liveObjectCount(),
        openFiles: sim.openFileCount(),
        kernelContexts: sim.liveContextCount(),
        contexts: daemon.broker.contextCount,
      };
    },
    stop: async () => {
      await stop();
      setTimeout(() => process.exit(0), 50).unref();
    },
  });
}

main().catch((err: unknown) => {
  process.send?.({ error: (err as Error).stack ?? String(err) });
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 100);
});
