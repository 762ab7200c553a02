/**
 * IOMMU_IOAS_MAP_FILE and IOMMU_IOAS_UNMAP in the sim (kernel-uapi.md §3.4,
 * §3.5): the order of checks, fixed and automatic IOVAs, overlap, the mock
 * domain's aperture and page size, never-split unmaps with partial progress,
 * unmap-all, and device files backed by real fds.
 */
import { closeSync, openSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createMemfd } from '../../src/kernel/memfd.js';
import { createSimKernel } from '../../src/kernel/sim/index.js';
import { HWPT_ALLOC_NEST_PARENT, UNMAP_ALL, type IoasMapFileArgs, type KernelObjectId } from '../../src/kernel/types.js';
import { bindDevice, expectErrno, fixture, hwptArgs, id, type Fixture } from './helpers.js';

const MiB = 1n << 20n;
const U64_MAX = (1n << 64n) - 1n;
const APERTURE = 1n << 24n;

describe.each(['linux-6.13', 'linux-6.17'] as const)('IOAS_MAP_FILE / IOAS_UNMAP (%s)', (profile) => {
  let f: Fixture;
  let memfd: number;
  let ioas: KernelObjectId;
  const map = (args: Partial<IoasMapFileArgs>) => f.k.ioasMapFile(f.fd, { ioasId: ioas, fd: memfd, start: 0n, length: MiB, ...args });

  beforeEach(async () => {
    f = await fixture(profile);
    memfd = createMemfd('guest-ram', 16 * 1024 * 1024);
    ioas = await f.k.ioasAlloc(f.fd);
  });
  afterEach(async () => {
    await f.k.shutdown();
    closeSync(memfd);
  });

  it('maps at a fixed IOVA and refuses an overlap with EEXIST', async () => {
    expect(await map({ iova: 0x10_0000n })).toBe(0x10_0000n);
    await expectErrno(map({ iova: 0x18_0000n }), 'EEXIST', 'ioas_map_file');
    await expectErrno(map({ iova: 0x0n, length: 0x10_1000n }), 'EEXIST');
    expect(await map({ iova: 0x20_0000n })).toBe(0x20_0000n); // adjacent is fine
    expect(f.k.mappings(f.fd, ioas).map((m) => m.iova)).toEqual([0x10_0000n, 0x20_0000n]);
  });

  it('chooses the lowest free IOVA, aligned like iopt_alloc_iova', async () => {
    // No domain: allowed from PAGE_SIZE; 1 MiB from offset 0 is 1 MiB aligned.
    expect(await map({})).toBe(MiB);
    expect(await map({ length: 0x1000n })).toBe(0x1000n);
    expect(await map({ length: 0x3000n })).toBe(0x4000n); // aligned to roundup_pow_of_two(0x3000)
    // The file offset's alignment (here 0x800) and its offset within the page are kept.
    expect(await map({ start: 0x1800n, length: 0x1000n })).toBe(0x2800n);
  });

  it('checks in the kernel order: flags, then the IOAS, then the fd, then length and range', async () => {
    await expectErrno(map({ readable: false, writeable: false, ioasId: id(99) }), 'EINVAL');
    await expectErrno(map({ length: U64_MAX, ioasId: id(99) }), 'EOVERFLOW');
    await expectErrno(map({ ioasId: id(99), fd: -1 }), 'ENOENT');
    await expectErrno(map({ fd: 9999 }), 'EBADF');
    await expectErrno(map({ length: 0n }), 'EINVAL');
    await expectErrno(map({ start: U64_MAX - 1n, length: 4n }), 'EOVERFLOW');
    // Past the file's 16 MiB, or not shmem: memfd_pin_folios refuses (EINVAL).
    await expectErrno(map({ start: 16n * MiB - 0x1000n, length: 0x2000n, iova: 0x100000n }), 'EINVAL');
    const file = path.join(os.tmpdir(), `sim-map-${process.pid}`);
    writeFileSync(file, Buffer.alloc(8192));
    const plain = openSync(file, 'r+');
    try {
      await expectErrno(map({ fd: plain, length: 0x1000n }), 'EINVAL');
    } finally {
      closeSync(plain);
      rmSync(file);
    }
    expect(f.k.mappings(f.fd, ioas)).toEqual([]);
  });

  it('with a mock domain: the aperture is reserved and mappings must be 2 KiB aligned', async () => {
    const { dev } = await bindDevice(f.k, f.fd);
    await f.k.attachPt(dev, ioas);
    await expectErrno(map({ iova: 0x10_0000n }), 'EINVAL'); // below MOCK_APERTURE_START
    await expectErrno(map({ iova: APERTURE, length: 0x100n }), 'EINVAL'); // not a multiple of MOCK_PAGE_SIZE
    expect(await map({})).toBe(APERTURE); // automatic placement starts inside the aperture
    expect(await map({ iova: APERTURE + MiB })).toBe(APERTURE + MiB);
  });

  it('refuses a first domain whose aperture misses an existing mapping (EADDRINUSE)', async () => {
    await map({ iova: 0x10_0000n });
    const { dev, devId } = await bindDevice(f.k, f.fd);
    await expectErrno(f.k.attachPt(dev, ioas), 'EADDRINUSE', 'attach_pt');
    await expectErrno(f.k.hwptAlloc(f.fd, hwptArgs(devId, ioas, { flags: HWPT_ALLOC_NEST_PARENT })), 'EADDRINUSE', 'hwpt_alloc');
    expect(f.k.objects(f.fd).map((o) => o.type)).toEqual(['IOAS', 'DEVICE']);
  });

  it('unmaps whole areas only: partial cover is ENOENT after the earlier areas are gone', async () => {
    await map({ iova: 0x10_0000n });
    await map({ iova: 0x20_0000n });
    await map({ iova: 0x30_0000n });
    await expectErrno(f.k.ioasUnmap(f.fd, ioas, 0x40_0000n, MiB), 'ENOENT', 'ioas_unmap'); // nothing there
    await expectErrno(f.k.ioasUnmap(f.fd, ioas, 0x10_0000n, 0n), 'EINVAL');
    await expectErrno(f.k.ioasUnmap(f.fd, ioas, 0x10_0000n, U64_MAX - 1n), 'EOVERFLOW');
    // [0x10_0000, 0x28_0000) covers the first area and half of the second.
    await expectErrno(f.k.ioasUnmap(f.fd, ioas, 0x10_0000n, 0x18_0000n), 'ENOENT');
    expect(f.k.mappings(f.fd, ioas).map((m) => m.iova)).toEqual([0x20_0000n, 0x30_0000n]);
    expect(await f.k.ioasUnmap(f.fd, ioas, 0x20_0000n, 2n * MiB)).toBe(2n * MiB);
    expect(f.k.mappings(f.fd, ioas)).toEqual([]);
  });

  it('unmap-all empties the IOAS and succeeds on an empty one; destroy of a mapped IOAS is allowed', async () => {
    await map({ iova: 0x10_0000n });
    await map({ iova: 0x80_0000n, length: 2n * MiB });
    expect(await f.k.ioasUnmap(f.fd, ioas, UNMAP_ALL.iova, UNMAP_ALL.length)).toBe(3n * MiB);
    expect(await f.k.ioasUnmap(f.fd, ioas, UNMAP_ALL.iova, UNMAP_ALL.length)).toBe(0n);
    await expectErrno(f.k.ioasUnmap(f.fd, id(99), UNMAP_ALL.iova, UNMAP_ALL.length), 'ENOENT');
    await map({});
    await f.k.destroy(f.fd, ioas);
    expect(f.k.objects(f.fd)).toEqual([]);
  });
});

describe('sim kernels without IOMMU_IOAS_MAP_FILE', () => {
  it('leave it out of probe() and answer ENOTTY', async () => {
    const k = createSimKernel({ withoutIoctls: ['IOMMU_IOAS_MAP_FILE'] });
    expect((await k.probe()).ioctls).not.toContain('IOMMU_IOAS_MAP_FILE');
    const fd = await k.openIommufd();
    const ioas = await k.ioasAlloc(fd);
    await expectErrno(k.ioasMapFile(fd, { ioasId: ioas, fd: 0, start: 0n, length: 4096n }), 'ENOTTY', 'ioas_map_file');
    await k.shutdown();
  });
});

describe('sim device files', () => {
  it('are backed by a real memfd named after the device, closed with the file', async () => {
    const k = createSimKernel();
    const dev = await k.openDevice('vfio0');
    const fd = k.osFd(dev)!;
    expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe('/memfd:vfio-sim:0000:01:00.0 (deleted)');
    await k.closeDevice(dev);
    expect(k.osFd(dev)).toBeUndefined();
    let now: string | undefined;
    try {
      now = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      now = undefined; // closed, and not reused yet
    }
    expect(now).not.toBe('/memfd:vfio-sim:0000:01:00.0 (deleted)');
  });
});
