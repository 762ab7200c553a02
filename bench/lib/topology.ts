/**
 * A VM's device topology as data: 26 operations on one context with four
 * devices behind one IOMMU. The same description runs as 26 separate RPCs
 * and, where the daemon has it, as open + one ApplyTopology + list + close,
 * so the two timings compare the same graph.
 */
import type * as grpc from '@grpc/grpc-js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import type { TypedClient } from '../../src/rpc/client.js';
import type { MethodsOf } from '../../src/rpc/handlers.js';

export type BrokerClient = TypedClient<MethodsOf<typeof BrokerService>>;

/** struct iommu_hwpt_selftest { iotlb = 0xbadbeef, pagetable_type = 0 } (the sim's nested HWPT data). */
export const SELFTEST_HWPT_DATA_TYPE = 0xdead;
export const SELFTEST_HWPT_DATA = new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0]);

/** Steps name the objects they create (`as`) and refer to earlier ones by that name. */
export type TopologyStep =
  | { op: 'open'; label: string }
  | { op: 'bind'; deviceId: string; as: string }
  | { op: 'allocIoas'; as: string }
  | { op: 'attach'; device: string; target: string }
  | { op: 'allocHwpt'; kind: 'NEST_PARENT' | 'NESTED'; device: string; parent: string; as: string }
  | { op: 'allocViommu'; device: string; nestParent: string; as: string }
  | { op: 'allocVdevice'; viommu: string; device: string; virtId: bigint; as: string }
  | { op: 'list' }
  | { op: 'close' };

export const TOPOLOGY_DEVICES = 4;

/**
 * open, 4× bind, IOAS, 4× attach to the IOAS, nest parent, vIOMMU,
 * 4× vDEVICE, 4× nested HWPT, 4× attach to the nested HWPT, list, close: 26.
 */
export function vmTopology(deviceIds: readonly string[], label = 'bench-vm'): TopologyStep[] {
  if (deviceIds.length !== TOPOLOGY_DEVICES) throw new Error(`vmTopology needs ${TOPOLOGY_DEVICES} devices`);
  const dev = (i: number) => `dev${i}`;
  const steps: TopologyStep[] = [{ op: 'open', label }];
  deviceIds.forEach((deviceId, i) => steps.push({ op: 'bind', deviceId, as: dev(i) }));
  steps.push({ op: 'allocIoas', as: 'ioas' });
  deviceIds.forEach((_, i) => steps.push({ op: 'attach', device: dev(i), target: 'ioas' }));
  steps.push({ op: 'allocHwpt', kind: 'NEST_PARENT', device: dev(0), parent: 'ioas', as: 'np' });
  steps.push({ op: 'allocViommu', device: dev(0), nestParent: 'np', as: 'viommu' });
  deviceIds.forEach((_, i) => steps.push({ op: 'allocVdevice', viommu: 'viommu', device: dev(i), virtId: BigInt(0x100 + i), as: `vdev${i}` }));
  deviceIds.forEach((_, i) => steps.push({ op: 'allocHwpt', kind: 'NESTED', device: dev(i), parent: 'viommu', as: `nested${i}` }));
  deviceIds.forEach((_, i) => steps.push({ op: 'attach', device: dev(i), target: `nested${i}` }));
  steps.push({ op: 'list' }, { op: 'close' });
  return steps;
}

/** Time of one topology run, microseconds: all of it, and the graph part (every step but open, list, close). */
export interface TopologyTiming {
  totalUs: number;
  graphUs: number;
}

const isGraphStep = (s: TopologyStep) => s.op !== 'open' && s.op !== 'list' && s.op !== 'close';

/** Runs the topology as one RPC per step, in order (each step needs the previous one's handles). */
export async function runSeparate(client: BrokerClient, steps: readonly TopologyStep[], metadata: grpc.Metadata): Promise<TopologyTiming> {
  const handles = new Map<string, bigint>();
  const h = (name: string) => {
    const v = handles.get(name);
    if (v === undefined) throw new Error(`topology: ${name} used before it was created`);
    return v;
  };
  const o = { metadata };
  let contextId = '';
  const t0 = performance.now();
  let graphStart = 0;
  let graphEnd = 0;
  for (const s of steps) {
    if (isGraphStep(s) && graphStart === 0) graphStart = performance.now();
    if (!isGraphStep(s) && graphStart !== 0 && graphEnd === 0) graphEnd = performance.now();
    switch (s.op) {
      case 'open':
        contextId = (await client.openContext({ label: s.label }, o)).contextId;
        break;
      case 'bind':
        handles.set(s.as, (await client.bindDevice({ contextId, deviceId: s.deviceId }, o)).device!.handle);
        break;
      case 'allocIoas':
        handles.set(s.as, (await client.allocIoas({ contextId }, o)).ioas!.handle);
        break;
      case 'attach':
        await client.attachDevice({ contextId, device: h(s.device), target: h(s.target) }, o);
        break;
      case 'allocHwpt': {
        const nested = s.kind === 'NESTED';
        const req = {
          contextId,
          device: h(s.device),
          kind: nested ? HwptKind.NESTED : HwptKind.NEST_PARENT,
          parent: h(s.parent),
          ...(nested ? { dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA } : {}),
        };
        handles.set(s.as, (await client.allocHwpt(req, o)).hwpt!.handle);
        break;
      }
      case 'allocViommu':
        handles.set(s.as, (await client.allocViommu({ contextId, device: h(s.device), nestParent: h(s.nestParent), type: ViommuType.SELFTEST }, o)).viommu!.handle);
        break;
      case 'allocVdevice':
        handles.set(s.as, (await client.allocVdevice({ contextId, viommu: h(s.viommu), device: h(s.device), virtId: s.virtId }, o)).vdevice!.handle);
        break;
      case 'list':
        await client.listObjects({ contextId }, o);
        break;
      case 'close':
        await client.closeContext({ contextId }, o);
        break;
    }
  }
  return { totalUs: (performance.now() - t0) * 1000, graphUs: ((graphEnd || performance.now()) - graphStart) * 1000 };
}

/** ApplyTopology is in the generated service (it may still answer UNIMPLEMENTED; the bench then says so). */
export function applyTopologyAvailable(): boolean {
  return BrokerService.methods.some((m) => m.name === 'ApplyTopology');
}

/** The graph steps as an ApplyTopologyRequest's `steps` (protobuf-es init shape). */
export function applyTopologySteps(steps: readonly TopologyStep[]): unknown[] {
  const out: unknown[] = [];
  let n = 0;
  for (const s of steps) {
    switch (s.op) {
      case 'bind':
        out.push({ name: s.as, action: { case: 'bind', value: { deviceId: s.deviceId } } });
        break;
      case 'allocIoas':
        out.push({ name: s.as, action: { case: 'allocIoas', value: {} } });
        break;
      case 'attach':
        out.push({ name: `attach-${++n}`, action: { case: 'attach', value: { device: s.device, target: s.target } } });
        break;
      case 'allocHwpt': {
        const nested = s.kind === 'NESTED';
        const value = { device: s.device, kind: nested ? HwptKind.NESTED : HwptKind.NEST_PARENT, parent: s.parent, ...(nested ? { dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA } : {}) };
        out.push({ name: s.as, action: { case: 'allocHwpt', value } });
        break;
      }
      case 'allocViommu':
        out.push({ name: s.as, action: { case: 'allocViommu', value: { device: s.device, nestParent: s.nestParent, type: ViommuType.SELFTEST } } });
        break;
      case 'allocVdevice':
        out.push({ name: s.as, action: { case: 'allocVdevice', value: { viommu: s.viommu, device: s.device, virtId: s.virtId } } });
        break;
      default:
        break;
    }
  }
  return out;
}

/**
 * The same VM with the graph in one ApplyTopology RPC: open, ApplyTopology,
 * list, close (4 RPCs instead of 26).
 */
export async function runApplyTopology(client: BrokerClient, steps: readonly TopologyStep[], metadata: grpc.Metadata): Promise<TopologyTiming> {
  const apply = (client as unknown as Record<string, unknown>)['applyTopology'];
  if (typeof apply !== 'function') throw new Error('not available yet: ApplyTopology is not in the API');
  const open = steps.find((s) => s.op === 'open');
  const o = { metadata };
  const t0 = performance.now();
  const { contextId } = await client.openContext({ label: open?.op === 'open' ? open.label : 'bench-vm' }, o);
  const g0 = performance.now();
  let res: { results: unknown[] };
  try {
    res = await (apply as (r: unknown, o: unknown) => Promise<{ results: unknown[] }>)({ contextId, steps: applyTopologySteps(steps) }, o);
  } catch (err) {
    await client.closeContext({ contextId }, o).catch(() => undefined);
    throw err;
  }
  const graphUs = (performance.now() - g0) * 1000;
  const expected = steps.filter(isGraphStep).length;
  if (res.results.length !== expected) throw new Error(`ApplyTopology returned ${res.results.length} results for ${expected} steps`);
  await client.listObjects({ contextId }, o);
  await client.closeContext({ contextId }, o);
  return { totalUs: (performance.now() - t0) * 1000, graphUs };
}
