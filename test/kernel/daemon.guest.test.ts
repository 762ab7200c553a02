/**
 * The real daemon on the real kernel (runs inside the QEMU guest; see
 * README.md here): `startDaemon` with the `linux` backend, in-process, driven
 * over gRPC on a temp Unix socket with the typed clients, on the edu device
 * that guest-init bound to vfio-pci (behind the emulated Intel VT-d).
 *
 *   test/kernel/run-vm.sh 'vitest run --config test/kernel/vitest.guest.config.ts daemon'
 *
 * Covers: GetStatus/ListDevices from the real probe and sysfs; a VM's
 * lifecycle (assign, open, bind, IOAS, a real 1 MiB mapping through the
 * LinuxKernel data-path extras, attach → automatic HWPT, GetHwInfo, unmap,
 * detach, unbind, close) leaving no fd behind; handle vs kernel-ID reuse;
 * kernel errors as clients see them (EOPNOTSUPP, EBUSY).
 *
 * vIOMMU/vDEVICE and the unbind teardown through the daemon need nesting,
 * which the emulated VT-d lacks: viommu.guest.test.ts runs them on mock
 * devices.
 *
 * Writes a summary to $VFIO_BROKER_RESULTS_DIR/daemon.json. Skipped outside
 * the guest (no /dev/iommu).
 */
import * as grpc from '@grpc/grpc-js';
import koffi from 'koffi';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../../src/daemon.js';
import { DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { HwptKind, ObjectType, TeardownAction, TeardownReason } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import type { LinuxKernel } from '../../src/kernel/linux/index.js';
import { isKernelError, kernelId } from '../../src/kernel/types.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import type { AdminClient, BrokerClient } from '../helpers/daemon.js';
import { asTenantMetadata } from '../helpers/daemon.js';
import { inRanges, kernelFds, rpcError, startGuestDaemon, stopGuestDaemon, writeSummary, type GuestDaemon } from './guest-daemon.js';

const IN_GUEST = existsSync('/dev/iommu');
const TENANT = 'guest-vm';
const meta = { metadata: asTenantMetadata(TENANT) };

const MIB = 1n << 20n;
const MAP_IOVA = 0x10_0000n; // 1 MiB: low, page aligned, far from the VT-d MSI window at 0xfee00000
const MAP_LENGTH = MIB;
const HW_INFO_TYPE_INTEL_VTD = 1;

/** Inclusive ranges as hex, for messages and the summary. */
const hexRanges = (rs: { start: bigint; last: bigint }[]) => rs.map((r) => `0x${r.start.toString(16)}..0x${r.last.toString(16)}`);

describe.skipIf(!IN_GUEST)('the daemon (linux backend) over gRPC on the real kernel', () => {
  let guest: GuestDaemon | undefined;
  let daemon: Daemon;
  let kernel: LinuxKernel;
  let broker: BrokerClient;
  let admin: AdminClient;
  let bdf: string;
  let fdsBefore: string[];
  const summary: Record<string, unknown> = {};
  const timings: Record<string, number> = {};

  beforeAll(async () => {
    fdsBefore = kernelFds();
    const t0 = Date.now();
    guest = await startGuestDaemon('guest');
    ({ daemon, kernel, broker, admin } = guest);
    timings['startDaemonMs'] = Date.now() - t0;
    const t1 = Date.now();
    await admin.getStatus({});
    timings['firstRpcMs'] = Date.now() - t1;
    summary['metricsAddress'] = daemon.metricsAddress;
  }, 180_000);

  afterAll(async () => {
    const t0 = Date.now();
    await stopGuestDaemon(guest ?? {});
    timings['stopMs'] = Date.now() - t0;
    summary['timings'] = timings;
    const fdsAfterStop = kernelFds();
    summary['fdsAfterStop'] = fdsAfterStop;
    writeSummary('daemon.json', summary);
    process.stdout.write(
      `daemon: ${String(summary['status'] ?? 'no status')}; device ${bdf ?? '?'}; startDaemon ${timings['startDaemonMs']} ms, ` +
        `first RPC ${timings['firstRpcMs']} ms, stop ${timings['stopMs']} ms\n` +
        `daemon: IOVA ranges before attach ${JSON.stringify(summary['rangesBeforeAttach'])}, after ${JSON.stringify(summary['rangesAfterAttach'])}\n`,
    );
    // stop() released the kernel: no /dev/iommu or VFIO fd stays open in this process.
    if (fdsBefore) expect(fdsAfterStop).toEqual(fdsBefore);
  }, 120_000);

  it('GetStatus reports the linux backend, release 7.2.13, profile linux-6.17 and the probed ioctls', async () => {
    const s = await admin.getStatus({});
    summary['status'] = `${s.backend} ${s.kernelRelease} ${s.kernelProfile}, ${s.capabilities.length} capabilities`;
    expect(s.backend).toBe('linux');
    expect(s.kernelRelease).toBe('7.2.13');
    expect(s.kernelProfile).toBe('linux-6.17');
    expect(s.capabilities).toEqual(expect.arrayContaining(['IOMMU_VIOMMU_ALLOC', 'IOMMU_VDEVICE_ALLOC', 'IOMMU_HW_QUEUE_ALLOC', 'IOMMU_TEST_CMD']));
    expect(s.contexts).toBe(0);
  });

  it('ListDevices shows the edu device on vfio-pci with its cdev', async () => {
    const { devices } = await admin.listDevices({});
    const vfio = devices.filter((d) => d.cdev !== '');
    summary['devices'] = devices.map((d) => `${d.id} ${d.vendorId.toString(16)}:${d.pciDeviceId.toString(16)} ${d.driver || '-'} ${d.cdev || '-'}`);
    expect(vfio).toHaveLength(1);
    const edu = vfio[0]!;
    bdf = edu.id;
    if (process.env['VFIO_BROKER_TEST_BDF']) expect(edu.id).toBe(process.env['VFIO_BROKER_TEST_BDF']);
    if (process.env['VFIO_BROKER_TEST_VFIO_DEV']) expect(edu.cdev).toBe(path.basename(process.env['VFIO_BROKER_TEST_VFIO_DEV']));
    expect({ vendor: edu.vendorId, device: edu.pciDeviceId, driver: edu.driver, state: edu.state }).toEqual({
      vendor: 0x1234,
      device: 0x11e8,
      driver: 'vfio-pci',
      state: DeviceState.FREE,
    });
    await admin.assignDevice({ deviceId: bdf, tenant: TENANT });
    const after = await admin.listDevices({});
    expect(after.devices.find((d) => d.id === bdf)).toMatchObject({ state: DeviceState.ASSIGNED, tenant: TENANT });
  });

  it('runs a VM lifecycle: bind, IOAS, a real mapping, attach, hw info, unmap, detach, unbind, close', async () => {
    const { contextId } = await broker.openContext({ label: 'guest-lifecycle' }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: bdf }, meta)).device!;
    expect(device).toMatchObject({ type: ObjectType.DEVICE, deviceId: bdf, attachedHwpt: 0n });
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!;
    expect(ioas.type).toBe(ObjectType.IOAS);
    expect((await admin.listDevices({})).devices.find((d) => d.id === bdf)).toMatchObject({ state: DeviceState.BOUND, contextId });

    // No MapMemory RPC yet: map through the context's own iommufd with the LinuxKernel extras.
    const iommufd = daemon.broker.inspectContext(contextId)!.iommufd;
    const ioasId = kernelId(ioas.kernelId);
    const before = await kernel.ioasIovaRanges(iommufd, ioasId);
    summary['rangesBeforeAttach'] = hexRanges(before.ranges);
    expect(inRanges(before.ranges, MAP_IOVA, MAP_LENGTH)).toBe(true);
    // A page-aligned window of a buffer this process owns (anonymous memory: >128 KiB is mmap'ed by malloc).
    const backing = Buffer.alloc(Number(MAP_LENGTH) + 4096);
    const base = BigInt(koffi.address(backing));
    const userVa = (base + 4095n) & ~4095n;
    backing.fill(0xa5);
    const iova = await kernel.ioasMap(iommufd, { ioasId, userVa, length: MAP_LENGTH, iova: MAP_IOVA });
    expect(iova).toBe(MAP_IOVA);
    const again = await kernel.ioasMap(iommufd, { ioasId, userVa, length: MAP_LENGTH, iova: MAP_IOVA }).catch((e: unknown) => e);
    expect(isKernelError(again, 'EEXIST'), `second map at the same IOVA: ${String(again)}`).toBe(true);

    // Attaching to the IOAS makes the kernel create (and fill with the mapping) an automatic HWPT.
    const attached = await broker.attachDevice({ contextId, device: device.handle, target: ioas.handle }, meta);
    expect(attached.hwpt).toMatchObject({ type: ObjectType.HWPT_PAGING, automatic: true, nestParent: false });
    expect(attached.replacedHwpt).toBe(0n);
    const auto = attached.hwpt!.handle;
    const after = await kernel.ioasIovaRanges(iommufd, ioasId);
    summary['rangesAfterAttach'] = hexRanges(after.ranges);
    summary['iovaAlignment'] = after.alignment;
    // The VT-d domain narrows the IOAS to its aperture (39-bit here) and reserves the interrupt
    // window 0xfee00000..0xfeefffff (intel-iommu's IOMMU_RESV_MSI region); the mapping stays inside.
    expect(inRanges(after.ranges, MAP_IOVA, MAP_LENGTH)).toBe(true);
    expect(after.ranges.at(-1)!.last).toBeLessThan(0xffff_ffff_ffff_ffffn);
    expect(after.ranges.some((r) => r.start <= 0xfee0_0000n && 0xfee0_0000n <= r.last)).toBe(false);
    expect(after.alignment).toBeGreaterThanOrEqual(4096n);

    const hw = await broker.getHwInfo({ contextId, device: device.handle }, meta);
    summary['hwInfo'] = { type: hw.hwInfoType, capabilities: hw.capabilities, dataBytes: hw.data.length, maxPasidLog2: hw.maxPasidLog2 };
    expect(hw.hwInfoType).toBe(HW_INFO_TYPE_INTEL_VTD);
    expect(hw.data.length).toBeGreaterThan(0);

    const { objects } = await broker.listObjects({ contextId }, meta);
    const byHandle = new Map(objects.map((o) => [o.handle, o]));
    expect(byHandle.get(device.handle)?.attachedHwpt).toBe(auto);
    expect(byHandle.get(auto)?.holds).toEqual([ioas.handle]);
    expect(byHandle.get(ioas.handle)?.heldBy).toEqual([auto]);

    expect(await kernel.ioasUnmap(iommufd, ioasId, MAP_IOVA, MAP_LENGTH)).toBe(MAP_LENGTH);
    const detached = await broker.detachDevice({ contextId, device: device.handle }, meta);
    expect(detached).toMatchObject({ detachedHwpt: auto, automaticHwptFreed: true });
    expect((await broker.listObjects({ contextId }, meta)).objects.map((o) => o.handle).sort()).toEqual([device.handle, ioas.handle].sort());

    const { teardown: unbind } = await broker.unbindDevice({ contextId, device: device.handle }, meta);
    summary['unbindTeardown'] = unbind!.steps.map((s) => `${TeardownAction[s.action]} ${s.handle}`);
    expect(unbind!.reason).toBe(TeardownReason.UNBIND);
    expect(unbind!.steps.map((s) => [s.action, s.handle])).toEqual([[TeardownAction.CLOSE_DEVICE, device.handle]]);
    expect(unbind!.vdevicesDestroyed + unbind!.vdevicesFoundTombstoned).toBe(0);

    const { teardown: close } = await broker.closeContext({ contextId }, meta);
    summary['closeTeardown'] = close!.steps.map((s) => `${TeardownAction[s.action]} ${s.handle}`);
    expect(close!.reason).toBe(TeardownReason.CLOSE);
    expect(close!.steps.map((s) => [s.action, s.handle])).toEqual([
      [TeardownAction.DESTROY, ioas.handle],
      [TeardownAction.CLOSE_IOMMUFD, 0n],
    ]);

    // Nothing left: no file in the backend, no fd in the process, the device free to bind again.
    expect(kernel.openFileCount()).toBe(0);
    expect(kernelFds()).toEqual(fdsBefore);
    expect((await admin.listDevices({})).devices.find((d) => d.id === bdf)).toMatchObject({ state: DeviceState.ASSIGNED, contextId: '' });
    const again2 = (await broker.openContext({ label: 'rebind' }, meta)).contextId;
    const rebound = (await broker.bindDevice({ contextId: again2, deviceId: bdf }, meta)).device!;
    expect(rebound.type).toBe(ObjectType.DEVICE);
    const { teardown: close2 } = await broker.closeContext({ contextId: again2 }, meta);
    expect(close2!.steps.map((s) => s.action)).toEqual([TeardownAction.CLOSE_DEVICE, TeardownAction.CLOSE_IOMMUFD]);
    expect(kernel.openFileCount()).toBe(0);
    expect(kernelFds()).toEqual(fdsBefore);
    backing.fill(0); // keeps `backing` alive past the unmap
  });

  it('gives a reused kernel ID a new handle; the stale handle is NOT_FOUND', async () => {
    const { contextId } = await broker.openContext({ label: 'guest-ids' }, meta);
    const first = (await broker.allocIoas({ contextId }, meta)).ioas!;
    await broker.destroyObject({ contextId, handle: first.handle }, meta);
    const second = (await broker.allocIoas({ contextId }, meta)).ioas!;
    summary['idReuse'] = { first: [first.handle, first.kernelId], second: [second.handle, second.kernelId] };
    expect(second.kernelId).toBe(first.kernelId);
    expect(second.handle).not.toBe(first.handle);
    const stale = await rpcError(broker.destroyObject({ contextId, handle: first.handle }, meta));
    expect(stale.code).toBe(grpc.status.NOT_FOUND);
    expect(errorInfoOf(stale)?.reason).toBe('OBJECT_NOT_FOUND');
    await broker.closeContext({ contextId }, meta);
  });

  it('passes kernel errors on: NEST_PARENT on the emulated VT-d is EOPNOTSUPP, destroying a held IOAS is EBUSY with its holders', async () => {
    const { contextId } = await broker.openContext({ label: 'guest-errors' }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: bdf }, meta)).device!.handle;
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!.handle;

    const nest = await rpcError(broker.allocHwpt({ contextId, device, kind: HwptKind.NEST_PARENT, parent: ioas }, meta));
    const nestInfo = errorInfoOf(nest);
    summary['nestParentError'] = { code: grpc.status[nest.code], reason: nestInfo?.reason, metadata: nestInfo?.metadata, details: nest.details };
    expect(nest.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(nestInfo?.reason).toBe('KERNEL_UNSUPPORTED');
    expect(nestInfo?.domain).toBe('vfio-broker');
    expect(nestInfo?.metadata['errno']).toBe('EOPNOTSUPP');
    expect(nestInfo?.metadata['kernel_op']).toBe('hwpt_alloc');

    const auto = (await broker.attachDevice({ contextId, device, target: ioas }, meta)).hwpt!.handle;
    const manual = (await broker.allocHwpt({ contextId, device, kind: HwptKind.PAGING, parent: ioas }, meta)).hwpt!.handle;
    const busy = await rpcError(broker.destroyObject({ contextId, handle: ioas }, meta));
    const busyInfo = errorInfoOf(busy);
    summary['ioasInUseError'] = { code: grpc.status[busy.code], reason: busyInfo?.reason, metadata: busyInfo?.metadata, details: busy.details };
    expect(busy.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(busyInfo?.reason).toBe('OBJECT_IN_USE');
    expect(busyInfo?.metadata['errno']).toBe('EBUSY');
    expect(busyInfo?.metadata['kernel_op']).toBe('destroy');
    expect(busyInfo?.metadata['objects']!.split(',').map(BigInt).sort()).toEqual([ioas, auto, manual].sort());
    expect(busy.details).toContain(`HWPT_PAGING ${auto}`);
    expect(busy.details).toContain(`HWPT_PAGING ${manual}`);

    // The failed calls changed nothing: close tears down the rest in order.
    const { teardown } = await broker.closeContext({ contextId }, meta);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual([
      [TeardownAction.DETACH, device],
      [TeardownAction.AUTO_FREED, auto],
      [TeardownAction.DESTROY, manual],
      [TeardownAction.DESTROY, ioas],
      [TeardownAction.CLOSE_DEVICE, device],
      [TeardownAction.CLOSE_IOMMUFD, 0n],
    ]);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('leaves no kernel fd behind after all of the above', async () => {
    const s = await admin.getStatus({});
    expect({ contexts: s.contexts, objects: s.objects }).toEqual({ contexts: 0, objects: 0 });
    expect(kernel.openFileCount()).toBe(0);
    expect(kernelFds()).toEqual(fdsBefore);
  });
});
