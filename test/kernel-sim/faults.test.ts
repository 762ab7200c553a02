/** Fault injection on the sim (no side effect on the failed call). */
import { describe, expect, it } from 'vitest';
import type { ErrnoName } from '../../src/kernel/errno.js';
import { createSimKernel, SimFaults, UNFAILABLE_OPS } from '../../src/kernel/sim/index.js';
import { KERNEL_PROFILES, KernelError, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { bindDevice, expectErrno, fixture, nestingStack } from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: failNth', (profile) => {
  it('fails exactly the n-th counted call with that errno and op', async () => {
    const { k, fd } = await fixture(profile);
    k.faults.failNth(3, 'ENOMEM');
    expect(await k.ioasAlloc(fd)).toBe(1);
    expect(await k.ioasAlloc(fd)).toBe(2);
    const err = await expectErrno(k.ioasAlloc(fd), 'ENOMEM', 'ioas_alloc');
    expect(err).toBeInstanceOf(KernelError);
    expect(await k.ioasAlloc(fd)).toBe(3);
    expect(await k.ioasAlloc(fd)).toBe(4);
  });

  it('the failed call has no side effect (destroy keeps the object)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    k.faults.failNth(1, 'EBUSY');
    await expectErrno(k.destroy(fd, ioas), 'EBUSY', 'destroy');
    expect(k.objects(fd).map((o) => o.id)).toEqual([ioas]);
    await k.destroy(fd, ioas);
  });

  it('a failed bind creates no DEVICE and the file can bind later', async () => {
    const { k, fd } = await fixture(profile);
    const dev = await k.openDevice('vfio0');
    k.faults.failNth(1, 'EPERM');
    await expectErrno(k.bindIommufd(dev, fd), 'EPERM', 'bind_iommufd');
    expect(k.objects(fd)).toEqual([]);
    expect(k.boundDevId(dev)).toBeUndefined();
    expect(await k.bindIommufd(dev, fd)).toBe(1);
  });

  it('a failed attach creates no automatic HWPT and leaves the attachment alone', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev } = await bindDevice(k, fd);
    k.faults.failNth(1, 'EINVAL');
    await expectErrno(k.attachPt(dev, ioas), 'EINVAL', 'attach_pt');
    expect(k.attachedPt(dev)).toBeUndefined();
    expect(k.objects(fd).map((o) => o.type)).toEqual(['IOAS', 'DEVICE']);
  });

  it('a failed open creates no file', async () => {
    const k = createSimKernel({ profile });
    k.faults.failNth(1, 'ENOMEM', { ops: ['open_iommufd'] });
    await expectErrno(k.openIommufd(), 'ENOMEM', 'open_iommufd');
    expect(k.openFileCount()).toBe(0);
    expect((await k.openIommufd()).fdNumber).toBe(3);
  });

  it('opts.ops restricts which calls count and fail', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, parent, viommu } = await nestingStack(k, fd);
    k.faults.failNth(2, 'ENOMEM', { ops: ['viommu_alloc'] });
    await k.ioasAlloc(fd);
    const first = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent });
    await k.ioasAlloc(fd);
    await expectErrno(k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent }), 'ENOMEM');
    expect(k.objects(fd).filter((o) => o.type === 'VIOMMU').map((o) => o.id)).toEqual([viommu, first]);
  });

  it('close calls are never failed nor counted; probe and listPciFunctions are not kernel calls', async () => {
    expect([...UNFAILABLE_OPS].sort()).toEqual(['close_device', 'close_iommufd']);
    const { k, fd } = await fixture(profile); // open_iommufd: 1
    const { dev } = await bindDevice(k, fd); // open_device, bind: 3
    k.faults.failNth(1, 'EIO');
    await k.closeDevice(dev);
    await k.closeIommufd(fd);
    await k.probe();
    await k.listPciFunctions();
    expect(k.faults.callCount).toBe(3);
    await expectErrno(k.openIommufd(), 'EIO', 'open_iommufd');
    expect(k.faults.callCount).toBe(4);
  });

  it('several pending rules each fire once', async () => {
    const { k, fd } = await fixture(profile);
    k.faults.failNth(1, 'ENOMEM');
    k.faults.failNth(3, 'EFAULT');
    await expectErrno(k.ioasAlloc(fd), 'ENOMEM');
    await k.ioasAlloc(fd);
    await expectErrno(k.ioasAlloc(fd), 'EFAULT');
    await k.ioasAlloc(fd);
  });

  it('clear() drops pending rules but callCount keeps counting', async () => {
    const { k, fd } = await fixture(profile);
    k.faults.failNth(1, 'ENOMEM');
    k.faults.failRandomly(1, ['EIO'], 1);
    k.faults.clear();
    await k.ioasAlloc(fd);
    expect(k.faults.callCount).toBe(2);
  });
});

describe('failRandomly', () => {
  async function schedule(seed: number, rate: number, errnos: ErrnoName[], calls = 200): Promise<string[]> {
    const { k, fd } = await fixture('linux-6.17');
    k.faults.failRandomly(rate, errnos, seed);
    const out: string[] = [];
    for (let i = 0; i < calls; i++) {
      try {
        await k.ioasAlloc(fd);
        out.push('ok');
      } catch (err) {
        out.push((err as KernelError).errno);
      }
    }
    return out;
  }

  it('is deterministic for a seed and differs across seeds', async () => {
    const a = await schedule(42, 0.3, ['ENOMEM', 'EIO']);
    expect(await schedule(42, 0.3, ['ENOMEM', 'EIO'])).toEqual(a);
    expect(await schedule(43, 0.3, ['ENOMEM', 'EIO'])).not.toEqual(a);
    const failures = a.filter((r) => r !== 'ok');
    expect(failures.length).toBeGreaterThan(20);
    expect(failures.length).toBeLessThan(120);
    expect(new Set(failures)).toEqual(new Set(['ENOMEM', 'EIO']));
  });

  it('rate 0 never fails and rate 1 always fails', async () => {
    expect(new Set(await schedule(1, 0, ['EIO'], 50))).toEqual(new Set(['ok']));
    expect(new Set(await schedule(1, 1, ['EIO'], 50))).toEqual(new Set(['EIO']));
  });

  it('injected failures have no side effect: successful allocations stay dense', async () => {
    const { k, fd } = await fixture('linux-6.13');
    k.faults.failRandomly(0.5, ['ENOMEM'], 7);
    const ids: number[] = [];
    for (let i = 0; i < 100; i++) {
      try {
        ids.push(await k.ioasAlloc(fd));
      } catch {
        // injected
      }
    }
    expect(ids).toEqual(ids.map((_, i) => i + 1));
  });
});

describe('fault controller argument checks', () => {
  it('rejects bad n, rate and errno lists', () => {
    const f = new SimFaults();
    expect(() => f.failNth(0, 'EIO')).toThrow(RangeError);
    expect(() => f.failNth(1.5, 'EIO')).toThrow(RangeError);
    expect(() => f.failRandomly(1.1, ['EIO'], 1)).toThrow(RangeError);
    expect(() => f.failRandomly(0.5, [], 1)).toThrow(RangeError);
  });
});
