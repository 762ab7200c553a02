/** The broker's public option and caller types (broker.ts re-exports them). */
import type { Logger } from 'pino';
import type { KernelBackend, KernelCapabilities } from '../kernel/types.js';
import type { TeardownReport } from './events.js';
import type { TenantId } from './ids.js';
import type { Inventory } from './inventory.js';
import type { RestartRecorder } from './journal-recorder.js';
import type { Quotas } from './quotas.js';

export interface Caller {
  tenant: TenantId;
  admin: boolean;
  /** Who is calling, for logs and audit (e.g. `uid=1000 pid=42`). */
  peer: string;
  /** Peer credentials of a Unix-socket caller (SO_PEERCRED); absent for mTLS callers. */
  uid?: number | undefined;
  gid?: number | undefined;
  pid?: number | undefined;
}

export interface BrokerObserver {
  queueWait?(seconds: number): void;
  teardown?(report: TeardownReport): void;
}

export interface BrokerOptions {
  kernel: KernelBackend;
  log: Logger;
  capabilities: KernelCapabilities;
  inventory: Inventory;
  /** How long a context with no watcher left survives before it is torn down. */
  clientGoneGraceMs: number;
  observer?: BrokerObserver;
  quotas?: Quotas;
  /** The fd socket clients redeem tokens on, and how long a token lives. */
  handoff?: { socketPath: string; leaseMs: number };
  /** Restart without teardown: journal and fd store (journal-recorder.ts). Absent when not configured. */
  restart?: RestartRecorder;
  /** Takes a name out of the fd store (a quarantined fd the backend never took). */
  removeStored?: (name: string) => void | Promise<void>;
}
