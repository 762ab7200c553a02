/** The AdminService subcommands: status, devices, assignment, contexts. */
import {
  AssignDeviceResponseSchema,
  ForceCloseContextResponseSchema,
  GetStatusResponseSchema,
  ListContextsResponseSchema,
  ListDevicesResponseSchema,
  PrepareDeviceResponseSchema,
  ReleaseDeviceResponseSchema,
  UnassignDeviceResponseSchema,
} from '../gen/vfio_broker/v1/admin_pb.js';
import { HealthCheckResponseSchema, HealthCheckResponse_ServingStatus } from '../gen/grpc/health/v1/health_pb.js';
import { positional, stringValue, tenantName } from './args.js';
import type { ClientCommand } from './client-commands.js';
import { contextsTable, devicesTable, statusText, teardownText } from './format.js';

const text = positional;

export const ADMIN_COMMANDS: readonly ClientCommand[] = [
  {
    name: 'health',
    group: 'Administration',
    args: [],
    options: { service: { type: 'string', value: 'NAME', help: 'a service name such as vfio_broker.v1.BrokerService (default: the whole daemon)' } },
    summary: 'grpc.health.v1 check; exit 0 when SERVING, 1 otherwise (for probes)',
    description: 'Readiness follows the kernel probe; a draining daemon reports NOT_SERVING.',
    prepare: (p) => {
      const service = stringValue(p, 'service') ?? '';
      return async (api) => {
        const res = await api.health.check({ service }, api.call);
        api.print(HealthCheckResponseSchema, res, () => `${HealthCheckResponse_ServingStatus[res.status]}\n`);
        return res.status === HealthCheckResponse_ServingStatus.SERVING ? 0 : 1;
      };
    },
  },
  {
    name: 'status',
    group: 'Administration',
    args: [],
    summary: 'show the daemon: version, kernel backend and profile, counts',
    prepare: () => async (api) => {
      const res = await api.admin.getStatus({}, api.call);
      api.print(GetStatusResponseSchema, res, () => statusText(res));
    },
  },
  {
    name: 'devices',
    group: 'Administration',
    args: [],
    summary: 'list the host devices the broker manages',
    prepare: () => async (api) => {
      const res = await api.admin.listDevices({}, api.call);
      api.print(ListDevicesResponseSchema, res, () => devicesTable(res.devices));
    },
  },
  {
    name: 'assign',
    group: 'Administration',
    args: ['DEVICE', 'TENANT'],
    summary: 'assign a device (PCI address) to a tenant',
    description: 'Only contexts of TENANT (opened with --tenant TENANT) may bind DEVICE afterwards.',
    prepare: (p) => {
      const deviceId = text(p, 'DEVICE');
      const tenant = tenantName(text(p, 'TENANT'), 'TENANT');
      return async (api) => {
        const res = await api.admin.assignDevice({ deviceId, tenant }, api.call);
        api.print(AssignDeviceResponseSchema, res, () => `assigned ${res.device?.id ?? deviceId} to tenant ${res.device?.tenant ?? tenant}\n`);
      };
    },
  },
  {
    name: 'prepare',
    group: 'Administration',
    args: ['DEVICE'],
    summary: 'hand a device to vfio-pci so it can be bound (remembers its driver)',
    prepare: (p) => {
      const deviceId = text(p, 'DEVICE');
      return async (api) => {
        const res = await api.admin.prepareDevice({ deviceId }, api.call);
        api.print(PrepareDeviceResponseSchema, res, () => `${res.device?.id ?? deviceId} is on ${res.device?.driver || '?'} (${res.device?.cdev || 'no cdev'})\n`);
      };
    },
  },
  {
    name: 'release',
    group: 'Administration',
    args: ['DEVICE'],
    summary: 'give a prepared device back to its original driver (fails while bound)',
    prepare: (p) => {
      const deviceId = text(p, 'DEVICE');
      return async (api) => {
        const res = await api.admin.releaseDevice({ deviceId }, api.call);
        api.print(ReleaseDeviceResponseSchema, res, () => `${res.device?.id ?? deviceId} is back on ${res.device?.driver || 'no driver'}\n`);
      };
    },
  },
  {
    name: 'unassign',
    group: 'Administration',
    args: ['DEVICE'],
    summary: 'return a device to the free pool (fails while bound)',
    prepare: (p) => {
      const deviceId = text(p, 'DEVICE');
      return async (api) => {
        const res = await api.admin.unassignDevice({ deviceId }, api.call);
        api.print(UnassignDeviceResponseSchema, res, () => `unassigned ${res.device?.id ?? deviceId}\n`);
      };
    },
  },
  {
    name: 'contexts',
    group: 'Administration',
    args: [],
    options: { 'for-tenant': { type: 'string', value: 'NAME', help: "only this tenant's contexts" } },
    summary: 'list open contexts',
    prepare: (p) => {
      const forTenant = stringValue(p, 'for-tenant');
      const tenant = forTenant === undefined ? '' : tenantName(forTenant, '--for-tenant');
      return async (api) => {
        const res = await api.admin.listContexts({ tenant }, api.call);
        api.print(ListContextsResponseSchema, res, () => contextsTable(res.contexts));
      };
    },
  },
  {
    name: 'force-close',
    group: 'Administration',
    args: ['CTX'],
    options: { reason: { type: 'string', value: 'TEXT', help: "recorded in the audit log and the context's last event" } },
    summary: "tear any tenant's context down and print the steps",
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const reason = stringValue(p, 'reason') ?? '';
      return async (api) => {
        const res = await api.admin.forceCloseContext({ contextId, reason }, api.call);
        api.print(ForceCloseContextResponseSchema, res, () => `closed ${contextId}\n${teardownText(res.teardown)}`);
      };
    },
  },
];
