/** Closing a VFIO device fd: detach, unbind, vDEVICE fate per profile (kernel-uapi.md §4.3, §4.5). */
import { describe, expect, it } from 'vitest';
import { KERNEL_PROFILES, VIOMMU_TYPE } from '../../src/kernel/types.js';
import {
  bindDevice,
  expectErrno,
  fixture,
  hwptArgs,
  nestedArgs,
  nestingStack,
  typeOf,
  usersOf,
} from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: closeDevice (shared behaviour)', (profile) => {
  it('detaches, destroys the automatic HWPT and frees the DEVICE id', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const auto = await k.attachPt(dev, ioas);
    await k.closeDevice(dev);
    expect(typeOf(k, fd, devId)).toBeUndefined();
    expect(typeOf(k, fd, auto)).toBeUndefined();
    expect(k.tombstones(fd)).toEqual([]);
    await k.destroy(fd, ioas);
    expect(await k.ioasAlloc(fd)).toBe(1);
  });

  it('drops the attachment reference on a manual HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await k.attachPt(dev, hwpt);
    await k.closeDevice(dev);
    expect(usersOf(k, fd, hwpt)).toBe(0);
  });

  it('never fails: unbound files, repeated closes and closes with everything attached', async () => {
    const { k, fd } = await fixture(profile);
    const unbound = await k.openDevice('vfio1');
    await k.closeDevice(unbound);
    await k.closeDevice(unbound);
    const { ioas, dev, devId, viommu } = await nestingStack(k, fd);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await k.attachPt(dev, ioas);
    await k.closeDevice(dev);
    expect(k.openFileCount()).toBe(1);
  });

  it('releases the group so another iommufd can bind a sibling', async () => {
    const { k, fd } = await fixture(profile);
    const fd2 = await k.openIommufd();
    const gpu = await bindDevice(k, fd, 'vfio4');
    const audio = await k.openDevice('vfio5');
    await expectErrno(k.bindIommufd(audio, fd2), 'EPERM');
    await k.closeDevice(gpu.dev);
    await k.bindIommufd(audio, fd2);
  });

  it('a freed DEVICE id is reused by the next allocation', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId } = await bindDevice(k, fd);
    await k.closeDevice(dev);
    expect(await k.ioasAlloc(fd)).toBe(devId);
  });
});

describe('linux-6.17: unbind tombstones the vDEVICE', () => {
  async function tombstoneSetup() {
    const { k, fd } = await fixture('linux-6.17');
    const stack = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: stack.viommu, devId: stack.devId, virtId: 0x99n });
    await k.closeDevice(stack.dev);
    return { k, fd, ...stack, vdev };
  }

  it('DESTROY of the old vDEVICE id is ENOENT, permanently', async () => {
    const { k, fd, vdev } = await tombstoneSetup();
    expect(k.tombstones(fd)).toEqual([vdev]);
    await expectErrno(k.destroy(fd, vdev), 'ENOENT', 'destroy');
    await expectErrno(k.destroy(fd, vdev), 'ENOENT', 'destroy');
  });

  it('every lookup of the tombstoned id fails (HWPT_ALLOC pt_id: EINVAL, attach: ENOENT)', async () => {
    const { k, fd, vdev } = await tombstoneSetup();
    const { dev, devId } = await bindDevice(k, fd, 'vfio1');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, vdev)), 'EINVAL');
    await expectErrno(k.attachPt(dev, vdev), 'ENOENT');
    await expectErrno(k.getHwInfo(fd, vdev), 'ENOENT');
  });

  it('the id is never reused by later allocations', async () => {
    const { k, fd, vdev } = await tombstoneSetup();
    const got: number[] = [];
    for (let i = 0; i < 8; i++) got.push(await k.ioasAlloc(fd));
    // ioas 1, DEVICE 2 (freed), parent 3, vIOMMU 4, vDEVICE 5 (tombstoned)
    expect(vdev).toBe(5);
    expect(got).toEqual([2, 6, 7, 8, 9, 10, 11, 12]);
  });

  it('the vIOMMU reference is dropped, so the vIOMMU becomes destroyable', async () => {
    const { k, fd, viommu, parent } = await tombstoneSetup();
    expect(usersOf(k, fd, viommu)).toBe(0);
    await k.destroy(fd, viommu);
    await k.destroy(fd, parent);
  });

  it('the virt_id is free again on the vIOMMU', async () => {
    const { k, fd, viommu } = await tombstoneSetup();
    const { devId } = await bindDevice(k, fd, 'vfio1');
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
  });

  it('a rebind of the same device gets a fresh DEVICE and may create a new vDEVICE', async () => {
    const { k, fd, viommu } = await tombstoneSetup();
    const again = await bindDevice(k, fd, 'vfio0');
    const vdev2 = await k.vdeviceAlloc(fd, { viommuId: viommu, devId: again.devId, virtId: 0x99n });
    expect(k.objects(fd).find((o) => o.id === vdev2)?.devId).toBe(again.devId);
  });

  it('a nested HWPT through the vIOMMU still holds it after the unbind', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const { dev, devId, viommu } = await nestingStack(k, fd);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await k.attachPt(dev, nested);
    await k.closeDevice(dev);
    expect(usersOf(k, fd, nested)).toBe(0);
    await expectErrno(k.destroy(fd, viommu), 'EBUSY');
    await k.destroy(fd, nested);
    await k.destroy(fd, viommu);
  });
});

describe('linux-6.13: the vDEVICE outlives the unbind', () => {
  it('stays destroyable (DESTROY returns 0) and nothing is tombstoned', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const { dev, devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    await k.closeDevice(dev);
    expect(k.tombstones(fd)).toEqual([]);
    expect(typeOf(k, fd, devId)).toBeUndefined();
    const info = k.objects(fd).find((o) => o.id === vdev);
    expect(info).toMatchObject({ type: 'VDEVICE', viommuId: viommu, virtId: 0x99n });
    expect(info?.devId).toBeUndefined();
    await expectErrno(k.destroy(fd, viommu), 'EBUSY');
    await k.destroy(fd, vdev);
    await k.destroy(fd, viommu);
  });

  it('the DEVICE id is freed even though the vDEVICE remains', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const { dev, devId, viommu } = await nestingStack(k, fd);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await k.closeDevice(dev);
    expect(await k.ioasAlloc(fd)).toBe(devId);
  });

  it('the virt_id stays taken on the vIOMMU until the vDEVICE is destroyed', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const { dev, devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    await k.closeDevice(dev);
    const again = await bindDevice(k, fd, 'vfio0');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: again.devId, virtId: 0x99n }), 'EEXIST');
    await k.destroy(fd, vdev);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: again.devId, virtId: 0x99n });
  });

  it('several vDEVICEs of one device all survive the unbind', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const { dev, devId, viommu, parent } = await nestingStack(k, fd);
    const viommu2 = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId, hwptId: parent });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await k.vdeviceAlloc(fd, { viommuId: viommu2, devId, virtId: 1n });
    await k.closeDevice(dev);
    expect(k.objects(fd).filter((o) => o.type === 'VDEVICE')).toHaveLength(2);
  });
});
