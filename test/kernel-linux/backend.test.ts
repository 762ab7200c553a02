import { describe, expect, it } from 'vitest';
import { createLinuxKernel, type LinuxKernelOptions } from '../../src/kernel/linux/backend.js';
import { LinuxBackendError } from '../../src/kernel/linux/probe.js';
import {
  IOMMU_DESTROY_STRUCT,
  IOMMU_HW_INFO_STRUCT,
  IOMMU_HWPT_ALLOC_STRUCT,
  IOMMU_IOAS_ALLOC_STRUCT,
  IOMMU_VDEVICE_ALLOC_STRUCT,
  IOMMU_VIOMMU_ALLOC_STRUCT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_BIND_IOMMUFD_STRUCT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT,
} from '../../src/kernel/linux/structs.js';
import { HWPT_ALLOC_NEST_PARENT, HW_INFO_TYPE, KernelError, kernelId, VIOMMU_TYPE } from '../../src/kernel/types.js';
import { expectErrno } from '../kernel-sim/helpers.js';
import { FakeKernel, readUser, writeFields, writeUser } from './fake-kernel.js';

const devRoot = '/fake/dev';
const id = kernelId;

async function setup(release = '7.2.13', options: Partial<LinuxKernelOptions> = {}) {
  const fake = new FakeKernel(devRoot);
  fake.release = release;
  for (const n of [0, 1, 2, 3]) fake.nodes.add(`${devRoot}/vfio/devices/vfio${n}`);
  const kernel = createLinuxKernel({ sys: fake, devRoot, ...options });
  await kernel.probe();
  fake.clearLog();
  return { fake, kernel };
}

describe('LinuxKernel file handling', () => {
  it('refuses kernel calls before probe()', async () => {
    const kernel = createLinuxKernel({ sys: new FakeKernel(devRoot), devRoot });
    await expect(kernel.openIommufd()).rejects.toBeInstanceOf(LinuxBackendError);
  });

  it('opens /dev/iommu and cdevs under the device root; close and shutdown close every fd', async () => {
    const { fake, kernel } = await setup();
    const a = await kernel.openIommufd();
    const b = await kernel.openIommufd();
    const d = await kernel.openDevice('vfio2');
    expect(fake.opened.map((o) => o.path)).toEqual([`${devRoot}/iommu`, `${devRoot}/iommu`, `${devRoot}/vfio/devices/vfio2`]);
    expect(d).toMatchObject({ kind: 'device', cdev: 'vfio2', fdNumber: fake.opened[2]!.fd });
    await kernel.closeIommufd(a);
    await kernel.closeIommufd(a); // second close: no syscall
    expect(fake.closed).toEqual([a.fdNumber]);
    await kernel.shutdown();
    expect(fake.closed).toEqual([a.fdNumber, d.fdNumber, b.fdNumber]);
    expect(fake.openFds()).toEqual([]);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('accepts only vfioN cdev names, so no path can be smuggled in', async () => {
    const { fake, kernel } = await setup();
    for (const bad of ['../iommu', 'vfio', 'vfio1/../../iommu', 'vfio-1', ' vfio1', 'VFIO1', 'vfio1\n', '/dev/vfio/devices/vfio1']) {
      await expectErrno(kernel.openDevice(bad), 'EINVAL', 'open_device');
    }
    expect(fake.opened).toEqual([]);
    await expectErrno(kernel.openDevice('vfio9'), 'ENOENT', 'open_device');
  });

  it('a closed or foreign handle is EBADF without reaching ioctl (fd numbers get reused)', async () => {
    const { fake, kernel } = await setup();
    const f = await kernel.openIommufd();
    await kernel.closeIommufd(f);
    await expectErrno(kernel.ioasAlloc(f), 'EBADF', 'ioas_alloc');
    await expectErrno(kernel.destroy({ kind: 'iommufd', fdNumber: f.fdNumber }, id(1)), 'EBADF', 'destroy');
    const d = await kernel.openDevice('vfio0');
    await kernel.closeDevice(d);
    await expectErrno(kernel.detachPt(d), 'EBADF', 'detach_pt');
    expect(fake.ioctls).toEqual([]);
  });
});

describe('LinuxKernel ioctls (7.2 sizes)', () => {
  it('IOAS_ALLOC is sync and returns out_ioas_id', async () => {
    const { fake, kernel } = await setup();
    fake.on('IOMMU_IOAS_ALLOC', (arg) => writeFields(arg!, IOMMU_IOAS_ALLOC_STRUCT, { out_ioas_id: 5 }));
    const f = await kernel.openIommufd();
    expect(await kernel.ioasAlloc(f)).toBe(5);
    const [call] = fake.calls('IOMMU_IOAS_ALLOC');
    expect(call).toMatchObject({ fd: f.fdNumber, async: false });
    expect(IOMMU_IOAS_ALLOC_STRUCT.decode(call!.sent!)).toMatchObject({ size: 12, flags: 0 });
  });

  it('bind, attach and detach are async and carry the device fd and the iommufd fd', async () => {
    const { fake, kernel } = await setup();
    fake.on('VFIO_DEVICE_BIND_IOMMUFD', (arg) => writeFields(arg!, VFIO_DEVICE_BIND_IOMMUFD_STRUCT, { out_devid: 9 }));
    fake.on('VFIO_DEVICE_ATTACH_IOMMUFD_PT', (arg) => writeFields(arg!, VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT, { pt_id: 11 }));
    fake.on('VFIO_DEVICE_DETACH_IOMMUFD_PT', () => 0);
    const f = await kernel.openIommufd();
    const d = await kernel.openDevice('vfio1');
    expect(await kernel.bindIommufd(d, f)).toBe(9);
    expect(await kernel.attachPt(d, id(2))).toBe(11);
    await kernel.detachPt(d);
    const [bind, attach, detach] = fake.ioctls;
    expect([bind, attach, detach].map((r) => [r!.fd, r!.async])).toEqual([[d.fdNumber, true], [d.fdNumber, true], [d.fdNumber, true]]);
    expect(VFIO_DEVICE_BIND_IOMMUFD_STRUCT.decode(bind!.sent!)).toMatchObject({ argsz: 24, flags: 0, iommufd: f.fdNumber, token_uuid_ptr: 0n });
    expect(VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT.decode(attach!.sent!)).toMatchObject({ argsz: 16, flags: 0, pt_id: 2 });
    expect(VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT.decode(detach!.sent!)).toMatchObject({ argsz: 12, flags: 0 });
  });

  it('HWPT_ALLOC passes the data buffer by pointer and is async', async () => {
    const { fake, kernel } = await setup();
    let seen: Buffer | undefined;
    fake.on('IOMMU_HWPT_ALLOC', (arg) => {
      const v = IOMMU_HWPT_ALLOC_STRUCT.decode(arg!);
      if (v.data_len > 0) {
        expect(v.data_uptr).not.toBe(0n);
        seen = readUser(v.data_uptr, v.data_len);
      }
      writeFields(arg!, IOMMU_HWPT_ALLOC_STRUCT, { out_hwpt_id: 7 });
    });
    const f = await kernel.openIommufd();
    const out = await kernel.hwptAlloc(f, { flags: HWPT_ALLOC_NEST_PARENT, devId: id(1), ptId: id(2), dataType: 0xdead, data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) });
    expect(out).toBe(7);
    expect(seen).toEqual(Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]));
    const [call] = fake.calls('IOMMU_HWPT_ALLOC');
    expect(call!.async).toBe(true);
    expect(IOMMU_HWPT_ALLOC_STRUCT.decode(call!.sent!)).toMatchObject({ size: 48, flags: 1, dev_id: 1, pt_id: 2, data_type: 0xdead, data_len: 8, fault_id: 0 });
    // No data: a null pointer and zero length.
    await kernel.hwptAlloc(f, { flags: 0, devId: id(1), ptId: id(2), dataType: 0, data: new Uint8Array() });
    expect(IOMMU_HWPT_ALLOC_STRUCT.decode(fake.calls('IOMMU_HWPT_ALLOC')[1]!.sent!)).toMatchObject({ data_len: 0, data_uptr: 0n });
  });

  it('VIOMMU_ALLOC and VDEVICE_ALLOC encode their arguments; virt_id beyond u64 is EINVAL without a syscall', async () => {
    const { fake, kernel } = await setup();
    fake.on('IOMMU_VIOMMU_ALLOC', (arg) => writeFields(arg!, IOMMU_VIOMMU_ALLOC_STRUCT, { out_viommu_id: 12 }));
    fake.on('IOMMU_VDEVICE_ALLOC', (arg) => writeFields(arg!, IOMMU_VDEVICE_ALLOC_STRUCT, { out_vdevice_id: 13 }));
    const f = await kernel.openIommufd();
    expect(await kernel.viommuAlloc(f, { type: VIOMMU_TYPE.SELFTEST, devId: id(1), hwptId: id(3) })).toBe(12);
    expect(await kernel.vdeviceAlloc(f, { viommuId: id(12), devId: id(1), virtId: 0x99n })).toBe(13);
    expect(IOMMU_VIOMMU_ALLOC_STRUCT.decode(fake.calls('IOMMU_VIOMMU_ALLOC')[0]!.sent!)).toMatchObject({
      size: 40,
      type: 0xdeadbeef,
      dev_id: 1,
      hwpt_id: 3,
      data_uptr: 0n,
    });
    expect(IOMMU_VDEVICE_ALLOC_STRUCT.decode(fake.calls('IOMMU_VDEVICE_ALLOC')[0]!.sent!)).toMatchObject({ viommu_id: 12, dev_id: 1, virt_id: 0x99n });
    await expectErrno(kernel.vdeviceAlloc(f, { viommuId: id(12), devId: id(1), virtId: 2n ** 64n }), 'EINVAL', 'vdevice_alloc');
    expect(fake.calls('IOMMU_VDEVICE_ALLOC').length).toBe(1);
  });

  it('GET_HW_INFO returns the payload and grows the buffer when the driver has more', async () => {
    const { fake, kernel } = await setup();
    const payload = Buffer.alloc(300, 0xab);
    fake.on('IOMMU_GET_HW_INFO', (arg) => {
      const v = IOMMU_HW_INFO_STRUCT.decode(arg!);
      writeUser(v.data_uptr, payload.subarray(0, Math.min(v.data_len, payload.length)));
      writeFields(arg!, IOMMU_HW_INFO_STRUCT, { data_len: payload.length, out_data_type: HW_INFO_TYPE.SELFTEST, out_capabilities: 9n, out_max_pasid_log2: 20 });
    });
    const f = await kernel.openIommufd();
    const info = await kernel.getHwInfo(f, id(4));
    expect(info).toMatchObject({ type: HW_INFO_TYPE.SELFTEST, capabilities: 9n, maxPasidLog2: 20 });
    expect(Buffer.from(info.data)).toEqual(payload);
    const sent = fake.calls('IOMMU_GET_HW_INFO').map((c) => IOMMU_HW_INFO_STRUCT.decode(c.sent!));
    expect(sent.map((s) => [s.size, s.dev_id, s.data_len, s.flags])).toEqual([[40, 4, 256, 0], [40, 4, 300, 0]]);
  });

  it('DESTROY is async and kernel errnos surface as KernelError with the op', async () => {
    const { fake, kernel } = await setup();
    fake.on('IOMMU_DESTROY', (arg) => (IOMMU_DESTROY_STRUCT.decode(arg!).id === 3 ? 'EBUSY' : 0));
    const f = await kernel.openIommufd();
    await kernel.destroy(f, id(2));
    const err = await expectErrno(kernel.destroy(f, id(3)), 'EBUSY', 'destroy');
    expect(err).toBeInstanceOf(KernelError);
    expect(err.message).toContain('IOMMU_DESTROY');
    expect(fake.calls('IOMMU_DESTROY').every((c) => c.async)).toBe(true);
  });
});

describe('LinuxKernel struct sizes follow the probed kernel (§2)', () => {
  it('6.14: bind 16, attach 12, detach 8, viommu 24', async () => {
    const { fake, kernel } = await setup('6.14.2');
    for (const n of ['VFIO_DEVICE_BIND_IOMMUFD', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_VIOMMU_ALLOC'] as const) fake.on(n, () => 0);
    const f = await kernel.openIommufd();
    const d = await kernel.openDevice('vfio0');
    await kernel.bindIommufd(d, f);
    await kernel.attachPt(d, id(1));
    await kernel.detachPt(d);
    await kernel.viommuAlloc(f, { type: 1, devId: id(1), hwptId: id(2) });
    expect(VFIO_DEVICE_BIND_IOMMUFD_STRUCT.decode(fake.ioctls[0]!.sent!).argsz).toBe(16);
    expect(VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT.decode(fake.ioctls[1]!.sent!).argsz).toBe(12);
    expect(VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT.decode(fake.ioctls[2]!.sent!).argsz).toBe(8);
    expect(IOMMU_VIOMMU_ALLOC_STRUCT.decode(fake.ioctls[3]!.sent!).size).toBe(24);
    // The buffer is still the full struct, zeroed past the declared size.
    expect(fake.ioctls[0]!.sent!.length).toBe(24);
  });
});
