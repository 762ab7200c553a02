import { afterEach, describe, expect, it } from 'vitest';
import { createLinuxKernel } from '../../src/kernel/linux/backend.js';
import { normalizeBdf, PciSysfs, SysfsError } from '../../src/kernel/linux/sysfs.js';
import { expectErrno } from '../kernel-sim/helpers.js';
import { FakeKernel } from './fake-kernel.js';
import { FakeSysfs, type FakeFunction } from './fake-sysfs.js';

const NVME: FakeFunction = { bdf: '0000:01:00.0', vendor: 0x144d, device: 0xa80a, group: 12, driver: 'nvme' };
const VFIO: FakeFunction = { bdf: '0000:02:00.0', vendor: 0x144d, device: 0xa808, group: 13, driver: 'vfio-pci', native: 'nvme' };
const NIC: FakeFunction = { bdf: '0000:03:00.0', vendor: 0x8086, device: 0x1593, group: 14, driver: 'ice' };
const UNBOUND: FakeFunction = { bdf: '0000:04:00.0', vendor: 0x1af4, device: 0x1041, group: 15, driver: undefined };
const NO_GROUP: FakeFunction = { bdf: '0000:05:00.0', vendor: 0x8086, device: 0x2922, group: undefined, driver: 'ahci' };

const trees: FakeSysfs[] = [];
function tree(functions: FakeFunction[] = [NVME, VFIO, NIC, UNBOUND, NO_GROUP], drivers?: string[]): FakeSysfs {
  const t = new FakeSysfs(functions, drivers);
  trees.push(t);
  return t;
}
afterEach(() => {
  for (const t of trees.splice(0)) t.cleanup();
});

function sysfs(t: FakeSysfs, allowlist?: string[]): PciSysfs {
  return new PciSysfs({ root: t.root, io: t.io(), allowlist });
}

async function sysfsError(p: Promise<unknown>): Promise<SysfsError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SysfsError);
    return err as SysfsError;
  }
  throw new Error('expected a SysfsError');
}

describe('sysfs inventory', () => {
  it('lists functions with an IOMMU group: ids, group, driver and cdev', async () => {
    const t = tree();
    const list = await sysfs(t).listFunctions();
    expect(list).toEqual([
      { bdf: '0000:01:00.0', vendorId: 0x144d, deviceId: 0xa80a, iommuGroup: 12, cdev: undefined, driver: 'nvme' },
      { bdf: '0000:02:00.0', vendorId: 0x144d, deviceId: 0xa808, iommuGroup: 13, cdev: 'vfio0', driver: 'vfio-pci' },
      { bdf: '0000:03:00.0', vendorId: 0x8086, deviceId: 0x1593, iommuGroup: 14, cdev: undefined, driver: 'ice' },
      { bdf: '0000:04:00.0', vendorId: 0x1af4, deviceId: 0x1041, iommuGroup: 15, cdev: undefined, driver: undefined },
    ]);
  });

  it('an allowlist restricts the listing; bad allowlist entries are refused', async () => {
    const t = tree();
    const list = await sysfs(t, ['02:00.0', '0000:03:00.0', '0000:05:00.0']).listFunctions();
    expect(list.map((f) => f.bdf)).toEqual(['0000:02:00.0', '0000:03:00.0']);
    expect(() => sysfs(t, ['../../etc'])).toThrow(/not a PCI address/);
  });

  it('maps a cdev back to its function through class/vfio-dev', async () => {
    const t = tree();
    const s = sysfs(t);
    expect(await s.functionOfCdev('vfio0')).toBe('0000:02:00.0');
    expect(await s.functionOfCdev('vfio7')).toBeUndefined();
    expect(await s.functionOfCdev('../vfio0')).toBeUndefined();
  });

  it('normalizes PCI addresses and rejects anything else', async () => {
    expect(normalizeBdf('3B:00.1')).toBe('0000:3b:00.1');
    expect(normalizeBdf('0000:3b:00.8')).toBeUndefined();
    expect(normalizeBdf('0000:3b:00.0/../..')).toBeUndefined();
    await sysfsError(sysfs(tree(), []).readFunction('../../../etc/passwd'));
  });
});

describe('prepareDevice / releaseDevice (managed hostdev)', () => {
  it('refuses devices outside the allowlist, and everything without one', async () => {
    const t = tree();
    expect((await sysfsError(sysfs(t, ['0000:03:00.0']).prepareDevice('0000:01:00.0'))).message).toContain('not in the configured device allowlist');
    expect((await sysfsError(sysfs(t).prepareDevice('0000:01:00.0'))).message).toContain('no device allowlist is configured');
    expect((await sysfsError(sysfs(t).releaseDevice('0000:01:00.0'))).message).toContain('no device allowlist');
    expect(t.writes).toEqual([]);
  });

  it('override, unbind, probe: the function moves to vfio-pci and gets a cdev; release gives it back', async () => {
    const t = tree();
    const s = sysfs(t, [NVME.bdf]);
    const fn = await s.prepareDevice(NVME.bdf);
    expect(t.writes).toEqual([
      [`bus/pci/devices/${NVME.bdf}/driver_override`, 'vfio-pci'],
      [`bus/pci/devices/${NVME.bdf}/driver/unbind`, NVME.bdf],
      ['bus/pci/drivers_probe', NVME.bdf],
    ]);
    expect(fn).toMatchObject({ bdf: NVME.bdf, driver: 'vfio-pci', cdev: 'vfio1', iommuGroup: 12 });
    expect(s.originalDriver(NVME.bdf)).toBe('nvme');

    t.writes.length = 0;
    const back = await s.releaseDevice(NVME.bdf);
    expect(t.writes).toEqual([
      [`bus/pci/devices/${NVME.bdf}/driver/unbind`, NVME.bdf],
      [`bus/pci/devices/${NVME.bdf}/driver_override`, '\n'],
      ['bus/pci/drivers_probe', NVME.bdf],
    ]);
    expect(back).toMatchObject({ driver: 'nvme', cdev: undefined });
    expect(t.override(NVME.bdf)).toBe('\n');
    expect(s.originalDriver(NVME.bdf)).toBeUndefined();
  });

  it('an unbound function needs no unbind; one already on vfio-pci is left alone', async () => {
    const t = tree();
    const s = sysfs(t, [UNBOUND.bdf, VFIO.bdf]);
    expect(await s.prepareDevice(UNBOUND.bdf)).toMatchObject({ driver: 'vfio-pci' });
    expect(t.writes.map(([p]) => p)).toEqual([`bus/pci/devices/${UNBOUND.bdf}/driver_override`, 'bus/pci/drivers_probe']);
    t.writes.length = 0;
    expect(await s.prepareDevice(VFIO.bdf)).toMatchObject({ driver: 'vfio-pci', cdev: 'vfio0' });
    expect(t.writes).toEqual([]);
  });

  it('release binds the original driver explicitly when the reprobe does not pick it', async () => {
    // The NIC's native match is gone (say, the PF driver was reloaded with ids removed).
    const t = tree([{ ...NIC, native: undefined }]);
    const s = sysfs(t, [NIC.bdf]);
    await s.prepareDevice(NIC.bdf);
    t.writes.length = 0;
    expect(await s.releaseDevice(NIC.bdf)).toMatchObject({ driver: 'ice' });
    expect(t.writes[t.writes.length - 1]).toEqual(['bus/pci/drivers/ice/bind', NIC.bdf]);
  });

  it('when vfio-pci is not loaded, prepare fails clearly and the original driver gets the function back', async () => {
    const t = tree([NVME], ['nvme']);
    const s = sysfs(t, [NVME.bdf]);
    const err = await sysfsError(s.prepareDevice(NVME.bdf));
    expect(err.message).toMatch(/vfio-pci did not bind .*vfio-pci module loaded/);
    expect(t.driverOf(NVME.bdf)).toBe('nvme');
    expect(t.override(NVME.bdf)).toBe('\n');
  });

  it('a missing function is refused before any write', async () => {
    const t = tree();
    expect((await sysfsError(sysfs(t, ['0000:09:00.0']).prepareDevice('0000:09:00.0'))).message).toContain('no such PCI function');
    expect(t.writes).toEqual([]);
  });
});

describe('LinuxKernel and sysfs', () => {
  const devRoot = '/fake/dev';

  async function kernelWith(t: FakeSysfs, allowlist?: string[]) {
    const fake = new FakeKernel(devRoot);
    fake.nodes.add(`${devRoot}/vfio/devices/vfio0`).add(`${devRoot}/vfio/devices/vfio1`);
    const kernel = createLinuxKernel({ sys: fake, devRoot, sysfsRoot: t.root, sysfsIo: t.io(), allowlist });
    await kernel.probe();
    return kernel;
  }

  it('listPciFunctions reads sysfs', async () => {
    const kernel = await kernelWith(tree());
    expect((await kernel.listPciFunctions()).map((f) => f.bdf)).toEqual([NVME.bdf, VFIO.bdf, NIC.bdf, UNBOUND.bdf]);
  });

  it('with an allowlist, openDevice refuses cdevs of other functions (EPERM)', async () => {
    const t = tree();
    const kernel = await kernelWith(t, [NVME.bdf]);
    await expectErrno(kernel.openDevice('vfio0'), 'EPERM', 'open_device'); // 0000:02:00.0
    await kernel.prepareDevice(NVME.bdf); // becomes vfio1
    const d = await kernel.openDevice('vfio1');
    expect(d.cdev).toBe('vfio1');
  });

  it('refuses to release a function whose device file is still open', async () => {
    const t = tree();
    const kernel = await kernelWith(t, [NVME.bdf]);
    await kernel.prepareDevice(NVME.bdf);
    const d = await kernel.openDevice('vfio1');
    expect((await sysfsError(kernel.releaseDevice(NVME.bdf))).message).toContain('vfio1 is still open');
    await kernel.closeDevice(d);
    expect(await kernel.releaseDevice(NVME.bdf)).toMatchObject({ driver: 'nvme' });
  });
});
