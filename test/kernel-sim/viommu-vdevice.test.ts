/** IOMMU_VIOMMU_ALLOC, IOMMU_VDEVICE_ALLOC, IOMMU_GET_HW_INFO (kernel-uapi.md §3.8, §3.10, §3.11, §6.3). */
import { describe, expect, it } from 'vitest';
import {
  HW_INFO_TYPE,
  KERNEL_PROFILES,
  VIOMMU_TYPE,
} from '../../src/kernel/types.js';
import { bindDevice, expectErrno, fixture, hwptArgs, id, nestingStack, usersOf } from './helpers.js';

const SELFTEST = VIOMMU_TYPE.SELFTEST;

describe.each(KERNEL_PROFILES)('%s: VIOMMU_ALLOC', (profile) => {
  it('type 0 is EOPNOTSUPP, checked before any lookup', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.viommuAlloc(fd, { type: 0, devId: id(0), hwptId: id(0) }), 'EOPNOTSUPP', 'viommu_alloc');
  });

  it('a bad dev_id is ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.viommuAlloc(fd, { type: SELFTEST, devId: id(3), hwptId: id(0) }), 'ENOENT');
  });

  it('hwpt_id 0 is ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    const { devId } = await bindDevice(k, fd);
    await expectErrno(k.viommuAlloc(fd, { type: SELFTEST, devId, hwptId: id(0) }), 'ENOENT');
  });

  it('a HWPT_PAGING without NEST_PARENT is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await expectErrno(k.viommuAlloc(fd, { type: SELFTEST, devId, hwptId: hwpt }), 'EINVAL');
  });

  it('a type other than 0xdeadbeef is EOPNOTSUPP', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, parent } = await nestingStack(k, fd);
    for (const type of [VIOMMU_TYPE.ARM_SMMUV3, VIOMMU_TYPE.TEGRA241_CMDQV, 0xdead]) {
      await expectErrno(k.viommuAlloc(fd, { type, devId, hwptId: parent }), 'EOPNOTSUPP');
    }
  });

  it('success returns a vIOMMU behind the device’s IOMMU that holds the parent', async () => {
    const { k, fd } = await fixture(profile);
    const { parent, viommu } = await nestingStack(k, fd, 'vfio4');
    expect(k.objects(fd).find((o) => o.id === viommu)).toMatchObject({
      type: 'VIOMMU',
      parentId: parent,
      iommu: 'iommu1',
      users: 0,
    });
    expect(usersOf(k, fd, parent)).toBe(1);
  });
});

describe('VIOMMU_ALLOC check order that changed in 6.17 (get_viommu_size)', () => {
  it('linux-6.17: a wrong type wins over a bad or non-nest-parent hwpt_id (EOPNOTSUPP)', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const plain = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await expectErrno(k.viommuAlloc(fd, { type: 0xdead, devId, hwptId: id(0) }), 'EOPNOTSUPP');
    await expectErrno(k.viommuAlloc(fd, { type: 0xdead, devId, hwptId: plain }), 'EOPNOTSUPP');
  });

  it('linux-6.13: the driver checks the type only after the HWPT lookup', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const plain = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    await expectErrno(k.viommuAlloc(fd, { type: 0xdead, devId, hwptId: id(0) }), 'ENOENT');
    await expectErrno(k.viommuAlloc(fd, { type: 0xdead, devId, hwptId: plain }), 'EINVAL');
  });
});

describe.each(KERNEL_PROFILES)('%s: VDEVICE_ALLOC', (profile) => {
  it('creates a vDEVICE that holds its vIOMMU', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    expect(k.objects(fd).find((o) => o.id === vdev)).toMatchObject({
      type: 'VDEVICE',
      viommuId: viommu,
      devId,
      virtId: 0x99n,
      users: 0,
    });
    expect(usersOf(k, fd, viommu)).toBe(1);
  });

  it('bad viommu_id or dev_id is ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: id(0), devId, virtId: 1n }), 'ENOENT', 'vdevice_alloc');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: id(0), virtId: 1n }), 'ENOENT');
  });

  it('a device behind a different IOMMU instance is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { viommu } = await nestingStack(k, fd, 'vfio0');
    const other = await bindDevice(k, fd, 'vfio4');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: other.devId, virtId: 1n }), 'EINVAL');
  });

  it('a virt_id already used on the vIOMMU is EEXIST; free again after destroy', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd, 'vfio0');
    const other = await bindDevice(k, fd, 'vfio1');
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 0x99n });
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: other.devId, virtId: 0x99n }), 'EEXIST');
    await k.destroy(fd, vdev);
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: other.devId, virtId: 0x99n });
  });

  it('the same virt_id on two different vIOMMUs is fine', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd, 'vfio0');
    const other = await nestingStack(k, fd, 'vfio1');
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 7n });
    await k.vdeviceAlloc(fd, { viommuId: other.viommu, devId: other.devId, virtId: 7n });
  });

  it('virt_id must fit an unsigned long (EINVAL), 0 and 2^64-1 are accepted', async () => {
    const { k, fd } = await fixture(profile);
    const { viommu } = await nestingStack(k, fd, 'vfio0');
    const a = await bindDevice(k, fd, 'vfio1');
    const b = await bindDevice(k, fd, 'vfio2');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: a.devId, virtId: 1n << 64n }), 'EINVAL');
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: a.devId, virtId: (1n << 64n) - 1n });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: b.devId, virtId: 0n });
  });
});

describe('one vDEVICE per device', () => {
  it('linux-6.17: a second vDEVICE for the same device is EEXIST, on any vIOMMU', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const { devId, viommu, parent } = await nestingStack(k, fd);
    const viommu2 = await k.viommuAlloc(fd, { type: SELFTEST, devId, hwptId: parent });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 2n }), 'EEXIST');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu2, devId, virtId: 1n }), 'EEXIST');
  });

  it('linux-6.13: several vDEVICEs per device are allowed', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const { devId, viommu, parent } = await nestingStack(k, fd);
    const viommu2 = await k.viommuAlloc(fd, { type: SELFTEST, devId, hwptId: parent });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 2n });
    await k.vdeviceAlloc(fd, { viommuId: viommu2, devId, virtId: 1n });
    expect(k.objects(fd).filter((o) => o.type === 'VDEVICE')).toHaveLength(3);
  });
});

describe.each(KERNEL_PROFILES)('%s: GET_HW_INFO', (profile) => {
  it('returns the mock IOMMU info: type 0xfeedbeef, {flags 0, test_reg 0xdeadbeef} LE', async () => {
    const { k, fd } = await fixture(profile);
    const { devId } = await bindDevice(k, fd);
    const info = await k.getHwInfo(fd, devId);
    expect(info.type).toBe(HW_INFO_TYPE.SELFTEST);
    expect([...info.data]).toEqual([0, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
    expect(info.maxPasidLog2).toBe(0);
    const expected = profile === 'linux-6.17' ? 0b1001n : 0b0001n; // ATS_NOT_SUPPORTED is 7.1+
    expect(info.capabilities).toBe(expected);
  });

  it('a bad dev_id is ENOENT', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.getHwInfo(fd, id(1)), 'ENOENT', 'get_hw_info');
  });
});
