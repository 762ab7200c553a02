/** A VM's device graph, built step by step over the public API. */
import { HwptKind, TeardownAction, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import type { TestDaemon } from './daemon.js';
import { asTenantMetadata } from './daemon.js';

export const TENANT = 'tenant-a';
export const SELFTEST_HWPT_DATA_TYPE = 0xdead;
/** struct iommu_hwpt_selftest { iotlb = 0xbadbeef, pagetable_type = 0 } */
export const SELFTEST_HWPT_DATA = new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0]);

export const meta = { metadata: asTenantMetadata(TENANT) };

/** Assigns the first `count` VFIO devices to TENANT and returns their IDs. */
export async function assignDevices(td: TestDaemon, count: number, tenant = TENANT): Promise<string[]> {
  const { devices } = await td.admin.listDevices({});
  const ids = devices.filter((d) => d.cdev !== '').slice(0, count).map((d) => d.id);
  for (const id of ids) await td.admin.assignDevice({ deviceId: id, tenant });
  return ids;
}

export interface VmGraph {
  contextId: string;
  device: bigint;
  ioas: bigint;
  autoHwpt: bigint;
  nestParent: bigint;
  viommu: bigint;
  vdevice: bigint;
  nested: bigint;
}

/** The handles of a VM graph that its teardown touches. */
export type GraphHandles = Pick<VmGraph, 'device' | 'vdevice' | 'nested' | 'viommu' | 'nestParent' | 'ioas'>;

/** UnbindDevice of the graph's device in the legal order (kernel-uapi.md §4.6), as [action, handle]. */
export function unbindOrder(vm: GraphHandles): [TeardownAction, bigint][] {
  return [
    [TeardownAction.MOVE_OFF_NESTED, vm.device],
    [TeardownAction.DESTROY, vm.vdevice],
    [TeardownAction.DESTROY, vm.nested],
    [TeardownAction.DETACH, vm.device],
    [TeardownAction.CLOSE_DEVICE, vm.device],
  ];
}

/** CloseContext of the whole graph in the legal order (kernel-uapi.md §4.6), as [action, handle]. */
export function closeOrder(vm: GraphHandles): [TeardownAction, bigint][] {
  return [
    [TeardownAction.MOVE_OFF_NESTED, vm.device],
    [TeardownAction.DESTROY, vm.vdevice],
    [TeardownAction.DESTROY, vm.nested],
    [TeardownAction.DESTROY, vm.viommu],
    [TeardownAction.DETACH, vm.device],
    [TeardownAction.DESTROY, vm.nestParent],
    [TeardownAction.DESTROY, vm.ioas],
    [TeardownAction.CLOSE_DEVICE, vm.device],
    [TeardownAction.CLOSE_IOMMUFD, 0n],
  ];
}

/** open → bind → IOAS → attach → nest parent → vIOMMU → vDEVICE → nested HWPT → attach nested. */
export async function buildVm(td: TestDaemon, deviceId: string, contextId?: string): Promise<VmGraph> {
  const b = td.broker;
  const ctxId = contextId ?? (await b.openContext({ label: 'vm' }, meta)).contextId;
  const device = (await b.bindDevice({ contextId: ctxId, deviceId }, meta)).device!.handle;
  const ioas = (await b.allocIoas({ contextId: ctxId }, meta)).ioas!.handle;
  const autoHwpt = (await b.attachDevice({ contextId: ctxId, device, target: ioas }, meta)).hwpt!.handle;
  const nestParent = (await b.allocHwpt({ contextId: ctxId, device, kind: HwptKind.NEST_PARENT, parent: ioas }, meta)).hwpt!.handle;
  const viommu = (await b.allocViommu({ contextId: ctxId, device, nestParent, type: ViommuType.SELFTEST }, meta)).viommu!.handle;
  const vdevice = (await b.allocVdevice({ contextId: ctxId, viommu, device, virtId: 0x99n }, meta)).vdevice!.handle;
  const nested = (
    await b.allocHwpt(
      { contextId: ctxId, device, kind: HwptKind.NESTED, parent: viommu, dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA },
      meta,
    )
  ).hwpt!.handle;
  await b.attachDevice({ contextId: ctxId, device, target: nested }, meta);
  return { contextId: ctxId, device, ioas, autoHwpt, nestParent, viommu, vdevice, nested };
}
