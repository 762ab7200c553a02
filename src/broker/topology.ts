/**
 * ApplyTopology: a VM's whole device graph in one request, all or nothing.
 *
 * Steps run in order, each an ordinary operation (so every rule and quota
 * applies). Steps name their objects; later steps refer to them by name, or
 * to objects already in the context as `handle:N`. If a step fails, the
 * completed steps are undone in reverse, leaving kernel and registry as they
 * were, and the error names the failing step.
 */
import { isKernelError } from '../kernel/types.js';
import type { Context } from './context.js';
import { BrokerError, kernelFailure } from './errors.js';
import type { ObjectView } from './events.js';
import { asHandle, type Handle } from './ids.js';
import type { ObjectKind } from './objects.js';
import * as ops from './operations.js';

export type TopologyAction =
  | { type: 'bind'; deviceId: string }
  | { type: 'alloc_ioas' }
  | { type: 'attach'; device: string; target: string }
  | { type: 'alloc_hwpt'; device: string; kind: ops.HwptKind | undefined; parent: string; dataType: number; data: Uint8Array; dirtyTracking: boolean }
  | { type: 'alloc_viommu'; device: string; nestParent: string; viommuType: ops.ViommuType | undefined }
  | { type: 'alloc_vdevice'; viommu: string; device: string; virtId: bigint };

export interface TopologyStep {
  name: string;
  action: TopologyAction | undefined;
}

export interface TopologyResult {
  name: string;
  object: ObjectView;
}

export const MAX_TOPOLOGY_STEPS = 256;
const UNDO_ATTEMPTS = 3;

/** How to take one completed step back. */
type Undo = () => Promise<void>;

async function retried(call: () => Promise<void>): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      return await call();
    } catch (err) {
      if (i >= UNDO_ATTEMPTS || !isKernelError(err)) throw err;
    }
  }
}

export async function applyTopology(env: ops.OpEnv, ctx: Context, steps: readonly TopologyStep[]): Promise<TopologyResult[]> {
  if (steps.length === 0) throw new BrokerError('MISSING_FIELD', 'steps: give at least one step', { field: 'steps' });
  if (steps.length > MAX_TOPOLOGY_STEPS) {
    throw new BrokerError('INVALID_FIELD', `steps: ${steps.length} steps is over the limit of ${MAX_TOPOLOGY_STEPS}`, { field: 'steps' });
  }
  const named = new Map<string, Handle>();
  const results: TopologyResult[] = [];
  const undo: Undo[] = [];
  for (const [i, step] of steps.entries()) {
    const at = `steps[${i}]`;
    try {
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(step.name)) {
        throw new BrokerError('INVALID_FIELD', `${at}.name: "${step.name.slice(0, 64)}" must be 1–64 letters, digits, . _ -`, { field: `${at}.name` });
      }
      if (named.has(step.name)) throw new BrokerError('INVALID_FIELD', `${at}.name: "${step.name}" is used by an earlier step`, { field: `${at}.name` });
      if (!step.action) throw new BrokerError('MISSING_FIELD', `${at}: give one action`, { field: at });
      const ref = (value: string, field: string, kinds: readonly ObjectKind[]): Handle => resolveRef(ctx, named, value, `${at}.${field}`, kinds);
      const object = await runStep(env, ctx, step.action, ref, undo);
      named.set(step.name, object.handle);
      results.push({ name: step.name, object });
    } catch (err) {
      await rollBack(undo);
      throw stepError(err, at, step.name);
    }
  }
  return results;
}

function resolveRef(ctx: Context, named: Map<string, Handle>, value: string, field: string, kinds: readonly ObjectKind[]): Handle {
  const m = /^handle:(\d{1,16})$/.exec(value);
  const handle = m ? asHandle(Number(m[1])) : named.get(value);
  if (handle === undefined) {
    throw new BrokerError(value === '' ? 'MISSING_FIELD' : 'INVALID_FIELD', `${field}: "${value.slice(0, 64)}" names no earlier step (or use handle:N)`, { field });
  }
  return ctx.registry.resolve(handle, kinds, field).handle;
}

async function runStep(env: ops.OpEnv, ctx: Context, action: TopologyAction, ref: (v: string, f: string, k: readonly ObjectKind[]) => Handle, undo: Undo[]): Promise<ObjectView> {
  switch (action.type) {
    case 'bind': {
      const view = await ops.bindDevice(env, ctx, action.deviceId);
      undo.push(() => ops.releaseDevice(env, ctx, view.handle));
      return view;
    }
    case 'alloc_ioas':
      return created(env, ctx, undo, await ops.allocIoas(env, ctx));
    case 'alloc_hwpt': {
      const args = { device: ref(action.device, 'device', ['DEVICE']), kind: action.kind, parent: ref(action.parent, 'parent', ['IOAS', 'HWPT_PAGING', 'VIOMMU']), dataType: action.dataType, data: action.data, dirtyTracking: action.dirtyTracking };
      return created(env, ctx, undo, await ops.allocHwpt(env, ctx, args));
    }
    case 'alloc_viommu': {
      const view = await ops.allocViommu(env, ctx, ref(action.device, 'device', ['DEVICE']), ref(action.nestParent, 'nest_parent', ['HWPT_PAGING']), action.viommuType);
      return created(env, ctx, undo, view);
    }
    case 'alloc_vdevice': {
      const view = await ops.allocVdevice(env, ctx, ref(action.viommu, 'viommu', ['VIOMMU']), ref(action.device, 'device', ['DEVICE']), action.virtId);
      return created(env, ctx, undo, view);
    }
    case 'attach': {
      const device = ref(action.device, 'device', ['DEVICE']);
      const target = ref(action.target, 'target', ['IOAS', 'HWPT_PAGING', 'HWPT_NESTED']);
      const before = ops.attachmentTarget(ctx, device);
      const { hwpt } = await ops.attachDevice(env, ctx, device, target);
      undo.push(() => retried(() => ops.restoreAttachment(env, ctx, device, before)));
      return hwpt;
    }
  }
}

function created(env: ops.OpEnv, ctx: Context, undo: Undo[], view: ObjectView): ObjectView {
  undo.push(() => retried(() => ops.destroyObject(env, ctx, view.handle)));
  return view;
}

async function rollBack(undo: Undo[]): Promise<void> {
  for (const step of undo.reverse()) await step();
}

function stepError(err: unknown, at: string, name: string): BrokerError {
  const inner = err instanceof BrokerError ? err : kernelFailure(err, `${at} (${name})`, []);
  return new BrokerError(inner.reason, `${at} (${name}): ${inner.message}; every earlier step was undone`, {
    errno: inner.errno,
    kernelOp: inner.kernelOp,
    objects: inner.objects,
    field: inner.field ?? at,
    contextId: inner.contextId,
    deviceId: inner.deviceId,
    quota: inner.quota,
    quotaLimit: inner.quotaLimit,
  });
}

