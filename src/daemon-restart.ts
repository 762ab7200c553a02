/**
 * Start-up half of restart without teardown (README "Restart without
 * teardown"): find the fd store, replay the journal, reconcile it with the
 * kernel (src/broker/restore.ts), compact the journal to the reconciled
 * state, and hand the broker what it needs to keep both up to date.
 */
import type { Logger } from 'pino';
import { closingFromStore, type FdNames, type FdStore } from './broker/fd-store.js';
import type { Inventory } from './broker/inventory.js';
import { asTenant } from './broker/ids.js';
import { RestartRecorder } from './broker/journal-recorder.js';
import { toJObject, type JQuarantine, type JRecord } from './broker/journal-records.js';
import { bootId, Journal, replayJournal, type JournalSync } from './broker/journal.js';
import { restore, type RestoreOutcome } from './broker/restore.js';
import type { KernelBackend } from './kernel/types.js';
import { listenFds, SystemdFdStore, type SdNotifier } from './obs/sd-notify.js';

export interface RestartSetup {
  /** The backend for the broker: closing a stored file takes it out of the store first. */
  kernel: KernelBackend;
  recorder: RestartRecorder;
  outcome: RestoreOutcome;
  store: FdStore;
  journal: Journal;
  boot: string;
}

/** A daemon with a journal but no fd store: nothing survives, but a restart still reports what was lost. */
const NO_FD_STORE: FdStore = { kind: 'none', restored: new Map(), put: () => undefined, remove: () => undefined };

export interface PrepareRestartOptions {
  journalPath: string;
  sync: JournalSync;
  /** The backend itself (not instrumented): adoption and probes are start-up work. */
  kernel: KernelBackend;
  inventory: Inventory;
  log: Logger;
  notifier: SdNotifier | undefined;
  /** Tests: a store in this process instead of systemd's. */
  fdStore?: FdStore | undefined;
  env?: NodeJS.ProcessEnv;
}

function fdStoreFor(o: PrepareRestartOptions): FdStore {
  if (o.fdStore) return o.fdStore;
  const env = o.env ?? process.env;
  const restored = listenFds(env);
  if (!o.notifier) {
    o.log.warn('restart journal without an fd store (no NOTIFY_SOCKET): contexts will not survive a restart of this daemon, only be reported as lost');
    for (const [name, fd] of restored) o.log.warn({ name, fd }, 'fd passed at start ignored: no fd store to keep it in');
    return NO_FD_STORE;
  }
  // systemd 254+ tells the unit's FileDescriptorStoreMax= in $FDSTORE; older ones do not.
  if (env['FDSTORE'] === '0') o.log.warn('FileDescriptorStoreMax= is 0 for this unit: systemd will drop the stored fds, and VMs lose their devices on restart');
  return new SystemdFdStore(o.notifier, restored);
}

function applyAssignments(inventory: Inventory, assignments: ReadonlyMap<string, string | null>, log: Logger): void {
  for (const [deviceId, tenant] of assignments) {
    try {
      const device = inventory.resolve(deviceId, 'assignments');
      if (tenant === null) device.tenant = undefined;
      else inventory.assign(device, asTenant(tenant));
    } catch (err) {
      log.warn({ deviceId, tenant, error: (err as Error).message }, 'journaled assignment not applied');
    }
  }
}

/** The journal's new first line: what the daemon is about to serve, and what stays quarantined. */
function snapshotOf(boot: string, outcome: RestoreOutcome, assignments: ReadonlyMap<string, string | null>): JRecord {
  const persistent: JQuarantine[] = outcome.quarantine.filter((i) => i.held !== undefined).map((i) => i.entry);
  return {
    t: 'snap',
    boot,
    ctx: outcome.contexts.map((c) => ({ c: c.id, tenant: c.tenant, label: c.label, lease: c.lease, last: c.last, objs: c.objects.map(toJObject) })),
    assign: Object.fromEntries(assignments),
    q: persistent,
    nextQ: outcome.nextQ,
  };
}

export async function prepareRestart(o: PrepareRestartOptions): Promise<RestartSetup> {
  const store = fdStoreFor(o);
  const boot = bootId();
  const replay = replayJournal(o.journalPath);
  applyAssignments(o.inventory, replay.state.assignments, o.log);
  const outcome = await restore({
    replay,
    boot,
    fds: store.restored,
    kernel: o.kernel,
    knows: (deviceId) => o.inventory.list().some((d) => d.id === deviceId),
    cdevOf: (deviceId) => o.inventory.list().find((d) => d.id === deviceId)?.pci.cdev,
    deviceOfCdev: (cdev) => o.inventory.list().find((d) => d.pci.cdev === cdev)?.id,
    log: o.log,
  });
  const journal = Journal.openCompacted(o.journalPath, snapshotOf(boot, outcome, replay.state.assignments), o.sync);
  const names: FdNames = outcome.names;
  const recorder = new RestartRecorder({ journal, store, names, storeFd: (f) => o.kernel.storeFd?.(f), log: o.log });
  const objects = outcome.contexts.reduce((n, c) => n + c.objects.length, 0);
  o.log.info(
    {
      journal: o.journalPath,
      fdStore: store.kind,
      fdsHandedBack: store.restored.size,
      journalRecords: replay.records,
      contexts: outcome.contexts.length,
      objects,
      quarantined: outcome.quarantine.length,
      inFlight: outcome.inFlight,
    },
    outcome.contexts.length > 0 || outcome.quarantine.length > 0 ? 'restart: journal reconciled with the kernel' : 'restart journal ready',
  );
  const kernel = closingFromStore(o.kernel, store, names, (err, name) => o.log.error({ err, name }, 'fd store did not drop a closed file: it stays open until the service stops'));
  return { kernel, recorder, outcome, store, journal, boot };
}

/** After a shutdown that tore everything down, nothing is left to restore: start the next daemon afresh. */
export async function resetJournal(setup: RestartSetup, sync: JournalSync): Promise<void> {
  await setup.journal.close();
  const empty: JRecord = { t: 'snap', boot: setup.boot, ctx: [], assign: {}, q: [], nextQ: 1 };
  await Journal.openCompacted(setup.journal.file, empty, sync).close();
}
