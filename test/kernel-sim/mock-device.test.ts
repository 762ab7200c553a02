/**
 * IOMMUFD_TEST mock devices in the sim (kernel-uapi.md §6.2–§6.4): the same
 * API as LinuxKernel, the kernel's ID order, and the unbind/close paths.
 */
import { describe, expect, it } from 'vitest';
import { MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID, MOCK_IOMMU_INSTANCE } from '../../src/kernel/sim/index.js';
import {
  HW_INFO_TYPE,
  HWPT_ALLOC_DIRTY_TRACKING,
  HWPT_ALLOC_NEST_PARENT,
  KERNEL_PROFILES,
  VIOMMU_TYPE,
} from '../../src/kernel/types.js';
import { bindDevice, expectErrno, fixture, hwptArgs, id, nestedArgs, typeOf, usersOf } from './helpers.js';

describe.each(KERNEL_PROFILES)('%s: MOCK_DOMAIN', (profile) => {
  it('on IOAS 1 gives stdev 2, idev 3 and automatic HWPT 4 (§6.4)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    expect(m).toEqual({ stdevId: 2, hwptId: 4, idevId: 3 });
    expect(k.objects(fd)).toEqual([
      { id: 1, type: 'IOAS', users: 1 },
      { id: 2, type: 'SELFTEST', users: 0, devId: 3, bdf: 'iommufd_mock0' },
      // The selftest object's driver reference plus the attachment.
      { id: 3, type: 'DEVICE', users: 2, bdf: 'iommufd_mock0', mockFlags: 0 },
      { id: 4, type: 'HWPT_PAGING', users: 1, auto: true, nestParent: false, ioasId: 1 },
    ]);
  });

  it('a bad id is ENOENT, a wrong type EINVAL, bad dev_flags EINVAL; none of them uses an ID', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const first = await k.selftestMockDomain(fd, ioas);
    await expectErrno(k.selftestMockDomain(fd, id(99)), 'ENOENT', 'bind_iommufd');
    await expectErrno(k.selftestMockDomain(fd, id(0)), 'ENOENT');
    await expectErrno(k.selftestMockDomain(fd, first.idevId), 'EINVAL');
    await expectErrno(k.selftestMockDomain(fd, first.stdevId), 'EINVAL');
    await expectErrno(k.selftestMockDomain(fd, ioas, 1 << 1), 'EINVAL');
    expect(await k.ioasAlloc(fd)).toBe(5);
  });

  it('attaches straight to a HWPT: another mock device’s automatic one, or a manual one', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const a = await k.selftestMockDomain(fd, ioas);
    const b = await k.selftestMockDomain(fd, a.hwptId);
    expect(b).toEqual({ stdevId: 5, hwptId: a.hwptId, idevId: 6 });
    const c = await k.selftestMockDomain(fd, ioas); // the automatic HWPT is shared
    expect(c.hwptId).toBe(a.hwptId);
    const manual = await k.hwptAlloc(fd, hwptArgs(a.idevId, ioas));
    expect((await k.selftestMockDomain(fd, manual)).hwptId).toBe(manual);
    // Each mock device sits alone in its IOMMU group, so they can differ.
    expect(usersOf(k, fd, a.hwptId)).toBe(3);
  });

  it('DESTROY(idev) is EBUSY; DESTROY(stdev) unbinds and frees stdev, idev and the automatic HWPT', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    await expectErrno(k.destroy(fd, m.idevId), 'EBUSY');
    await expectErrno(k.destroy(fd, m.hwptId), 'EBUSY');
    await expectErrno(k.destroy(fd, ioas), 'EBUSY');
    await k.selftestDestroyMockDevice(fd, m.stdevId);
    expect(k.objects(fd).map((o) => o.id)).toEqual([ioas]);
    await expectErrno(k.selftestDestroyMockDevice(fd, m.stdevId), 'ENOENT', 'close_device');
    // The generic destroy() handles SELFTEST ids too.
    const again = await k.selftestMockDomain(fd, ioas);
    expect(again).toEqual(m);
    await k.destroy(fd, again.stdevId);
    expect(k.objects(fd).map((o) => o.id)).toEqual([ioas]);
    await k.destroy(fd, ioas);
  });

  it('each mock device is a new struct device: names are not reused', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const a = await k.selftestMockDomain(fd, ioas);
    await k.destroy(fd, a.stdevId);
    const b = await k.selftestMockDomain(fd, ioas);
    expect(k.objects(fd).find((o) => o.id === b.idevId)?.bdf).toBe('iommufd_mock1');
  });
});

describe.each(KERNEL_PROFILES)('%s: MOCK_DOMAIN_REPLACE', (profile) => {
  it('onto a manual HWPT frees the automatic one; back onto the IOAS makes a fresh one', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const manual = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas));
    expect(await k.selftestMockDomainReplace(fd, m.stdevId, manual)).toBe(manual);
    expect(typeOf(k, fd, m.hwptId)).toBeUndefined();
    expect(await k.selftestMockDomainReplace(fd, m.stdevId, ioas)).toBe(m.hwptId);
    expect(await k.selftestMockDomainReplace(fd, m.stdevId, ioas)).toBe(m.hwptId);
    await k.destroy(fd, manual);
  });

  it('needs a SELFTEST id (ENOENT) and an IOAS or HWPT (EINVAL)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    await expectErrno(k.selftestMockDomainReplace(fd, m.idevId, ioas), 'ENOENT', 'attach_pt');
    await expectErrno(k.selftestMockDomainReplace(fd, ioas, ioas), 'ENOENT');
    await expectErrno(k.selftestMockDomainReplace(fd, m.stdevId, id(42)), 'ENOENT');
    await expectErrno(k.selftestMockDomainReplace(fd, m.stdevId, m.idevId), 'EINVAL');
  });

  it('a vIOMMU-backed nested HWPT needs the device’s vDEVICE (ENOENT without)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent });
    const nested = await k.hwptAlloc(fd, nestedArgs(m.idevId, viommu));
    await expectErrno(k.selftestMockDomainReplace(fd, m.stdevId, nested), 'ENOENT');
    await expectErrno(k.selftestMockDomain(fd, nested), 'ENOENT');
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n });
    expect(await k.selftestMockDomainReplace(fd, m.stdevId, nested)).toBe(nested);
    await expectErrno(k.destroy(fd, nested), 'EBUSY');
  });
});

describe('linux-6.17: DESTROY(stdev) is the full §4.3 unbind', () => {
  it('tombstones the vDEVICE: ENOENT for good, the ID skipped, the vIOMMU destroyable, virt_id free', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const ioas = await k.ioasAlloc(fd); // 1
    const m = await k.selftestMockDomain(fd, ioas); // 2, 4, 3
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT })); // 5
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent }); // 6
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n }); // 7
    await expectErrno(k.destroy(fd, viommu), 'EBUSY');
    await k.destroy(fd, m.stdevId);
    expect(k.tombstones(fd)).toEqual([vdev]);
    await expectErrno(k.destroy(fd, vdev), 'ENOENT');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 1n }), 'ENOENT');
    // stdev 2, idev 3 and the automatic HWPT 4 were freed; 7 stays reserved.
    const other = await k.selftestMockDomain(fd, ioas);
    expect(other).toEqual({ stdevId: 2, hwptId: 4, idevId: 3 });
    await expectErrno(k.hwptAlloc(fd, hwptArgs(other.idevId, vdev)), 'EINVAL'); // pt_id lookup failure
    expect(await k.ioasAlloc(fd)).toBe(8);
    // virt_id 0x99 was freed on the vIOMMU by the tombstoning destroy.
    const vdev2 = await k.vdeviceAlloc(fd, { viommuId: viommu, devId: other.idevId, virtId: 0x99n });
    expect(vdev2).toBe(9);
    await k.destroy(fd, vdev2);
    await k.destroy(fd, viommu);
  });

  it('while attached to the nested HWPT: the HWPT and the vIOMMU become destroyable', async () => {
    const { k, fd } = await fixture('linux-6.17');
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n });
    const nested = await k.hwptAlloc(fd, nestedArgs(m.idevId, viommu));
    await k.selftestMockDomainReplace(fd, m.stdevId, nested);
    await k.selftestDestroyMockDevice(fd, m.stdevId);
    await k.destroy(fd, nested);
    await k.destroy(fd, viommu);
    await k.destroy(fd, parent);
    await k.destroy(fd, ioas);
    expect(k.objects(fd)).toEqual([]);
  });
});

describe('linux-6.13: DESTROY(stdev) leaves the vDEVICE alive and destroyable', () => {
  it('no tombstone; DESTROY(vdev) succeeds afterwards', async () => {
    const { k, fd } = await fixture('linux-6.13');
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent });
    const vdev = await k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n });
    await k.destroy(fd, m.stdevId);
    expect(k.tombstones(fd)).toEqual([]);
    // The surviving vDEVICE stands for the old struct device, not for the next mock device.
    const nestedHwpt = await k.hwptAlloc(fd, nestedArgs(m.idevId, viommu)).catch(() => undefined);
    expect(nestedHwpt).toBeUndefined(); // its DEVICE id is gone
    const next = await k.selftestMockDomain(fd, ioas);
    const n = await k.hwptAlloc(fd, nestedArgs(next.idevId, viommu));
    await expectErrno(k.selftestMockDomainReplace(fd, next.stdevId, n), 'ENOENT');
    await k.destroy(fd, n);
    await k.destroy(fd, vdev);
    await k.destroy(fd, viommu);
  });
});

describe.each(KERNEL_PROFILES)('%s: mock devices and the iommufd file', (profile) => {
  it('hold no file reference: closing the iommufd destroys them and releases the context (§4.4)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent });
    await k.vdeviceAlloc(fd, { viommuId: viommu, devId: m.idevId, virtId: 0x99n });
    await k.closeIommufd(fd);
    expect(k.liveContextCount()).toBe(0);
    expect(k.liveObjectCount()).toBe(0);
    const fd2 = await k.openIommufd();
    const m2 = await k.selftestMockDomain(fd2, await k.ioasAlloc(fd2));
    expect(m2).toEqual({ stdevId: 2, hwptId: 4, idevId: 3 });
  });

  it('a closed iommufd is EBADF for the mock-device calls', async () => {
    const { k, fd } = await fixture(profile);
    await k.closeIommufd(fd);
    await expectErrno(k.selftestMockDomain(fd, id(1)), 'EBADF');
    await expectErrno(k.selftestMockDomainReplace(fd, id(1), id(1)), 'EBADF');
    await expectErrno(k.selftestDestroyMockDevice(fd, id(1)), 'EBADF');
  });

  it('fault injection counts MOCK_DOMAIN as a bind_iommufd call', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    k.faults.failNth(1, 'ENOMEM', { ops: ['bind_iommufd'] });
    await expectErrno(k.selftestMockDomain(fd, ioas), 'ENOMEM');
    expect((await k.selftestMockDomain(fd, ioas)).stdevId).toBe(2);
  });
});

describe.each(KERNEL_PROFILES)('%s: dev_flags and the mock IOMMU (§6.2, §6.3)', (profile) => {
  it('GET_HW_INFO: selftest type; NO_DIRTY drops DIRTY_TRACKING, PASID reports width 20', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const plain = await k.selftestMockDomain(fd, ioas);
    const noDirty = await k.selftestMockDomain(fd, ioas, MOCK_FLAGS_DEVICE_NO_DIRTY);
    const pasid = await k.selftestMockDomain(fd, ioas, MOCK_FLAGS_DEVICE_PASID);
    const ats = profile === 'linux-6.17' ? 8n : 0n;
    const info = await k.getHwInfo(fd, plain.idevId);
    expect(info).toMatchObject({ type: HW_INFO_TYPE.SELFTEST, capabilities: 1n | ats, maxPasidLog2: 0 });
    expect(Buffer.from(info.data).toString('hex')).toBe('00000000efbeadde');
    expect((await k.getHwInfo(fd, noDirty.idevId)).capabilities).toBe(ats);
    expect((await k.getHwInfo(fd, pasid.idevId)).maxPasidLog2).toBe(20);
    await expectErrno(k.getHwInfo(fd, plain.stdevId), 'ENOENT');
  });

  it('NO_DIRTY: DIRTY_TRACKING allocation is EOPNOTSUPP, attaching to a dirty HWPT EINVAL', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const plain = await k.selftestMockDomain(fd, ioas);
    const noDirty = await k.selftestMockDomain(fd, ioas, MOCK_FLAGS_DEVICE_NO_DIRTY);
    expect(noDirty.hwptId).toBe(plain.hwptId);
    await expectErrno(k.hwptAlloc(fd, hwptArgs(noDirty.idevId, ioas, { flags: HWPT_ALLOC_DIRTY_TRACKING })), 'EOPNOTSUPP');
    const dirty = await k.hwptAlloc(fd, hwptArgs(plain.idevId, ioas, { flags: HWPT_ALLOC_DIRTY_TRACKING }));
    await expectErrno(k.selftestMockDomainReplace(fd, noDirty.stdevId, dirty), 'EINVAL');
    await expectErrno(k.selftestMockDomain(fd, dirty, MOCK_FLAGS_DEVICE_NO_DIRTY), 'EINVAL');
    expect(await k.selftestMockDomainReplace(fd, plain.stdevId, dirty)).toBe(dirty);
  });

  it('a mock device is behind its own IOMMU instance: VFIO devices cannot join its vIOMMU (EINVAL)', async () => {
    const { k, fd } = await fixture(profile);
    const ioas = await k.ioasAlloc(fd);
    const m = await k.selftestMockDomain(fd, ioas);
    const parent = await k.hwptAlloc(fd, hwptArgs(m.idevId, ioas, { flags: HWPT_ALLOC_NEST_PARENT }));
    const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: m.idevId, hwptId: parent });
    expect(k.objects(fd).find((o) => o.id === viommu)?.iommu).toBe(MOCK_IOMMU_INSTANCE);
    const { devId } = await bindDevice(k, fd, 'vfio0');
    await expectErrno(k.vdeviceAlloc(fd, { viommuId: viommu, devId, virtId: 1n }), 'EINVAL');
    await expectErrno(k.hwptAlloc(fd, nestedArgs(devId, viommu)), 'EINVAL');
  });
});
