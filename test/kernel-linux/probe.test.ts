import { mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLinuxKernel } from '../../src/kernel/linux/backend.js';
import { IOCTL_NAMES } from '../../src/kernel/linux/ioctl-numbers.js';
import { LinuxBackendError, probeKernel } from '../../src/kernel/linux/probe.js';
import { IOMMU_DESTROY_STRUCT, IOMMU_FAULT_ALLOC_STRUCT, IOMMU_IOAS_ALLOC_STRUCT, IOMMU_TEST_CMD_STRUCT } from '../../src/kernel/linux/structs.js';
import { createLibcSyscalls } from '../../src/kernel/linux/syscalls.js';
import { FakeKernel, PROBE_ANSWERS_7_2 } from './fake-kernel.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vfio-broker-probe-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function probeError(p: Promise<unknown>): Promise<LinuxBackendError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(LinuxBackendError);
    return err as LinuxBackendError;
  }
  throw new Error('expected the probe to fail');
}

describe('probe against the real syscalls', () => {
  it('a missing /dev/iommu is a clear startup error naming the configs and --backend sim', async () => {
    const devRoot = tempDir();
    const kernel = createLinuxKernel({ devRoot });
    const err = await probeError(kernel.probe());
    expect(err.message).toContain(`${devRoot}/iommu is missing`);
    expect(err.message).toContain('CONFIG_IOMMUFD');
    expect(err.message).toContain('CONFIG_VFIO_DEVICE_CDEV');
    expect(err.message).toContain('--backend sim');
    expect(err.message).toMatch(/never falls back/);
  });

  it('a node that is not iommufd (every ioctl ENOTTY) is refused, and the probe fd is closed', async () => {
    const devRoot = tempDir();
    symlinkSync('/dev/null', join(devRoot, 'iommu'));
    const fdsBefore = readdirSync('/proc/self/fd').length;
    const err = await probeError(probeKernel({ sys: createLibcSyscalls(), devRoot, release: '7.2.13' }));
    expect(err.message).toContain('IOMMU_DESTROY gave ENOTTY');
    expect(readdirSync('/proc/self/fd').length).toBe(fdsBefore);
  });
});

describe('probe logic (scripted kernel)', () => {
  const devRoot = '/fake/dev';

  it('7.2 with IOMMUFD_TEST: profile linux-6.17, every ioctl, selftest', async () => {
    const fake = new FakeKernel(devRoot);
    const p = await probeKernel({ sys: fake, devRoot });
    expect(p.release).toBe('7.2.13');
    expect(p.version).toEqual([7, 2]);
    expect(p.profile).toBe('linux-6.17');
    expect(p.selftest).toBe(true);
    expect(p.ioctls).toEqual(IOCTL_NAMES);
    // Probes are sync, on a private fd that is closed afterwards.
    expect(fake.opened.map((o) => o.path)).toEqual([`${devRoot}/iommu`]);
    expect(fake.closed).toEqual([fake.opened[0]!.fd]);
    expect(fake.ioctls.every((r) => !r.async)).toBe(true);
  });

  it('probes send full-size zeroed structs, with flags = 1 where 0 would allocate (§5.2)', async () => {
    const fake = new FakeKernel(devRoot);
    await probeKernel({ sys: fake, devRoot });
    const ioas = IOMMU_IOAS_ALLOC_STRUCT.decode(fake.calls('IOMMU_IOAS_ALLOC')[0]!.sent!);
    expect(ioas).toMatchObject({ size: 12, flags: 1 });
    expect(IOMMU_FAULT_ALLOC_STRUCT.decode(fake.calls('IOMMU_FAULT_QUEUE_ALLOC')[0]!.sent!).flags).toBe(1);
    const test = IOMMU_TEST_CMD_STRUCT.decode(fake.calls('IOMMU_TEST_CMD')[0]!.sent!);
    expect(test).toMatchObject({ size: 72, op: 0 });
    // Every iommufd struct starts with its u32 size; the probes declare the full 7.2 size.
    for (const r of fake.ioctls) expect(IOMMU_DESTROY_STRUCT.decode(r.sent!).size, r.name).toBe(r.sent!.length);
  });

  it('6.14 without the 6.15+/6.17 ioctls: profile linux-6.13, dated ioctls follow the release', async () => {
    const { IOMMU_VEVENTQ_ALLOC: _v, IOMMU_HW_QUEUE_ALLOC: _h, IOMMU_TEST_CMD: _t, ...answers } = PROBE_ANSWERS_7_2;
    const fake = new FakeKernel(devRoot, answers);
    fake.release = '6.14.0-rc1';
    const p = await probeKernel({ sys: fake, devRoot });
    expect(p.profile).toBe('linux-6.13');
    expect(p.selftest).toBe(false);
    expect(p.ioctls).toContain('IOMMU_IOAS_CHANGE_PROCESS');
    expect(p.ioctls).toContain('VFIO_DEVICE_BIND_IOMMUFD');
    expect(p.ioctls).not.toContain('IOMMU_VEVENTQ_ALLOC');
    expect(p.ioctls).not.toContain('IOMMU_HW_QUEUE_ALLOC');
    expect(p.ioctls).not.toContain('IOMMU_TEST_CMD');
  });

  it('IOMMU_HW_QUEUE_ALLOC on an older-numbered kernel (a backport) means linux-6.17', async () => {
    const fake = new FakeKernel(devRoot);
    fake.release = '6.16.3';
    expect((await probeKernel({ sys: fake, devRoot })).profile).toBe('linux-6.17');
  });

  it('kernels older than 6.13 are refused, naming the missing uAPI and --backend sim', async () => {
    const fake = new FakeKernel(devRoot);
    fake.release = '6.12.9';
    const err = await probeError(probeKernel({ sys: fake, devRoot }));
    expect(err.message).toContain('older than 6.13');
    expect(err.message).toContain('IOMMU_VIOMMU_ALLOC');
    expect(err.message).toContain('--backend sim');
    expect(fake.openFds()).toEqual([]);
  });

  it('a release override replaces uname (distro kernels)', async () => {
    const fake = new FakeKernel(devRoot);
    fake.release = '5.14.0-427.el9';
    const p = await probeKernel({ sys: fake, devRoot, release: '6.13.0' });
    expect(p.release).toBe('6.13.0');
    expect(p.profile).toBe('linux-6.17'); // HW_QUEUE_ALLOC answered
  });

  it('an unparsable release and a kernel without VIOMMU_ALLOC are refused', async () => {
    const fake = new FakeKernel(devRoot);
    fake.release = 'banana';
    expect((await probeError(probeKernel({ sys: fake, devRoot }))).message).toContain('cannot parse kernel release');
    const { IOMMU_VIOMMU_ALLOC: _drop, ...answers } = PROBE_ANSWERS_7_2;
    const noViommu = new FakeKernel(devRoot, answers);
    expect((await probeError(probeKernel({ sys: noViommu, devRoot }))).message).toContain('no IOMMU_VIOMMU_ALLOC');
  });

  it('the backend caches the probe and reports linux capabilities', async () => {
    const fake = new FakeKernel(devRoot);
    const kernel = createLinuxKernel({ sys: fake, devRoot });
    const caps = await kernel.probe();
    expect(caps).toMatchObject({ backend: 'linux', release: '7.2.13', profile: 'linux-6.17', selftest: true });
    await kernel.probe();
    expect(fake.opened.length).toBe(1);
  });
});
