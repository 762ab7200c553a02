/**
 * The soak's clients, in their own process so the daemon's event loop (and
 * its lag figure) carries only the daemon's work, as in production. The soak
 * parent owns the daemon and answers this process's questions about it
 * (was an abandoned context reclaimed? is a closed context gone?).
 */
import { askParent, serveParent } from './lib/child.js';
import { cpuMicros } from './lib/stats.js';
import { runClient, type SoakShared, type SoakStats } from './lib/soak-client.js';
import { mulberry32 } from '../src/kernel/sim/faults.js';

export interface SoakClientsConfig {
  address: string;
  clients: number;
  tenants: number;
  /** Two devices per client, in client order. */
  devices: string[];
  injected: string[];
  abandonRate: number;
  leaseRate: number;
  leaseSeconds: number;
  thinkMs: number;
  seed: number;
}


let running: Promise<unknown> | undefined;
let stopping = false;
const stats: SoakStats = { rpcsOk: 0, lifecycles: 0, closed: 0, abandonedWatch: 0, abandonedLease: 0, expectedInjected: 0, expectedRefusals: 0, unbinds: 0, watchEvents: 0, leaseLapsed: 0 };
const unexpected: SoakShared['unexpected'] = [];

serveParent({
  start: (raw) => {
    const c = raw as SoakClientsConfig;
    const shared: SoakShared = {
      address: c.address,
      injectedErrnos: new Set(c.injected),
      abandonRate: c.abandonRate,
      leaseRate: c.leaseRate,
      leaseSeconds: c.leaseSeconds,
      thinkMs: c.thinkMs,
      stopping: () => stopping,
      random: mulberry32(c.seed),
      onAbandoned: (contextId, mode) => void askParent('abandoned', { contextId, mode }),
      waitReclaimed: (contextId) => askParent<void>('waitReclaimed', contextId),
      afterClose: (contextId) => askParent<string | undefined>('afterClose', contextId),
      stats,
      unexpected,
    };
    running = Promise.all(
      Array.from({ length: c.clients }, (_, i) => runClient(i, `tenant-${i % c.tenants}`, [c.devices[2 * i]!, c.devices[2 * i + 1]!], shared)),
    );
    return true;
  },
  stats: () => ({ stats, unexpected: unexpected.length, rss: process.memoryUsage().rss, cpu: cpuMicros() }),
  /** Clients finish their current lifecycle (closing their context), then report. */
  finish: async () => {
    stopping = true;
    await running;
    return { stats, unexpected };
  },
  stop: () => setTimeout(() => process.exit(0), 20).unref(),
});
