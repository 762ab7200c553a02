/**
 * vIOMMU/vDEVICE and the unbind teardown through the DAEMON on the real
 * kernel (runs inside the QEMU guest; see README.md here). The emulated VT-d
 * has no nesting, so the devices are IOMMUFD_TEST mock devices, which the
 * linux backend lists as inventory devices when `linux.selftestDevices` is on
 * (src/kernel/linux/mock-devices.ts). Everything goes over gRPC with the typed
 * clients, as a VMM would drive it.
 *
 *   test/kernel/run-vm.sh 'vitest run --config test/kernel/vitest.guest.config.ts viommu'
 *
 * Covers: the mock devices in ListDevices; a full nested graph (bind, IOAS,
 * attach, nest parent, vIOMMU, vDEVICE, nested HWPT, attach nested);
 * UnbindDevice in the legal order with the vDEVICE destroyed first; the same
 * unbind with the vDEVICE's DESTROY failing (faults injected in front of the
 * real backend), so the device goes first and the kernel's own tombstone is
 * what the broker finds (ENOENT from the real kernel) and reports; that the
 * tombstoned ID is never reused while freed IDs are; CloseContext of a full
 * graph. Writes $VFIO_BROKER_RESULTS_DIR/viommu.json. Skipped outside the guest.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Daemon } from '../../src/daemon.js';
import { HwptKind, ObjectState, TeardownAction, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import type { LinuxKernel } from '../../src/kernel/linux/index.js';
import { SimFaults } from '../../src/kernel/sim/index.js';
import { isKernelError, kernelId } from '../../src/kernel/types.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import type { AdminClient, BrokerClient } from '../helpers/daemon.js';
import { asTenantMetadata } from '../helpers/daemon.js';
import { closeOrder, SELFTEST_HWPT_DATA, SELFTEST_HWPT_DATA_TYPE, unbindOrder, type GraphHandles } from '../helpers/lifecycle.js';
import { rpcError, startGuestDaemon, stopGuestDaemon, writeSummary, type GuestDaemon } from './guest-daemon.js';

const IN_GUEST = existsSync('/dev/iommu');
const TENANT = 'guest-viommu';
const meta = { metadata: asTenantMetadata(TENANT) };
const MOCK = 'ffff:00:00.0';
const HW_INFO_TYPE_SELFTEST = 0xfeedbeef;

const action = (a: TeardownAction) => TeardownAction[a];
/** The handles of a graph built here (objects with their kernel IDs), as the order helpers take them. */
const handlesOf = (vm: Record<keyof GraphHandles, { handle: bigint }>): GraphHandles => ({
  device: vm.device.handle,
  vdevice: vm.vdevice.handle,
  nested: vm.nested.handle,
  viommu: vm.viommu.handle,
  nestParent: vm.nestParent.handle,
  ioas: vm.ioas.handle,
});

describe.skipIf(!IN_GUEST)('vIOMMU/vDEVICE and the unbind teardown through the daemon (mock devices, real kernel)', () => {
  let guest: GuestDaemon | undefined;
  let daemon: Daemon;
  let kernel: LinuxKernel;
  let broker: BrokerClient;
  let admin: AdminClient;
  const faults = new SimFaults();
  const summary: Record<string, unknown> = {};

  beforeAll(async () => {
    guest = await startGuestDaemon('viommu', { tweak: (config) => (config.linux.selftestDevices = true), kernelFaults: faults });
    ({ daemon, kernel, broker, admin } = guest);
  }, 180_000);

  afterAll(async () => {
    await stopGuestDaemon(guest ?? {});
    const json = writeSummary('viommu.json', summary, Number);
    process.stdout.write(`viommu: ${json}\n`);
  }, 120_000);

  /** The nested graph of kernel-uapi.md §6.4, over the API. */
  async function buildVm(label: string) {
    const { contextId } = await broker.openContext({ label }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: MOCK }, meta)).device!;
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!;
    const auto = (await broker.attachDevice({ contextId, device: device.handle, target: ioas.handle }, meta)).hwpt!;
    const nestParent = (await broker.allocHwpt({ contextId, device: device.handle, kind: HwptKind.NEST_PARENT, parent: ioas.handle }, meta)).hwpt!;
    const viommu = (await broker.allocViommu({ contextId, device: device.handle, nestParent: nestParent.handle, type: ViommuType.SELFTEST }, meta)).viommu!;
    const vdevice = (await broker.allocVdevice({ contextId, viommu: viommu.handle, device: device.handle, virtId: 0x99n }, meta)).vdevice!;
    const nested = (
      await broker.allocHwpt(
        { contextId, device: device.handle, kind: HwptKind.NESTED, parent: viommu.handle, dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA },
        meta,
      )
    ).hwpt!;
    const onNested = await broker.attachDevice({ contextId, device: device.handle, target: nested.handle }, meta);
    return { contextId, device, ioas, auto, nestParent, viommu, vdevice, nested, onNested };
  }

  it('lists the mock devices and binds one like a VFIO device; GetHwInfo is the mock IOMMU\'s', async () => {
    const { devices } = await admin.listDevices({});
    const mocks = devices.filter((d) => d.id.startsWith('ffff:'));
    summary['mockDevices'] = mocks.map((d) => `${d.id} ${d.driver} ${d.cdev}`);
    expect(mocks.length).toBeGreaterThanOrEqual(1);
    expect(mocks[0]).toMatchObject({ id: MOCK, driver: 'iommufd-selftest', cdev: 'iommufd-mock0' });
    await admin.assignDevice({ deviceId: MOCK, tenant: TENANT });

    const { contextId } = await broker.openContext({ label: 'hw-info' }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: MOCK }, meta)).device!;
    const hw = await broker.getHwInfo({ contextId, device: device.handle }, meta);
    expect(hw.hwInfoType).toBe(HW_INFO_TYPE_SELFTEST);
    const { teardown } = await broker.closeContext({ contextId }, meta);
    expect(teardown!.steps.map((s) => action(s.action))).toEqual(['CLOSE_DEVICE', 'CLOSE_IOMMUFD']);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('UnbindDevice destroys the vDEVICE before the device goes, in the legal order; the kernel agrees at every step', async () => {
    const vm = await buildVm('unbind');
    expect(vm.auto.automatic).toBe(true);
    expect(vm.onNested.replacedHwpt).toBe(vm.auto.handle);
    // Moving the device to the nested HWPT released the automatic one, and the kernel freed it.
    const live = (await broker.listObjects({ contextId: vm.contextId }, meta)).objects.map((o) => o.handle);
    expect(live).not.toContain(vm.auto.handle);

    const { teardown } = await broker.unbindDevice({ contextId: vm.contextId, device: vm.device.handle }, meta);
    summary['unbind'] = teardown!.steps.map((s) => `${action(s.action)} ${s.handle}`);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual(unbindOrder(handlesOf(vm)));
    expect({ destroyed: teardown!.vdevicesDestroyed, tombstoned: teardown!.vdevicesFoundTombstoned }).toEqual({ destroyed: 1, tombstoned: 0 });

    // The dead vDEVICE is named as such; the rest is destroyable, which the real kernel only allows
    // once nothing holds it: proof the teardown released every reference.
    const err = await rpcError(broker.destroyObject({ contextId: vm.contextId, handle: vm.vdevice.handle }, meta));
    expect(errorInfoOf(err)?.reason).toBe('VDEVICE_DESTROYED_ON_UNBIND');
    for (const h of [vm.viommu.handle, vm.nestParent.handle, vm.ioas.handle]) await broker.destroyObject({ contextId: vm.contextId, handle: h }, meta);
    const { teardown: close } = await broker.closeContext({ contextId: vm.contextId }, meta);
    expect(close!.steps.map((s) => action(s.action))).toEqual(['CLOSE_IOMMUFD']);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('when the vDEVICE cannot be destroyed first, the kernel tombstones it at unbind and the broker reports what it found', async () => {
    const vm = await buildVm('tombstone');
    const iommufd = daemon.broker.inspectContext(vm.contextId)!.iommufd;
    // The next three DESTROYs fail before reaching the kernel (EINTR): the broker's retries of
    // the vDEVICE are used up, it moves on and unbinds the device with the vDEVICE still alive.
    for (const n of [1, 2, 3]) faults.failNth(n, 'EINTR', { ops: ['destroy'] });
    const { teardown } = await broker.unbindDevice({ contextId: vm.contextId, device: vm.device.handle }, meta);
    faults.clear();
    const steps = teardown!.steps.map((s) => `${action(s.action)} ${s.handle}`);
    summary['unbindWithTombstone'] = steps;
    expect(teardown!.steps.map((s) => s.action)).toContain(TeardownAction.CLOSE_DEVICE);
    // Linux 7.2 (6.17+ profile): the unbind destroyed the vDEVICE; the broker's DESTROY afterwards got
    // ENOENT from the real kernel and counted it as found tombstoned, not as an error.
    expect(teardown!.steps.at(-1)).toMatchObject({ action: TeardownAction.FOUND_TOMBSTONED, handle: vm.vdevice.handle });
    expect({ destroyed: teardown!.vdevicesDestroyed, tombstoned: teardown!.vdevicesFoundTombstoned }).toEqual({ destroyed: 0, tombstoned: 1 });
    const { objects } = await broker.listObjects({ contextId: vm.contextId }, meta);
    expect(objects.find((o) => o.handle === vm.vdevice.handle)?.state).toBe(ObjectState.TOMBSTONED);

    // Straight to the kernel, past the broker: the vDEVICE's ID is dead (ENOENT).
    const tombstoneId = vm.vdevice.kernelId;
    const direct = await kernel.destroy(iommufd, kernelId(tombstoneId)).catch((e: unknown) => e);
    expect(isKernelError(direct, 'ENOENT'), String(direct)).toBe(true);

    // Free the rest, then allocate IOASes until an ID above the tombstone comes out. The kernel hands
    // out the lowest free ID, so every free ID below it is used first: the freed ones come back,
    // the tombstone never does.
    const freed = [vm.viommu, vm.nestParent, vm.ioas].map((o) => o.kernelId);
    for (const o of [vm.viommu, vm.nestParent, vm.ioas]) await broker.destroyObject({ contextId: vm.contextId, handle: o.handle }, meta);
    const fresh: number[] = [];
    while (fresh.length <= tombstoneId && !fresh.some((id) => id > tombstoneId)) {
      fresh.push((await broker.allocIoas({ contextId: vm.contextId }, meta)).ioas!.kernelId);
    }
    summary['idReuse'] = { tombstone: tombstoneId, freed, fresh };
    expect(fresh.some((id) => id > tombstoneId)).toBe(true);
    expect(fresh).not.toContain(tombstoneId);
    expect(freed.every((id) => fresh.includes(id))).toBe(true);
    await broker.closeContext({ contextId: vm.contextId }, meta);
    expect(kernel.openFileCount()).toBe(0);
  });

  it('CloseContext tears a whole nested graph down in the legal order and leaves nothing open', async () => {
    const vm = await buildVm('close');
    const { teardown } = await broker.closeContext({ contextId: vm.contextId }, meta);
    summary['close'] = teardown!.steps.map((s) => `${action(s.action)} ${s.handle}`);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual(closeOrder(handlesOf(vm)));
    expect(teardown!.vdevicesDestroyed).toBe(1);
    const s = await admin.getStatus({});
    expect({ contexts: s.contexts, objects: s.objects }).toEqual({ contexts: 0, objects: 0 });
    expect(kernel.openFileCount()).toBe(0);
  });
});
