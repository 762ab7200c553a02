/**
 * VFIO device cdev operations: bind, attach/replace, detach and the unbind
 * that closing the device fd performs (kernel-uapi.md §3.15–3.17, §4.3–4.5).
 *
 * Attachments are per IOMMU group, as in the kernel's `iommufd_group`: the
 * first device of a group really attaches the group, siblings can only join
 * the same HWPT, and a replace moves the whole group.
 */
import { HWPT_ALLOC_DIRTY_TRACKING, type DeviceFile, type IommufdFile } from '../types.js';
import { driverClaimsDefaultDomain, type SimPciFunction } from './inventory.js';
import { createPaging } from './iommufd-ioctls.js';
import {
  fail,
  MOCK_FLAGS_DEVICE_NO_DIRTY,
  type DeviceObject,
  type GroupAttachment,
  type HwptNestedObject,
  type HwptObject,
  type IoasObject,
  type IommufdContext,
} from './objects.js';
import type { ProfileTraits } from './profiles.js';

export interface IommufdFileState {
  readonly handle: IommufdFile;
  /** The daemon's fd is still open. */
  fdOpen: boolean;
  /**
   * References on the `struct file`: the fd, plus two per bound device (the
   * device file and the DEVICE object each hold one, §3.15, §4.4). The
   * context is released when this reaches 0.
   */
  refs: number;
  readonly ctx: IommufdContext;
}

export interface DeviceBinding {
  readonly file: IommufdFileState;
  readonly dev: DeviceObject;
}

export interface DeviceFileState {
  readonly handle: DeviceFile;
  readonly pci: SimPciFunction;
  binding: DeviceBinding | undefined;
}

/** What the VFIO side needs to know about the rest of the host. */
export interface Host {
  readonly traits: ProfileTraits;
  readonly inventory: readonly SimPciFunction[];
  /** Inventory indexes of one IOMMU group's functions: drivers change, membership does not. */
  groupMembers(group: number): readonly number[];
  /**
   * The bound device files of one IOMMU group, kept by bind and unbind below.
   * Per group like the kernel's `iommufd_group`, so a bind looks only at its
   * siblings, not at every device file on the host.
   */
  boundInGroup(group: number): Set<BoundDeviceFile>;
}

export type BoundDeviceFile = DeviceFileState & { binding: DeviceBinding };

/** VFIO_DEVICE_BIND_IOMMUFD; `file` is undefined when the iommufd fd is not open. */
export function bind(host: Host, df: DeviceFileState, file: IommufdFileState | undefined): DeviceObject {
  if (df.binding) fail('EINVAL', 'this device file is already bound');
  if (file === undefined) fail('EBADF', 'iommufd is not an open file');
  const { pci } = df;
  const bound = host.boundInGroup(pci.iommuGroup);
  // The cdev path allows one open_count per device: a second bound file is EINVAL.
  for (const o of bound) if (o.pci.bdf === pci.bdf) fail('EINVAL', `${pci.bdf} is bound through another file`);
  // iommu_device_claim_dma_owner: the group must be unowned or owned by this iommufd.
  for (const i of host.groupMembers(pci.iommuGroup)) {
    const sib = host.inventory[i]!;
    if (sib.bdf !== pci.bdf && driverClaimsDefaultDomain(sib)) {
      fail('EPERM', `group ${pci.iommuGroup} sibling ${sib.bdf} is on kernel driver ${sib.driver}`);
    }
  }
  for (const o of bound) if (o.binding.file.ctx !== file.ctx) fail('EPERM', `group ${pci.iommuGroup} is owned by another iommufd`);
  const dev = file.ctx.insert(
    // users 1: the VFIO driver's reference, held until unbind (§3.1 "DEVICE ... always EBUSY").
    (id): DeviceObject => ({ id, type: 'DEVICE', users: 1, pci, destroying: false, vdevs: new Set() }),
  );
  file.refs += 2;
  df.binding = { file, dev };
  bound.add(df as BoundDeviceFile);
  return dev;
}

function requireBinding(df: DeviceFileState): DeviceBinding {
  // Before a successful bind every other ioctl on the device fd is EINVAL (§3.15).
  if (!df.binding) fail('EINVAL', 'device file is not bound to an iommufd');
  return df.binding;
}

/** VFIO_DEVICE_ATTACH_IOMMUFD_PT: attach, or replace when already attached (§3.16). */
export function attach(host: Host, df: DeviceFileState, ptId: number): number {
  const { file, dev } = requireBinding(df);
  return changePt(host, file.ctx, dev, ptId, isAttached(file.ctx, dev));
}

function isAttached(ctx: IommufdContext, dev: DeviceObject): boolean {
  return ctx.groups.get(dev.pci.iommuGroup)?.devices.has(dev) ?? false;
}

/**
 * `iommufd_device_change_pt`, shared by VFIO attach and the selftest
 * MOCK_DOMAIN / MOCK_DOMAIN_REPLACE commands (§6.2): `attached` picks
 * replace over attach. Returns the HWPT the device ends up on.
 */
export function changePt(host: Host, ctx: IommufdContext, dev: DeviceObject, ptId: number, attached: boolean): number {
  const pt = ctx.lookup(ptId);
  if (pt === undefined) fail('ENOENT', `pt_id ${ptId} does not name an object`);
  switch (pt.type) {
    case 'HWPT_PAGING':
    case 'HWPT_NESTED':
      if (attached) replace(host, ctx, dev, pt);
      else doAttach(host, ctx, dev, pt);
      return pt.id;
    case 'IOAS':
      return autoDomain(host, ctx, dev, pt, attached).id;
    default:
      return fail('EINVAL', `pt_id ${ptId} is a ${pt.type}`);
  }
}

/** `iommufd_hw_pagetable_attach` for a device not yet attached. */
function doAttach(host: Host, ctx: IommufdContext, dev: DeviceObject, hwpt: HwptObject): void {
  const group = dev.pci.iommuGroup;
  const current = ctx.groups.get(group);
  if (current && current.hwpt !== hwpt) {
    fail('EINVAL', `IOMMU group ${group} is attached to HWPT ${current.hwpt.id}`);
  }
  if (current) {
    // Siblings follow the group's existing attachment; the driver is not called again.
    current.devices.add(dev);
  } else {
    mockAttachGroup(host, dev, hwpt);
    ctx.groups.set(group, { hwpt, devices: new Set([dev]) });
  }
  // Each attachment holds the HWPT and the DEVICE (§4.2).
  ctx.hold(hwpt);
  ctx.hold(dev);
}

/** `iommufd_device_do_replace`: the whole group moves, refcounts move with it. */
function replace(host: Host, ctx: IommufdContext, dev: DeviceObject, hwpt: HwptObject): void {
  const attachment = ctx.groups.get(dev.pci.iommuGroup) as GroupAttachment;
  const old = attachment.hwpt;
  if (old === hwpt) return;
  mockAttachGroup(host, dev, hwpt);
  attachment.hwpt = hwpt;
  const n = attachment.devices.size;
  for (let i = 0; i < n; i++) ctx.hold(hwpt);
  // put() destroys an automatic HWPT once its last attachment is gone.
  for (let i = 0; i < n; i++) ctx.put(old);
}

/**
 * Attaching to an IOAS: reuse the first automatic HWPT of that IOAS that
 * accepts the device (EINVAL means "incompatible, try the next"), otherwise
 * allocate a new automatic one. Manual HWPTs are never picked (§3.16).
 */
function autoDomain(
  host: Host,
  ctx: IommufdContext,
  dev: DeviceObject,
  ioas: IoasObject,
  attached: boolean,
): HwptObject {
  const groupHwpt = ctx.groups.get(dev.pci.iommuGroup)?.hwpt;
  for (const candidate of ioas.hwpts) {
    if (!candidate.auto) continue;
    if (attached) {
      replace(host, ctx, dev, candidate);
      return candidate;
    }
    // The mock domain fits every device; only a group attached elsewhere refuses.
    if (groupHwpt !== undefined && groupHwpt !== candidate) continue;
    doAttach(host, ctx, dev, candidate);
    return candidate;
  }
  if (!attached && groupHwpt !== undefined) {
    // The new domain would be aborted by its immediate attach, leaving no trace.
    fail('EINVAL', `IOMMU group ${dev.pci.iommuGroup} is attached to HWPT ${groupHwpt.id}`);
  }
  // Allocated before the old HWPT of a replace is freed, so it gets a fresh ID.
  const hwpt = createPaging(ctx, ioas, 0, true);
  try {
    if (attached) replace(host, ctx, dev, hwpt);
    else doAttach(host, ctx, dev, hwpt);
  } catch (err) {
    ctx.remove(hwpt, 'free');
    throw err;
  }
  return hwpt;
}

/**
 * The mock driver's `attach_dev` (`mock_domain_nop_attach`), run for every
 * device of the IOMMU group, in its order of checks (§6.3):
 * - a dirty-tracking domain on a MOCK_FLAGS_DEVICE_NO_DIRTY device is EINVAL;
 * - a nested HWPT made through a vIOMMU needs a vDEVICE for the device on
 *   that vIOMMU, otherwise ENOENT (`iommufd_viommu_get_vdev_id`).
 */
function mockAttachGroup(host: Host, dev: DeviceObject, hwpt: HwptObject): void {
  const vdevBdfs =
    hwpt.type === 'HWPT_NESTED' && hwpt.viommu ? new Set([...hwpt.viommu.vdevs.values()].map((v) => v.bdf)) : undefined;
  for (const member of groupMembers(host, dev)) {
    if (hwpt.type === 'HWPT_PAGING' && hwpt.flags & HWPT_ALLOC_DIRTY_TRACKING && member.noDirty) {
      fail('EINVAL', `${member.bdf} cannot use dirty-tracking HWPT ${hwpt.id}`);
    }
    if (vdevBdfs && !vdevBdfs.has(member.bdf)) {
      fail('ENOENT', `${member.bdf} has no vDEVICE on vIOMMU ${(hwpt as HwptNestedObject).viommu?.id}`);
    }
  }
}

/** The struct devices of `dev`'s IOMMU group: a mock device is alone in its group (generic_device_group). */
function groupMembers(host: Host, dev: DeviceObject): { bdf: string; noDirty: boolean }[] {
  if (dev.mock) return [{ bdf: dev.pci.bdf, noDirty: (dev.mock.flags & MOCK_FLAGS_DEVICE_NO_DIRTY) !== 0 }];
  return host.groupMembers(dev.pci.iommuGroup).map((i) => ({ bdf: host.inventory[i]!.bdf, noDirty: false }));
}

/** VFIO_DEVICE_DETACH_IOMMUFD_PT: 0 even when nothing is attached (§3.17). */
export function detach(df: DeviceFileState): void {
  const { file, dev } = requireBinding(df);
  detachDevice(file.ctx, dev);
}

function detachDevice(ctx: IommufdContext, dev: DeviceObject): void {
  const group = dev.pci.iommuGroup;
  const attachment = ctx.groups.get(group);
  if (!attachment?.devices.has(dev)) return;
  attachment.devices.delete(dev);
  // The last device of the group really detaches it (DMA blocked).
  if (attachment.devices.size === 0) ctx.groups.delete(group);
  ctx.put(dev);
  ctx.put(attachment.hwpt);
}

/**
 * What closing a bound device fd does (§4.5 steps 2–3, §4.3): unbind the
 * DEVICE, then drop the two file references. Returns the iommufd file
 * state, whose reference count the caller checks for final release.
 */
export function unbind(host: Host, df: DeviceFileState): IommufdFileState | undefined {
  const binding = df.binding;
  if (!binding) return undefined;
  const { file, dev } = binding;
  unbindDevice(host, file.ctx, dev);
  df.binding = undefined;
  host.boundInGroup(df.pci.iommuGroup).delete(df as BoundDeviceFile);
  file.refs -= 2;
  return file;
}

/**
 * `vfio_iommufd_physical_unbind` / `iommufd_selftest_destroy`: detach, drop
 * the driver's DEVICE reference, deal with the vDEVICE as the profile says,
 * then free the DEVICE ID.
 */
export function unbindDevice(host: Host, ctx: IommufdContext, dev: DeviceObject): void {
  detachDevice(ctx, dev);
  dev.destroying = true;
  ctx.put(dev);
  for (const vdev of [...dev.vdevs]) {
    if (host.traits.vdeviceBoundToDevice) {
      // 6.17+: force-destroyed with REMOVE_OBJ_TOMBSTONE; ENOENT for good, ID never reused.
      ctx.remove(vdev, 'tombstone');
    } else {
      // 6.13–6.16: the vDEVICE only held the struct device and lives on.
      vdev.device = undefined;
      dev.vdevs.delete(vdev);
    }
  }
  ctx.remove(dev, 'free');
}

export function attachedHwpt(df: DeviceFileState): HwptObject | undefined {
  if (!df.binding) return undefined;
  const { file, dev } = df.binding;
  const attachment = file.ctx.groups.get(dev.pci.iommuGroup);
  return attachment?.devices.has(dev) ? attachment.hwpt : undefined;
}
