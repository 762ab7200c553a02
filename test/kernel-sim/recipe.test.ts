/**
 * Exact-ID mirrors of the flows run on the real 7.2 kernel (vm/RECIPE.md
 * "What was seen working", kernel-uapi.md §6.4) and of the §4.6 teardown.
 *
 * The sim has no selftest objects, so the mock flow is expressed through VFIO:
 * open + BIND + ATTACH(ioas) takes the place of TEST_CMD MOCK_DOMAIN, which
 * on the real kernel uses one more ID (stdev 2, hwpt 4, idev 3).
 */
import { describe, expect, it } from 'vitest';
import { HWPT_ALLOC_NEST_PARENT, KERNEL_PROFILES, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { expectErrno, fixture, hwptArgs, nestedArgs } from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: RECIPE real-VFIO smoke flow', (profile) => {
  it('IOAS 1, devid 2, auto HWPT 3, DESTROY(devid) EBUSY, DETACH 0, close, DESTROY(ioas) 0', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    expect(ioas).toBe(1);
    const dev = await k.openDevice('vfio0');
    const devId = await k.bindIommufd(dev, fd);
    expect(devId).toBe(2);
    expect(await k.attachPt(dev, ioas)).toBe(3);
    await expectErrno(k.destroy(fd, devId), 'EBUSY');
    await k.detachPt(dev);
    await k.closeDevice(dev);
    await k.destroy(fd, ioas);
    expect(k.objects(fd)).toEqual([]);
  });
});

describe.each(KERNEL_PROFILES)('%s: §6.4 mock flow mirrored through VFIO', (profile) => {
  async function flow() {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd); // 1
    const dev = await k.openDevice('vfio0');
    const devId = await k.bindIommufd(dev, fd); // 2
    const auto = await k.attachPt(dev, ioas); // 3
    const parent = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT })); // 4
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent }); // 5
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n }); // 6
    expect([ioas, devId, auto, parent, viommu, vdev]).toEqual([1, 2, 3, 4, 5, 6]);
    await expectErrno(k.destroy(fd, viommu), 'EBUSY');
    return { k, fd, dev, devId, ioas, auto, parent, viommu, vdev };
  }

  it('steps 1-5 give IDs 1..6 and the vIOMMU is busy', async () => {
    await flow();
  });

  it('step 6: nested HWPT 7, replace onto it frees automatic HWPT 3', async () => {
    const { k, fd, dev, devId, viommu, auto } = await flow();
    const nested = await k.hwptAlloc(
      fd,
      nestedArgs(devId, viommu, { data: new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0]) }),
    );
    expect(nested).toBe(7);
    expect(await k.attachPt(dev, nested)).toBe(7);
    await expectErrno(k.destroy(fd, auto), 'ENOENT');
    expect(await k.ioasAlloc(fd)).toBe(3);
  });

  it('step 7: closing the device fd, then DESTROY(vdev) and the next IOAS_ALLOC', async () => {
    const { k, fd, dev, vdev, viommu, parent } = await flow();
    await k.closeDevice(dev);
    if (profile === 'linux-6.17') {
      await expectErrno(k.destroy(fd, vdev), 'ENOENT');
      expect(k.tombstones(fd)).toEqual([6]);
    } else {
      await k.destroy(fd, vdev);
    }
    // DEVICE 2 and auto HWPT 3 were freed; the lowest free ID is 2, never the vDEVICE's 6.
    expect(await k.ioasAlloc(fd)).toBe(2);
    await k.destroy(fd, viommu);
    await k.destroy(fd, parent);
    expect(await k.ioasAlloc(fd)).toBe(3);
    expect(await k.ioasAlloc(fd)).toBe(4);
    expect(await k.ioasAlloc(fd)).toBe(5);
    expect(await k.ioasAlloc(fd)).toBe(profile === 'linux-6.17' ? 7 : 6);
  });
});

describe.each(KERNEL_PROFILES)('%s: §4.6 legal teardown order', (profile) => {
  it('every explicit DESTROY succeeds in the documented order and leaves no tombstone', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const dev = await k.openDevice('vfio0');
    const devId = await k.bindIommufd(dev, fd);
    const parent = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent });
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await k.attachPt(dev, nested);

    await k.attachPt(dev, parent); // 4. move off the nested HWPT
    await k.destroy(fd, vdev); // 5. vDEVICE before closing the device fd
    await k.destroy(fd, nested); // 6.
    await k.destroy(fd, viommu); // 7.
    await k.detachPt(dev); // 8.
    await k.destroy(fd, parent);
    await k.destroy(fd, ioas); // 10.
    await k.closeDevice(dev); // 11.
    expect(k.objects(fd)).toEqual([]);
    expect(k.tombstones(fd)).toEqual([]);
    await k.closeIommufd(fd);
    expect(k.liveContextCount()).toBe(0);
  });
});
