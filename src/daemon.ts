/**
 * Assembles the daemon: kernel backend → broker → gRPC server. Used by
 * `vfio-broker serve` and by the integration tests, so both run the same code.
 */
import type { Logger } from 'pino';
import { Broker, type BrokerObserver } from './broker/broker.js';
import { asTenant, type TenantId } from './broker/ids.js';
import { Inventory } from './broker/inventory.js';
import type { Config } from './config/config.js';
import { createSimKernel, type SimKernel } from './kernel/sim/index.js';
import type { KernelBackend } from './kernel/types.js';
import { localTrustIdentity } from './rpc/identity.js';
import { startServer, type RunningServer } from './rpc/server.js';

export class StartupError extends Error {
  override readonly name = 'StartupError';
}

export interface Daemon {
  broker: Broker;
  kernel: KernelBackend;
  /** The simulated kernel, when that is the backend (tests reach in for faults and state). */
  sim: SimKernel | undefined;
  server: RunningServer;
  /** Drains calls, optionally tears every context down, and releases the kernel. */
  stop(): Promise<void>;
}

export interface DaemonOptions {
  config: Config;
  log: Logger;
  observer?: BrokerObserver;
}

function createKernel(config: Config): { kernel: KernelBackend; sim: SimKernel | undefined } {
  switch (config.backend) {
    case 'sim': {
      const sim = createSimKernel({
        profile: config.sim.profile,
        ...(config.sim.devices ? { devices: config.sim.devices.map((d) => ({ ...d, cdev: d.cdev, driver: d.driver ?? 'vfio-pci', iommu: d.iommu ?? 'iommu0' })) } : {}),
      });
      return { kernel: sim, sim };
    }
    case 'linux':
      throw new StartupError('the linux backend is not available in this build yet; run with --backend sim');
  }
}

export async function startDaemon(options: DaemonOptions): Promise<Daemon> {
  const { config, log } = options;
  const { kernel, sim } = createKernel(config);
  const capabilities = await kernel.probe();
  const assignments: Record<string, TenantId> = {};
  for (const [device, tenant] of Object.entries(config.assignments)) assignments[device] = asTenant(tenant);
  let inventory: Inventory;
  try {
    inventory = new Inventory(await kernel.listPciFunctions(), assignments);
  } catch (err) {
    throw new StartupError(`config assignments: ${(err as Error).message}`);
  }
  log.info({ backend: capabilities.backend, release: capabilities.release, profile: capabilities.profile, devices: inventory.size }, 'kernel probed');
  const broker = new Broker({
    kernel,
    log,
    capabilities,
    inventory,
    clientGoneGraceMs: config.teardown.clientGoneGraceSeconds * 1000,
    ...(options.observer ? { observer: options.observer } : {}),
  });
  const server = await startServer({
    socketPath: config.socket.path,
    socketMode: config.socket.mode,
    broker,
    log,
    identity: localTrustIdentity(config.identity.defaultTenant),
  });
  let stopping: Promise<void> | undefined;
  return {
    broker,
    kernel,
    sim,
    server,
    stop() {
      stopping ??= (async () => {
        log.info('draining');
        server.setServing(false);
        // Teardowns queue behind in-flight requests in each context's FIFO, so
        // those finish first; their watch streams then end with a closed event.
        await broker.shutdown(config.shutdown.teardownContexts);
        await server.stop(config.shutdown.drainSeconds * 1000);
        await kernel.shutdown();
        log.info('stopped');
      })();
      return stopping;
    },
  };
}
