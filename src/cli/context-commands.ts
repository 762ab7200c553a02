/** The BrokerService subcommands: a context's lifecycle and its iommufd objects. */
import { fromJson, toJson, type JsonValue, type MessageShape } from '@bufbuild/protobuf';
import { readFileSync } from 'node:fs';
import { ApplyTopologyRequestSchema, ApplyTopologyResponseSchema } from '../gen/vfio_broker/v1/topology_pb.js';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { AllocHwptResponseSchema, AllocIoasResponseSchema, AllocVdeviceResponseSchema, AllocViommuResponseSchema, AttachDeviceResponseSchema, BindDeviceResponseSchema, CloseContextResponseSchema, DestroyObjectResponseSchema, DetachDeviceResponseSchema, GetHwInfoResponseSchema, LeaseDeviceFdResponseSchema, ListObjectsResponseSchema, OpenContextResponseSchema, UnbindDeviceResponseSchema, WatchContextResponseSchema } from '../gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../gen/vfio_broker/v1/objects_pb.js';
import { HWPT_DATA_TYPE } from '../kernel/types.js';
import { UINT32_MAX, UINT64_MAX, UsageError, flag, parseChoice, parseHandle, parseHex, parseSeconds, parseUint, positional, stringValue } from './args.js';
import type { ClientCommand } from './client-commands.js';
import { describeObject, eventLine, hwInfoText, objectsTable, teardownText } from './format.js';

const text = positional;

const HWPT_KINDS = { paging: HwptKind.PAGING, 'nest-parent': HwptKind.NEST_PARENT, nested: HwptKind.NESTED } as const;
const VIOMMU_TYPES = { selftest: ViommuType.SELFTEST, 'arm-smmuv3': ViommuType.ARM_SMMUV3, 'tegra241-cmdqv': ViommuType.TEGRA241_CMDQV } as const;
const DATA_TYPE_NAMES: Record<string, number> = { 'vtd-s1': HWPT_DATA_TYPE.VTD_S1, 'arm-smmuv3': HWPT_DATA_TYPE.ARM_SMMUV3, 'amd-guest': HWPT_DATA_TYPE.AMD_GUEST, selftest: HWPT_DATA_TYPE.SELFTEST };

function dataType(value: string): number {
  const named = Object.hasOwn(DATA_TYPE_NAMES, value) ? DATA_TYPE_NAMES[value] : undefined;
  return named ?? Number(parseUint(value, '--data-type', UINT32_MAX));
}

const HANDLE_NOTE = 'Prints the new object as "TYPE handle N (kernel id K, ...)"; use --json to read it from a script.';

export const CONTEXT_COMMANDS: readonly ClientCommand[] = [
  {
    name: 'open',
    group: 'Contexts',
    args: [],
    options: {
      label: { type: 'string', value: 'LABEL', help: 'free-form label for operators, e.g. the VM name' },
      lease: { type: 'string', value: 'SECONDS', help: 'tear the context down after SECONDS without requests or watchers (default: no lease)' },
    },
    summary: 'open a context (an iommufd) and print its id',
    description: 'Prints only the context id, so `CTX=$(vfio-broker open --tenant NAME)` works.',
    prepare: (p) => {
      const label = stringValue(p, 'label') ?? '';
      const lease = stringValue(p, 'lease');
      const leaseSeconds = lease === undefined ? 0 : parseSeconds(lease, '--lease', { integer: true });
      return async (api) => {
        const res = await api.broker.openContext({ label, leaseSeconds }, api.call);
        api.print(OpenContextResponseSchema, res, () => `${res.contextId}\n`);
      };
    },
  },
  {
    name: 'close',
    group: 'Contexts',
    args: ['CTX'],
    summary: 'tear a context down in the legal order and print the steps',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      return async (api) => {
        const res = await api.broker.closeContext({ contextId }, api.call);
        api.print(CloseContextResponseSchema, res, () => `closed ${contextId}\n${teardownText(res.teardown)}`);
      };
    },
  },
  {
    name: 'watch',
    group: 'Contexts',
    args: ['CTX'],
    streaming: true,
    summary: "stream a context's events until it closes (or Ctrl-C)",
    description:
      'Prints one line per event (with --json, one JSON message per line). No deadline applies unless --timeout is given.\n' +
      'While a watch is open the context is held by it: when the last watch ends without `close`, the daemon tears the\n' +
      'context down after its grace period.',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      return (api) =>
        new Promise<void>((resolve, reject) => {
          const stream = api.broker.watchContext({ contextId }, api.call);
          let interrupted = false;
          const unsubscribe = api.io.onSignal(() => {
            interrupted = true;
            stream.cancel();
          });
          stream.on('data', (event: MessageShape<typeof WatchContextResponseSchema>) => {
            api.io.stdout(api.json ? `${JSON.stringify(toJson(WatchContextResponseSchema, event, { alwaysEmitImplicit: true }))}\n` : `${eventLine(event)}\n`);
          });
          stream.on('error', (err: grpc.ServiceError) => {
            unsubscribe();
            if (interrupted && err.code === grpc.status.CANCELLED) resolve();
            else reject(err);
          });
          stream.on('end', () => {
            unsubscribe();
            resolve();
          });
        });
    },
  },
  {
    name: 'bind',
    group: 'Objects',
    args: ['CTX', 'DEVICE'],
    summary: "open a device's VFIO cdev and bind it to the context",
    description: `DEVICE is the PCI address from \`vfio-broker devices\`; it must be assigned to the context's tenant. ${HANDLE_NOTE}`,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const deviceId = text(p, 'DEVICE');
      return async (api) => {
        const res = await api.broker.bindDevice({ contextId, deviceId }, api.call);
        api.print(BindDeviceResponseSchema, res, () => `${describeObject(res.device)}\n`);
      };
    },
  },
  {
    name: 'unbind',
    group: 'Objects',
    args: ['CTX', 'HANDLE'],
    summary: 'unbind a device (its vDEVICE and nested HWPTs go first) and print the steps',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'HANDLE'), 'HANDLE');
      return async (api) => {
        const res = await api.broker.unbindDevice({ contextId, device }, api.call);
        api.print(UnbindDeviceResponseSchema, res, () => teardownText(res.teardown));
      };
    },
  },
  {
    name: 'attach',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE', 'TARGET_HANDLE'],
    summary: 'attach a device to an IOAS or HWPT (again: replace)',
    description: 'Prints the HWPT now attached ("TYPE handle N (...)"): the target, or the automatic HWPT when the target is an IOAS.',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      const target = parseHandle(text(p, 'TARGET_HANDLE'), 'TARGET_HANDLE');
      return async (api) => {
        const res = await api.broker.attachDevice({ contextId, device, target }, api.call);
        api.print(AttachDeviceResponseSchema, res, () => {
          const replaced = res.replacedHwpt === 0n ? '' : `replaced HWPT ${res.replacedHwpt}\n`;
          return `attached device ${device} to ${describeObject(res.hwpt)}\n${replaced}`;
        });
      };
    },
  },
  {
    name: 'detach',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE'],
    summary: 'detach a device; it is DMA-blocked afterwards',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      return async (api) => {
        const res = await api.broker.detachDevice({ contextId, device }, api.call);
        api.print(DetachDeviceResponseSchema, res, () =>
          res.detachedHwpt === 0n
            ? `device ${device} was not attached\n`
            : `detached device ${device} from HWPT ${res.detachedHwpt}${res.automaticHwptFreed ? ' (automatic HWPT freed)' : ''}\n`,
        );
      };
    },
  },
  {
    name: 'apply',
    group: 'Objects',
    args: ['CTX', 'FILE'],
    summary: 'create a whole device graph from a topology file, all or nothing',
    description: `FILE holds ApplyTopologyRequest.steps as protobuf JSON ("-" reads stdin), e.g.
  [{"name": "ioas", "allocIoas": {}},
   {"name": "dev", "bind": {"deviceId": "0000:01:00.0"}},
   {"name": "auto", "attach": {"device": "dev", "target": "ioas"}}]
Later steps name earlier ones, or existing objects as "handle:N". If a step
fails, every earlier step is undone and the error names the step.`,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const file = text(p, 'FILE');
      return async (api) => {
        let steps;
        try {
          const raw: unknown = JSON.parse(readFileSync(file === '-' ? 0 : file, 'utf8'));
          steps = fromJson(ApplyTopologyRequestSchema, { contextId, steps: raw as JsonValue }).steps;
        } catch (err) {
          throw new UsageError(`FILE: ${file} is not a list of topology steps: ${(err as Error).message}`);
        }
        const res = await api.broker.applyTopology({ contextId, steps }, api.call);
        api.print(ApplyTopologyResponseSchema, res, () => res.results.map((r) => `${r.name.padEnd(16)} ${describeObject(r.object)}`).join('\n') + '\n');
      };
    },
  },
  {
    name: 'alloc-ioas',
    group: 'Objects',
    args: ['CTX'],
    summary: 'allocate an IO address space',
    description: HANDLE_NOTE,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      return async (api) => {
        const res = await api.broker.allocIoas({ contextId }, api.call);
        api.print(AllocIoasResponseSchema, res, () => `${describeObject(res.ioas)}\n`);
      };
    },
  },
  {
    name: 'alloc-hwpt',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE', 'PARENT_HANDLE'],
    options: {
      kind: { type: 'string', value: 'KIND', help: 'paging (default), nest-parent, or nested' },
      'data-type': { type: 'string', value: 'N', help: 'nested: IOMMU_HWPT_DATA_* as a number or vtd-s1|arm-smmuv3|amd-guest|selftest' },
      data: { type: 'string', value: 'HEX', help: "nested: the driver's stage-1 data as hex bytes" },
      'dirty-tracking': { type: 'boolean', help: 'paging and nest-parent: request dirty tracking' },
    },
    summary: 'allocate a paging, nest-parent or nested HWPT',
    description: `PARENT_HANDLE is an IOAS for paging and nest-parent, a vIOMMU or nest-parent HWPT for nested. ${HANDLE_NOTE}`,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      const parent = parseHandle(text(p, 'PARENT_HANDLE'), 'PARENT_HANDLE');
      const kind = parseChoice(stringValue(p, 'kind') ?? 'paging', '--kind', HWPT_KINDS);
      const typeText = stringValue(p, 'data-type');
      const dataText = stringValue(p, 'data');
      const dirtyTracking = flag(p, 'dirty-tracking');
      if (kind === HwptKind.NESTED) {
        if (typeText === undefined) throw new UsageError('--kind nested needs --data-type (the IOMMU driver\'s stage-1 format, e.g. selftest)');
        if (dataText === undefined) throw new UsageError('--kind nested needs --data HEX (the driver\'s stage-1 table description)');
        if (dirtyTracking) throw new UsageError('--dirty-tracking applies to paging and nest-parent HWPTs only');
      } else if (typeText !== undefined || dataText !== undefined) {
        throw new UsageError(`--data-type and --data apply to --kind nested only`);
      }
      const dataTypeValue = typeText === undefined ? 0 : dataType(typeText);
      const data = dataText === undefined ? new Uint8Array() : parseHex(dataText, '--data');
      return async (api) => {
        const res = await api.broker.allocHwpt({ contextId, device, kind, parent, dataType: dataTypeValue, data, dirtyTracking }, api.call);
        api.print(AllocHwptResponseSchema, res, () => `${describeObject(res.hwpt)}\n`);
      };
    },
  },
  {
    name: 'alloc-viommu',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE', 'NEST_PARENT_HANDLE'],
    options: { type: { type: 'string', value: 'TYPE', help: 'selftest (default), arm-smmuv3, or tegra241-cmdqv' } },
    summary: "allocate a vIOMMU on a nest-parent HWPT (the device selects the physical IOMMU)",
    description: HANDLE_NOTE,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      const nestParent = parseHandle(text(p, 'NEST_PARENT_HANDLE'), 'NEST_PARENT_HANDLE');
      const type = parseChoice(stringValue(p, 'type') ?? 'selftest', '--type', VIOMMU_TYPES);
      return async (api) => {
        const res = await api.broker.allocViommu({ contextId, device, nestParent, type }, api.call);
        api.print(AllocViommuResponseSchema, res, () => `${describeObject(res.viommu)}\n`);
      };
    },
  },
  {
    name: 'alloc-vdevice',
    group: 'Objects',
    args: ['CTX', 'VIOMMU_HANDLE', 'DEVICE_HANDLE', 'VIRT_ID'],
    summary: "give a device its guest-visible id on a vIOMMU",
    description: `VIRT_ID (vSID, vDeviceID or vRID) is decimal or 0x hex, non-zero. ${HANDLE_NOTE}`,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const viommu = parseHandle(text(p, 'VIOMMU_HANDLE'), 'VIOMMU_HANDLE');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      const virtId = parseUint(text(p, 'VIRT_ID'), 'VIRT_ID', UINT64_MAX);
      if (virtId === 0n) throw new UsageError('VIRT_ID must be non-zero');
      return async (api) => {
        const res = await api.broker.allocVdevice({ contextId, viommu, device, virtId }, api.call);
        api.print(AllocVdeviceResponseSchema, res, () => `${describeObject(res.vdevice)}\n`);
      };
    },
  },
  {
    name: 'lease-fd',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE'],
    summary: "lease a bound device's fd: print a one-time token and the fd socket",
    description: `Prints "token T", "socket PATH" and "expires TIME". The process that leased the token (same uid AND
pid, checked with SO_PEERCRED) redeems it once before it expires: connect to PATH, send T and a newline, and
receive the fd by SCM_RIGHTS (src/rpc/handoff-client.ts does this). Since this command's own process leased
it, a VMM calls LeaseDeviceFd itself; this command shows the exchange and the socket to scripts and operators.
The fd is already bound to the context's iommufd: never VFIO_DEVICE_BIND_IOMMUFD it again (EINVAL).`,
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      return async (api) => {
        const res = await api.broker.leaseDeviceFd({ contextId, device }, api.call);
        const expires = res.expiresAt ? timestampDate(res.expiresAt).toISOString() : '?';
        api.print(LeaseDeviceFdResponseSchema, res, () => `token ${res.token}\nsocket ${res.socketPath}\nexpires ${expires}\n`);
      };
    },
  },
  {
    name: 'destroy',
    group: 'Objects',
    args: ['CTX', 'HANDLE'],
    summary: 'destroy one object (devices are released with unbind)',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const handle = parseHandle(text(p, 'HANDLE'), 'HANDLE');
      return async (api) => {
        const res = await api.broker.destroyObject({ contextId, handle }, api.call);
        api.print(DestroyObjectResponseSchema, res, () => `destroyed handle ${handle}\n`);
      };
    },
  },
  {
    name: 'hw-info',
    group: 'Objects',
    args: ['CTX', 'DEVICE_HANDLE'],
    summary: 'IOMMU hardware information for a bound device',
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      const device = parseHandle(text(p, 'DEVICE_HANDLE'), 'DEVICE_HANDLE');
      return async (api) => {
        const res = await api.broker.getHwInfo({ contextId, device }, api.call);
        api.print(GetHwInfoResponseSchema, res, () => hwInfoText(res));
      };
    },
  },
  {
    name: 'objects',
    group: 'Objects',
    args: ['CTX'],
    summary: "list a context's objects and who holds whom",
    prepare: (p) => {
      const contextId = text(p, 'CTX');
      return async (api) => {
        const res = await api.broker.listObjects({ contextId }, api.call);
        api.print(ListObjectsResponseSchema, res, () => objectsTable(res.objects));
      };
    },
  },
];
