import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { release as osRelease, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IOCTL } from '../../src/kernel/linux/ioctl-numbers.js';
import { IOMMU_DESTROY_STRUCT } from '../../src/kernel/linux/structs.js';
import { createLibcSyscalls, errnoToName, OPEN_RDWR_CLOEXEC } from '../../src/kernel/linux/syscalls.js';
import { KernelError } from '../../src/kernel/types.js';

const sys = createLibcSyscalls();

async function rejection(p: Promise<unknown>): Promise<KernelError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(KernelError);
    return err as KernelError;
  }
  throw new Error('expected a rejection');
}

function thrown(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KernelError);
    return err as KernelError;
  }
  throw new Error('expected a throw');
}

describe('libc syscalls through koffi (real errno)', () => {
  it('an iommufd ioctl on /dev/null is ENOTTY, sync and async', async () => {
    const fd = sys.open('/dev/null', OPEN_RDWR_CLOEXEC, { op: 'open_iommufd', what: 'open' });
    try {
      expect(fd).toBeGreaterThanOrEqual(0);
      const buf = IOMMU_DESTROY_STRUCT.encode({ id: 0 });
      const syncErr = thrown(() => sys.ioctl(fd, IOCTL.IOMMU_DESTROY, buf, { op: 'destroy', what: 'IOMMU_DESTROY' }));
      expect(syncErr.errno).toBe('ENOTTY');
      expect(syncErr.op).toBe('destroy');
      expect(syncErr.message).toContain('IOMMU_DESTROY');
      const asyncErr = await rejection(sys.ioctlAsync(fd, IOCTL.VFIO_DEVICE_RESET, null, { op: 'close_device', what: 'VFIO_DEVICE_RESET' }));
      expect(asyncErr.errno).toBe('ENOTTY');
      expect(asyncErr.op).toBe('close_device');
    } finally {
      await sys.close(fd);
    }
  });

  // FIONREAD on a regular file is answered by the VFS (i_size - pos): a real ioctl that writes its argument.
  const FIONREAD = 0x541b;
  const onFionreadArch = it.skipIf(!['x64', 'arm64'].includes(process.arch));
  const fionread = { op: 'attach_pt', what: 'FIONREAD' } as const;

  /** Runs `body` with an fd on a fresh 10-byte file, then closes and removes it. */
  async function withTenByteFile(body: (fd: number) => Promise<void>): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-broker-sys-'));
    try {
      writeFileSync(join(dir, 'f'), 'ten bytes!');
      const fd = sys.open(join(dir, 'f'), OPEN_RDWR_CLOEXEC, { op: 'open_device', what: 'open' });
      try {
        await body(fd);
      } finally {
        await sys.close(fd);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  onFionreadArch('the kernel writes through the argument buffer, sync and async', async () => {
    await withTenByteFile(async (fd) => {
      const a = Buffer.alloc(4);
      const b = Buffer.alloc(4);
      expect(sys.ioctl(fd, FIONREAD, a, fionread)).toBe(0);
      expect(await sys.ioctlAsync(fd, FIONREAD, b, fionread)).toBe(0);
      expect([a.readInt32LE(0), b.readInt32LE(0)]).toEqual([10, 10]);
    });
  });

  // The area is passed to the kernel as a bare address (no Buffer marshalling): FIONREAD must land in the view handed out.
  onFionreadArch('a sync ioctl through the argument area writes the view it was given', async () => {
    const area = (size: number): Buffer => {
      const view = sys.ioctlArgument?.(size);
      if (view === undefined) throw new Error(`no ${size}-byte argument`);
      return view;
    };
    await withTenByteFile(async (fd) => {
      const wide = area(16);
      wide.fill(0xff);
      const arg = area(4);
      // Each call hands out zeroed bytes of the same area.
      expect(arg.buffer).toBe(wide.buffer);
      expect([...wide]).toEqual(new Array(16).fill(0).map((_, i) => (i < 4 ? 0 : 0xff)));
      expect(sys.ioctl(fd, FIONREAD, arg, fionread)).toBe(0);
      expect(arg.readInt32LE(0)).toBe(10);
      expect(sys.ioctlArgument?.(1 << 20)).toBeUndefined();
      // A worker thread would read the area while the event loop reuses it.
      await expect(sys.ioctlAsync(fd, FIONREAD, area(4), fionread)).rejects.toThrow(/sync calls only/);
    });
  });

  it('a closed fd is EBADF (async errno comes from the worker thread)', async () => {
    const fd = sys.open('/dev/null', OPEN_RDWR_CLOEXEC, { op: 'open_device', what: 'open' });
    await sys.close(fd);
    // Concurrent calls: each callback must see its own call's errno.
    const [a, b] = await Promise.all([
      rejection(sys.ioctlAsync(-1, IOCTL.IOMMU_DESTROY, Buffer.alloc(8), { op: 'destroy', what: 'x' })),
      rejection(sys.ioctlAsync(-1, IOCTL.IOMMU_IOAS_ALLOC, Buffer.alloc(12), { op: 'ioas_alloc', what: 'y' })),
    ]);
    expect([a.errno, b.errno]).toEqual(['EBADF', 'EBADF']);
    expect(thrown(() => sys.ioctl(-1, IOCTL.IOMMU_DESTROY, Buffer.alloc(8), { op: 'destroy', what: 'x' })).errno).toBe('EBADF');
  });

  it('open of a missing path is ENOENT with the path in the detail', () => {
    const err = thrown(() => sys.open('/nonexistent/vfio-broker/iommu', OPEN_RDWR_CLOEXEC, { op: 'open_iommufd', what: 'open' }));
    expect(err.errno).toBe('ENOENT');
    expect(err.op).toBe('open_iommufd');
    expect(err.message).toContain('/nonexistent/vfio-broker/iommu');
  });

  it('uname gives the running release', () => {
    const u = sys.uname();
    expect(u.sysname).toBe('Linux');
    expect(u.release).toBe(osRelease());
  });

  it('errno numbers map through the platform table, unknown ones to ERRNO_n', () => {
    expect(errnoToName(25)).toBe('ENOTTY');
    expect(errnoToName(95)).toBe('EOPNOTSUPP');
    expect(errnoToName(35)).toBe('EDEADLK');
    expect(errnoToName(13)).toBe('ERRNO_13');
    expect(errnoToName(4000)).toBe('ERRNO_4000');
  });

  it('close never rejects, even for a bad fd', async () => {
    await expect(sys.close(-1)).resolves.toBeUndefined();
  });
});
