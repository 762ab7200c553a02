/**
 * One context's objects and the reference graph between them.
 *
 * The registry only changes after the kernel call it mirrors succeeded, so it
 * always equals the kernel's state for this context's iommufd.
 */
import type { KernelObjectId } from '../kernel/types.js';
import { BrokerError } from './errors.js';
import type { ContextId, Handle } from './ids.js';
import { holdsOf, labelOf, type BrokerObject, type DeviceObject, type ObjectKind, type ObjectOfKind } from './objects.js';

const NONE: ReadonlySet<BrokerObject> = new Set();

/**
 * Live objects across one tenant's open contexts: the figure the object
 * quota checks on every create, kept as the registries change rather than
 * summed over the tenant's contexts each time.
 */
export class LiveTally {
  live = 0;
}

/** Only a refusal needs this wording, so it is built only then (every handle lookup passes through resolve). */
function expected(kinds: readonly ObjectKind[]): string {
  return kinds.map(labelOf).join(' or ');
}

export class Registry {
  private readonly objects = new Map<Handle, BrokerObject>();
  private readonly heldBy = new Map<Handle, Set<Handle>>();
  private readonly byKernelId = new Map<KernelObjectId, Handle>();
  /** Live objects by kind: teardown asks for each kind in turn, and most contexts have none of most kinds. */
  private readonly liveByKind = new Map<ObjectKind, Set<BrokerObject>>();
  /** The tenant's tally while the context is served (join/leave); it moves with liveByKind. */
  private tally: LiveTally | undefined;
  private lastHandle = 0;
  /** Handles changed since the restart journal last looked (journal-recorder.ts); undefined when not journaling. */
  changed: Set<Handle> | undefined;

  constructor(readonly contextId: ContextId) {}

  /** Handles only ever grow: a dead handle can never come to name a new object. */
  nextHandle(): Handle {
    return ++this.lastHandle as Handle;
  }

  /** The last handle handed out (the restart journal keeps it so handles stay unique across restarts). */
  get lastIssued(): number {
    return this.lastHandle;
  }

  get liveCount(): number {
    let live = 0;
    for (const ofKind of this.liveByKind.values()) live += ofKind.size;
    return live;
  }

  /** Counts this context's live objects, now and as they change, in its tenant's tally. */
  join(tally: LiveTally): void {
    this.leave();
    this.tally = tally;
    tally.live += this.liveCount;
  }

  /** Takes what is still live here out of the tally: the closed context's iommufd took it with it. */
  leave(): void {
    if (!this.tally) return;
    this.tally.live -= this.liveCount;
    this.tally = undefined;
  }

  /** Adds a new object, or one restored from the journal; a restored tombstone is dead and holds nothing. */
  add(obj: BrokerObject): void {
    this.changed?.add(obj.handle);
    this.objects.set(obj.handle, obj);
    if (obj.state !== 'live') return;
    this.byKernelId.set(obj.kernelId, obj.handle);
    let ofKind = this.liveByKind.get(obj.kind);
    if (!ofKind) this.liveByKind.set(obj.kind, (ofKind = new Set()));
    ofKind.add(obj);
    if (this.tally) this.tally.live++;
    for (const held of holdsOf(obj)) this.addHolder(held, obj.handle);
  }

  /** Forgets an object the kernel no longer has (destroyed, or freed automatically). */
  remove(handle: Handle): void {
    const obj = this.objects.get(handle);
    if (!obj) return;
    this.changed?.add(handle);
    this.dropReferences(obj);
    this.objects.delete(handle);
    this.heldBy.delete(handle);
  }

  /**
   * Keeps a dead vDEVICE's handle so later requests naming it learn why it is
   * gone (VDEVICE_DESTROYED_ON_UNBIND) rather than a bare NOT_FOUND.
   */
  tombstone(handle: Handle): void {
    const obj = this.objects.get(handle);
    if (!obj || obj.state === 'tombstoned') return;
    this.changed?.add(handle);
    this.dropReferences(obj);
    obj.state = 'tombstoned';
  }

  setAttachment(device: DeviceObject, hwpt: Handle | undefined): void {
    this.changed?.add(device.handle);
    if (device.attached !== undefined) this.removeHolder(device.attached, device.handle);
    device.attached = hwpt;
    if (hwpt !== undefined) this.addHolder(hwpt, device.handle);
  }

  get(handle: Handle): BrokerObject | undefined {
    return this.objects.get(handle);
  }

  /** The live object the kernel knows by this ID. */
  byKernel(id: KernelObjectId): BrokerObject | undefined {
    const handle = this.byKernelId.get(id);
    return handle === undefined ? undefined : this.objects.get(handle);
  }

  /** Handles of the objects holding a reference on `handle`. */
  holders(handle: Handle): Handle[] {
    return [...(this.heldBy.get(handle) ?? [])];
  }

  *all(): IterableIterator<BrokerObject> {
    yield* this.objects.values();
  }

  /** The live objects of one kind, oldest first; a view, so copy it before changing the registry. */
  liveOfKind<K extends ObjectKind>(kind: K): ReadonlySet<ObjectOfKind<K>> {
    return (this.liveByKind.get(kind) ?? NONE) as ReadonlySet<ObjectOfKind<K>>;
  }

  /**
   * Resolves a handle a client sent in `field`, requiring one of `kinds`.
   * Every failure names the field, the handle and what was expected.
   */
  resolve<K extends ObjectKind>(handle: Handle, kinds: readonly K[], field: string): ObjectOfKind<K> {
    if ((handle as number) === 0) {
      throw new BrokerError('MISSING_FIELD', `${field} is required: give the handle of ${expected(kinds)}`, { field });
    }
    const obj = this.objects.get(handle);
    if (!obj) {
      throw new BrokerError(
        'OBJECT_NOT_FOUND',
        `${field}: no object with handle ${handle} in context ${this.contextId}`,
        { field, objects: [handle], contextId: this.contextId },
      );
    }
    if (obj.state === 'tombstoned') {
      throw new BrokerError(
        'VDEVICE_DESTROYED_ON_UNBIND',
        `${field}: vDEVICE ${handle} was destroyed when its device was unbound; allocate a new vDEVICE after binding the device again`,
        { field, objects: [handle], contextId: this.contextId },
      );
    }
    if (!(kinds as readonly ObjectKind[]).includes(obj.kind)) {
      throw new BrokerError(
        'WRONG_OBJECT_TYPE',
        `${field}: handle ${handle} is ${labelOf(obj.kind)}, expected ${expected(kinds)}`,
        { field, objects: [handle], contextId: this.contextId },
      );
    }
    return obj as ObjectOfKind<K>;
  }

  private dropReferences(obj: BrokerObject): void {
    for (const held of holdsOf(obj)) this.removeHolder(held, obj.handle);
    if (obj.state === 'live') {
      if (this.liveByKind.get(obj.kind)?.delete(obj) && this.tally) this.tally.live--;
      if (this.byKernelId.get(obj.kernelId) === obj.handle) this.byKernelId.delete(obj.kernelId);
    }
  }

  private addHolder(held: Handle, holder: Handle): void {
    let set = this.heldBy.get(held);
    if (!set) this.heldBy.set(held, (set = new Set()));
    set.add(holder);
  }

  private removeHolder(held: Handle, holder: Handle): void {
    this.heldBy.get(held)?.delete(holder);
  }
}
