/**
 * In-process measurements (no gRPC), each in a fresh child process:
 *   ownwork   the Broker class's own cost per operation over the bare sim
 *   memory    heap bytes per live object, broker + sim
 *   memsim    the same objects made on the sim alone (to split the figure)
 *   teardown  CloseContext through the Broker class, by object count
 */
import pino from 'pino';
import { Broker, type Caller } from '../src/broker/broker.js';
import { asTenant, type Handle } from '../src/broker/ids.js';
import { Inventory } from '../src/broker/inventory.js';
import { DEFAULT_QUOTA, Quotas } from '../src/broker/quotas.js';
import { instrumentKernel } from '../src/kernel/instrumented.js';
import { createSimKernel, type SimKernel } from '../src/kernel/sim/index.js';
import type { KernelBackend } from '../src/kernel/types.js';
import { createLogger } from '../src/obs/log.js';
import { BrokerMetrics } from '../src/obs/metrics.js';
import { VERSION } from '../src/version.js';
import { serveParent } from './lib/child.js';
import { median } from './lib/stats.js';

const TENANT = asTenant('bench');
/** A tenant caller (not admin), so the request-rate bucket is paid like in production. */
const CALLER: Caller = { tenant: TENANT, admin: false, peer: 'bench' };
const UNLIMITED = { ...DEFAULT_QUOTA, contexts: 1e9, objects: 1e9, requestsPerSecond: 1e9, burst: 1e9 };

async function makeBroker(sim: SimKernel, instrumented: boolean, logLevel: string): Promise<Broker> {
  const metrics = new BrokerMetrics(VERSION);
  const kernel: KernelBackend = instrumented ? instrumentKernel(sim, metrics.kernelCall) : sim;
  const broker = new Broker({
    kernel,
    log: createLogger(logLevel, pino.destination({ dest: '/dev/null', sync: false })),
    capabilities: await sim.probe(),
    inventory: new Inventory(await sim.listPciFunctions()),
    clientGoneGraceMs: 10_000,
    ...(instrumented ? { observer: metrics.observer } : {}),
    quotas: new Quotas(UNLIMITED),
  });
  if (instrumented) metrics.attachBroker(broker);
  return broker;
}

type Loop = (iterations: number) => Promise<void>;

/** ns per kernel-level op (an alloc or a destroy) for each variant, median over interleaved rounds. */
async function ownWork(args: { iterations: number; rounds: number; logLevel: string }) {
  const variants: Record<string, Loop> = {};
  {
    const sim = createSimKernel();
    const fd = await sim.openIommufd();
    variants['sim'] = async (n) => {
      for (let i = 0; i < n; i++) await sim.destroy(fd, await sim.ioasAlloc(fd));
    };
  }
  {
    const sim = createSimKernel();
    const k = instrumentKernel(sim, new BrokerMetrics(VERSION).kernelCall);
    const fd = await sim.openIommufd();
    variants['sim+instrumentation'] = async (n) => {
      for (let i = 0; i < n; i++) await k.destroy(fd, await k.ioasAlloc(fd));
    };
  }
  for (const [name, instrumented] of [['broker (no metrics)', false], ['broker (as the daemon runs it)', true]] as const) {
    const broker = await makeBroker(createSimKernel(), instrumented, args.logLevel);
    const ctx = await broker.openContext(CALLER, 'ownwork', 0);
    variants[name] = async (n) => {
      for (let i = 0; i < n; i++) {
        const view = await broker.allocIoas(CALLER, ctx);
        await broker.destroyObject(CALLER, ctx, view.handle as Handle);
      }
    };
  }
  const names = Object.keys(variants);
  for (const name of names) await variants[name]!(Math.min(20_000, args.iterations)); // warm-up, JIT
  const perOp: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < args.rounds; r++) {
    const order = r % 2 ? [...names].reverse() : names;
    for (const name of order) {
      const t = process.hrtime.bigint();
      await variants[name]!(args.iterations);
      perOp[name]!.push(Number(process.hrtime.bigint() - t) / (2 * args.iterations));
    }
  }
  return { iterations: args.iterations, rounds: args.rounds, nsPerOp: Object.fromEntries(names.map((n) => [n, median(perOp[n]!)])), allRounds: perOp };
}

function heap(): number {
  global.gc?.();
  global.gc?.();
  return process.memoryUsage().heapUsed;
}

async function memory(args: { contexts: number; perContext: number; simOnly: boolean; logLevel: string }) {
  if (!global.gc) throw new Error('run with --expose-gc');
  const sim = createSimKernel();
  const broker = args.simOnly ? undefined : await makeBroker(sim, true, args.logLevel);
  const rss0 = process.memoryUsage().rss;
  const h0 = heap();
  const contexts: unknown[] = [];
  for (let c = 0; c < args.contexts; c++) contexts.push(broker ? await broker.openContext(CALLER, `mem-${c}`, 0) : await sim.openIommufd());
  const hContexts = heap();
  for (const ctx of contexts) {
    for (let i = 0; i < args.perContext; i++) {
      if (broker) await broker.allocIoas(CALLER, ctx as string);
      else await sim.ioasAlloc(ctx as Parameters<SimKernel['ioasAlloc']>[0]);
    }
  }
  const h1 = heap();
  const objects = args.contexts * args.perContext;
  if (sim.liveObjectCount() !== objects) throw new Error(`expected ${objects} live objects, sim has ${sim.liveObjectCount()}`);
  return {
    contexts: args.contexts,
    objects,
    bytesPerContext: (hContexts - h0) / args.contexts,
    bytesPerObjectMarginal: (h1 - hContexts) / objects,
    bytesPerObject: (h1 - h0) / objects,
    rssDeltaBytes: process.memoryUsage().rss - rss0,
    keep: contexts.length, // keeps `contexts` alive until after the last measurement
  };
}

/** Interleaved like the RPC teardown bench (bench/rpc.ts): a full GC and an untimed small close before each timed one. */
async function teardown(args: { sizes: number[]; reps: number; logLevel: string }) {
  const sim = createSimKernel();
  const broker = await makeBroker(sim, true, args.logLevel);
  const times = new Map<number, number[]>(args.sizes.map((n) => [n, []]));
  for (let r = 0; r < args.reps; r++) {
    for (const n of r % 2 ? [...args.sizes].reverse() : args.sizes) {
      const ctx = await broker.openContext(CALLER, `td-${n}`, 0);
      for (let i = 0; i < n; i++) await broker.allocIoas(CALLER, ctx);
      const warm = await broker.openContext(CALLER, 'td-warm', 0);
      for (let i = 0; i < 100; i++) await broker.allocIoas(CALLER, warm);
      global.gc?.();
      await broker.closeContext(CALLER, warm);
      const t = performance.now();
      await broker.closeContext(CALLER, ctx);
      times.get(n)!.push((performance.now() - t) * 1000);
      if (sim.liveObjectCount() !== 0) throw new Error('teardown left kernel objects');
    }
  }
  return args.sizes.map((n) => {
    const closeUs = median(times.get(n)!);
    return { objects: n, reps: args.reps, closeUs, perObjectUs: closeUs / n };
  });
}

serveParent({
  ownwork: (a) => ownWork(a as Parameters<typeof ownWork>[0]),
  memory: (a) => memory(a as Parameters<typeof memory>[0]),
  teardown: (a) => teardown(a as Parameters<typeof teardown>[0]),
  stop: () => setTimeout(() => process.exit(0), 20).unref(),
});
