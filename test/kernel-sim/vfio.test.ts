/** VFIO device cdev: open, bind, attach/replace, detach (kernel-uapi.md §3.15–3.17, §6.3). */
import { describe, expect, it } from 'vitest';
import type { SimPciFunction } from '../../src/kernel/sim/index.js';
import { HWPT_ALLOC_NEST_PARENT, KERNEL_PROFILES } from '../../src/kernel/types.js';
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

describe.each(KERNEL_PROFILES)('%s: opening device cdevs', (profile) => {
  it('an unknown cdev is ENOENT', async () => {
    const { k } = await fixture(profile);
    await expectErrno(k.openDevice('vfio99'), 'ENOENT', 'open_device');
  });

  it('open succeeds repeatedly for the same device', async () => {
    const { k } = await fixture(profile);
    const a = await k.openDevice('vfio0');
    const b = await k.openDevice('vfio0');
    expect(a.cdev).toBe('vfio0');
    expect(b.fdNumber).not.toBe(a.fdNumber);
  });

  it('fd numbers are the lowest free ones, shared with iommufd fds', async () => {
    const { k, fd } = await fixture(profile);
    expect(fd.fdNumber).toBe(3);
    const a = await k.openDevice('vfio0');
    const b = await k.openDevice('vfio1');
    expect([a.fdNumber, b.fdNumber]).toEqual([4, 5]);
    await k.closeDevice(a);
    expect((await k.openIommufd()).fdNumber).toBe(4);
  });
});

describe.each(KERNEL_PROFILES)('%s: VFIO_DEVICE_BIND_IOMMUFD', (profile) => {
  it('returns a new DEVICE id; the device is attached to nothing', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    expect(devId).toBe(ioas + 1);
    expect(k.objects(fd).find((o) => o.id === devId)).toMatchObject({ type: 'DEVICE', users: 1, bdf: '0000:01:00.0' });
    expect(k.attachedPt(dev)).toBeUndefined();
    expect(k.boundDevId(dev)).toBe(devId);
  });

  it('binding the same file twice is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { dev } = await bindDevice(k, fd);
    await expectErrno(k.bindIommufd(dev, fd), 'EINVAL', 'bind_iommufd');
    const fd2 = await k.openIommufd();
    await expectErrno(k.bindIommufd(dev, fd2), 'EINVAL');
  });

  it('binding a second open file of an already-bound device is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const first = await bindDevice(k, fd);
    const second = await k.openDevice('vfio0');
    await expectErrno(k.bindIommufd(second, fd), 'EINVAL');
    await k.closeDevice(first.dev);
    expect(await k.bindIommufd(second, fd)).toBe(first.devId);
  });

  it('a group already owned by another iommufd is EPERM; the same iommufd may bind siblings', async () => {
    const { k, fd } = await fixture(profile);
    const fd2 = await k.openIommufd();
    await bindDevice(k, fd, 'vfio4'); // GPU, group 30
    const audio = await k.openDevice('vfio5'); // its audio function, group 30
    await expectErrno(k.bindIommufd(audio, fd2), 'EPERM');
    await k.bindIommufd(audio, fd);
  });

  it('a sibling on a kernel DMA driver makes bind EPERM', async () => {
    const devices: SimPciFunction[] = [
      { bdf: '0000:05:00.0', vendorId: 1, deviceId: 1, iommuGroup: 5, cdev: 'vfio0', driver: 'vfio-pci', iommu: 'i0' },
      { bdf: '0000:05:00.1', vendorId: 1, deviceId: 2, iommuGroup: 5, cdev: undefined, driver: 'e1000e', iommu: 'i0' },
    ];
    const { k, fd } = await fixture(profile, devices);
    const dev = await k.openDevice('vfio0');
    await expectErrno(k.bindIommufd(dev, fd), 'EPERM');
    expect(k.objects(fd)).toEqual([]);
  });

  it('an iommufd that is not open is EBADF', async () => {
    const { k, fd } = await fixture(profile);
    const dev = await k.openDevice('vfio0');
    await k.closeIommufd(fd);
    await expectErrno(k.bindIommufd(dev, fd), 'EBADF');
  });

  it('before bind, attach and detach are EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const dev = await k.openDevice('vfio0');
    await expectErrno(k.attachPt(dev, ioas), 'EINVAL', 'attach_pt');
    await expectErrno(k.detachPt(dev), 'EINVAL', 'detach_pt');
  });

  it('device ioctls on a closed device file are EBADF', async () => {
    const { k, fd } = await fixture(profile);
    const { dev } = await bindDevice(k, fd);
    await k.closeDevice(dev);
    await expectErrno(k.detachPt(dev), 'EBADF');
    await expectErrno(k.bindIommufd(dev, fd), 'EBADF');
  });
});

describe.each(KERNEL_PROFILES)('%s: VFIO_DEVICE_ATTACH_IOMMUFD_PT', (profile) => {
  it('an unknown pt_id is ENOENT; a DEVICE, vIOMMU or vDEVICE pt_id is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await expectErrno(k.attachPt(dev, id(0)), 'ENOENT', 'attach_pt');
    await expectErrno(k.attachPt(dev, id(500)), 'ENOENT');
    for (const pt of [devId, viommu, vdev]) await expectErrno(k.attachPt(dev, pt), 'EINVAL');
    expect(k.attachedPt(dev)).toBeUndefined();
  });

  it('attaching to an IOAS creates an automatic HWPT_PAGING and returns its id', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const hwpt = await k.attachPt(dev, ioas);
    expect(hwpt).toBe(3);
    expect(k.objects(fd).find((o) => o.id === hwpt)).toMatchObject({
      type: 'HWPT_PAGING',
      auto: true,
      ioasId: ioas,
      users: 1,
    });
    expect(usersOf(k, fd, devId)).toBe(2);
    expect(k.attachedPt(dev)).toBe(hwpt);
  });

  it('a second device on the same IOAS reuses the automatic HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const a = await bindDevice(k, fd, 'vfio0');
    const b = await bindDevice(k, fd, 'vfio6'); // behind the other IOMMU instance
    const hwpt = await k.attachPt(a.dev, ioas);
    expect(await k.attachPt(b.dev, ioas)).toBe(hwpt);
    expect(usersOf(k, fd, hwpt)).toBe(2);
  });

  it('detach of the last user destroys the automatic HWPT and frees its ID', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const a = await bindDevice(k, fd, 'vfio0');
    const b = await bindDevice(k, fd, 'vfio1');
    const hwpt = await k.attachPt(a.dev, ioas);
    await k.attachPt(b.dev, ioas);
    await k.detachPt(a.dev);
    expect(typeOf(k, fd, hwpt)).toBe('HWPT_PAGING');
    await k.detachPt(b.dev);
    expect(typeOf(k, fd, hwpt)).toBeUndefined();
    await expectErrno(k.destroy(fd, hwpt), 'ENOENT');
    expect(await k.ioasAlloc(fd)).toBe(hwpt);
    await k.destroy(fd, ioas);
  });

  it('detach with nothing attached succeeds', async () => {
    const { k, fd } = await fixture(profile);
    const { dev } = await bindDevice(k, fd);
    await k.detachPt(dev);
    await k.detachPt(dev);
  });

  it('attaching to a manual HWPT returns that id and detach keeps the HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    expect(await k.attachPt(dev, hwpt)).toBe(hwpt);
    await k.detachPt(dev);
    expect(usersOf(k, fd, hwpt)).toBe(0);
  });

  it('a manual HWPT of the IOAS is never picked for an IOAS attach', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const manual = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    const auto = await k.attachPt(dev, ioas);
    expect(auto).not.toBe(manual);
  });

  it('replace onto another IOAS allocates the new automatic HWPT before freeing the old one', async () => {
    const { k, fd } = await fixture(profile);
    const ioas1 = await k.ioasAlloc(fd);
    const ioas2 = await k.ioasAlloc(fd);
    const { dev } = await bindDevice(k, fd); // 3
    const auto1 = await k.attachPt(dev, ioas1); // 4
    const auto2 = await k.attachPt(dev, ioas2);
    expect([auto1, auto2]).toEqual([4, 5]);
    expect(typeOf(k, fd, auto1)).toBeUndefined();
    expect(k.attachedPt(dev)).toBe(auto2);
    expect(usersOf(k, fd, ioas1)).toBe(0);
  });

  it('replace onto the same IOAS or the same HWPT is a no-op returning the current HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev } = await bindDevice(k, fd);
    const auto = await k.attachPt(dev, ioas);
    const before = k.objects(fd);
    expect(await k.attachPt(dev, ioas)).toBe(auto);
    expect(await k.attachPt(dev, auto)).toBe(auto);
    expect(k.objects(fd)).toEqual(before);
  });

  it('replace from an automatic HWPT to a manual one destroys the automatic HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const auto = await k.attachPt(dev, ioas);
    const manual = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    expect(await k.attachPt(dev, manual)).toBe(manual);
    expect(typeOf(k, fd, auto)).toBeUndefined();
    expect(usersOf(k, fd, manual)).toBe(1);
  });
});

describe.each(KERNEL_PROFILES)('%s: IOMMU group attachments (GPU + audio share group 30)', (profile) => {
  async function groupSetup() {
    const f = await fixture(profile);
    const ioas = await f.k.ioasAlloc(f.fd);
    const gpu = await bindDevice(f.k, f.fd, 'vfio4');
    const audio = await bindDevice(f.k, f.fd, 'vfio5');
    return { ...f, ioas, gpu, audio };
  }

  it('a sibling cannot attach to a different HWPT while the group is attached (EINVAL)', async () => {
    const { k, fd, ioas, gpu, audio } = await groupSetup();
    await k.attachPt(gpu.dev, ioas);
    const other = await k.hwptAlloc(fd, hwptArgs(audio.devId, ioas));
    const ioas2 = await k.ioasAlloc(fd);
    const before = k.objects(fd);
    await expectErrno(k.attachPt(audio.dev, other), 'EINVAL');
    await expectErrno(k.attachPt(audio.dev, ioas2), 'EINVAL');
    expect(k.objects(fd)).toEqual(before);
  });

  it('a sibling joins the group’s automatic HWPT through the same IOAS', async () => {
    const { k, fd, ioas, gpu, audio } = await groupSetup();
    const hwpt = await k.attachPt(gpu.dev, ioas);
    expect(await k.attachPt(audio.dev, ioas)).toBe(hwpt);
    expect(usersOf(k, fd, hwpt)).toBe(2);
  });

  it('a replace moves the whole group, and detach of one device leaves the other attached', async () => {
    const { k, fd, ioas, gpu, audio } = await groupSetup();
    const auto = await k.attachPt(gpu.dev, ioas);
    await k.attachPt(audio.dev, ioas);
    const manual = await k.hwptAlloc(fd, hwptArgs(gpu.devId, ioas));
    await k.attachPt(gpu.dev, manual);
    expect(k.attachedPt(audio.dev)).toBe(manual);
    expect(usersOf(k, fd, manual)).toBe(2);
    expect(typeOf(k, fd, auto)).toBeUndefined();
    await k.detachPt(gpu.dev);
    expect(k.attachedPt(audio.dev)).toBe(manual);
    expect(usersOf(k, fd, manual)).toBe(1);
  });
});

describe.each(KERNEL_PROFILES)('%s: attaching to nested HWPTs (mock IOMMU, §6.3)', (profile) => {
  it('a vIOMMU-backed nested HWPT needs a vDEVICE for the device: ENOENT without, works with', async () => {
    const { k, fd } = await fixture(profile);
    const { ioas, dev, devId, viommu } = await nestingStack(k, fd);
    const auto = await k.attachPt(dev, ioas);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    const before = k.objects(fd);
    await expectErrno(k.attachPt(dev, nested), 'ENOENT', 'attach_pt');
    expect(k.objects(fd)).toEqual(before);
    expect(k.attachedPt(dev)).toBe(auto);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    expect(await k.attachPt(dev, nested)).toBe(nested);
    expect(typeOf(k, fd, auto)).toBeUndefined();
  });

  it('a first attach (not a replace) to it needs the vDEVICE too', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId, viommu } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await expectErrno(k.attachPt(dev, nested), 'ENOENT');
    expect(k.attachedPt(dev)).toBeUndefined();
  });

  it('a vDEVICE of another device on the same vIOMMU does not count', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId, viommu } = await nestingStack(k, fd, 'vfio0');
    const other = await bindDevice(k, fd, 'vfio1');
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: other.devId, virtId: 5n });
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await expectErrno(k.attachPt(dev, nested), 'ENOENT');
  });

  it('a nested HWPT made directly on a parent needs no vDEVICE', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId, parent } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, parent));
    expect(await k.attachPt(dev, nested)).toBe(nested);
  });

  it('an attached nested HWPT cannot be destroyed (EBUSY) until the device moves off it', async () => {
    const { k, fd } = await fixture(profile);
    const { dev, devId, viommu, parent } = await nestingStack(k, fd);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await k.attachPt(dev, nested);
    await expectErrno(k.destroy(fd, nested), 'EBUSY');
    await k.attachPt(dev, parent);
    await k.destroy(fd, nested);
  });
});
