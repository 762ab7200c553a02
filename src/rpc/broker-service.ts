/** vfio_broker.v1.BrokerService: request decoding and response shaping only. */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs, timestampNow } from '@bufbuild/protobuf/wkt';
import type { Broker } from '../broker/broker.js';
import { BrokerError } from '../broker/errors.js';
import type { SequencedEvent } from '../broker/events.js';
import type { Lease } from '../broker/handoff.js';
import { asHandle } from '../broker/ids.js';
import { BrokerService, WatchContextResponseSchema } from '../gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../gen/vfio_broker/v1/objects_pb.js';
import type { MethodsOf, ServiceImpl } from './handlers.js';
import type { TopologyStep as PbTopologyStep } from '../gen/vfio_broker/v1/topology_pb.js';
import type { TopologyStep } from '../broker/topology.js';
import { hwptKind, objectInfo, teardownReport, viommuType, watchEvent } from './mappers.js';

function topologyStep(step: PbTopologyStep): TopologyStep {
  const a = step.action;
  switch (a.case) {
    case 'bind':
      return { name: step.name, action: { type: 'bind', deviceId: a.value.deviceId } };
    case 'allocIoas':
      return { name: step.name, action: { type: 'alloc_ioas' } };
    case 'attach':
      return { name: step.name, action: { type: 'attach', device: a.value.device, target: a.value.target } };
    case 'allocHwpt':
      return {
        name: step.name,
        action: { type: 'alloc_hwpt', device: a.value.device, kind: hwptKind(a.value.kind), parent: a.value.parent, dataType: a.value.dataType, data: a.value.data, dirtyTracking: a.value.dirtyTracking },
      };
    case 'allocViommu':
      return { name: step.name, action: { type: 'alloc_viommu', device: a.value.device, nestParent: a.value.nestParent, viommuType: viommuType(a.value.type) } };
    case 'allocVdevice':
      return { name: step.name, action: { type: 'alloc_vdevice', viommu: a.value.viommu, device: a.value.device, virtId: a.value.virtId } };
    case undefined:
      return { name: step.name, action: undefined };
  }
}

function outOfRangeEnum(field: string, value: number): BrokerError {
  return new BrokerError('INVALID_FIELD', `${field}: ${value} is not a known value`, { field });
}

/** A token for the fd socket, and where that socket is: clients never choose the path. */
function grant(broker: Broker, lease: Lease) {
  return { token: lease.token, socketPath: broker.handoffs.socketPath, expiresAt: timestampFromMs(lease.expiresAt) };
}

export function brokerServiceImpl(broker: Broker): ServiceImpl<MethodsOf<typeof BrokerService>> {
  return {
    async openContext(req, { caller }) {
      const contextId = await broker.openContext(caller, req.label, req.leaseSeconds);
      return { contextId };
    },
    async closeContext(req, { caller }) {
      return { teardown: teardownReport(await broker.closeContext(caller, req.contextId)) };
    },
    async bindDevice(req, { caller }) {
      return { device: objectInfo(await broker.bindDevice(caller, req.contextId, req.deviceId)) };
    },
    async unbindDevice(req, { caller }) {
      return { teardown: teardownReport(await broker.unbindDevice(caller, req.contextId, asHandle(req.device))) };
    },
    async attachDevice(req, { caller }) {
      const { hwpt, replaced } = await broker.attachDevice(caller, req.contextId, asHandle(req.device), asHandle(req.target));
      return { hwpt: objectInfo(hwpt), replacedHwpt: BigInt(replaced ?? 0) };
    },
    async detachDevice(req, { caller }) {
      const { detached, autoFreed } = await broker.detachDevice(caller, req.contextId, asHandle(req.device));
      return { detachedHwpt: BigInt(detached ?? 0), automaticHwptFreed: autoFreed };
    },
    async allocIoas(req, { caller }) {
      return { ioas: objectInfo(await broker.allocIoas(caller, req.contextId)) };
    },
    async allocHwpt(req, { caller }) {
      const kind = hwptKind(req.kind);
      if (kind === undefined && req.kind !== HwptKind.UNSPECIFIED) throw outOfRangeEnum('kind', req.kind);
      const hwpt = await broker.allocHwpt(caller, req.contextId, {
        device: asHandle(req.device),
        kind,
        parent: asHandle(req.parent),
        dataType: req.dataType,
        data: req.data,
        dirtyTracking: req.dirtyTracking,
      });
      return { hwpt: objectInfo(hwpt) };
    },
    async allocViommu(req, { caller }) {
      const type = viommuType(req.type);
      if (type === undefined && req.type !== ViommuType.UNSPECIFIED) throw outOfRangeEnum('type', req.type);
      return { viommu: objectInfo(await broker.allocViommu(caller, req.contextId, asHandle(req.device), asHandle(req.nestParent), type)) };
    },
    async allocVdevice(req, { caller }) {
      const vdevice = await broker.allocVdevice(caller, req.contextId, asHandle(req.viommu), asHandle(req.device), req.virtId);
      return { vdevice: objectInfo(vdevice) };
    },
    async applyTopology(req, { caller }) {
      const results = await broker.applyTopology(caller, req.contextId, req.steps.map(topologyStep));
      return { results: results.map((r) => ({ name: r.name, object: objectInfo(r.object) })) };
    },
    async destroyObject(req, { caller }) {
      await broker.destroyObject(caller, req.contextId, asHandle(req.handle));
      return {};
    },
    async getHwInfo(req, { caller }) {
      const info = await broker.getHwInfo(caller, req.contextId, asHandle(req.device));
      return { hwInfoType: info.type, data: info.data, capabilities: info.capabilities, maxPasidLog2: info.maxPasidLog2 };
    },
    async listObjects(req, { caller }) {
      return { objects: (await broker.listObjects(caller, req.contextId)).map(objectInfo) };
    },
    async leaseDeviceFd(req, { caller }) {
      return grant(broker, await broker.leaseDeviceFd(caller, req.contextId, asHandle(req.device)));
    },
    async prepareMemoryUpload(req, { caller }) {
      return grant(broker, await broker.prepareMemoryUpload(caller, req.contextId));
    },
    async mapMemory(req, { caller }) {
      const mapping = await broker.mapMemory(caller, req.contextId, {
        ioas: asHandle(req.ioas),
        iova: req.iova,
        fixedIova: req.fixedIova,
        length: req.length,
        offset: req.offset,
        readable: req.readable,
        writeable: req.writeable,
        uploadToken: req.uploadToken,
      });
      return { iova: mapping.iova, length: mapping.length };
    },
    async unmapMemory(req, { caller }) {
      return { unmappedBytes: await broker.unmapMemory(caller, req.contextId, asHandle(req.ioas), req.iova, req.length) };
    },
    async watchContext(req, { caller, signal }, send) {
      // Events that arrive before the snapshot is sent wait, so the stream stays in order.
      const early: SequencedEvent[] = [];
      let ready = false;
      await new Promise<void>((resolve, reject) => {
        let stop: (() => void) | undefined;
        const finish = () => {
          stop?.();
          resolve();
        };
        const deliver = (event: SequencedEvent) => {
          send(watchEvent(event));
          if (event.event.type === 'closed') finish();
        };
        broker
          .watch(caller, req.contextId, (event) => (ready ? deliver(event) : early.push(event)))
          .then(({ snapshot, stop: unsubscribe }) => {
            stop = unsubscribe;
            send(create(WatchContextResponseSchema, { sequence: 0n, time: timestampNow(), event: { case: 'ready', value: { objects: snapshot.map(objectInfo) } } }));
            ready = true;
            for (const event of early.splice(0)) deliver(event);
            if (signal.aborted) finish();
            else signal.addEventListener('abort', finish, { once: true });
          }, reject);
      });
    },
  };
}
