/**
 * The object operations of one context. Each runs inside the context's FIFO,
 * validates against the registry, makes its kernel calls, and only then
 * updates the registry, so a failure leaves registry and kernel as they were.
 * A multi-step operation undoes its completed steps in reverse on failure.
 */
import { isKernelError, HWPT_ALLOC_DIRTY_TRACKING, HWPT_ALLOC_NEST_PARENT, VIOMMU_TYPE, type HwInfo, type KernelBackend } from '../kernel/types.js';
import type { Context } from './context.js';
import { BrokerError, kernelFailure } from './errors.js';
import type { ObjectView } from './events.js';
import type { Handle } from './ids.js';
import type { Inventory } from './inventory.js';
import type { DeviceObject, HwptNestedObject, HwptPagingObject, IoasObject, ObjectKind } from './objects.js';
import { labelOf } from './objects.js';
import { viewOf } from './views.js';

export interface OpEnv {
  kernel: KernelBackend;
  inventory: Inventory;
  /** Refuses (QUOTA_EXCEEDED) when the context's tenant may not create another object. */
  admitObject(ctx: Context): void;
  /** Pinned guest memory: reserved before a map (QUOTA_EXCEEDED), released when it is unmapped. */
  pinned: { reserve(ctx: Context, bytes: bigint): void; release(ctx: Context, bytes: bigint): void };
  /** Uploaded memfds (handoff.ts): the fd MapMemory names, held by the map until it settles. */
  uploads: { takeUpload(ctx: Context, token: string): { fd: number; settle(mapped: boolean): void } };
}

export type HwptKind = 'paging' | 'nest_parent' | 'nested';
export type ViommuType = keyof typeof VIOMMU_TYPE;

/** Bounds on client-supplied driver data; the kernel's own structs are far smaller. */
export const MAX_HWPT_DATA_BYTES = 4096;

function describe(ctx: Context, handle: Handle): string {
  const obj = ctx.registry.get(handle);
  return obj ? `${obj.kind} ${handle}` : `handle ${handle}`;
}

/** EBUSY: name the holders, which is what a client needs to fix its order. */
function inUse(ctx: Context, err: unknown, target: Handle, what: string): BrokerError {
  if (!isKernelError(err, 'EBUSY')) return kernelFailure(err, what, [target]);
  const holders = ctx.registry.holders(target);
  const by = holders.length > 0 ? `held by ${holders.map((h) => describe(ctx, h)).join(', ')}` : 'in use';
  return new BrokerError('OBJECT_IN_USE', `${what}: ${describe(ctx, target)} is ${by}`, {
    errno: 'EBUSY',
    kernelOp: err.op,
    objects: [target, ...holders],
  });
}

function created(ctx: Context, handle: Handle): ObjectView {
  const obj = ctx.registry.get(handle);
  if (!obj) throw new BrokerError('INTERNAL', `object ${handle} vanished after creation`);
  const view = viewOf(ctx.registry, obj);
  ctx.emit({ type: 'created', object: view });
  return view;
}

export async function bindDevice(env: OpEnv, ctx: Context, rawDeviceId: string): Promise<ObjectView> {
  const device = env.inventory.resolve(rawDeviceId, 'device_id');
  const cdev = env.inventory.checkBindable(device, ctx.tenant);
  env.admitObject(ctx);
  let file;
  try {
    file = await env.kernel.openDevice(cdev);
  } catch (err) {
    throw kernelFailure(err, `opening ${device.id} (${cdev})`, []);
  }
  let devId;
  try {
    devId = await env.kernel.bindIommufd(file, ctx.iommufd);
  } catch (err) {
    await env.kernel.closeDevice(file); // undo the open
    if (isKernelError(err, 'EPERM')) {
      throw new BrokerError(
        'KERNEL_PERMISSION',
        `binding ${device.id}: IOMMU group ${device.pci.iommuGroup} is owned by another context or driver; devices sharing a group must be bound in one context`,
        { errno: 'EPERM', kernelOp: err.op, deviceId: device.id },
      );
    }
    throw kernelFailure(err, `binding ${device.id}`, []);
  }
  const handle = ctx.registry.nextHandle();
  const obj: DeviceObject = { kind: 'DEVICE', handle, kernelId: devId, state: 'live', deviceId: device.id, file, attached: undefined };
  ctx.registry.add(obj);
  device.boundTo = ctx.id;
  return created(ctx, handle);
}

/** Applies an attach the kernel performed: new attachment, and the automatic HWPT it may have left behind. */
function settleAttachment(ctx: Context, device: DeviceObject, next: Handle | undefined): boolean {
  const previous = device.attached === undefined ? undefined : ctx.registry.get(device.attached);
  ctx.registry.setAttachment(device, next);
  if (previous?.kind === 'HWPT_PAGING' && previous.automatic && previous.handle !== next && ctx.registry.holders(previous.handle).length === 0) {
    ctx.registry.remove(previous.handle);
    ctx.emit({ type: 'destroyed', handle: previous.handle, kind: 'HWPT_PAGING' });
    return true;
  }
  return false;
}

export async function attachDevice(
  env: OpEnv,
  ctx: Context,
  deviceHandle: Handle,
  targetHandle: Handle,
): Promise<{ hwpt: ObjectView; replaced: Handle | undefined }> {
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  const target = ctx.registry.resolve(targetHandle, ['IOAS', 'HWPT_PAGING', 'HWPT_NESTED'], 'target');
  // Attaching to an IOAS may make the kernel create an automatic HWPT.
  if (target.kind === 'IOAS') env.admitObject(ctx);
  let hwptId;
  try {
    hwptId = await env.kernel.attachPt(device.file, target.kernelId);
  } catch (err) {
    if (isKernelError(err, 'ENOENT') && target.kind === 'HWPT_NESTED') {
      throw new BrokerError(
        'KERNEL_REJECTED',
        `attaching DEVICE ${device.handle} to HWPT_NESTED ${target.handle}: the device needs a vDEVICE on that HWPT's vIOMMU first (AllocVdevice)`,
        { errno: 'ENOENT', kernelOp: err.op, objects: [device.handle, target.handle] },
      );
    }
    throw kernelFailure(err, `attaching DEVICE ${device.handle} to ${target.kind} ${target.handle}`, [device.handle, target.handle]);
  }
  const replaced = device.attached;
  let hwpt = ctx.registry.byKernel(hwptId);
  let isNew = false;
  if (!hwpt) {
    // Attaching to an IOAS made the kernel create an automatic HWPT (§3.16).
    const auto: HwptPagingObject = {
      kind: 'HWPT_PAGING',
      handle: ctx.registry.nextHandle(),
      kernelId: hwptId,
      state: 'live',
      ioas: target.handle,
      automatic: true,
      nestParent: false,
    };
    ctx.registry.add(auto);
    hwpt = auto;
    isNew = true;
  }
  settleAttachment(ctx, device, hwpt.handle);
  const view = isNew ? created(ctx, hwpt.handle) : viewOf(ctx.registry, hwpt);
  return { hwpt: view, replaced: replaced === hwpt.handle ? undefined : replaced };
}

export async function detachDevice(
  env: OpEnv,
  ctx: Context,
  deviceHandle: Handle,
): Promise<{ detached: Handle | undefined; autoFreed: boolean }> {
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  try {
    await env.kernel.detachPt(device.file);
  } catch (err) {
    throw kernelFailure(err, `detaching DEVICE ${device.handle}`, [device.handle]);
  }
  const detached = device.attached;
  const autoFreed = settleAttachment(ctx, device, undefined);
  return { detached, autoFreed };
}

export async function allocIoas(env: OpEnv, ctx: Context): Promise<ObjectView> {
  env.admitObject(ctx);
  let id;
  try {
    id = await env.kernel.ioasAlloc(ctx.iommufd);
  } catch (err) {
    throw kernelFailure(err, 'allocating an IOAS', []);
  }
  const handle = ctx.registry.nextHandle();
  ctx.registry.add({ kind: 'IOAS', handle, kernelId: id, state: 'live', mappings: new Map() });
  return created(ctx, handle);
}

export interface AllocHwptArgs {
  device: Handle;
  kind: HwptKind | undefined;
  parent: Handle;
  dataType: number;
  data: Uint8Array;
  dirtyTracking: boolean;
}

export async function allocHwpt(env: OpEnv, ctx: Context, args: AllocHwptArgs): Promise<ObjectView> {
  if (args.kind === undefined) {
    throw new BrokerError('MISSING_FIELD', 'kind is required: PAGING, NEST_PARENT or NESTED', { field: 'kind' });
  }
  const device = ctx.registry.resolve(args.device, ['DEVICE'], 'device');
  const nested = args.kind === 'nested';
  if (nested) {
    if (args.dirtyTracking) throw new BrokerError('INVALID_FIELD', 'dirty_tracking: only PAGING and NEST_PARENT HWPTs track dirty pages', { field: 'dirty_tracking' });
    if (args.dataType === 0) throw new BrokerError('MISSING_FIELD', 'data_type is required for a NESTED HWPT (the IOMMU driver\'s stage-1 format)', { field: 'data_type' });
    if (args.data.length === 0) throw new BrokerError('MISSING_FIELD', 'data is required for a NESTED HWPT (the driver\'s stage-1 table description)', { field: 'data' });
  } else if (args.dataType !== 0 || args.data.length > 0) {
    throw new BrokerError('INVALID_FIELD', 'data_type/data: only a NESTED HWPT carries driver data', { field: args.dataType !== 0 ? 'data_type' : 'data' });
  }
  if (args.data.length > MAX_HWPT_DATA_BYTES) {
    throw new BrokerError('INVALID_FIELD', `data: ${args.data.length} bytes is over the ${MAX_HWPT_DATA_BYTES}-byte limit`, { field: 'data' });
  }
  const parentKinds: readonly ObjectKind[] = nested ? ['VIOMMU', 'HWPT_PAGING'] : ['IOAS'];
  const parent = ctx.registry.resolve(args.parent, parentKinds, 'parent');
  if (parent.kind === 'HWPT_PAGING' && !parent.nestParent) {
    // The kernel would say EINVAL; say which rule it is.
    throw new BrokerError('INVALID_FIELD', `parent: HWPT_PAGING ${parent.handle} is not a nest parent; allocate it with kind NEST_PARENT`, {
      field: 'parent',
      objects: [parent.handle],
    });
  }
  env.admitObject(ctx);
  const flags = (args.kind === 'nest_parent' ? HWPT_ALLOC_NEST_PARENT : 0) | (args.dirtyTracking ? HWPT_ALLOC_DIRTY_TRACKING : 0);
  let id;
  try {
    id = await env.kernel.hwptAlloc(ctx.iommufd, { flags, devId: device.kernelId, ptId: parent.kernelId, dataType: args.dataType, data: args.data });
  } catch (err) {
    throw kernelFailure(err, `allocating a ${args.kind} HWPT on ${parent.kind} ${parent.handle}`, [device.handle, parent.handle]);
  }
  const handle = ctx.registry.nextHandle();
  if (nested) {
    const obj: HwptNestedObject = { kind: 'HWPT_NESTED', handle, kernelId: id, state: 'live', parent: parent.handle, allocatedFor: device.handle };
    ctx.registry.add(obj);
  } else {
    const obj: HwptPagingObject = {
      kind: 'HWPT_PAGING',
      handle,
      kernelId: id,
      state: 'live',
      ioas: parent.handle,
      automatic: false,
      nestParent: args.kind === 'nest_parent',
    };
    ctx.registry.add(obj);
  }
  return created(ctx, handle);
}

export async function allocViommu(env: OpEnv, ctx: Context, deviceHandle: Handle, nestParentHandle: Handle, type: ViommuType | undefined): Promise<ObjectView> {
  if (type === undefined) throw new BrokerError('MISSING_FIELD', 'type is required: ARM_SMMUV3, TEGRA241_CMDQV or SELFTEST', { field: 'type' });
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  const parent = ctx.registry.resolve(nestParentHandle, ['HWPT_PAGING'], 'nest_parent');
  env.admitObject(ctx);
  let id;
  try {
    id = await env.kernel.viommuAlloc(ctx.iommufd, { type: VIOMMU_TYPE[type], devId: device.kernelId, hwptId: parent.kernelId });
  } catch (err) {
    if (isKernelError(err, 'EINVAL') && !parent.nestParent) {
      throw new BrokerError('KERNEL_REJECTED', `nest_parent: HWPT_PAGING ${parent.handle} was not allocated as a nest parent`, {
        errno: 'EINVAL',
        kernelOp: err.op,
        field: 'nest_parent',
        objects: [parent.handle],
      });
    }
    if (isKernelError(err, 'EOPNOTSUPP')) {
      throw new BrokerError('KERNEL_UNSUPPORTED', `the IOMMU behind DEVICE ${device.handle} has no ${type} vIOMMU support`, {
        errno: 'EOPNOTSUPP',
        kernelOp: err.op,
        field: 'type',
        objects: [device.handle],
      });
    }
    throw kernelFailure(err, `allocating a ${type} vIOMMU`, [device.handle, parent.handle]);
  }
  const handle = ctx.registry.nextHandle();
  ctx.registry.add({ kind: 'VIOMMU', handle, kernelId: id, state: 'live', nestParent: parent.handle });
  return created(ctx, handle);
}

export async function allocVdevice(env: OpEnv, ctx: Context, viommuHandle: Handle, deviceHandle: Handle, virtId: bigint): Promise<ObjectView> {
  const viommu = ctx.registry.resolve(viommuHandle, ['VIOMMU'], 'viommu');
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  // 0 reads as "no vDEVICE" in the kernel's event paths (kernel-uapi.md §6.3).
  if (virtId === 0n) throw new BrokerError('INVALID_FIELD', 'virt_id must be non-zero', { field: 'virt_id' });
  env.admitObject(ctx);
  let id;
  try {
    id = await env.kernel.vdeviceAlloc(ctx.iommufd, { viommuId: viommu.kernelId, devId: device.kernelId, virtId });
  } catch (err) {
    if (isKernelError(err, 'EEXIST')) {
      const clash = [...ctx.registry.liveOfKind('VDEVICE')].find((v) => v.viommu === viommu.handle && v.virtId === virtId);
      const existing = [...ctx.registry.liveOfKind('VDEVICE')].find((v) => v.device === device.handle);
      const message = clash
        ? `virt_id 0x${virtId.toString(16)} is already used by VDEVICE ${clash.handle} on VIOMMU ${viommu.handle}`
        : `DEVICE ${device.handle} already has VDEVICE ${existing?.handle ?? '?'}; a device has one vDEVICE`;
      throw new BrokerError('ALREADY_EXISTS', message, {
        errno: 'EEXIST',
        kernelOp: err.op,
        field: clash ? 'virt_id' : 'device',
        objects: [viommu.handle, device.handle, ...(clash ? [clash.handle] : existing ? [existing.handle] : [])],
      });
    }
    throw kernelFailure(err, `allocating a vDEVICE for DEVICE ${device.handle} on VIOMMU ${viommu.handle}`, [viommu.handle, device.handle]);
  }
  const handle = ctx.registry.nextHandle();
  ctx.registry.add({ kind: 'VDEVICE', handle, kernelId: id, state: 'live', viommu: viommu.handle, device: device.handle, virtId });
  return created(ctx, handle);
}

export async function destroyObject(env: OpEnv, ctx: Context, handle: Handle): Promise<void> {
  const obj = ctx.registry.resolve(handle, ['IOAS', 'HWPT_PAGING', 'HWPT_NESTED', 'VIOMMU', 'VDEVICE', 'DEVICE'], 'handle');
  if (obj.kind === 'DEVICE') {
    throw new BrokerError('NOT_DESTROYABLE', `handle: ${labelOf('DEVICE')} is released with UnbindDevice, which also tears down what depends on it`, {
      field: 'handle',
      objects: [handle],
    });
  }
  try {
    await env.kernel.destroy(ctx.iommufd, obj.kernelId);
  } catch (err) {
    const e = inUse(ctx, err, handle, `destroying ${obj.kind} ${handle}`);
    if (obj.kind === 'HWPT_PAGING' && obj.automatic && e.reason === 'OBJECT_IN_USE') {
      throw new BrokerError(e.reason, `${e.message}; an automatic HWPT is freed when its last device detaches`, {
        errno: e.errno,
        kernelOp: e.kernelOp,
        objects: e.objects,
      });
    }
    throw e;
  }
  ctx.registry.remove(handle);
  // The kernel unmapped everything in the IOAS with it (§3.1).
  if (obj.kind === 'IOAS') env.pinned.release(ctx, mappedBytes(obj));
  ctx.emit({ type: 'destroyed', handle, kind: obj.kind });
}

export function mappedBytes(ioas: IoasObject): bigint {
  let n = 0n;
  for (const m of ioas.mappings.values()) n += m.length;
  return n;
}

export async function getHwInfo(env: OpEnv, ctx: Context, deviceHandle: Handle): Promise<HwInfo> {
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  try {
    return await env.kernel.getHwInfo(ctx.iommufd, device.kernelId);
  } catch (err) {
    throw kernelFailure(err, `reading IOMMU hw info for DEVICE ${device.handle}`, [device.handle]);
  }
}

/** What a device is attached to, so a later step can be undone (ApplyTopology). */
export interface AttachmentBefore {
  hwpt: Handle;
  /** Set when that HWPT was automatic: the kernel frees it on replace, so undo re-attaches to its IOAS. */
  ioas: Handle | undefined;
}

export function attachmentTarget(ctx: Context, deviceHandle: Handle): AttachmentBefore | undefined {
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  const hwpt = device.attached === undefined ? undefined : ctx.registry.get(device.attached);
  if (!hwpt) return undefined;
  return { hwpt: hwpt.handle, ioas: hwpt.kind === 'HWPT_PAGING' && hwpt.automatic ? hwpt.ioas : undefined };
}

export async function restoreAttachment(env: OpEnv, ctx: Context, deviceHandle: Handle, before: AttachmentBefore | undefined): Promise<void> {
  if (!before) {
    await detachDevice(env, ctx, deviceHandle);
    return;
  }
  const target = ctx.registry.get(before.hwpt)?.state === 'live' ? before.hwpt : before.ioas;
  if (target === undefined) throw new BrokerError('INTERNAL', `cannot restore the attachment of DEVICE ${deviceHandle}`);
  await attachDevice(env, ctx, deviceHandle, target);
}

/**
 * Closes a device fd bound by a step being undone. Nothing depends on it any
 * more (later steps were undone first), so this is the last step of an
 * unbind without the rest of the teardown.
 */
export async function releaseDevice(env: OpEnv, ctx: Context, deviceHandle: Handle): Promise<void> {
  const device = ctx.registry.resolve(deviceHandle, ['DEVICE'], 'device');
  await env.kernel.closeDevice(device.file);
  settleAttachment(ctx, device, undefined);
  ctx.registry.remove(device.handle);
  const inv = env.inventory.resolve(device.deviceId, 'device_id');
  if (inv.boundTo === ctx.id) inv.boundTo = undefined;
  ctx.emit({ type: 'destroyed', handle: device.handle, kind: 'DEVICE' });
}
