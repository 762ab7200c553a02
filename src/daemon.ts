/**
 * Assembles the daemon: kernel backend → broker → gRPC server, plus metrics,
 * audit log and systemd notification. Used by `vfio-broker serve` and by the
 * integration tests, so both run the same code.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { Gauge } from 'prom-client';
import { Broker, type BrokerObserver } from './broker/broker.js';
import { asTenant, type TenantId } from './broker/ids.js';
import { Inventory } from './broker/inventory.js';
import { Quotas } from './broker/quotas.js';
import { handoffSocketPath, type Config } from './config/config.js';
import { injectKernelFaults, instrumentKernel } from './kernel/instrumented.js';
import { createLinuxKernel } from './kernel/linux/index.js';
import { createSimKernel, SimKernel, type SimFaults } from './kernel/sim/index.js';
import type { KernelBackend } from './kernel/types.js';
import { FileAuditLog, NO_AUDIT, type AuditSink } from './obs/audit.js';
import { BrokerMetrics } from './obs/metrics.js';
import { startMetricsServer, type MetricsServer } from './obs/metrics-server.js';
import { SdNotifier } from './obs/sd-notify.js';
import { startHandoffServer, type HandoffServer } from './rpc/handoff-server.js';
import { startServer, StartupError, type RunningServer } from './rpc/server.js';
import { VERSION } from './version.js';
import type { FdStore } from './broker/fd-store.js';
import { QUARANTINE_REASONS } from './broker/quarantine.js';
import { prepareRestart, resetJournal, type RestartSetup } from './daemon-restart.js';

export { StartupError } from './rpc/server.js';

export interface Daemon {
  broker: Broker;
  /** The backend itself, without instrumentation. */
  kernel: KernelBackend;
  /** The simulated kernel, when that is the backend (tests reach in for faults and state). */
  sim: SimKernel | undefined;
  server: RunningServer;
  metrics: BrokerMetrics;
  /** Where /metrics is served, if enabled. */
  metricsAddress: string | undefined;
  /** Restart without teardown, when configured: the fd store and the journal. */
  restart: RestartSetup | undefined;
  /** Drains calls, optionally tears every context down, and releases the kernel. */
  stop(): Promise<void>;
  /**
   * Tests: what a SIGKILL leaves. Only the listeners go (so the next daemon can
   * bind them); no teardown, no journal record, no close of a kernel file.
   */
  abandon(): Promise<void>;
}

export interface DaemonOptions {
  config: Config;
  log: Logger;
  observer?: BrokerObserver;
  /**
   * Tests on the real kernel: the sim's fault rules applied in front of the
   * backend (the sim applies its own, `daemon.sim.faults`, without this).
   */
  kernelFaults?: SimFaults;
  /** Tests: this backend instead of the one the config names (e.g. a sim that outlives the daemon). */
  kernel?: KernelBackend;
  /** Tests: this fd store instead of systemd's. */
  fdStore?: FdStore;
}

function createKernel(config: Config, log: Logger): { kernel: KernelBackend; sim: SimKernel | undefined } {
  switch (config.backend) {
    case 'sim': {
      const sim = createSimKernel({
        profile: config.sim.profile,
        withoutIoctls: config.sim.withoutIoctls,
        ...(config.sim.devices ? { devices: config.sim.devices.map((d) => ({ ...d, cdev: d.cdev, driver: d.driver ?? 'vfio-pci', iommu: d.iommu ?? 'iommu0' })) } : {}),
      });
      return { kernel: sim, sim };
    }
    case 'linux':
      return { kernel: createLinuxKernel({ allowlist: config.linux.allowlist, selftestDevices: config.linux.selftestDevices, log: log.child({ component: 'kernel' }) }), sim: undefined };
  }
}

function combine(a: BrokerObserver, b: BrokerObserver | undefined): BrokerObserver {
  if (!b) return a;
  return {
    queueWait: (s) => {
      a.queueWait?.(s);
      b.queueWait?.(s);
    },
    teardown: (r) => {
      a.teardown?.(r);
      b.teardown?.(r);
    },
  };
}

export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const { config, log } = options;
  const metrics = new BrokerMetrics(VERSION);
  const { kernel, sim } = options.kernel ? { kernel: options.kernel, sim: options.kernel instanceof SimKernel ? options.kernel : undefined } : createKernel(config, log);
  let capabilities;
  try {
    capabilities = await kernel.probe();
  } catch (err) {
    // e.g. no /dev/iommu: the message names the kernel options and --backend sim.
    throw new StartupError((err as Error).message);
  }
  metrics.kernelProbed(capabilities);
  const assignments: Record<string, TenantId> = {};
  for (const [device, tenant] of Object.entries(config.assignments)) assignments[device] = asTenant(tenant);
  let inventory: Inventory;
  try {
    inventory = new Inventory(await kernel.listPciFunctions(), assignments);
  } catch (err) {
    throw new StartupError(`config assignments: ${(err as Error).message}`);
  }
  log.info({ backend: capabilities.backend, release: capabilities.release, profile: capabilities.profile, devices: inventory.size }, 'kernel probed');
  const notifier = SdNotifier.fromEnv();
  let restart: RestartSetup | undefined;
  if (config.restart.journalPath) {
    try {
      restart = await prepareRestart({ ...config.restart, kernel, inventory, log, notifier, fdStore: options.fdStore });
    } catch (err) {
      throw new StartupError(`restart journal ${config.restart.journalPath}: ${(err as Error).message}`);
    }
  }
  const served = restart?.kernel ?? kernel;
  const broker = new Broker({
    kernel: instrumentKernel(options.kernelFaults ? injectKernelFaults(served, options.kernelFaults) : served, metrics.kernelCall),
    log,
    capabilities,
    inventory,
    clientGoneGraceMs: config.teardown.clientGoneGraceSeconds * 1000,
    observer: combine(metrics.observer, options.observer),
    quotas: new Quotas(config.quotas.default, config.quotas.tenants),
    handoff: { socketPath: handoffSocketPath(config), leaseMs: config.handoff.leaseSeconds * 1000 },
    ...(restart ? { restart: restart.recorder, removeStored: (name: string) => restart.store.remove(name) } : {}),
  });
  if (restart) broker.adoptRestored(restart.outcome);
  metrics.attachBroker(broker);
  new Gauge({
    name: 'vfio_broker_quarantined',
    help: 'What the last restart could not reconcile with the kernel and keeps aside, by reason (see GetStatus).',
    labelNames: ['reason'],
    registers: [metrics.registry],
    collect() {
      const counts = broker.quarantine.countsByReason();
      for (const reason of QUARANTINE_REASONS) this.set({ reason }, counts.get(reason) ?? 0);
    },
  });

  // Everything started so far is undone in reverse if a later step fails.
  const undo: (() => Promise<void>)[] = [() => kernel.shutdown()];
  if (restart) undo.push(() => restart.journal.close());
  let audit: AuditSink = NO_AUDIT;
  let metricsServer: MetricsServer | undefined;
  let server: RunningServer;
  let handoff: HandoffServer | undefined;
  try {
    if (config.audit.path) {
      const file = await FileAuditLog.open(config.audit.path, config.audit.sync);
      undo.push(() => file.close());
      audit = file;
    }
    server = await startServer({
      socketPath: config.socket.path,
      socketMode: config.socket.mode,
      broker,
      log,
      socketGid: config.socket.gid,
      identity: config.identity,
      tcp: config.tcp,
      onHandled: (method, code, seconds) => metrics.rpcHandled(method, grpc.status[code], seconds),
      // Without an audit file the handlers skip building audit records altogether.
      audit: config.audit.path ? audit : undefined,
      onAuditResult: (ok) => metrics.auditRecords.inc({ result: ok ? 'written' : 'failed' }),
    });
    undo.push(() => server.stop(0));
    const fdSocket = await startHandoffServer({
      socketPath: handoffSocketPath(config),
      socketMode: config.socket.mode,
      socketGid: config.socket.gid,
      broker,
      log,
      audit: config.audit.path ? audit : undefined,
      onResult: (result) => metrics.fdHandoffs.inc({ result }),
      onAuditResult: (ok) => metrics.auditRecords.inc({ result: ok ? 'written' : 'failed' }),
    });
    handoff = fdSocket;
    undo.push(() => fdSocket.close());
    if (config.metrics.address) metricsServer = await startMetricsServer(config.metrics.address, metrics.registry, log);
  } catch (err) {
    for (const step of undo.reverse()) await step().catch(() => undefined);
    throw err;
  }
  metrics.ready.set(1);
  notifier?.send(`READY=1\nSTATUS=serving on ${config.socket.path}\nMAINPID=${process.pid}`);
  notifier?.startWatchdog();

  let stopping: Promise<void> | undefined;
  return {
    broker,
    kernel,
    sim,
    server,
    metrics,
    restart,
    metricsAddress: metricsServer?.address,
    stop() {
      stopping ??= (async () => {
        log.info('draining');
        notifier?.send('STOPPING=1\nSTATUS=draining');
        metrics.ready.set(0);
        server.setServing(false);
        // Teardowns queue behind in-flight requests in each context's FIFO, so
        // those finish first; their watch streams then end with a closed event.
        // No new fd handoffs for contexts about to be torn down.
        await handoff?.close();
        const teardown = config.shutdown.teardownContexts;
        await broker.shutdown(teardown);
        await server.stop(config.shutdown.drainSeconds * 1000);
        notifier?.stopWatchdog();
        await metricsServer?.close();
        await audit.close();
        if (restart && teardown) await resetJournal(restart, config.restart.sync);
        else await restart?.journal.close();
        // Kept for the next daemon: the store's copies hold them, and closing ours would end them on the sim.
        if (!restart || teardown) await kernel.shutdown();
        log.info(restart && !teardown ? 'stopped; contexts left to the next start' : 'stopped');
      })();
      return stopping;
    },
    async abandon() {
      await handoff?.close();
      await server.stop(0);
      await metricsServer?.close();
      notifier?.stopWatchdog();
    },
  };
}
