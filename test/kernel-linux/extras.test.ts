import { describe, expect, it } from 'vitest';
import { createLinuxKernel, type LinuxKernelOptions } from '../../src/kernel/linux/backend.js';
import { UNMAP_ALL } from '../../src/kernel/linux/dataplane.js';
import { MOCK_FLAGS_DEVICE_PASID } from '../../src/kernel/linux/selftest.js';
import {
  IOAS_MAP_FIXED_IOVA,
  IOAS_MAP_READABLE,
  IOAS_MAP_WRITEABLE,
  IOMMU_DESTROY_STRUCT,
  IOMMU_IOAS_IOVA_RANGES_STRUCT,
  IOMMU_IOAS_MAP_FILE_STRUCT,
  IOMMU_IOAS_MAP_STRUCT,
  IOMMU_IOAS_UNMAP_STRUCT,
  IOMMU_IOVA_RANGE_STRUCT,
  IOMMU_TEST_CMD_STRUCT,
  VFIO_DEVICE_INFO_STRUCT,
} from '../../src/kernel/linux/structs.js';
import { kernelId } from '../../src/kernel/types.js';
import { expectErrno } from '../kernel-sim/helpers.js';
import { FakeKernel, PROBE_ANSWERS_7_2, writeFields, writeUser } from './fake-kernel.js';

const devRoot = '/fake/dev';
const id = kernelId;

async function setup(options: Partial<LinuxKernelOptions> = {}, answers = PROBE_ANSWERS_7_2) {
  const fake = new FakeKernel(devRoot, answers);
  fake.nodes.add(`${devRoot}/vfio/devices/vfio0`);
  const kernel = createLinuxKernel({ sys: fake, devRoot, ...options });
  await kernel.probe();
  fake.clearLog();
  return { fake, kernel, iommufd: await kernel.openIommufd() };
}

describe('selftest mock devices (§6.2, §6.4)', () => {
  it('are off unless selftestDevices is set', async () => {
    const { fake, kernel, iommufd } = await setup();
    expect(kernel.selftestDevicesEnabled).toBe(false);
    const err = await expectErrno(kernel.selftestMockDomain(iommufd, id(1)), 'EOPNOTSUPP', 'bind_iommufd');
    expect(err.message).toContain('selftestDevices is not enabled');
    expect(fake.ioctls).toEqual([]);
  });

  it('are off when the kernel has no IOMMUFD_TEST, even if requested', async () => {
    const { IOMMU_TEST_CMD: _drop, ...answers } = PROBE_ANSWERS_7_2;
    const { kernel, iommufd } = await setup({ selftestDevices: true }, answers);
    expect(kernel.selftestDevicesEnabled).toBe(false);
    const err = await expectErrno(kernel.selftestMockDomain(iommufd, id(1)), 'EOPNOTSUPP');
    expect(err.message).toContain('CONFIG_IOMMUFD_TEST');
  });

  it('MOCK_DOMAIN, MOCK_DOMAIN_FLAGS, MOCK_DOMAIN_REPLACE and destroying the stdev', async () => {
    const { fake, kernel, iommufd } = await setup({ selftestDevices: true });
    fake.on('IOMMU_TEST_CMD', (arg) => {
      if (IOMMU_TEST_CMD_STRUCT.decode(arg!).op === 10) writeFields(arg!, IOMMU_TEST_CMD_STRUCT, { 'mock_domain_replace.pt_id': 21 });
      else writeFields(arg!, IOMMU_TEST_CMD_STRUCT, { 'mock_domain.out_stdev_id': 2, 'mock_domain.out_hwpt_id': 3, 'mock_domain.out_idev_id': 4 });
    });
    fake.on('IOMMU_DESTROY', () => 0);
    expect(kernel.selftestDevicesEnabled).toBe(true);
    expect(await kernel.selftestMockDomain(iommufd, id(1))).toEqual({ stdevId: 2, hwptId: 3, idevId: 4 });
    await kernel.selftestMockDomain(iommufd, id(1), MOCK_FLAGS_DEVICE_PASID);
    expect(await kernel.selftestMockDomainReplace(iommufd, id(2), id(20))).toBe(21);
    await kernel.selftestDestroyMockDevice(iommufd, id(2));
    const sent = fake.calls('IOMMU_TEST_CMD').map((c) => IOMMU_TEST_CMD_STRUCT.decode(c.sent!));
    expect(sent.map((s) => [s.size, s.op, s.id])).toEqual([[72, 2, 1], [72, 12, 1], [72, 10, 2]]);
    expect(sent[1]!['mock_domain_flags.dev_flags']).toBe(MOCK_FLAGS_DEVICE_PASID);
    expect(sent[2]!['mock_domain_replace.pt_id']).toBe(20);
    expect(IOMMU_DESTROY_STRUCT.decode(fake.calls('IOMMU_DESTROY')[0]!.sent!).id).toBe(2);
    expect(fake.ioctls.every((c) => c.async && c.fd === iommufd.fdNumber)).toBe(true);
  });
});

describe('IOAS data path and VFIO device calls', () => {
  it('IOAS_MAP: R/W by default, FIXED_IOVA only with an iova, async; returns the iova', async () => {
    const { fake, kernel, iommufd } = await setup();
    fake.on('IOMMU_IOAS_MAP', (arg) => {
      const v = IOMMU_IOAS_MAP_STRUCT.decode(arg!);
      if ((v.flags & IOAS_MAP_FIXED_IOVA) === 0) writeFields(arg!, IOMMU_IOAS_MAP_STRUCT, { iova: 0x100_0000n });
    });
    expect(await kernel.ioasMap(iommufd, { ioasId: id(1), userVa: 0x7f00_0000_0000n, length: 0x20_0000n })).toBe(0x100_0000n);
    expect(await kernel.ioasMap(iommufd, { ioasId: id(1), userVa: 0x1000n, length: 0x1000n, iova: 0x4000_0000n, writeable: false })).toBe(0x4000_0000n);
    const [auto, fixed] = fake.calls('IOMMU_IOAS_MAP').map((c) => IOMMU_IOAS_MAP_STRUCT.decode(c.sent!));
    expect(auto).toMatchObject({ size: 40, flags: IOAS_MAP_READABLE | IOAS_MAP_WRITEABLE, ioas_id: 1, user_va: 0x7f00_0000_0000n, length: 0x20_0000n, iova: 0n, __reserved: 0 });
    expect(fixed).toMatchObject({ flags: IOAS_MAP_FIXED_IOVA | IOAS_MAP_READABLE, iova: 0x4000_0000n });
    expect(fake.calls('IOMMU_IOAS_MAP').every((c) => c.async)).toBe(true);
  });

  it('IOAS_MAP_FILE carries the fd and offset', async () => {
    const { fake, kernel, iommufd } = await setup();
    fake.on('IOMMU_IOAS_MAP_FILE', () => 0);
    await kernel.ioasMapFile(iommufd, { ioasId: id(1), fd: 33, start: 0x2000n, length: 0x1000n, iova: 0x10_0000n });
    expect(IOMMU_IOAS_MAP_FILE_STRUCT.decode(fake.calls('IOMMU_IOAS_MAP_FILE')[0]!.sent!)).toMatchObject({ fd: 33, start: 0x2000n, iova: 0x10_0000n, flags: 7 });
  });

  it('IOAS_MAP_FILE on a closed iommufd is EBADF naming ioas_map_file, before any ioctl', async () => {
    const { fake, kernel, iommufd } = await setup();
    await kernel.closeIommufd(iommufd);
    await expectErrno(kernel.ioasMapFile(iommufd, { ioasId: id(1), fd: 33, start: 0n, length: 0x1000n }), 'EBADF', 'ioas_map_file');
    expect(fake.calls('IOMMU_IOAS_MAP_FILE')).toEqual([]);
  });

  it('osFd is the VFIO cdev fd while the backend holds it open (for SCM_RIGHTS handoff)', async () => {
    const { kernel } = await setup();
    const d = await kernel.openDevice('vfio0');
    expect(kernel.osFd(d)).toBe(d.fdNumber);
    await kernel.closeDevice(d);
    expect(kernel.osFd(d)).toBeUndefined();
  });

  it('IOAS_UNMAP returns the bytes unmapped; unmap-all is iova 0, length U64_MAX', async () => {
    const { fake, kernel, iommufd } = await setup();
    fake.on('IOMMU_IOAS_UNMAP', (arg) => writeFields(arg!, IOMMU_IOAS_UNMAP_STRUCT, { length: 0x3000n }));
    expect(await kernel.ioasUnmap(iommufd, id(1), UNMAP_ALL.iova, UNMAP_ALL.length)).toBe(0x3000n);
    const sent = IOMMU_IOAS_UNMAP_STRUCT.decode(fake.calls('IOMMU_IOAS_UNMAP')[0]!.sent!);
    expect(sent).toMatchObject({ iova: 0n, length: 2n ** 64n - 1n });
  });

  it('IOVA_RANGES reads the range array and retries on EMSGSIZE (§3.6)', async () => {
    const { fake, kernel, iommufd } = await setup();
    const ranges = Array.from({ length: 10 }, (_, i) => ({ start: BigInt(i) << 32n, last: (BigInt(i) << 32n) + 0xfff_ffffn }));
    fake.on('IOMMU_IOAS_IOVA_RANGES', (arg) => {
      const v = IOMMU_IOAS_IOVA_RANGES_STRUCT.decode(arg!);
      ranges.slice(0, v.num_iovas).forEach((r, i) => writeUser(v.allowed_iovas + BigInt(i * 16), IOMMU_IOVA_RANGE_STRUCT.encode(r)));
      writeFields(arg!, IOMMU_IOAS_IOVA_RANGES_STRUCT, { num_iovas: ranges.length, out_iova_alignment: 4096n });
      return v.num_iovas < ranges.length ? 'EMSGSIZE' : 0;
    });
    const out = await kernel.ioasIovaRanges(iommufd, id(1));
    expect(out).toEqual({ ranges, alignment: 4096n });
    expect(fake.calls('IOMMU_IOAS_IOVA_RANGES').map((c) => IOMMU_IOAS_IOVA_RANGES_STRUCT.decode(c.sent!).num_iovas)).toEqual([8, 32]);
  });

  it('VFIO_DEVICE_GET_INFO decodes flags and counts; VFIO_DEVICE_RESET is async with no argument', async () => {
    const { fake, kernel } = await setup();
    const d = await kernel.openDevice('vfio0');
    fake.on('VFIO_DEVICE_GET_INFO', (arg) => writeFields(arg!, VFIO_DEVICE_INFO_STRUCT, { flags: 3, num_regions: 9, num_irqs: 5 }));
    fake.on('VFIO_DEVICE_RESET', () => 0);
    expect(await kernel.deviceGetInfo(d)).toEqual({ flags: 3, numRegions: 9, numIrqs: 5 });
    expect(VFIO_DEVICE_INFO_STRUCT.decode(fake.calls('VFIO_DEVICE_GET_INFO')[0]!.sent!).argsz).toBe(24);
    await kernel.deviceReset(d);
    expect(fake.calls('VFIO_DEVICE_RESET')[0]).toMatchObject({ fd: d.fdNumber, async: true, sent: undefined });
  });
});
