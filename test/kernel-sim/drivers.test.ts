import { describe, expect, it } from 'vitest';
import { createSimKernel, type SimPciFunction } from '../../src/kernel/sim/index.js';
import { expectErrno } from './helpers.js';

function fn(bdf: string, iommuGroup: number, driver: string, cdev?: string): SimPciFunction {
  return { bdf, vendorId: 0x1234, deviceId: 0x11e8, iommuGroup, cdev, driver, iommu: 'iommu0' };
}

describe('sim drivers and cdevs', () => {
  it('a prepared function gets the lowest free cdev and opens by it; released, the cdev is gone and reused', async () => {
    const k = createSimKernel({ devices: [fn('0000:01:00.0', 1, 'vfio-pci', 'vfio1'), fn('0000:02:00.0', 2, 'nvme'), fn('0000:03:00.0', 3, 'e1000e')] });
    const nvme = await k.prepareDevice('0000:02:00.0');
    expect(nvme.cdev).toBe('vfio0');
    const nic = await k.prepareDevice('0000:03:00.0');
    expect(nic.cdev).toBe('vfio2');
    await k.closeDevice(await k.openDevice('vfio0'));
    await k.releaseDevice('0000:02:00.0');
    await expectErrno(k.openDevice('vfio0'), 'ENOENT', 'open_device');
    expect(await k.openDevice('vfio2')).toBeDefined();
    expect((await k.prepareDevice('0000:02:00.0')).cdev).toBe('vfio0');
    expect(await k.openDevice('vfio0')).toBeDefined();
  });

  it('a host unbind waits for every open file of the device, not only the first', async () => {
    const k = createSimKernel({ devices: [fn('0000:01:00.0', 1, 'vfio-pci', 'vfio0')] });
    const a = await k.openDevice('vfio0');
    const b = await k.openDevice('vfio0');
    let released = false;
    const unbound = k.hostUnbind('0000:01:00.0').then(() => (released = true));
    await k.closeDevice(a);
    await Promise.resolve();
    expect(released).toBe(false);
    await k.closeDevice(b);
    await unbound;
    expect(released).toBe(true);
  });

  it('a group sibling on a kernel driver blocks the bind (EPERM) until it is given to vfio-pci', async () => {
    const k = createSimKernel({ devices: [fn('0000:41:00.0', 7, 'vfio-pci', 'vfio0'), fn('0000:41:00.1', 7, 'snd_hda_intel')] });
    const ictx = await k.openIommufd();
    const gpu = await k.openDevice('vfio0');
    await expectErrno(k.bindIommufd(gpu, ictx), 'EPERM', 'bind_iommufd');
    await k.prepareDevice('0000:41:00.1');
    expect(await k.bindIommufd(gpu, ictx)).toBeGreaterThan(0);
  });
});
