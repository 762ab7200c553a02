/**
 * The one place that decides teardown order (kernel-uapi.md §4.6).
 *
 * UnbindDevice, CloseContext, ForceCloseContext, a vanished client and a host
 * device request all come here. Teardown always completes: a step that keeps
 * failing is recorded and skipped, and closing the device fd (which never
 * fails, §4.5) or the iommufd (§4.4) lets the kernel finish the job. The
 * broker never relies on the kernel to tombstone a vDEVICE (6.13–6.16 do not):
 * it destroys vDEVICEs itself before closing device fds, and treats ENOENT
 * from that DESTROY as "the kernel already did" (6.17+).
 */
import type { Logger } from 'pino';
import { isKernelError, type IommufdFile, type KernelBackend } from '../kernel/types.js';
import type { TeardownAction, TeardownReason, TeardownReport } from './events.js';
import type { Handle } from './ids.js';
import type { BrokerObject, DeviceObject, HwptNestedObject, HwptPagingObject } from './objects.js';
import type { Registry } from './registry.js';

export type TeardownScope = { kind: 'device'; device: DeviceObject } | { kind: 'context' };

export interface TeardownEnv {
  kernel: KernelBackend;
  /** The broker's logger; a teardown makes its own child (with the context ID) only when it logs. */
  log: Logger;
  /** Called after a device fd is closed, so the inventory marks it unbound. */
  onDeviceClosed(device: DeviceObject, contextId: string): void;
}

export interface TeardownTarget {
  readonly id: string;
  registry: Registry;
  iommufd: IommufdFile;
}

/** Attempts per step: absorbs a transient kernel failure without giving up the order. */
const STEP_ATTEMPTS = 3;

interface Run {
  target: TeardownTarget;
  env: TeardownEnv;
  scope: TeardownScope;
  report: TeardownReport;
  log?: Logger;
}

function logOf(run: Run): Logger {
  return (run.log ??= run.env.log.child({ contextId: run.target.id }));
}

/**
 * The one line a teardown leaves. A client's own UnbindDevice that went to
 * plan is routine, like BindDevice, and is in the audit log; a context's end,
 * a device request, a tombstone found or a failed step is worth a line.
 */
function logDone(run: Run): void {
  const { report } = run;
  const routine = report.failures.length === 0 && report.reason === 'unbind' && report.vdevicesFoundTombstoned === 0;
  if (routine && !run.env.log.isLevelEnabled('debug')) return;
  const fields = { reason: report.reason, steps: report.steps.length, failures: report.failures.length, vdevicesFoundTombstoned: report.vdevicesFoundTombstoned };
  if (report.failures.length > 0) logOf(run).warn(fields, 'teardown done with failed steps');
  else if (routine) logOf(run).debug(fields, 'teardown done');
  else logOf(run).info(fields, 'teardown done');
}

/**
 * A phase picks what it acts on when it starts and returns no promise when
 * that is nothing, so a device's unbind does not wait a turn for each of the
 * phases that have no work for it.
 */
type Phase = (run: Run) => Promise<void> | undefined;

/**
 * The legal order, and which phases a single device's teardown runs: the
 * context-only ones are skipped outright for a device, not entered and left.
 */
const PHASES: readonly (readonly [Phase, 'device and context' | 'context only'])[] = [
  [moveDevicesOffNested, 'device and context'], // §4.6 step 4
  [destroyVdevices, 'device and context'], // step 5: before any device fd closes, so nothing is tombstoned
  [destroyNestedHwpts, 'device and context'], // step 6
  [destroyViommus, 'context only'], // step 7
  [detachDevices, 'device and context'], // step 8, first half; automatic HWPTs go with their last device
  [destroyPagingHwpts, 'context only'], // step 8, second half
  [destroyIoases, 'context only'], // step 10
  [closeDevices, 'device and context'], // step 11, first half
  [sweepOrphanVdevices, 'device and context'], // vDEVICEs whose DESTROY failed before close: 0 on 6.13, ENOENT on 6.17
  [closeIommufd, 'context only'], // step 11, second half
];

export async function runTeardown(
  target: TeardownTarget,
  env: TeardownEnv,
  scope: TeardownScope,
  reason: TeardownReason,
): Promise<TeardownReport> {
  const report: TeardownReport = { reason, steps: [], vdevicesDestroyed: 0, vdevicesFoundTombstoned: 0, failures: [] };
  const run: Run = { target, env, scope, report };
  for (const [phase, runsFor] of PHASES) {
    if (runsFor === 'context only' && scope.kind === 'device') continue;
    const work = phase(run);
    if (work !== undefined) await work;
  }
  logDone(run);
  return report;
}

/**
 * Runs `step` on each object in turn; no promise when there are none. Steps
 * are module-level functions, not closures made per teardown: V8 keeps a
 * closure's optimized code only while a closure that ran it is alive, so
 * per-call closures are compiled again after every full GC.
 */
function eachInTurn<T>(run: Run, objects: readonly T[], step: (run: Run, obj: T) => Promise<unknown>): Promise<void> | undefined {
  return objects.length === 0 ? undefined : inTurn(run, objects, step);
}

async function inTurn<T>(run: Run, objects: readonly T[], step: (run: Run, obj: T) => Promise<unknown>): Promise<void> {
  for (const obj of objects) await step(run, obj);
}

function inScope(run: Run, device: Handle): boolean {
  return run.scope.kind === 'context' || run.scope.device.handle === device;
}

function devicesInScope(run: Run): readonly DeviceObject[] {
  if (run.scope.kind === 'device') return run.target.registry.get(run.scope.device.handle) ? [run.scope.device] : [];
  return newestFirst(run.target.registry.liveOfKind('DEVICE'));
}

const NOTHING: readonly never[] = [];

function newestFirst<T extends BrokerObject>(objects: ReadonlySet<T>): readonly T[] {
  return objects.size === 0 ? NOTHING : [...objects].sort((a, b) => b.handle - a.handle);
}

function record(run: Run, action: TeardownAction, obj: BrokerObject): void {
  run.report.steps.push({ action, handle: obj.handle, kind: obj.kind, kernelId: obj.kernelId });
}

/** Runs a kernel call with retries; returns the errno it finally failed with, if any. */
async function attempt(run: Run, obj: BrokerObject, action: TeardownAction, call: () => Promise<void>): Promise<string | undefined> {
  let errno = 'EIO';
  for (let i = 1; i <= STEP_ATTEMPTS; i++) {
    try {
      await call();
      return undefined;
    } catch (err) {
      if (!isKernelError(err)) throw err;
      errno = err.errno;
      // ENOENT is an answer, not a transient failure: the caller interprets it.
      if (errno === 'ENOENT') return errno;
      logOf(run).warn({ handle: obj.handle, kind: obj.kind, action, errno, attempt: i }, 'teardown step failed');
    }
  }
  run.report.failures.push({ handle: obj.handle, action, errno });
  return errno;
}

async function destroyObject(run: Run, obj: BrokerObject): Promise<boolean> {
  const { kernel } = run.env;
  const errno = await attempt(run, obj, 'destroy', () => kernel.destroy(run.target.iommufd, obj.kernelId));
  if (errno === undefined) {
    run.target.registry.remove(obj.handle);
    record(run, 'destroy', obj);
    return true;
  }
  if (errno === 'ENOENT') run.report.failures.push({ handle: obj.handle, action: 'destroy', errno });
  return false;
}

function nestParentOf(registry: Registry, nested: HwptNestedObject): HwptPagingObject | undefined {
  const parent = registry.get(nested.parent);
  if (parent?.kind === 'HWPT_PAGING') return parent;
  if (parent?.kind === 'VIOMMU') {
    const paging = registry.get(parent.nestParent);
    return paging?.kind === 'HWPT_PAGING' ? paging : undefined;
  }
  return undefined;
}

function moveDevicesOffNested(run: Run): Promise<void> | undefined {
  const { registry } = run.target;
  return eachInTurn(run, devicesInScope(run).filter((device) => attachedHwpt(registry, device)?.kind === 'HWPT_NESTED'), moveOffNested);
}

async function moveOffNested(run: Run, device: DeviceObject): Promise<void> {
  const { registry } = run.target;
  const hwpt = attachedHwpt(registry, device);
  const parent = hwpt?.kind === 'HWPT_NESTED' ? nestParentOf(registry, hwpt) : undefined;
  if (!parent) return; // detachDevices takes it off instead
  const errno = await attempt(run, device, 'move_off_nested', async () => {
    await run.env.kernel.attachPt(device.file, parent.kernelId);
  });
  if (errno !== undefined) return;
  registry.setAttachment(device, parent.handle);
  record(run, 'move_off_nested', device);
}

function attachedHwpt(registry: Registry, device: DeviceObject): BrokerObject | undefined {
  return device.attached === undefined ? undefined : registry.get(device.attached);
}

async function settleVdevice(run: Run, obj: BrokerObject): Promise<void> {
  const errno = await attempt(run, obj, 'destroy', () => run.env.kernel.destroy(run.target.iommufd, obj.kernelId));
  if (errno !== undefined && errno !== 'ENOENT') return;
  // Either way the handle stays dead, so clients learn why (VDEVICE_DESTROYED_ON_UNBIND).
  run.target.registry.tombstone(obj.handle);
  if (errno === 'ENOENT') {
    record(run, 'found_tombstoned', obj);
    run.report.vdevicesFoundTombstoned++;
  } else {
    record(run, 'destroy', obj);
    run.report.vdevicesDestroyed++;
  }
}

function destroyVdevices(run: Run): Promise<void> | undefined {
  const vdevices = newestFirst(run.target.registry.liveOfKind('VDEVICE')).filter((vdev) => inScope(run, vdev.device));
  return eachInTurn(run, vdevices, settleVdevice);
}

function destroyNestedHwpts(run: Run): Promise<void> | undefined {
  const nested = newestFirst(run.target.registry.liveOfKind('HWPT_NESTED')).filter((hwpt) => inScope(run, hwpt.allocatedFor));
  return eachInTurn(run, nested, destroyNestedHwpt);
}

async function destroyNestedHwpt(run: Run, hwpt: HwptNestedObject): Promise<void> {
  // Another device still attached to it keeps it: it is not this device's alone.
  if (run.scope.kind === 'device' && run.target.registry.holders(hwpt.handle).length > 0) return;
  await destroyObject(run, hwpt);
}

function destroyViommus(run: Run): Promise<void> | undefined {
  return eachInTurn(run, newestFirst(run.target.registry.liveOfKind('VIOMMU')), destroyObject);
}

/** Drops a device's attachment from the registry, and the automatic HWPT the kernel frees with it. */
function forgetAttachment(run: Run, device: DeviceObject): void {
  const { registry } = run.target;
  const hwpt = attachedHwpt(registry, device);
  registry.setAttachment(device, undefined);
  if (hwpt?.kind === 'HWPT_PAGING' && hwpt.automatic && registry.holders(hwpt.handle).length === 0) {
    registry.remove(hwpt.handle);
    record(run, 'auto_freed', hwpt);
  }
}

function detachDevices(run: Run): Promise<void> | undefined {
  return eachInTurn(run, devicesInScope(run).filter((device) => device.attached !== undefined), detachDevice);
}

async function detachDevice(run: Run, device: DeviceObject): Promise<void> {
  const errno = await attempt(run, device, 'detach', () => run.env.kernel.detachPt(device.file));
  if (errno !== undefined) return; // closing the fd detaches it
  record(run, 'detach', device);
  forgetAttachment(run, device);
}

function destroyPagingHwpts(run: Run): Promise<void> | undefined {
  return eachInTurn(run, newestFirst(run.target.registry.liveOfKind('HWPT_PAGING')).filter((hwpt) => !hwpt.automatic), destroyObject);
}

function destroyIoases(run: Run): Promise<void> | undefined {
  return eachInTurn(run, newestFirst(run.target.registry.liveOfKind('IOAS')), destroyObject);
}

function closeDevices(run: Run): Promise<void> | undefined {
  return eachInTurn(run, devicesInScope(run), closeDevice);
}

async function closeDevice(run: Run, device: DeviceObject): Promise<void> {
  await run.env.kernel.closeDevice(device.file);
  // close(2) detached it if the detach step could not (§4.5 step 2).
  if (device.attached !== undefined) forgetAttachment(run, device);
  run.target.registry.remove(device.handle);
  record(run, 'close_device', device);
  run.env.onDeviceClosed(device, run.target.id);
}

function sweepOrphanVdevices(run: Run): Promise<void> | undefined {
  const { registry } = run.target;
  const orphans = newestFirst(registry.liveOfKind('VDEVICE')).filter((vdev) => inScope(run, vdev.device) && !registry.get(vdev.device));
  return eachInTurn(run, orphans, settleVdevice);
}

async function closeIommufd(run: Run): Promise<void> {
  await run.env.kernel.closeIommufd(run.target.iommufd);
  run.report.steps.push({ action: 'close_iommufd', handle: 0 as Handle, kind: undefined, kernelId: undefined });
}
