/**
 * Mock devices as inventory devices (src/kernel/linux/mock-devices.ts): the
 * VFIO device calls of the linux backend on a pseudo cdev become IOMMU_TEST_CMD
 * calls, with a parking IOAS standing in for "bound but unattached". Checked
 * against the scripted kernel; the real kernel runs the same flow in the QEMU
 * lane (test/kernel/daemon.guest.test.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLinuxKernel } from '../../src/kernel/linux/backend.js';
import { MOCK_FUNCTION_COUNT } from '../../src/kernel/linux/mock-devices.js';
import { IOMMU_DESTROY_STRUCT, IOMMU_IOAS_ALLOC_STRUCT, IOMMU_TEST_CMD_STRUCT } from '../../src/kernel/linux/structs.js';
import { kernelId } from '../../src/kernel/types.js';
import { expectErrno } from '../kernel-sim/helpers.js';
import { FakeKernel, PROBE_ANSWERS_7_2, writeFields } from './fake-kernel.js';
import { FakeSysfs } from './fake-sysfs.js';

const devRoot = '/fake/dev';
const PARKING_IOAS = 7;
const STDEV = 8;
const PARKED_HWPT = 9;
const IDEV = 10;

let sysfs: FakeSysfs | undefined;
afterEach(() => {
  sysfs?.cleanup();
  sysfs = undefined;
});

/** A kernel that hands out fixed IDs: IOAS_ALLOC → 7, MOCK_DOMAIN → {8, 9, 10}, REPLACE → the HWPT for pt 20 is 21. */
async function setup(selftestDevices: boolean) {
  sysfs = new FakeSysfs([]);
  const fake = new FakeKernel(devRoot, PROBE_ANSWERS_7_2);
  fake.on('IOMMU_IOAS_ALLOC', (arg) => writeFields(arg!, IOMMU_IOAS_ALLOC_STRUCT, { out_ioas_id: PARKING_IOAS }));
  fake.on('IOMMU_TEST_CMD', (arg) => {
    const cmd = IOMMU_TEST_CMD_STRUCT.decode(arg!);
    if (cmd.op === 10) {
      const pt = cmd['mock_domain_replace.pt_id'];
      writeFields(arg!, IOMMU_TEST_CMD_STRUCT, { 'mock_domain_replace.pt_id': pt === PARKING_IOAS ? 11 : pt + 1 });
    } else {
      writeFields(arg!, IOMMU_TEST_CMD_STRUCT, { 'mock_domain.out_stdev_id': STDEV, 'mock_domain.out_hwpt_id': PARKED_HWPT, 'mock_domain.out_idev_id': IDEV });
    }
  });
  fake.on('IOMMU_DESTROY', () => 0);
  const kernel = createLinuxKernel({ sys: fake, devRoot, sysfsRoot: sysfs.root, selftestDevices });
  await kernel.probe();
  fake.clearLog();
  return { fake, kernel, iommufd: await kernel.openIommufd() };
}

/** What the backend asked of the kernel, in order, as short strings. */
function script(fake: FakeKernel): string[] {
  return fake.ioctls.map((c) => {
    if (c.name === 'IOMMU_TEST_CMD') {
      const v = IOMMU_TEST_CMD_STRUCT.decode(c.sent!);
      return v.op === 10 ? `REPLACE(${v.id} -> ${v['mock_domain_replace.pt_id']})` : `MOCK_DOMAIN(${v.id})`;
    }
    if (c.name === 'IOMMU_DESTROY') return `DESTROY(${IOMMU_DESTROY_STRUCT.decode(c.sent!).id})`;
    return c.name;
  });
}

describe('mock devices through the VFIO device calls', () => {
  it('are listed under PCI domain ffff only when enabled and the kernel has IOMMUFD_TEST', async () => {
    const off = await setup(false);
    expect(await off.kernel.listPciFunctions()).toEqual([]);
    await expectErrno(off.kernel.openDevice('iommufd-mock0'), 'ENOENT', 'open_device');

    const on = await setup(true);
    const listed = await on.kernel.listPciFunctions();
    expect(listed).toHaveLength(MOCK_FUNCTION_COUNT);
    expect(listed[0]).toMatchObject({ bdf: 'ffff:00:00.0', cdev: 'iommufd-mock0', driver: 'iommufd-selftest' });
    // Each mock sits in its own IOMMU group, as the kernel creates it (§6.2).
    expect(new Set(listed.map((f) => f.iommuGroup)).size).toBe(MOCK_FUNCTION_COUNT);
    await expectErrno(on.kernel.openDevice(`iommufd-mock${MOCK_FUNCTION_COUNT}`), 'ENOENT', 'open_device');
  });

  it('BIND parks the device on a private IOAS; ATTACH, DETACH and close map to REPLACE and DESTROY', async () => {
    const { fake, kernel, iommufd } = await setup(true);
    const file = await kernel.openDevice('iommufd-mock1');
    expect(fake.ioctls).toEqual([]); // opening touches nothing, like open(2) of a cdev
    expect(kernel.osFd(file)).toBeUndefined(); // nothing to hand to a VMM

    expect(await kernel.bindIommufd(file, iommufd)).toBe(IDEV);
    await kernel.detachPt(file); // nothing attached yet: succeeds without a kernel call, like VFIO
    expect(await kernel.attachPt(file, kernelId(20))).toBe(21);
    expect(await kernel.attachPt(file, kernelId(30))).toBe(31); // attach again = replace
    await kernel.detachPt(file);
    expect(kernel.openFileCount()).toBe(2);
    await kernel.closeDevice(file);
    await kernel.closeDevice(file); // a second close is a no-op

    expect(script(fake)).toEqual([
      'IOMMU_IOAS_ALLOC',
      `MOCK_DOMAIN(${PARKING_IOAS})`,
      `REPLACE(${STDEV} -> 20)`,
      `REPLACE(${STDEV} -> 30)`,
      `REPLACE(${STDEV} -> ${PARKING_IOAS})`,
      `DESTROY(${STDEV})`,
      `DESTROY(${PARKING_IOAS})`,
    ]);
    expect(kernel.openFileCount()).toBe(1);
  });

  it('refuses device calls before BIND and a second BIND, with the VFIO errnos (§3.15)', async () => {
    const { fake, kernel, iommufd } = await setup(true);
    const file = await kernel.openDevice('iommufd-mock0');
    await expectErrno(kernel.attachPt(file, kernelId(20)), 'EINVAL', 'attach_pt');
    await expectErrno(kernel.detachPt(file), 'EINVAL', 'detach_pt');
    await kernel.bindIommufd(file, iommufd);
    await expectErrno(kernel.bindIommufd(file, iommufd), 'EINVAL', 'bind_iommufd');
    const second = await kernel.openDevice('iommufd-mock0');
    await expectErrno(kernel.bindIommufd(second, iommufd), 'EINVAL', 'bind_iommufd');
    expect(fake.calls('IOMMU_TEST_CMD')).toHaveLength(1);
    await kernel.closeDevice(second);
    await kernel.closeDevice(file);
  });

  it('a failed MOCK_DOMAIN leaves nothing behind: the parking IOAS is destroyed again', async () => {
    const { fake, kernel, iommufd } = await setup(true);
    fake.on('IOMMU_TEST_CMD', () => 'ENOMEM');
    const file = await kernel.openDevice('iommufd-mock2');
    await expectErrno(kernel.bindIommufd(file, iommufd), 'ENOMEM', 'bind_iommufd');
    expect(script(fake)).toEqual(['IOMMU_IOAS_ALLOC', `MOCK_DOMAIN(${PARKING_IOAS})`, `DESTROY(${PARKING_IOAS})`]);
    // Still open and unbound: a later BIND may succeed.
    await expectErrno(kernel.attachPt(file, kernelId(20)), 'EINVAL', 'attach_pt');
  });

  it('closing the iommufd first takes the mock devices with it, so close(device) issues nothing (§6.2)', async () => {
    const { fake, kernel, iommufd } = await setup(true);
    const file = await kernel.openDevice('iommufd-mock3');
    await kernel.bindIommufd(file, iommufd);
    await kernel.closeIommufd(iommufd);
    fake.clearLog();
    await kernel.closeDevice(file);
    expect(fake.ioctls).toEqual([]);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('shutdown unbinds mock devices before it closes the iommufds', async () => {
    const { fake, kernel, iommufd } = await setup(true);
    const file = await kernel.openDevice('iommufd-mock0');
    await kernel.bindIommufd(file, iommufd);
    fake.clearLog();
    await kernel.shutdown();
    expect(script(fake)).toEqual([`DESTROY(${STDEV})`, `DESTROY(${PARKING_IOAS})`]);
    expect(kernel.openFileCount()).toBe(0);
  });
});
