/** IOMMU_HWPT_ALLOC on the mock IOMMU (kernel-uapi.md §3.9, §6.3). */
import { describe, expect, it } from 'vitest';
import {
  HWPT_ALLOC_DIRTY_TRACKING,
  HWPT_ALLOC_NEST_PARENT,
  HWPT_ALLOC_PASID,
  HWPT_DATA_TYPE,
  HWPT_FAULT_ID_VALID,
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
  selftestData,
  usersOf,
} from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: HWPT_ALLOC argument checks', (profile) => {
  it('data_type NONE with data_len != 0 is EINVAL, checked before the dev_id lookup', async () => {
    const { k, fd } = await fixture(profile);
    const args = hwptArgs(id(0), id(0), { data: new Uint8Array(4) });
    await expectErrno(k.hwptAlloc(fd, args), 'EINVAL', 'hwpt_alloc');
  });

  it('data_type != NONE with data_len 0 is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(id(0), id(0), { dataType: HWPT_DATA_TYPE.SELFTEST })), 'EINVAL');
  });

  it('a bad dev_id is ENOENT (before pt_id is looked at)', async () => {
    const { k, fd } = await fixture(profile);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(id(5), id(6))), 'ENOENT');
  });
});

describe.each(KERNEL_PROFILES)('%s: HWPT_ALLOC with pt_id = IOAS (HWPT_PAGING)', (profile) => {
  it('creates a manual HWPT_PAGING that holds the IOAS', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas));
    expect(k.objects(fd).find((o) => o.id === hwpt)).toMatchObject({
      type: 'HWPT_PAGING',
      auto: false,
      nestParent: false,
      ioasId: ioas,
      users: 0,
    });
    expect(usersOf(k, fd, ioas)).toBe(1);
  });

  it('NEST_PARENT and DIRTY_TRACKING are accepted', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const flags = HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING;
    const hwpt = await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags }));
    expect(k.objects(fd).find((o) => o.id === hwpt)?.nestParent).toBe(true);
  });

  it('flags outside the known bits are EOPNOTSUPP', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: 0x10 })), 'EOPNOTSUPP');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: 0x8000_0000 })), 'EOPNOTSUPP');
  });

  it('FAULT_ID_VALID together with NEST_PARENT is EOPNOTSUPP', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const flags = HWPT_FAULT_ID_VALID | HWPT_ALLOC_NEST_PARENT;
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags })), 'EOPNOTSUPP');
  });

  it('FAULT_ID_VALID alone is ENOENT (no FAULT object exists) and leaves nothing behind', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const before = k.objects(fd);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_FAULT_ID_VALID })), 'ENOENT');
    expect(k.objects(fd)).toEqual(before);
    expect(await k.ioasAlloc(fd)).toBe(3);
  });
});

describe('HWPT_ALLOC paging flags and data that differ by profile', () => {
  it('linux-6.17: IOMMU_HWPT_ALLOC_PASID is accepted', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    await k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_PASID }));
  });

  it('linux-6.13: IOMMU_HWPT_ALLOC_PASID (6.15+) is an unknown flag, EOPNOTSUPP', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_PASID })), 'EOPNOTSUPP');
  });

  it('linux-6.17: the mock takes IOMMU_HWPT_DATA_SELFTEST on a paging HWPT, 4..8 bytes', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const sel = HWPT_DATA_TYPE.SELFTEST;
    await k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(8) }));
    await k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(4) }));
    await k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(8, 1) }));
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(3) })), 'EINVAL');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(12) })), 'EINVAL');
    await expectErrno(
      k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: sel, data: selftestData(8, 7) })),
      'EOPNOTSUPP',
    );
    await expectErrno(
      k.hwptAlloc(fd, hwptArgs(devId, ioas, { dataType: HWPT_DATA_TYPE.VTD_S1, data: selftestData(8) })),
      'EOPNOTSUPP',
    );
  });

  it('linux-6.13: any paging HWPT data is EOPNOTSUPP on the older mock', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const ioas = await k.ioasAlloc(fd);
    const { devId } = await bindDevice(k, fd);
    const args = hwptArgs(devId, ioas, { dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData(8) });
    await expectErrno(k.hwptAlloc(fd, args), 'EOPNOTSUPP');
  });
});

describe.each(KERNEL_PROFILES)('%s: HWPT_ALLOC with pt_id = HWPT_PAGING (nested on a parent)', (profile) => {
  async function parentSetup(flags = HWPT_ALLOC_NEST_PARENT) {
    const f = await fixture(profile);
    const ioas = await f.k.ioasAlloc(f.fd);
    const { dev, devId } = await bindDevice(f.k, f.fd);
    const parent = await f.k.hwptAlloc(f.fd, hwptArgs(devId, ioas, { flags }));
    return { ...f, ioas, dev, devId, parent };
  }

  it('creates a HWPT_NESTED that holds its parent', async () => {
    const { k, fd, devId, parent } = await parentSetup();
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, parent));
    expect(k.objects(fd).find((o) => o.id === nested)).toMatchObject({ type: 'HWPT_NESTED', parentId: parent });
    expect(k.objects(fd).find((o) => o.id === nested)?.viommuId).toBeUndefined();
    expect(usersOf(k, fd, parent)).toBe(1);
  });

  it('no driver data is EOPNOTSUPP', async () => {
    const { k, fd, devId, parent } = await parentSetup();
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, parent)), 'EOPNOTSUPP');
  });

  it('flags other than FAULT_ID_VALID|PASID are EOPNOTSUPP', async () => {
    const { k, fd, devId, parent } = await parentSetup();
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent, { flags: HWPT_ALLOC_NEST_PARENT })), 'EOPNOTSUPP');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent, { flags: HWPT_ALLOC_DIRTY_TRACKING })), 'EOPNOTSUPP');
  });

  it('a parent without NEST_PARENT is EINVAL', async () => {
    const { k, fd, devId, parent } = await parentSetup(0);
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent)), 'EINVAL');
  });

  it('an automatic parent is EINVAL', async () => {
    const { k, fd, dev, devId, ioas } = await parentSetup();
    const auto = await k.attachPt(dev, ioas);
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, auto)), 'EINVAL');
  });

  it('data_type other than 0xdead is EOPNOTSUPP; data_len outside 4..8 is EINVAL', async () => {
    const { k, fd, devId, parent } = await parentSetup();
    await expectErrno(
      k.hwptAlloc(fd, nestedArgs(devId, parent, { dataType: HWPT_DATA_TYPE.ARM_SMMUV3 })),
      'EOPNOTSUPP',
    );
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent, { data: selftestData(3) })), 'EINVAL');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent, { data: selftestData(9) })), 'EINVAL');
    await k.hwptAlloc(fd, nestedArgs(devId, parent, { data: selftestData(4) }));
  });

  it('FAULT_ID_VALID is ENOENT for the fault lookup', async () => {
    const { k, fd, devId, parent } = await parentSetup();
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, parent, { flags: HWPT_FAULT_ID_VALID })), 'ENOENT');
    expect(usersOf(k, fd, parent)).toBe(0);
  });
});

describe.each(KERNEL_PROFILES)('%s: HWPT_ALLOC with pt_id = vIOMMU', (profile) => {
  it('creates a HWPT_NESTED that holds the vIOMMU, parented on its HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, parent, viommu } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    expect(k.objects(fd).find((o) => o.id === nested)).toMatchObject({
      type: 'HWPT_NESTED',
      parentId: parent,
      viommuId: viommu,
    });
  });

  it('a device behind a different IOMMU instance is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { viommu } = await nestingStack(k, fd, 'vfio0');
    const other = await bindDevice(k, fd, 'vfio6');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(other.devId, viommu)), 'EINVAL');
  });

  it('no data, or extra flags, are EOPNOTSUPP; wrong data_type EOPNOTSUPP; short data EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, viommu)), 'EOPNOTSUPP');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, viommu, { flags: 0x1 })), 'EOPNOTSUPP');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, viommu, { dataType: 1 })), 'EOPNOTSUPP');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, viommu, { data: selftestData(2) })), 'EINVAL');
  });

  it('a HWPT_NESTED or DEVICE pt_id is EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const { devId, viommu } = await nestingStack(k, fd);
    const nested = await k.hwptAlloc(fd, nestedArgs(devId, viommu));
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, nested)), 'EINVAL');
    await expectErrno(k.hwptAlloc(fd, hwptArgs(devId, devId)), 'EINVAL');
  });

  it('a vIOMMU serves every device behind the same IOMMU instance', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const a = await bindDevice(k, fd, 'vfio4');
    const b = await bindDevice(k, fd, 'vfio6');
    const parent = await k.hwptAlloc(fd, hwptArgs(a.devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: a.devId, hwptId: parent });
    await k.hwptAlloc(fd, nestedArgs(b.devId, viommu));
  });
});
