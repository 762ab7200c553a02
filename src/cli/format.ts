/**
 * Human output: aligned tables, key-value blocks, one-line object
 * descriptions, teardown reports and watch events. The machine interface is
 * --json; nothing here is meant to be parsed beyond the `handle N` token.
 */
import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { DeviceState, type ContextInfo, type Device, type GetStatusResponse } from '../gen/vfio_broker/v1/admin_pb.js';
import type { GetHwInfoResponse, WatchContextResponse } from '../gen/vfio_broker/v1/broker_pb.js';
import { ObjectState, ObjectType, TeardownAction, TeardownReason, type ObjectInfo, type TeardownReport } from '../gen/vfio_broker/v1/objects_pb.js';
import { HW_INFO_TYPE } from '../kernel/types.js';
import { errorInfoOf } from '../rpc/status.js';

/** The name of a protobuf-es TS enum value (`IOAS`), or its number when unknown. */
export function enumName(e: Record<number, string>, value: number): string {
  return e[value] ?? String(value);
}

/** Columns separated by two spaces, padded to the widest cell; no trailing blanks. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function keyValues(pairs: readonly (readonly [string, string])[]): string {
  const width = Math.max(...pairs.map(([k]) => k.length + 1));
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width)}  ${v}`.trimEnd()).join('\n') + '\n';
}

export function hex(n: number | bigint, digits = 0): string {
  return `0x${n.toString(16).padStart(digits, '0')}`;
}

function handles(list: readonly bigint[]): string {
  return list.length === 0 ? '-' : list.join(',');
}

function time(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toISOString() : '-';
}

/** Type-specific facts about an object, for descriptions and the DETAIL column. */
export function objectDetail(o: ObjectInfo): string[] {
  const detail: string[] = [];
  switch (o.type) {
    case ObjectType.DEVICE:
      if (o.deviceId) detail.push(o.deviceId);
      detail.push(o.attachedHwpt !== 0n ? `attached to ${o.attachedHwpt}` : 'detached');
      break;
    case ObjectType.HWPT_PAGING:
      if (o.automatic) detail.push('automatic');
      if (o.nestParent) detail.push('nest parent');
      break;
    case ObjectType.VDEVICE:
      detail.push(`virt id ${hex(o.virtId)}`);
      break;
    default:
      break;
  }
  return detail;
}

/** `IOAS handle 2 (kernel id 1)`: the first `handle N` is the object's handle. */
export function describeObject(o: ObjectInfo | undefined): string {
  if (!o) return 'no object in the response';
  const facts = [`kernel id ${o.kernelId}`, ...objectDetail(o)];
  if (o.state === ObjectState.TOMBSTONED) facts.push('tombstoned');
  return `${enumName(ObjectType, o.type)} handle ${o.handle} (${facts.join(', ')})`;
}

export function objectsTable(objects: readonly ObjectInfo[]): string {
  if (objects.length === 0) return 'no objects\n';
  return table(
    ['HANDLE', 'TYPE', 'STATE', 'KERNEL-ID', 'HOLDS', 'HELD-BY', 'DETAIL'],
    objects.map((o) => [
      String(o.handle),
      enumName(ObjectType, o.type),
      enumName(ObjectState, o.state),
      o.state === ObjectState.TOMBSTONED ? '-' : String(o.kernelId),
      handles(o.holds),
      handles(o.heldBy),
      objectDetail(o).join(', '),
    ]),
  );
}

export function devicesTable(devices: readonly Device[]): string {
  if (devices.length === 0) return 'no devices\n';
  return table(
    ['ID', 'VENDOR:DEVICE', 'GROUP', 'CDEV', 'DRIVER', 'STATE', 'TENANT', 'CONTEXT'],
    devices.map((d) => [
      d.id,
      `${d.vendorId.toString(16).padStart(4, '0')}:${d.pciDeviceId.toString(16).padStart(4, '0')}`,
      String(d.iommuGroup),
      d.cdev || '-',
      d.driver || '-',
      enumName(DeviceState, d.state),
      d.tenant || '-',
      d.contextId || '-',
    ]),
  );
}

export function deviceLine(d: Device | undefined): string {
  if (!d) return 'no device in the response';
  const owner = d.tenant ? `, tenant ${d.tenant}` : '';
  return `${d.id} (state ${enumName(DeviceState, d.state)}${owner})`;
}

export function contextsTable(contexts: readonly ContextInfo[]): string {
  if (contexts.length === 0) return 'no contexts\n';
  return table(
    ['CONTEXT', 'TENANT', 'LABEL', 'OPENED', 'OBJECTS', 'DEVICES', 'WATCHERS', 'LEASE', 'QUEUED'],
    contexts.map((c) => [
      c.contextId,
      c.tenant,
      c.label || '-',
      time(c.openedAt),
      String(c.objectCount),
      c.deviceIds.length === 0 ? '-' : c.deviceIds.join(','),
      String(c.watchers),
      c.leaseSeconds === 0 ? '-' : `${c.leaseSeconds}s`,
      String(c.queued),
    ]),
  );
}

export function statusText(s: GetStatusResponse): string {
  return keyValues([
    ['version', s.version],
    ['backend', s.backend],
    ['kernel profile', s.kernelProfile],
    ['kernel release', s.kernelRelease],
    ['started', time(s.startedAt)],
    ['devices', String(s.devices)],
    ['contexts', String(s.contexts)],
    ['objects', String(s.objects)],
    ['capabilities', s.capabilities.join(' ') || '-'],
  ]);
}

export function hwInfoText(h: GetHwInfoResponse): string {
  const name = Object.entries(HW_INFO_TYPE).find(([, code]) => code === h.hwInfoType)?.[0];
  return keyValues([
    ['type', `${hex(h.hwInfoType)}${name ? ` (${name})` : ''}`],
    ['capabilities', hex(h.capabilities)],
    ['max pasid log2', String(h.maxPasidLog2)],
    ['data', h.data.length === 0 ? '-' : `${Buffer.from(h.data).toString('hex')} (${h.data.length} bytes)`],
  ]);
}

function teardownSummary(r: TeardownReport): string {
  return (
    `teardown (${enumName(TeardownReason, r.reason)}): ${r.steps.length} step${r.steps.length === 1 ? '' : 's'}, ` +
    `${r.vdevicesDestroyed} vDEVICE destroyed, ${r.vdevicesFoundTombstoned} found tombstoned`
  );
}

/** The steps in the order they ran, as a numbered table under a summary line. */
export function teardownText(r: TeardownReport | undefined): string {
  if (!r) return 'teardown: no report\n';
  if (r.steps.length === 0) return `${teardownSummary(r)}\n`;
  const rows = r.steps.map((s, i) => [
    `${i + 1}.`,
    enumName(TeardownAction, s.action),
    s.type === ObjectType.UNSPECIFIED ? '-' : enumName(ObjectType, s.type),
    s.handle === 0n ? '-' : `handle ${s.handle}`,
    s.action === TeardownAction.CLOSE_IOMMUFD || s.type === ObjectType.UNSPECIFIED ? '' : `kernel id ${s.kernelId}`,
  ]);
  const body = table(['', '', '', '', ''], rows)
    .split('\n')
    .slice(1)
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');
  return `${teardownSummary(r)}\n${body}`;
}

/** One line per watch event. */
export function eventLine(ev: WatchContextResponse): string {
  const prefix = `${time(ev.time)} #${ev.sequence}`;
  const e = ev.event;
  switch (e.case) {
    case 'ready': {
      const counts = new Map<string, number>();
      for (const o of e.value.objects) counts.set(enumName(ObjectType, o.type), (counts.get(enumName(ObjectType, o.type)) ?? 0) + 1);
      const list = [...counts].map(([type, n]) => `${n} ${type}`).join(', ');
      return `${prefix} ready: ${e.value.objects.length} object${e.value.objects.length === 1 ? '' : 's'}${list ? ` (${list})` : ''}`;
    }
    case 'created':
      return `${prefix} created ${describeObject(e.value.object)}`;
    case 'destroyed':
      return `${prefix} destroyed ${enumName(ObjectType, e.value.type)} handle ${e.value.handle}`;
    case 'teardown':
      return `${prefix} ${e.value.report ? teardownSummary(e.value.report) : 'teardown'}`;
    case 'deviceRemoved':
      return `${prefix} device removed: ${e.value.deviceId} (handle ${e.value.device})`;
    case 'closed':
      return `${prefix} context closed (${enumName(TeardownReason, e.value.reason)})`;
    default:
      return `${prefix} unknown event`;
  }
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number';
}

/** `error: CODE: message [reason=... errno=... objects=...]` */
export function serviceErrorLine(err: grpc.ServiceError): string {
  const code = enumName(grpc.status, err.code);
  const message = err.details || err.message;
  const info = errorInfoOf(err);
  if (!info) return `error: ${code}: ${message}`;
  const first = ['errno', 'objects'];
  const keys = [...first.filter((k) => info.metadata[k] !== undefined), ...Object.keys(info.metadata).filter((k) => !first.includes(k)).sort()];
  const extra = [`reason=${info.reason}`, ...keys.map((k) => `${k}=${info.metadata[k]}`)];
  return `error: ${code}: ${message} [${extra.join(' ')}]`;
}

/**
 * A call that never reached a daemon: no ErrorInfo, UNAVAILABLE or
 * DEADLINE_EXCEEDED. Says which socket was tried and how to start one.
 */
export function connectionErrorLine(err: grpc.ServiceError, socketPath: string, timeoutSeconds: number | undefined): string | undefined {
  if (errorInfoOf(err)) return undefined;
  const errno = /\b(E[A-Z]{3,})\b/.exec(err.details ?? '')?.[1];
  if (err.code === grpc.status.UNAVAILABLE) {
    if (errno === 'EACCES' || errno === 'EPERM') {
      return `error: permission denied on the broker socket ${socketPath}: run as root or as a member of the socket's group`;
    }
    return (
      `error: cannot reach the broker at ${socketPath}${errno ? ` (${errno})` : ''}: is the daemon running? ` +
      `Start it with 'vfio-broker serve', or point --socket / VFIO_BROKER_SOCKET at its socket`
    );
  }
  if (err.code === grpc.status.DEADLINE_EXCEEDED) {
    return `error: DEADLINE_EXCEEDED: no answer from the broker at ${socketPath}${timeoutSeconds ? ` within ${timeoutSeconds}s` : ''} (raise --timeout, or check the daemon)`;
  }
  return undefined;
}
