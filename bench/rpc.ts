/**
 * RPC benches against servers in child processes: the echo ceiling, single
 * operations, the 26-operation topology and teardown scaling.
 */
import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BrokerService } from '../src/gen/vfio_broker/v1/broker_pb.js';
import { connect, createClient } from '../src/rpc/client.js';
import { Child } from './lib/child.js';
import { echoCall } from './lib/echo.js';
import { closedLoop, type LoadResult, type ServerUsage } from './lib/load.js';
import { benchInventory } from './lib/setup.js';
import { distribution, median, type Distribution } from './lib/stats.js';
import { applyTopologyAvailable, runApplyTopology, runSeparate, TOPOLOGY_DEVICES, vmTopology, type BrokerClient } from './lib/topology.js';

export const CONTEXTS = 64;
/** Devices 0..63 serve Bind+Unbind (one per context); topologies use the ones after. */
export const TOPOLOGY_FIRST_DEVICE = CONTEXTS;

export interface ServerHandle {
  child: Child;
  channel: grpc.Client;
  usage: () => Promise<ServerUsage>;
}

export interface BrokerHandle extends ServerHandle {
  client: BrokerClient;
  deviceIds: string[];
  contexts: string[];
}

export interface Servers {
  dir: string;
  echo: ServerHandle;
  broker: BrokerHandle;
  /** The daemon with its audit log on (fdatasync), for one extra row. */
  audited: BrokerHandle | undefined;
  /** The daemon with its restart journal on (fdatasync), as the systemd unit runs it. */
  journaled: BrokerHandle | undefined;
  /** The daemon with BindDevice and UnbindDevice answered from a cache: the RPC layer alone. */
  cached: BrokerHandle | undefined;
  /** The daemon from another build (BENCH_ALT_DIST), measured in the same rounds. */
  alt: BrokerHandle | undefined;
  stop(): Promise<void>;
}

export interface ServerOptions {
  devices: number;
  logLevel: string;
  audit: boolean;
  /** Also start a daemon with the restart journal on. */
  journal: boolean;
  /** Also start a daemon whose BindDevice and UnbindDevice answer from a cache. */
  cached?: boolean;
  /** Extra node flags for the daemon children, e.g. --cpu-prof. */
  execArgv: string[];
  /** A second build's bench-dist/bench directory, to compare a candidate change side by side. */
  altDist?: string | undefined;
}

interface BrokerFiles {
  auditPath: string;
  journalPath?: string;
  cachedBindUnbind?: boolean;
}

async function startBroker(dir: string, name: string, o: ServerOptions, files: BrokerFiles, distDir?: string): Promise<BrokerHandle> {
  const socket = path.join(dir, `${name}.sock`);
  const options = { devices: o.devices, logLevel: o.logLevel, ...files };
  const child = await Child.start('server', ['broker', socket, JSON.stringify(options)], name, o.execArgv, distDir);
  const channel = connect(`unix:${socket}`);
  const client = createClient(BrokerService, channel);
  const contexts: string[] = [];
  for (let i = 0; i < CONTEXTS; i++) contexts.push((await client.openContext({ label: `bench-${i}` })).contextId);
  // A BENCH_ALT_DIST build from before 'usage' existed answers only 'cpu'.
  const usage = () => child.request<ServerUsage>('usage').catch(async () => ({ cpuUs: await child.request<number>('cpu') }));
  return { child, channel, client, usage, deviceIds: benchInventory(o.devices).map((d) => d.bdf), contexts };
}

export async function startServers(o: ServerOptions): Promise<Servers> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-bench-'));
  const echoSocket = path.join(dir, 'echo.sock');
  const echoChild = await Child.start('server', ['echo', echoSocket], 'echo-server', o.execArgv);
  const echo: ServerHandle = { child: echoChild, channel: connect(`unix:${echoSocket}`), usage: () => echoChild.request<ServerUsage>('usage') };
  const broker = await startBroker(dir, 'broker-server', o, { auditPath: '' });
  const audited = o.audit ? await startBroker(dir, 'broker-audit-server', o, { auditPath: path.join(dir, 'audit.log') }) : undefined;
  const journaled = o.journal ? await startBroker(dir, 'broker-journal-server', o, { auditPath: '', journalPath: path.join(dir, 'journal') }) : undefined;
  const cached = o.cached ? await startBroker(dir, 'broker-cached-server', o, { auditPath: '', cachedBindUnbind: true }) : undefined;
  const alt = o.altDist ? await startBroker(dir, 'broker-alt-server', o, { auditPath: '' }, o.altDist) : undefined;
  return {
    dir,
    echo,
    broker,
    audited,
    journaled,
    cached,
    alt,
    async stop() {
      for (const s of [echo, broker, audited, journaled, cached, alt]) {
        if (!s) continue;
        s.channel.close();
        await s.child.stop();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Which context worker `w` uses on its k-th iteration: its own at 64 in flight, rotating over all 64 at 1. */
function contextIndex(w: number, k: number, concurrency: number): number {
  return (w + k * concurrency) % CONTEXTS;
}

export type Workload =
  | 'echo'
  | 'allocDestroy'
  | 'bindUnbind'
  | 'allocDestroyAudited'
  | 'allocDestroyJournaled'
  | 'bindUnbindJournaled'
  | 'bindUnbindCached'
  | 'allocDestroyAlt'
  | 'bindUnbindAlt';

/** Extra rows measured at 64 in flight only. */
export const ONLY_AT_64: readonly Workload[] = ['allocDestroyAudited', 'allocDestroyJournaled', 'bindUnbindJournaled', 'bindUnbindCached'];

function daemonFor(s: Servers, which: Exclude<Workload, 'echo'>): BrokerHandle | undefined {
  if (which === 'allocDestroyAudited') return s.audited;
  if (which.endsWith('Journaled')) return s.journaled;
  if (which === 'bindUnbindCached') return s.cached;
  return which.endsWith('Alt') ? s.alt : s.broker;
}

export function runWorkload(s: Servers, which: Workload, concurrency: number, rpcs: number): Promise<LoadResult> {
  if (which === 'echo') {
    const payload = randomBytes(32);
    return closedLoop(concurrency, rpcs, 1, async (_w, _k, rec) => void (await rec.time(() => echoCall(s.echo.channel, payload))), s.echo.usage);
  }
  const b = daemonFor(s, which);
  if (!b) throw new Error(`no daemon for ${which}`);
  if (which.startsWith('bindUnbind')) {
    return closedLoop(concurrency, rpcs, 2, async (w, k, rec) => {
      const i = contextIndex(w, k, concurrency);
      const contextId = b.contexts[i]!;
      const device = (await rec.time(() => b.client.bindDevice({ contextId, deviceId: b.deviceIds[i]! }))).device!.handle;
      await rec.time(() => b.client.unbindDevice({ contextId, device }));
    }, b.usage);
  }
  return closedLoop(concurrency, rpcs, 2, async (w, k, rec) => {
    const contextId = b.contexts[contextIndex(w, k, concurrency)]!;
    const handle = (await rec.time(() => b.client.allocIoas({ contextId }))).ioas!.handle;
    await rec.time(() => b.client.destroyObject({ contextId, handle }));
  }, b.usage);
}

export type TopologyMode = 'separate' | 'apply';

export interface TopologyResult {
  mode: TopologyMode;
  operations: number;
  /** Topologies run at once (each on its own devices). */
  parallel: number;
  count: number;
  /** End-to-end time of one topology (open … close), microseconds. */
  totalUs: Distribution;
  /** The graph part only (23 RPCs, or the one ApplyTopology), microseconds. */
  graphUs: Distribution;
  topologiesPerSec: number;
}

interface TopologySamples {
  total: number[];
  graph: number[];
  wallMs: number;
}

/** Runs `count` VM topologies, `parallel` at once, as separate RPCs or through ApplyTopology. */
async function topologyBatch(s: Servers, mode: TopologyMode, parallel: number, count: number): Promise<TopologySamples> {
  const b = s.broker;
  const out: TopologySamples = { total: [], graph: [], wallMs: 0 };
  let claimed = 0;
  const md = new grpc.Metadata();
  const run = mode === 'separate' ? runSeparate : runApplyTopology;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: parallel }, async (_, slot) => {
      const first = TOPOLOGY_FIRST_DEVICE + slot * TOPOLOGY_DEVICES;
      const plan = vmTopology(b.deviceIds.slice(first, first + TOPOLOGY_DEVICES));
      while (claimed < count) {
        claimed++;
        const t = await run(b.client, plan, md);
        out.total.push(t.totalUs);
        out.graph.push(t.graphUs);
      }
    }),
  );
  out.wallMs = performance.now() - t0;
  return out;
}

export interface TopologyComparison {
  byMode: Partial<Record<TopologyMode, TopologyResult>>;
  /** Per-round p50 ratios separate/apply (graph part and end to end), when ApplyTopology answered. */
  speedupGraph?: { median: number; range: [number, number] };
  speedupTotal?: { median: number; range: [number, number] };
}

/** Interleaved rounds of each mode at the same parallelism; distributions pool all rounds. */
export async function compareTopologies(s: Servers, modes: readonly TopologyMode[], parallel: number, count: number, rounds: number): Promise<TopologyComparison> {
  const pooled: Partial<Record<TopologyMode, TopologySamples>> = {};
  const perRound: Partial<Record<TopologyMode, { graph: number; total: number }[]>> = {};
  const per = Math.max(1, Math.ceil(count / rounds));
  for (let r = 0; r < rounds; r++) {
    for (const mode of r % 2 ? [...modes].reverse() : modes) {
      const b = await topologyBatch(s, mode, parallel, per);
      const p = (pooled[mode] ??= { total: [], graph: [], wallMs: 0 });
      p.total.push(...b.total);
      p.graph.push(...b.graph);
      p.wallMs += b.wallMs;
      (perRound[mode] ??= []).push({ graph: median(b.graph), total: median(b.total) });
    }
  }
  const out: TopologyComparison = { byMode: {} };
  for (const mode of modes) {
    const p = pooled[mode]!;
    out.byMode[mode] = {
      mode,
      operations: mode === 'separate' ? 26 : 4,
      parallel,
      count: p.total.length,
      totalUs: distribution(Float64Array.from(p.total)),
      graphUs: distribution(Float64Array.from(p.graph)),
      topologiesPerSec: p.total.length / (p.wallMs / 1000),
    };
  }
  const sep = perRound.separate;
  const app = perRound.apply;
  if (sep && app) {
    const g = sep.map((x, i) => x.graph / app[i]!.graph);
    const t = sep.map((x, i) => x.total / app[i]!.total);
    out.speedupGraph = { median: median(g), range: [Math.min(...g), Math.max(...g)] };
    out.speedupTotal = { median: median(t), range: [Math.min(...t), Math.max(...t)] };
  }
  return out;
}

/** Whether ApplyTopology answers on this daemon; the reason when it does not. */
export async function probeApplyTopology(s: Servers): Promise<string | undefined> {
  if (!applyTopologyAvailable()) return 'not available yet: ApplyTopology is not in the API';
  try {
    await runApplyTopology(s.broker.client, vmTopology(s.broker.deviceIds.slice(TOPOLOGY_FIRST_DEVICE, TOPOLOGY_FIRST_DEVICE + TOPOLOGY_DEVICES)), new grpc.Metadata());
    return undefined;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return `not available yet: ${e.code === grpc.status.UNIMPLEMENTED ? 'the daemon answers UNIMPLEMENTED' : (e.message ?? String(err)).slice(0, 200)}`;
  }
}

export interface TeardownPoint {
  objects: number;
  reps: number;
  /** Median CloseContext round trip, microseconds. */
  closeUs: number;
  perObjectUs: number;
  allCloseUs: number[];
}

/**
 * Fills one context with `objects` IOASes (64 calls in flight), then times
 * CloseContext. Sizes are interleaved within each repetition (order
 * alternating) so a slow patch of the machine hits every size alike. Before
 * each timed close both processes collect their garbage: filling 10k objects
 * leaves 10k RPCs' worth of it, whose collection would otherwise land on
 * whichever call came next (a long-lived context's creation garbage is long
 * gone). A full GC also ages code V8 may then flush, so an untimed close of a
 * small context runs the teardown path again first. Garbage made by the
 * timed close itself is collected, and counted, as it happens.
 */
export async function teardownScaling(s: Servers, sizes: readonly number[], reps: number): Promise<TeardownPoint[]> {
  const b = s.broker;
  const times = new Map<number, number[]>(sizes.map((n) => [n, []]));
  for (let r = 0; r < reps; r++) {
    for (const objects of r % 2 ? [...sizes].reverse() : sizes) {
      const fill = async (n: number) => {
        const { contextId } = await b.client.openContext({ label: `teardown-${n}` });
        let made = 0;
        await Promise.all(
          Array.from({ length: Math.min(64, n) }, async () => {
            while (made < n) {
              made++;
              await b.client.allocIoas({ contextId });
            }
          }),
        );
        return contextId;
      };
      const contextId = await fill(objects);
      const warm = await fill(100);
      await b.child.request('gc');
      global.gc?.();
      await b.client.closeContext({ contextId: warm });
      const t = performance.now();
      const res = await b.client.closeContext({ contextId });
      times.get(objects)!.push((performance.now() - t) * 1000);
      const destroyed = res.teardown?.steps.length ?? 0;
      if (destroyed !== objects + 1) throw new Error(`teardown of ${objects} objects reported ${destroyed} steps`);
      const sim = await b.child.request<{ liveObjects: number }>('sim');
      if (sim.liveObjects !== 0) throw new Error(`after closing: ${sim.liveObjects} kernel objects left`);
    }
  }
  return sizes.map((objects) => {
    const all = times.get(objects)!;
    const closeUs = median(all);
    return { objects, reps: all.length, closeUs, perObjectUs: closeUs / objects, allCloseUs: all };
  });
}
