import { describe, expect, it } from 'vitest';
import type { ContextId, Handle } from '../../src/broker/ids.js';
import type { BrokerObject, IoasObject, ObjectKind, VdeviceObject, ViommuObject } from '../../src/broker/objects.js';
import { LiveTally, Registry } from '../../src/broker/registry.js';
import type { KernelObjectId } from '../../src/kernel/types.js';

const KINDS: ObjectKind[] = ['DEVICE', 'IOAS', 'HWPT_PAGING', 'HWPT_NESTED', 'VIOMMU', 'VDEVICE'];

/** What liveCount must equal: the objects whose state is live, counted one by one. */
function countedLive(r: Registry): number {
  return [...r.all()].filter((o) => o.state === 'live').length;
}

function ioas(r: Registry, kernelId: number): IoasObject {
  return { kind: 'IOAS', handle: r.nextHandle(), kernelId: kernelId as KernelObjectId, state: 'live', mappings: new Map() };
}

describe('Registry live count and tenant tally', () => {
  it('follows add, remove and tombstone, and equals the per-kind views', () => {
    const r = new Registry('ctx-000000000000000000000001' as ContextId);
    const a = ioas(r, 1);
    const b = ioas(r, 2);
    const viommu: ViommuObject = { kind: 'VIOMMU', handle: r.nextHandle(), kernelId: 3 as KernelObjectId, state: 'live', nestParent: 99 as Handle };
    const vdevice: VdeviceObject = {
      kind: 'VDEVICE', handle: r.nextHandle(), kernelId: 4 as KernelObjectId, state: 'live', viommu: viommu.handle, device: 98 as Handle, virtId: 1n,
    };
    const tally = new LiveTally();
    r.add(a); // before the context joins its tenant: join counts it
    r.join(tally);
    for (const o of [b, viommu, vdevice] as BrokerObject[]) r.add(o);
    expect(r.liveCount).toBe(4);
    expect(tally.live).toBe(4);

    r.tombstone(vdevice.handle);
    r.tombstone(vdevice.handle); // a second tombstone changes nothing
    expect(r.liveCount).toBe(3);
    expect(r.holders(viommu.handle)).toEqual([]);

    r.remove(vdevice.handle); // a tombstone leaving is not a live object leaving
    r.remove(a.handle);
    r.remove(a.handle);
    expect(r.liveCount).toBe(2);
    expect(r.liveCount).toBe(countedLive(r));
    expect(KINDS.reduce((n, k) => n + r.liveOfKind(k).size, 0)).toBe(2);
    expect(tally.live).toBe(2);

    // Leaving takes what is still live out of the tally, and later changes no longer reach it.
    r.leave();
    expect(tally.live).toBe(0);
    r.remove(b.handle);
    expect(tally.live).toBe(0);
    expect(r.liveCount).toBe(1);
  });

  it('does not count a restored tombstone', () => {
    const r = new Registry('ctx-000000000000000000000002' as ContextId);
    const viommu = r.nextHandle();
    r.add({ kind: 'VDEVICE', handle: r.nextHandle(), kernelId: 1 as KernelObjectId, state: 'tombstoned', viommu, device: 98 as Handle, virtId: 1n });
    r.add(ioas(r, 2));
    expect(r.liveCount).toBe(1);
    expect(r.liveCount).toBe(countedLive(r));
  });
});
