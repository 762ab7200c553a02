/** vfio_broker.v1.AdminService. Every method requires the admin role. */
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { Broker, Caller } from '../broker/broker.js';
import { BrokerError } from '../broker/errors.js';
import { asTenant } from '../broker/ids.js';
import { AdminService } from '../gen/vfio_broker/v1/admin_pb.js';
import type { MethodsOf, ServiceImpl } from './handlers.js';
import { validTenantName } from './identity.js';
import { deviceMessage, teardownReport } from './mappers.js';

export { VERSION } from '../version.js';
import { VERSION } from '../version.js';

function requireAdmin(caller: Caller): void {
  if (!caller.admin) throw new BrokerError('PERMISSION_DENIED', 'this call needs the admin role');
}

function tenantField(name: string, field: string) {
  if (!validTenantName(name)) {
    throw new BrokerError(name === '' ? 'MISSING_FIELD' : 'INVALID_FIELD', `${field}: "${name.slice(0, 64)}" is not a tenant name (lowercase letters, digits, . _ -; at most 63)`, { field });
  }
  return asTenant(name);
}

export function adminServiceImpl(broker: Broker): ServiceImpl<MethodsOf<typeof AdminService>> {
  return {
    async listDevices(_req, { caller }) {
      requireAdmin(caller);
      return { devices: broker.listDevices().map(deviceMessage) };
    },
    async assignDevice(req, { caller }) {
      requireAdmin(caller);
      return { device: deviceMessage(broker.assignDevice(req.deviceId, tenantField(req.tenant, 'tenant'))) };
    },
    async unassignDevice(req, { caller }) {
      requireAdmin(caller);
      return { device: deviceMessage(broker.unassignDevice(req.deviceId)) };
    },
    async prepareDevice(req, { caller }) {
      requireAdmin(caller);
      return { device: deviceMessage(await broker.prepareDevice(req.deviceId)) };
    },
    async releaseDevice(req, { caller }) {
      requireAdmin(caller);
      return { device: deviceMessage(await broker.releaseDevice(req.deviceId)) };
    },
    async listContexts(req, { caller }) {
      requireAdmin(caller);
      const tenant = req.tenant === '' ? undefined : tenantField(req.tenant, 'tenant');
      return {
        contexts: broker.listContexts(tenant).map((c) => ({
          contextId: c.id,
          tenant: c.tenant,
          label: c.label,
          openedAt: timestampFromDate(c.openedAt),
          objectCount: c.objectCount,
          deviceIds: c.deviceIds,
          watchers: c.watchers,
          leaseSeconds: c.leaseSeconds,
          queued: c.queued,
        })),
      };
    },
    async forceCloseContext(req, { caller }) {
      requireAdmin(caller);
      if (Buffer.byteLength(req.reason) > 256) throw new BrokerError('INVALID_FIELD', 'reason: at most 256 bytes', { field: 'reason' });
      return { teardown: teardownReport(await broker.forceCloseContext(req.contextId, req.reason || `by ${caller.peer}`)) };
    },
    async getStatus(_req, { caller }) {
      requireAdmin(caller);
      const caps = broker.capabilities;
      return {
        version: VERSION,
        backend: caps.backend,
        kernelProfile: caps.profile,
        kernelRelease: caps.release,
        capabilities: caps.ioctls,
        contexts: broker.contextCount,
        objects: broker.objectCount,
        devices: broker.inventory.size,
        startedAt: timestampFromDate(broker.startedAt),
        quarantined: broker.quarantine.list().map((q) => ({
          reason: q.reason,
          detail: q.detail,
          contextId: q.contextId ?? '',
          tenant: q.tenant ?? '',
          handle: BigInt(q.handle ?? 0),
          kind: q.kind ?? '',
          kernelId: q.kernelId ?? 0,
          fdName: q.fdName ?? '',
        })),
        restoredContexts: broker.restoredContexts,
      };
    },
  };
}
