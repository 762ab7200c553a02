/**
 * The broker's view of iommufd objects, and the one table of object types.
 *
 * Like drivers/iommu/iommufd/main.c's object-ops table, each type declares
 * what it holds (its outgoing `users` references, kernel-uapi.md §4.2) and
 * its teardown phase. The teardown order lives in teardown.ts and nowhere else.
 */
import type { DeviceFile, KernelObjectId } from '../kernel/types.js';
import type { DeviceId, Handle } from './ids.js';

export type ObjectKind = 'DEVICE' | 'IOAS' | 'HWPT_PAGING' | 'HWPT_NESTED' | 'VIOMMU' | 'VDEVICE';
export type ObjectState = 'live' | 'tombstoned';

interface ObjectBase {
  readonly handle: Handle;
  readonly kernelId: KernelObjectId;
  state: ObjectState;
}

export interface DeviceObject extends ObjectBase {
  readonly kind: 'DEVICE';
  readonly deviceId: DeviceId;
  readonly file: DeviceFile;
  /** The HWPT this device is attached to; the attachment holds it. */
  attached: Handle | undefined;
}

export interface IoasObject extends ObjectBase {
  readonly kind: 'IOAS';
  /** Guest memory mapped into it (MapMemory), by IOVA; their bytes are pinned against the quota. */
  readonly mappings: Map<bigint, IoasMapping>;
}

export interface IoasMapping {
  readonly iova: bigint;
  readonly length: bigint;
}

export interface HwptPagingObject extends ObjectBase {
  readonly kind: 'HWPT_PAGING';
  readonly ioas: Handle;
  /** Created by the kernel on attach to an IOAS; freed when its last device leaves. */
  readonly automatic: boolean;
  readonly nestParent: boolean;
}

export interface HwptNestedObject extends ObjectBase {
  readonly kind: 'HWPT_NESTED';
  /** A vIOMMU or a nest-parent HWPT_PAGING. */
  readonly parent: Handle;
  /** The device it was allocated for; its unbind destroys it (teardown step 3). */
  readonly allocatedFor: Handle;
}

export interface ViommuObject extends ObjectBase {
  readonly kind: 'VIOMMU';
  readonly nestParent: Handle;
}

export interface VdeviceObject extends ObjectBase {
  readonly kind: 'VDEVICE';
  readonly viommu: Handle;
  readonly device: Handle;
  readonly virtId: bigint;
}

export type BrokerObject =
  | DeviceObject
  | IoasObject
  | HwptPagingObject
  | HwptNestedObject
  | ViommuObject
  | VdeviceObject;

export type ObjectOfKind<K extends ObjectKind> = Extract<BrokerObject, { kind: K }>;

interface ObjectTypeOps<K extends ObjectKind> {
  /** Article-ready name for messages. */
  readonly label: string;
  /** Outgoing references, mirroring the kernel's `users` counts. */
  holds(obj: ObjectOfKind<K>): Handle[];
}

type ObjectTypeTable = { readonly [K in ObjectKind]: ObjectTypeOps<K> };

export const OBJECT_TYPES: ObjectTypeTable = {
  DEVICE: { label: 'a DEVICE', holds: (d) => (d.attached === undefined ? [] : [d.attached]) },
  IOAS: { label: 'an IOAS', holds: () => [] },
  HWPT_PAGING: { label: 'a HWPT_PAGING', holds: (h) => [h.ioas] },
  HWPT_NESTED: { label: 'a HWPT_NESTED', holds: (h) => [h.parent] },
  VIOMMU: { label: 'a VIOMMU', holds: (v) => [v.nestParent] },
  VDEVICE: { label: 'a VDEVICE', holds: (v) => [v.viommu, v.device] },
};

export function holdsOf(obj: BrokerObject): Handle[] {
  if (obj.state === 'tombstoned') return [];
  // The table is indexed by the object's own kind, so the cast is exact.
  return (OBJECT_TYPES[obj.kind] as ObjectTypeOps<ObjectKind>).holds(obj as never);
}

export function labelOf(kind: ObjectKind): string {
  return OBJECT_TYPES[kind].label;
}
