/** Closing the iommufd, the file refcount and final release (kernel-uapi.md §4.4). */
import { describe, expect, it } from 'vitest';
import { KERNEL_PROFILES } from '../../src/kernel/types.js';
import { bindDevice, expectErrno, fixture, hwptArgs, nestedArgs, nestingStack } from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: closeIommufd', (profile) => {
  it('with no bound device, frees every object at once', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    await k.ioasAlloc(fd);
    await k.ioasAlloc(fd);
    await k.destroy(fd, ioas);
    await k.closeIommufd(fd);
    expect(k.liveObjectCount()).toBe(0);
    expect(k.liveContextCount()).toBe(0);
    expect(k.openFileCount()).toBe(0);
    expect(k.objects(fd)).toEqual([]);
  });

  it('is idempotent and never fails', async () => {
    const { k, fd } = await fixture(profile);
    await k.closeIommufd(fd);
    await k.closeIommufd(fd);
    expect(k.faults.callCount).toBe(1);
  });

  it('with a bound device, defers teardown: objects stay, attach still works', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const ioas2 = await k.ioasAlloc(fd);
    const { dev, devId } = await bindDevice(k, fd);
    const auto = await k.attachPt(dev, ioas);
    await k.closeIommufd(fd);
    expect(k.openFileCount()).toBe(1);
    expect(k.liveContextCount()).toBe(1);
    expect(k.objects(fd).map((o) => o.id)).toEqual([ioas, ioas2, devId, auto]);
    // The daemon cannot issue iommufd ioctls any more...
    await expectErrno(k.ioasAlloc(fd), 'EBADF');
    await expectErrno(k.destroy(fd, ioas2), 'EBADF');
    // ...but the device fd still attaches with IDs from that context.
    const auto2 = await k.attachPt(dev, ioas2);
    expect(k.attachedPt(dev)).toBe(auto2);
    await k.detachPt(dev);
    expect(k.liveObjectCount()).toBe(3);
  });

  it('the last device close then frees everything, tombstones included', async () => {
    const { k, fd } = await fixture(profile);
    const a = await nestingStack(k, fd, 'vfio0');
    const b = await bindDevice(k, fd, 'vfio1');
    await k.vdeviceAlloc(fd, { viommuId: a.viommu, devId: a.devId, virtId: 1n });
    const nested = await k.hwptAlloc(fd, nestedArgs(a.devId, a.viommu));
    await k.attachPt(a.dev, nested);
    await k.attachPt(b.dev, a.ioas);
    await k.closeIommufd(fd);
    await k.closeDevice(a.dev);
    expect(k.liveContextCount()).toBe(1);
    expect(k.objects(fd).length).toBeGreaterThan(0);
    await k.closeDevice(b.dev);
    expect(k.liveContextCount()).toBe(0);
    expect(k.liveObjectCount()).toBe(0);
    expect(k.tombstones(fd)).toEqual([]);
    expect(k.openFileCount()).toBe(0);
  });

  it('an unbound open device file does not keep the context alive', async () => {
    const { k, fd } = await fixture(profile);
    await k.ioasAlloc(fd);
    const dev = await k.openDevice('vfio0');
    await k.closeIommufd(fd);
    expect(k.liveContextCount()).toBe(0);
    expect(k.openFileCount()).toBe(1);
    await k.closeDevice(dev);
  });

  it('releasing one iommufd leaves the others alone', async () => {
    const { k, fd } = await fixture(profile);
    const fd2 = await k.openIommufd();
    await k.ioasAlloc(fd);
    await k.ioasAlloc(fd2);
    await k.closeIommufd(fd);
    expect(k.objects(fd2)).toHaveLength(1);
    expect(k.liveObjectCount()).toBe(1);
  });

  it('shutdown closes every file and releases every context', async () => {
    const { k, fd } = await fixture(profile);
    const fd2 = await k.openIommufd();
    const { devId, viommu, dev } = await nestingStack(k, fd);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 2n });
    await k.attachPt(dev, await k.hwptAlloc(fd, hwptArgs(devId, await k.ioasAlloc(fd))));
    await bindDevice(k, fd2, 'vfio6');
    await k.openDevice('vfio1');
    await k.shutdown();
    expect(k.openFileCount()).toBe(0);
    expect(k.liveContextCount()).toBe(0);
    expect(k.liveObjectCount()).toBe(0);
  });
});
