/** Domain views to protobuf messages. Exhaustive switches: a new kind fails to compile here. */
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { ContextEvent, ObjectView, SequencedEvent, TeardownAction, TeardownReason, TeardownReport } from '../broker/events.js';
import type { DeviceState, DeviceView } from '../broker/inventory.js';
import type { ObjectKind } from '../broker/objects.js';
import type { HwptKind as DomainHwptKind, ViommuType as DomainViommuType } from '../broker/operations.js';
import { DeviceState as PbDeviceState, type DeviceSchema } from '../gen/vfio_broker/v1/admin_pb.js';
import { WatchContextResponseSchema, type WatchContextResponse } from '../gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../gen/vfio_broker/v1/objects_pb.js';
import {
  ObjectState,
  ObjectType,
  TeardownAction as PbTeardownAction,
  TeardownReason as PbTeardownReason,
  type ObjectInfoSchema,
  type TeardownReportSchema,
} from '../gen/vfio_broker/v1/objects_pb.js';

export function objectType(kind: ObjectKind): ObjectType {
  switch (kind) {
    case 'DEVICE':
      return ObjectType.DEVICE;
    case 'IOAS':
      return ObjectType.IOAS;
    case 'HWPT_PAGING':
      return ObjectType.HWPT_PAGING;
    case 'HWPT_NESTED':
      return ObjectType.HWPT_NESTED;
    case 'VIOMMU':
      return ObjectType.VIOMMU;
    case 'VDEVICE':
      return ObjectType.VDEVICE;
  }
}

export function objectInfo(view: ObjectView): MessageInitShape<typeof ObjectInfoSchema> {
  return {
    handle: BigInt(view.handle),
    type: objectType(view.kind),
    state: view.state === 'live' ? ObjectState.LIVE : ObjectState.TOMBSTONED,
    kernelId: view.kernelId,
    holds: view.holds.map(BigInt),
    heldBy: view.heldBy.map(BigInt),
    deviceId: view.deviceId ?? '',
    attachedHwpt: BigInt(view.attachedHwpt ?? 0),
    automatic: view.automatic ?? false,
    nestParent: view.nestParent ?? false,
    virtId: view.virtId ?? 0n,
  };
}

export function teardownReason(reason: TeardownReason): PbTeardownReason {
  switch (reason) {
    case 'unbind':
      return PbTeardownReason.UNBIND;
    case 'close':
      return PbTeardownReason.CLOSE;
    case 'client_gone':
      return PbTeardownReason.CLIENT_GONE;
    case 'forced':
      return PbTeardownReason.FORCED;
    case 'device_request':
      return PbTeardownReason.DEVICE_REQUEST;
  }
}

function teardownAction(action: TeardownAction): PbTeardownAction {
  switch (action) {
    case 'move_off_nested':
      return PbTeardownAction.MOVE_OFF_NESTED;
    case 'destroy':
      return PbTeardownAction.DESTROY;
    case 'detach':
      return PbTeardownAction.DETACH;
    case 'close_device':
      return PbTeardownAction.CLOSE_DEVICE;
    case 'found_tombstoned':
      return PbTeardownAction.FOUND_TOMBSTONED;
    case 'auto_freed':
      return PbTeardownAction.AUTO_FREED;
    case 'close_iommufd':
      return PbTeardownAction.CLOSE_IOMMUFD;
  }
}

export function teardownReport(report: TeardownReport): MessageInitShape<typeof TeardownReportSchema> {
  return {
    reason: teardownReason(report.reason),
    steps: report.steps.map((s) => ({
      action: teardownAction(s.action),
      handle: BigInt(s.handle),
      type: s.kind ? objectType(s.kind) : ObjectType.UNSPECIFIED,
      kernelId: s.kernelId ?? 0,
    })),
    vdevicesDestroyed: report.vdevicesDestroyed,
    vdevicesFoundTombstoned: report.vdevicesFoundTombstoned,
  };
}

function eventBody(event: ContextEvent): MessageInitShape<typeof WatchContextResponseSchema>['event'] {
  switch (event.type) {
    case 'created':
      return { case: 'created', value: { object: objectInfo(event.object) } };
    case 'destroyed':
      return { case: 'destroyed', value: { handle: BigInt(event.handle), type: objectType(event.kind) } };
    case 'teardown':
      return { case: 'teardown', value: { report: teardownReport(event.report) } };
    case 'device_removed':
      return { case: 'deviceRemoved', value: { device: BigInt(event.device), deviceId: event.deviceId } };
    case 'closed':
      return { case: 'closed', value: { reason: teardownReason(event.reason) } };
  }
}

export function watchEvent(event: SequencedEvent): WatchContextResponse {
  return create(WatchContextResponseSchema, {
    sequence: BigInt(event.sequence),
    time: timestampFromDate(event.time),
    event: eventBody(event.event),
  });
}

function deviceState(state: DeviceState): PbDeviceState {
  switch (state) {
    case 'free':
      return PbDeviceState.FREE;
    case 'assigned':
      return PbDeviceState.ASSIGNED;
    case 'bound':
      return PbDeviceState.BOUND;
    case 'quarantined':
      return PbDeviceState.QUARANTINED;
  }
}

export function deviceMessage(view: DeviceView): MessageInitShape<typeof DeviceSchema> {
  return {
    id: view.id,
    vendorId: view.pci.vendorId,
    pciDeviceId: view.pci.deviceId,
    iommuGroup: view.pci.iommuGroup,
    cdev: view.pci.cdev ?? '',
    driver: view.pci.driver ?? '',
    description: view.pci.description ?? '',
    state: deviceState(view.state),
    tenant: view.tenant ?? '',
    contextId: view.contextId ?? '',
  };
}

export function hwptKind(kind: HwptKind): DomainHwptKind | undefined {
  switch (kind) {
    case HwptKind.PAGING:
      return 'paging';
    case HwptKind.NEST_PARENT:
      return 'nest_parent';
    case HwptKind.NESTED:
      return 'nested';
    case HwptKind.UNSPECIFIED:
      return undefined;
    default:
      return undefined; // an enum value from a newer client
  }
}

export function viommuType(type: ViommuType): DomainViommuType | undefined {
  switch (type) {
    case ViommuType.ARM_SMMUV3:
      return 'ARM_SMMUV3';
    case ViommuType.TEGRA241_CMDQV:
      return 'TEGRA241_CMDQV';
    case ViommuType.SELFTEST:
      return 'SELFTEST';
    case ViommuType.UNSPECIFIED:
      return undefined;
    default:
      return undefined;
  }
}
