/**
 * The restart probes (src/kernel/object-probe.ts): one read-only lookup per
 * object type, answered alike by the sim (kernel/sim/adopt.ts) and, as
 * encoded here, by the linux backend (kernel/linux/adopt.ts).
 */
import { describe, expect, it } from 'vitest';
import { createLinuxKernel } from '../../src/kernel/linux/backend.js';
import { IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT } from '../../src/kernel/linux/adopt.js';
import { classify, lowestFreeIds, probeObject, type ProbedKind } from '../../src/kernel/object-probe.js';
import { createSimKernel } from '../../src/kernel/sim/index.js';
import { HWPT_ALLOC_NEST_PARENT, HWPT_DATA_TYPE, kernelId, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { expectErrno, selftestData } from '../kernel-sim/helpers.js';
import { FakeKernel } from '../kernel-linux/fake-kernel.js';
import { parseMinsz, readReference } from '../kernel-linux/reference.js';

/** A context with one object of every kind the broker makes (the selftest recipe, §6.4, through VFIO). */
async function graph(profile: 'linux-6.13' | 'linux-6.17' = 'linux-6.17') {
  const sim = createSimKernel({ profile });
  const fd = await sim.openIommufd();
  const cdev = (await sim.listPciFunctions()).find((f) => f.cdev)!.cdev!;
  const file = await sim.openDevice(cdev);
  const dev = await sim.bindIommufd(file, fd);
  const ioas = await sim.ioasAlloc(fd);
  const auto = await sim.attachPt(file, ioas);
  const parent = await sim.hwptAlloc(fd, { flags: HWPT_ALLOC_NEST_PARENT, devId: dev, ptId: ioas, dataType: 0, data: new Uint8Array() });
  const viommu = await sim.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: dev, hwptId: parent });
  const vdev = await sim.vdeviceAlloc(fd, { viommuId: viommu, devId: dev, virtId: 0x99n });
  const nested = await sim.hwptAlloc(fd, { flags: 0, devId: dev, ptId: viommu, dataType: HWPT_DATA_TYPE.SELFTEST, data: selftestData() });
  const ids: Record<ProbedKind | 'AUTO', number> = { DEVICE: dev, IOAS: ioas, AUTO: auto, HWPT_PAGING: parent, VIOMMU: viommu, VDEVICE: vdev, HWPT_NESTED: nested };
  return { sim, fd, file, ids };
}

describe('object probes on the sim', () => {
  it('find every object where the journal says it is, and change nothing', async () => {
    const { sim, fd, ids } = await graph();
    const before = sim.objects(fd);
    for (const kind of ['DEVICE', 'IOAS', 'HWPT_PAGING', 'HWPT_NESTED', 'VIOMMU', 'VDEVICE'] as const) {
      expect(await probeObject(sim, fd, kernelId(ids[kind]), kind), kind).toEqual({ state: 'present' });
    }
    expect(await probeObject(sim, fd, kernelId(ids.AUTO), 'HWPT_PAGING')).toEqual({ state: 'present' });
    expect(sim.objects(fd)).toEqual(before);
  });

  it('tell a free ID from one holding another type', async () => {
    const { sim, fd, ids } = await graph();
    expect(await probeObject(sim, fd, kernelId(999), 'IOAS')).toEqual({ state: 'absent' });
    expect(await probeObject(sim, fd, kernelId(ids.IOAS), 'HWPT_PAGING')).toEqual({ state: 'other', found: 'IOAS' });
    expect(await probeObject(sim, fd, kernelId(ids.HWPT_PAGING), 'VIOMMU')).toEqual({ state: 'other', found: 'HWPT_PAGING' });
    expect(await probeObject(sim, fd, kernelId(ids.VDEVICE), 'DEVICE')).toEqual({ state: 'other', found: 'VDEVICE_OR_OTHER' });
    expect(await probeObject(sim, fd, kernelId(ids.VIOMMU), 'VDEVICE')).toEqual({ state: 'other', found: 'HWPT_NESTED_OR_VIOMMU' });
    expect(await classify(sim, fd, kernelId(ids.DEVICE))).toBe('DEVICE');
    expect(await classify(sim, fd, kernelId(0))).toBe('ABSENT');
  });

  it('a vDEVICE tombstoned at unbind (6.17) is absent, like any lookup of it (§4.3)', async () => {
    const { sim, fd, file, ids } = await graph('linux-6.17');
    await sim.attachPt(file, kernelId(ids.IOAS));
    await sim.closeDevice(file);
    expect(sim.tombstones(fd)).toContain(ids.VDEVICE);
    expect(await probeObject(sim, fd, kernelId(ids.VDEVICE), 'VDEVICE')).toEqual({ state: 'absent' });
  });

  it('the lookups answer as the 7.2 handlers do', async () => {
    const { sim, fd, ids } = await graph();
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_IOAS_IOVA_RANGES', id: kernelId(ids.IOAS) }), 'EMSGSIZE', 'ioas_iova_ranges');
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_IOAS_IOVA_RANGES', id: kernelId(ids.AUTO) }), 'ENOENT');
    await sim.lookupProbe(fd, { ioctl: 'IOMMU_GET_HW_INFO', id: kernelId(ids.DEVICE) });
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP', id: kernelId(ids.AUTO) }), 'EINVAL', 'hwpt_get_dirty_bitmap');
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP', id: kernelId(ids.HWPT_NESTED) }), 'ENOENT');
    await sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_INVALIDATE', id: kernelId(ids.HWPT_NESTED), dataType: 0xdeadbeef });
    await sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_INVALIDATE', id: kernelId(ids.VIOMMU), dataType: 0xdeadbeef });
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_INVALIDATE', id: kernelId(ids.VIOMMU), dataType: 0 }), 'EINVAL', 'hwpt_invalidate');
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_INVALIDATE', id: kernelId(ids.IOAS), dataType: 0xdeadbeef }), 'EINVAL');
    await expectErrno(sim.lookupProbe(fd, { ioctl: 'IOMMU_HWPT_INVALIDATE', id: kernelId(77), dataType: 0xdeadbeef }), 'ENOENT');
  });

  it('adopts only files it has open, and says whether a device file is bound', async () => {
    const { sim, fd, file } = await graph();
    expect(await sim.adoptFile(sim.storeFd(fd)!)).toBe(fd);
    expect(await sim.adoptFile(sim.storeFd(file)!)).toBe(file);
    await expectErrno(sim.adoptFile(0), 'EBADF', 'adopt_file');
    expect(await sim.deviceBound(file)).toBe(true);
    const unbound = await sim.openDevice(file.cdev);
    expect(await sim.deviceBound(unbound)).toBe(false);
    const memfd = sim.storeFd(fd)!;
    await sim.closeIommufd(fd);
    await expectErrno(sim.adoptFile(memfd), 'EBADF');
  });

  it('lowest free IDs skip the live ones', () => {
    expect(lowestFreeIds(new Set([1, 2, 4]), 3)).toEqual([3, 5, 6]);
  });
});

describe('object probes on the linux backend (scripted syscalls)', () => {
  it('send each lookup with the arguments that keep it read-only', async () => {
    const devRoot = '/fake/dev';
    const fake = new FakeKernel(devRoot);
    const kernel = createLinuxKernel({ sys: fake, devRoot });
    await kernel.probe();
    const fd = await kernel.openIommufd();
    fake.clearLog();
    fake.on('IOMMU_IOAS_IOVA_RANGES', () => 'EMSGSIZE');
    fake.on('IOMMU_GET_HW_INFO', () => 'ENOENT');
    fake.on('IOMMU_HWPT_GET_DIRTY_BITMAP', () => 'EINVAL');
    fake.on('IOMMU_HWPT_INVALIDATE', () => 'EINVAL');
    expect(await probeObject(kernel, fd, kernelId(5), 'IOAS')).toEqual({ state: 'present' });
    expect(await probeObject(kernel, fd, kernelId(6), 'HWPT_PAGING')).toEqual({ state: 'present' });
    const [ranges] = fake.calls('IOMMU_IOAS_IOVA_RANGES');
    expect([ranges!.sent!.readUInt32LE(4), ranges!.sent!.readUInt32LE(8), ranges!.sent!.readBigUInt64LE(16)]).toEqual([5, 0, 0n]);
    const [dirty] = fake.calls('IOMMU_HWPT_GET_DIRTY_BITMAP');
    const d = dirty!.sent!;
    // hwpt_id, flags = NO_CLEAR, iova, length, page_size = 0 (fails the range check before any read), data.
    expect([d.readUInt32LE(0), d.readUInt32LE(4), d.readUInt32LE(8), d.readBigUInt64LE(16), d.readBigUInt64LE(24), d.readBigUInt64LE(32), d.readBigUInt64LE(40)]).toEqual([48, 6, 1, 0n, 0n, 0n, 0n]);
    // A vDEVICE: every typed probe ENOENT except none, and HWPT_INVALIDATE EINVAL for each data type tried.
    fake.on('IOMMU_IOAS_IOVA_RANGES', () => 'ENOENT');
    fake.on('IOMMU_HWPT_GET_DIRTY_BITMAP', () => 'ENOENT');
    fake.clearLog();
    expect(await probeObject(kernel, fd, kernelId(7), 'VDEVICE')).toEqual({ state: 'present' });
    const inv = fake.calls('IOMMU_HWPT_INVALIDATE').map((c) => [c.sent!.readUInt32LE(4), c.sent!.readUInt32LE(16), c.sent!.readUInt32LE(24)]);
    expect(inv).toEqual([
      [7, 0xdeadbeef, 0],
      [7, 0, 0],
      [7, 1, 0],
    ]);
  });

  it('struct iommu_hwpt_get_dirty_bitmap is the size struct-minsz.txt gives', () => {
    const ref = parseMinsz(readReference('struct-minsz.txt')).get('IOMMU_HWPT_GET_DIRTY_BITMAP')!;
    expect([IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT.min, IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT.full]).toEqual([ref.min, ref.full]);
    const offsets = /iommu_hwpt_get_dirty_bitmap: iova@(\d+) length@(\d+) page_size@(\d+) data@(\d+)/.exec(readReference('struct-minsz.txt'))!;
    const f = IOMMU_HWPT_GET_DIRTY_BITMAP_STRUCT.spec.fields;
    expect([f.iova.offset, f.length.offset, f.page_size.offset, f.data.offset]).toEqual(offsets.slice(1).map(Number));
  });
});
