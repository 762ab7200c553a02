/**
 * IDs, IOMMU_DESTROY, references and lookups (kernel-uapi.md §0, §2, §3.1,
 * §4.2). Shared by both profiles.
 */
import { describe, expect, it } from 'vitest';
import {
  HWPT_ALLOC_NEST_PARENT,
  KERNEL_PROFILES,
  VIOMMU_TYPE,
} from '../../src/kernel/types.js';
import {
  bindDevice,
  expectErrno,
  fixture,
  hwptArgs,
  id,
  nestedArgs,
  nestingStack,
  typeOf,
  usersOf,
} from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: object IDs', (profile) => {
  it('IOAS_ALLOC hands out 1, 2, 3 in a fresh iommufd', async () => {
    const { k, fd } = await fixture(profile);
    expect([await k.ioasAlloc(fd), await k.ioasAlloc(fd), await k.ioasAlloc(fd)]).toEqual([1, 2, 3]);
  });

  it('a destroyed ID is the lowest free one and is reused at once', async () => {
    const { k, fd } = await fixture(profile);
    for (let i = 0; i < 4; i++) await k.ioasAlloc(fd);
    await k.destroy(fd, id(3));
    await k.destroy(fd, id(1));
    expect(await k.ioasAlloc(fd)).toBe(1);
    expect(await k.ioasAlloc(fd)).toBe(3);
    expect(await k.ioasAlloc(fd)).toBe(5);
  });

  it('a reused ID may name a different kind of object', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const spare = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    await k.destroy(fd, spare);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    expect(hwpt).toBe(spare);
    expect(typeOf(k, fd, hwpt)).toBe('HWPT_PAGING');
  });

  it('IDs are per iommufd file', async () => {
    const { k, fd } = await fixture(profile);
    const fd2 = await k.openIommufd();
    expect(await k.ioasAlloc(fd)).toBe(1);
    expect(await k.ioasAlloc(fd2)).toBe(1);
    await expectErrno(k.destroy(fd2, id(2)), 'ENOENT');
  });
});

describe.each(KERNEL_PROFILES)('%s: IOMMU_DESTROY', (profile) => {
  it('unknown, zero and already-destroyed IDs give ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.destroy(fd, id(0)), 'ENOENT', 'destroy');
    await expectErrno(k.destroy(fd, id(42)), 'ENOENT', 'destroy');
    const ioas = await k.ioasAlloc(fd);
    await k.destroy(fd, ioas);
    await expectErrno(k.destroy(fd, ioas), 'ENOENT', 'destroy');
  });

  it('a DEVICE id is always EBUSY, attached or not', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    await expectErrno(k.destroy(fd, devId), 'EBUSY', 'destroy');
    await k.attachPt(dev, ioas);
    await expectErrno(k.destroy(fd, devId), 'EBUSY');
    await k.detachPt(dev);
    await expectErrno(k.destroy(fd, devId), 'EBUSY');
    expect(typeOf(k, fd, devId)).toBe('DEVICE');
  });

  it('never checks the type: any unreferenced object is destroyed', async () => {
    const { k, fd } = await fixture(profile);
    const { ioas, devId, parent, viommu } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    for (const victim of [nested, viommu, parent, ioas]) await k.destroy(fd, victim);
    expect(k.objects(fd).map((o) => o.type)).toEqual(['DEVICE']);
  });

  it('an IOAS that no HWPT references can be destroyed', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await expectErrno(k.destroy(fd, ioas), 'EBUSY');
    await k.destroy(fd, hwpt);
    await k.destroy(fd, ioas);
    expect(typeOf(k, fd, ioas)).toBeUndefined();
  });
});

describe.each(KERNEL_PROFILES)('%s: EBUSY on out-of-order destroy, per reference kind (§4.2)', (profile) => {
  async function expectBusyAndUnchanged(
    k: Awaited<ReturnType<typeof fixture>>['k'],
    fd: Awaited<ReturnType<typeof fixture>>['fd'],
    victim: number,
  ): Promise<void> {
    const before = k.objects(fd);
    await expectErrno(k.destroy(fd, id(victim)), 'EBUSY', 'destroy');
    expect(k.objects(fd)).toEqual(before);
  }

  it('IOAS held by a manual HWPT_PAGING', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    expect(usersOf(k, fd, ioas)).toBe(1);
    await expectBusyAndUnchanged(k, fd, ioas);
  });

  it('IOAS held by an automatic HWPT_PAGING', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev } = await bindDevice(k, fd);
    await k.attachPt(dev, ioas);
    await expectBusyAndUnchanged(k, fd, ioas);
  });

  it('HWPT held by a device attachment', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await k.attachPt(dev, hwpt);
    expect(usersOf(k, fd, hwpt)).toBe(1);
    await expectBusyAndUnchanged(k, fd, hwpt);
    await k.detachPt(dev);
    await k.destroy(fd, hwpt);
  });

  it('nest-parent HWPT held by a vIOMMU', async () => {
    const { k, fd } = await fixture(profile);
    const { parent } = await nestingStack(k, fd);
    expect(usersOf(k, fd, parent)).toBe(1);
    await expectBusyAndUnchanged(k, fd, parent);
  });

  it('nest-parent HWPT held by a HWPT_NESTED made directly on it', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const parent = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, parent));
    await expectBusyAndUnchanged(k, fd, parent);
    await k.destroy(fd, nested);
    await k.destroy(fd, parent);
  });

  it('vIOMMU held by a HWPT_NESTED made through it (the parent is not held again)', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, parent, viommu } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    expect(usersOf(k, fd, viommu)).toBe(1);
    expect(usersOf(k, fd, parent)).toBe(1);
    await expectBusyAndUnchanged(k, fd, viommu);
    await k.destroy(fd, nested);
    await k.destroy(fd, viommu);
  });

  it('vIOMMU held by a vDEVICE', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    await expectBusyAndUnchanged(k, fd, viommu);
    await k.destroy(fd, vdev);
    await k.destroy(fd, viommu);
  });
});

describe.each(KERNEL_PROFILES)('%s: typed lookups (§2 object lookup rule)', (profile) => {
  it('unknown, zero and wrong-type IDs give ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    const { ioas, devId, parent, viommu } = await nestingStack(k, fd);
    // dev_id
    await expectErrno(k.hwptAlloc(fd, hwptArgs(id(0), ioas)), 'ENOENT', 'hwpt_alloc');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(id(99), ioas)), 'ENOENT');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(ioas, ioas)), 'ENOENT');
    await expectErrno(k.getHwInfo(fd, ioas), 'ENOENT', 'get_hw_info');
    await expectErrno(k.getHwInfo(fd, id(0)), 'ENOENT');
    // hwpt_id of VIOMMU_ALLOC
    const type = VIOMMU_TYPE.SELFTEST;
    await expectErrno(k.viommuAlloc(fd, { type, devId, hwptId: id(0) }), 'ENOENT', 'viommu_alloc');
    await expectErrno(k.viommuAlloc(fd, { type, devId, hwptId: ioas }), 'ENOENT');
    await expectErrno(k.viommuAlloc(fd, { type, devId, hwptId: viommu }), 'ENOENT');
    // viommu_id / dev_id of VDEVICE_ALLOC
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: parent, devId, virtId: 1n }), 'ENOENT', 'vdevice_alloc');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: ioas, virtId: 1n }), 'ENOENT');
  });

  it('HWPT_ALLOC pt_id: any lookup failure is EINVAL, not ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    for (const pt of [id(0), id(1234), devId, vdev]) {
      await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, pt)), 'EINVAL', 'hwpt_alloc');
    }
  });

  it('a failed allocation consumes no ID', async () => {
    const { k, fd } = await fixture(profile);
    const { devId } = await bindDevice(k, fd);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, id(77))), 'EINVAL');
    await expectErrno(k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: id(77) }), 'ENOENT');
    expect(await k.ioasAlloc(fd)).toBe(2);
  });

  it('iommufd ioctls on a closed iommufd give EBADF', async () => {
    const { k, fd } = await fixture(profile);
    await k.closeIommufd(fd);
    await expectErrno(k.ioasAlloc(fd), 'EBADF', 'ioas_alloc');
    await expectErrno(k.destroy(fd, id(1)), 'EBADF', 'destroy');
  });
});
