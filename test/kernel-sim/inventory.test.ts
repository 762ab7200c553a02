import { describe, expect, it } from 'vitest';
import {
  createSimKernel,
  DEMO_PCI_FUNCTIONS,
  SimKernel,
  validateInventory,
  type SimPciFunction,
} from '../../src/kernel/sim/index.js';
import { KERNEL_PROFILES } from '../../src/kernel/types.js';
import { expectErrno } from './helpers.js';

const base: SimPciFunction = {
  bdf: '0000:05:00.0',
  vendorId: 0x1234,
  deviceId: 0x11e8,
  iommuGroup: 5,
  cdev: 'vfio0',
  driver: 'vfio-pci',
  iommu: 'iommu0',
};

describe('demo inventory', () => {
  it('has 6-8 functions on two IOMMU instances, with a GPU and its audio function sharing a group', () => {
    expect(DEMO_PCI_FUNCTIONS.length).toBeGreaterThanOrEqual(6);
    expect(DEMO_PCI_FUNCTIONS.length).toBeLessThanOrEqual(8);
    expect(new Set(DEMO_PCI_FUNCTIONS.map((f) => f.iommu))).toEqual(new Set(['iommu0', 'iommu1']));
    const gpu = DEMO_PCI_FUNCTIONS.find((f) => f.bdf === '0000:41:00.0');
    const audio = DEMO_PCI_FUNCTIONS.find((f) => f.bdf === '0000:41:00.1');
    expect(gpu?.iommuGroup).toBe(audio?.iommuGroup);
    expect(() => validateInventory(DEMO_PCI_FUNCTIONS)).not.toThrow();
  });

  it('listPciFunctions returns PciFunction copies without the sim-only iommu field', async () => {
    const k = createSimKernel();
    const list = await k.listPciFunctions();
    expect(list.map((f) => f.bdf)).toEqual(DEMO_PCI_FUNCTIONS.map((f) => f.bdf));
    expect(list.every((f) => !('iommu' in f))).toBe(true);
    (list[0] as { bdf: string }).bdf = 'mutated';
    expect((await k.listPciFunctions())[0]?.bdf).toBe(DEMO_PCI_FUNCTIONS[0]?.bdf);
  });

  it('createSimKernel uses config-supplied devices', async () => {
    const k = createSimKernel({ devices: [base] });
    expect(k).toBeInstanceOf(SimKernel);
    expect((await k.listPciFunctions()).map((f) => f.bdf)).toEqual(['0000:05:00.0']);
    await expectErrno(k.openDevice('vfio1'), 'ENOENT', 'open_device');
  });
});

describe('device config validation', () => {
  it('rejects a duplicate BDF, naming the entry', () => {
    expect(() => validateInventory([base, { ...base, cdev: 'vfio1' }])).toThrow(
      /sim device #1 \(0000:05:00\.0\): duplicate BDF, already used by sim device #0/,
    );
  });

  it('rejects a duplicate cdev, naming the entry', () => {
    expect(() => validateInventory([base, { ...base, bdf: '0000:06:00.0' }])).toThrow(
      /sim device #1 \(0000:06:00\.0\): duplicate cdev vfio0/,
    );
  });

  it.each(['0000:05:00.8', '0000:5:00.0', '0000:05:00', '0000:0A:00.0', '05:00.0', ''])(
    'rejects malformed BDF %j',
    (bdf) => {
      expect(() => validateInventory([{ ...base, bdf }])).toThrow(/sim device #0.*malformed BDF/);
    },
  );

  it('rejects a malformed cdev name and out-of-range ids', () => {
    expect(() => validateInventory([{ ...base, cdev: 'vfio-x' }])).toThrow(/malformed cdev/);
    expect(() => validateInventory([{ ...base, vendorId: 0x10000 }])).toThrow(/vendorId/);
    expect(() => validateInventory([{ ...base, iommuGroup: -1 }])).toThrow(/iommuGroup/);
    expect(() => validateInventory([{ ...base, iommu: '' }])).toThrow(/iommu instance/);
  });

  it('rejects one IOMMU group spread over two IOMMU instances', () => {
    const other = { ...base, bdf: '0000:05:00.1', cdev: 'vfio1', iommu: 'iommu1' };
    expect(() => validateInventory([base, other])).toThrow(/IOMMU group 5 is behind iommu0/);
  });

  it('the constructor validates too', () => {
    expect(() => createSimKernel({ devices: [base, base] })).toThrow(/duplicate BDF/);
  });
});

describe('probe', () => {
  it('defaults to the linux-6.17 profile', async () => {
    const caps = await createSimKernel().probe();
    expect(caps).toMatchObject({ backend: 'sim', profile: 'linux-6.17', release: '7.2.13-sim', selftest: true });
  });

  it('linux-6.17 lists the 7.2 ioctls, HW_QUEUE_ALLOC and VEVENTQ_ALLOC included', async () => {
    const { ioctls } = await createSimKernel({ profile: 'linux-6.17' }).probe();
    expect(ioctls).toEqual(
      expect.arrayContaining([
        'IOMMU_DESTROY',
        'IOMMU_VIOMMU_ALLOC',
        'IOMMU_VDEVICE_ALLOC',
        'IOMMU_VEVENTQ_ALLOC',
        'IOMMU_HW_QUEUE_ALLOC',
        'IOMMU_TEST_CMD',
        'VFIO_DEVICE_BIND_IOMMUFD',
      ]),
    );
  });

  it('linux-6.13 lists vIOMMU/vDEVICE but not VEVENTQ (6.15) or HW_QUEUE (6.17)', async () => {
    const caps = await createSimKernel({ profile: 'linux-6.13' }).probe();
    expect(caps.release).toBe('6.13.0-sim');
    expect(caps.profile).toBe('linux-6.13');
    expect(caps.ioctls).toContain('IOMMU_VDEVICE_ALLOC');
    expect(caps.ioctls).toContain('IOMMU_IOAS_MAP_FILE');
    expect(caps.ioctls).not.toContain('IOMMU_VEVENTQ_ALLOC');
    expect(caps.ioctls).not.toContain('IOMMU_HW_QUEUE_ALLOC');
  });

  it.each(KERNEL_PROFILES)('%s: probe and listPciFunctions are not kernel calls', async (profile) => {
    const k = createSimKernel({ profile });
    await k.probe();
    await k.listPciFunctions();
    expect(k.faults.callCount).toBe(0);
  });
});
