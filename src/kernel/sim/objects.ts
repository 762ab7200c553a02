/**
 * One iommufd context: the object table, its reference counts and the one
 * place where references are dropped. Mirrors `struct iommufd_ctx` and
 * `iommufd_object_ops[]` (kernel-uapi.md §2, §3.1, §4.1–4.4).
 *
 * `users` here counts holders *other than* the table itself, so the kernel's
 * "users == 1" destroyability test becomes `users === 0`.
 */
import type { ErrnoName } from '../errno.js';
import { IdAllocator } from './ids.js';
import type { SimPciFunction } from './inventory.js';

export type SimObjectType = 'DEVICE' | 'IOAS' | 'HWPT_PAGING' | 'HWPT_NESTED' | 'VIOMMU' | 'VDEVICE' | 'SELFTEST';

/** MOCK_FLAGS_DEVICE_NO_DIRTY (iommufd_test.h): the mock device has no dirty tracking (§6.2). */
export const MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0;
/** MOCK_FLAGS_DEVICE_PASID: the mock device has PASID width MOCK_PASID_WIDTH = 20 (§6.2). */
export const MOCK_FLAGS_DEVICE_PASID = 1 << 2;

interface ObjectBase {
  readonly id: number;
  /** Holders other than the ID table (§4.2). */
  users: number;
}

export interface DeviceObject extends ObjectBase {
  readonly type: 'DEVICE';
  /**
   * The struct device: a PCI function of the inventory, or for a selftest
   * mock device a stand-in named `iommufd_mockN` in its own IOMMU group
   * behind the mock IOMMU instance (§6.2).
   */
  readonly pci: SimPciFunction;
  /** Set for an IOMMUFD_TEST mock device: its MOCK_FLAGS_DEVICE_* bits (§6.2). */
  readonly mock?: { readonly flags: number };
  /** `idev->destroying`: set by unbind's pre_destroy, blocks new vDEVICEs (§4.3 step 2). */
  destroying: boolean;
  /** vDEVICEs created for this device (at most one from 6.17). */
  readonly vdevs: Set<VdeviceObject>;
}

export interface IoasObject extends ObjectBase {
  readonly type: 'IOAS';
  /** `ioas->hwpt_list`, in creation order: auto-domain search walks it (§3.16). */
  readonly hwpts: HwptPagingObject[];
  /** `iopt->area_itree`: the mappings, sorted by IOVA, never overlapping (§3.3–3.5). */
  readonly areas: IoasArea[];
}

/** One IOAS_MAP_FILE mapping (an `iopt_area` over file pages). */
export interface IoasArea {
  readonly iova: bigint;
  readonly length: bigint;
  /** Byte offset in the file. */
  readonly start: bigint;
  readonly readable: boolean;
  readonly writeable: boolean;
  /** The file's identity (the kernel holds a reference on the file itself). */
  readonly file: { readonly dev: number; readonly ino: number };
}

export interface HwptPagingObject extends ObjectBase {
  readonly type: 'HWPT_PAGING';
  readonly ioas: IoasObject;
  readonly auto: boolean;
  readonly nestParent: boolean;
  readonly flags: number;
}

export interface HwptNestedObject extends ObjectBase {
  readonly type: 'HWPT_NESTED';
  /** The stage-2 parent; for a vIOMMU-backed nested HWPT this is `viommu.hwpt`. */
  readonly parent: HwptPagingObject;
  readonly viommu: ViommuObject | undefined;
}

export interface ViommuObject extends ObjectBase {
  readonly type: 'VIOMMU';
  readonly hwpt: HwptPagingObject;
  /** Physical IOMMU instance, taken from the device passed at allocation. */
  readonly iommu: string;
  /** `viommu->vdevs`, keyed by virt_id (unique per vIOMMU, §3.11). */
  readonly vdevs: Map<bigint, VdeviceObject>;
}

export interface VdeviceObject extends ObjectBase {
  readonly type: 'VDEVICE';
  readonly viommu: ViommuObject;
  readonly virtId: bigint;
  /** The struct device it stands for; survives unbind on 6.13 (§4.3). */
  readonly bdf: string;
  /** The DEVICE object while it is bound; cleared by unbind. */
  device: DeviceObject | undefined;
  /** 6.17+: the vDEVICE holds the DEVICE until it is destroyed or tombstoned. */
  readonly pinsDevice: boolean;
}

/**
 * IOMMUFD_OBJ_SELFTEST owning a mock device (§6.2): it plays the VFIO device
 * fd. Nothing holds it, so DESTROY always succeeds, and destroying it detaches
 * and unbinds its DEVICE (`iommufd_selftest_destroy`, the full §4.3 path).
 */
export interface SelftestObject extends ObjectBase {
  readonly type: 'SELFTEST';
  readonly device: DeviceObject;
  /** Detach, unbind and unregister the mock device; run once when the object goes away. */
  readonly onDestroy: () => void;
}

export type SimObject =
  | DeviceObject
  | IoasObject
  | HwptPagingObject
  | HwptNestedObject
  | ViommuObject
  | VdeviceObject
  | SelftestObject;

export type HwptObject = HwptPagingObject | HwptNestedObject;

type ObjectOfType<K extends SimObjectType> = Extract<SimObject, { type: K }>;

interface TypeOps<T extends SimObject> {
  /** Objects T keeps a `users` reference on for its whole life (§4.2). */
  holds(obj: T): SimObject[];
  /** Detaches T from the driver-side state of other objects when it goes away. */
  unlink(obj: T): void;
}

/**
 * Per-type behaviour, like `iommufd_object_ops[]`. Attachments are not in
 * here because they come and go without the object being destroyed; see
 * `IommufdContext.hold/put`.
 */
const TYPE_OPS: { readonly [K in SimObjectType]: TypeOps<ObjectOfType<K>> } = {
  // A DEVICE holds the iommufd *file*, not an object: see the file refcount.
  DEVICE: { holds: () => [], unlink: () => {} },
  IOAS: { holds: () => [], unlink: () => {} },
  HWPT_PAGING: {
    holds: (h) => [h.ioas],
    unlink: (h) => {
      const i = h.ioas.hwpts.indexOf(h);
      if (i >= 0) h.ioas.hwpts.splice(i, 1);
    },
  },
  // Through a vIOMMU the nested HWPT holds the vIOMMU, not the parent directly.
  HWPT_NESTED: { holds: (h) => [h.viommu ?? h.parent], unlink: () => {} },
  VIOMMU: { holds: (v) => [v.hwpt], unlink: () => {} },
  VDEVICE: {
    holds: (v) => (v.pinsDevice && v.device ? [v.viommu, v.device] : [v.viommu]),
    // Frees virt_id on the vIOMMU and clears idev->vdev (§4.3 step 4).
    unlink: (v) => {
      v.viommu.vdevs.delete(v.virtId);
      v.device?.vdevs.delete(v);
    },
  },
  // The kernel frees the SELFTEST id first (xas_store NULL), then runs the
  // destroy op that unbinds the device; the order of the frees is invisible.
  SELFTEST: { holds: () => [], unlink: (s) => s.onDestroy() },
};

function opsOf<T extends SimObject>(obj: T): TypeOps<T> {
  return TYPE_OPS[obj.type] as unknown as TypeOps<T>;
}

/** Thrown inside the sim; converted to KernelError at the backend boundary. */
export class SimFailure extends Error {
  constructor(
    readonly errno: ErrnoName,
    readonly detail?: string,
  ) {
    super(detail ? `${errno} (${detail})` : errno);
  }
}

export function fail(errno: ErrnoName, detail?: string): never {
  throw new SimFailure(errno, detail);
}

/** The single group-wide attachment of one IOMMU group in this context (`igroup->pasid_attach[0]`). */
export interface GroupAttachment {
  hwpt: HwptObject;
  /** `attach->device_array`: the devices that attached themselves. */
  readonly devices: Set<DeviceObject>;
}

export class IommufdContext {
  private readonly ids = new IdAllocator();
  private readonly table = new Map<number, SimObject>();
  /** Keyed by IOMMU group number; only one context can own a group (§3.15). */
  readonly groups = new Map<number, GroupAttachment>();
  /** Set once the last file reference is gone and everything was freed (§4.4). */
  released = false;

  /**
   * Allocates the lowest free ID, builds the object and takes the references
   * it holds. Builders must not fail: callers validate first, which is the
   * sim's equivalent of the kernel's abort-on-failure (§2 step 7).
   */
  insert<T extends SimObject>(build: (id: number) => T): T {
    return this.publish(this.reserve(), build);
  }

  /**
   * Reserves the lowest free ID without publishing an object, like
   * `iommufd_object_alloc` storing XA_ZERO_ENTRY: lookups of it give ENOENT
   * until `publish`. Needed where the kernel allocates an ID before other
   * objects of the same call (MOCK_DOMAIN: stdev, then idev, then the HWPT).
   */
  reserve(): number {
    const id = this.ids.alloc();
    if (id === undefined) fail('EBUSY', 'object ID space exhausted');
    return id;
  }

  /** Publishes an object under a reserved ID (`iommufd_object_finalize`). */
  publish<T extends SimObject>(id: number, build: (id: number) => T): T {
    if (this.table.has(id)) throw new Error(`sim: publishing over live id ${id}`);
    const obj = build(id);
    for (const held of opsOf(obj).holds(obj)) held.users++;
    this.table.set(id, obj);
    return obj;
  }

  /** Gives back a reserved, never published ID (`iommufd_object_abort`). */
  unreserve(id: number): void {
    if (this.table.has(id)) throw new Error(`sim: unreserving live id ${id}`);
    this.ids.free(id);
  }

  /** Lookup by ID and expected type; unknown, 0, tombstoned and wrong type are all ENOENT (§2). */
  get<K extends SimObjectType>(id: number, type: K): ObjectOfType<K> {
    const obj = this.lookup(id);
    if (obj === undefined || obj.type !== type) fail('ENOENT', `no ${type} with id ${id}`);
    return obj as ObjectOfType<K>;
  }

  /** `IOMMUFD_OBJ_ANY` lookup; tombstones resolve to nothing. */
  lookup(id: number): SimObject | undefined {
    return this.table.get(id);
  }

  /** IOMMU_DESTROY: no type check, EBUSY while anything else holds it (§3.1). */
  destroyById(id: number): void {
    const obj = this.lookup(id);
    if (obj === undefined) fail('ENOENT', `no object with id ${id}`);
    if (obj.users !== 0) fail('EBUSY', `${obj.type} ${id} has ${obj.users} other holder(s)`);
    this.remove(obj, 'free');
  }

  /**
   * The one place objects leave the table and drop what they hold. `tombstone`
   * keeps the ID reserved (REMOVE_OBJ_TOMBSTONE, §4.3 step 3).
   */
  remove(obj: SimObject, mode: 'free' | 'tombstone'): void {
    if (this.table.get(obj.id) !== obj) throw new Error(`sim: removing stale ${obj.type} ${obj.id}`);
    if (obj.users !== 0) throw new Error(`sim: removing ${obj.type} ${obj.id} with ${obj.users} holder(s)`);
    this.table.delete(obj.id);
    for (const held of opsOf(obj).holds(obj)) this.drop(held);
    opsOf(obj).unlink(obj);
    if (mode === 'tombstone') this.ids.tombstone(obj.id);
    else this.ids.free(obj.id);
  }

  /** A transient holder such as a device attachment takes a reference. */
  hold(obj: SimObject): void {
    obj.users++;
  }

  /**
   * Drops a transient reference. An automatic HWPT left with no users is
   * destroyed at once (`iommufd_hw_pagetable_put`, §3.16–3.17).
   */
  put(obj: SimObject): void {
    this.drop(obj);
    if (obj.type === 'HWPT_PAGING' && obj.auto && obj.users === 0) this.remove(obj, 'free');
  }

  private drop(obj: SimObject): void {
    if (obj.users <= 0) throw new Error(`sim: ${obj.type} ${obj.id} refcount underflow`);
    obj.users--;
  }

  /**
   * Final release of the context: destroy leaf-first, repeatedly taking
   * objects nothing else holds, then forget the tombstones (§4.4).
   */
  release(): void {
    while (this.table.size > 0) {
      const leaves = [...this.table.values()].filter((o) => o.users === 0);
      if (leaves.length === 0) throw new Error('sim: reference cycle at iommufd release');
      for (const o of leaves) if (this.table.get(o.id) === o && o.users === 0) this.remove(o, 'free');
    }
    this.groups.clear();
    this.ids.reset();
    this.released = true;
  }

  list(): SimObject[] {
    return [...this.table.values()].sort((a, b) => a.id - b.id);
  }

  tombstones(): number[] {
    return this.ids.tombstones();
  }

  get size(): number {
    return this.table.size;
  }
}
