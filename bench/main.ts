/**
 * `npm run bench`: every benchmark, side by side with its baseline in the same
 * run, written to bench/results/latest.{json,md} plus a timestamped copy.
 * The knobs are in USAGE (`npm run bench -- --help`).
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CACHE, Child, ROOT } from './lib/child.js';
import type { GcPerRpc } from './lib/gc.js';
import type { LoadResult } from './lib/load.js';
import { envInt, envList, machineInfo, machineLine, median, minMax, stealTicks } from './lib/stats.js';
import { handleArgs } from './lib/usage.js';
import { evaluateTargets, markdown, type Aggregate, type InprocTeardownPoint, type Results } from './report.js';
import { compareTopologies, ONLY_AT_64, probeApplyTopology, runWorkload, startServers, teardownScaling, type Servers, type TopologyMode, type Workload } from './rpc.js';

const USAGE = `Usage: npm run bench [-- --help]

Runs every benchmark next to its baseline (8 to 15 minutes on 2 shared cores) and writes
bench/results/latest.{json,md} plus a timestamped copy. Settings come from the
environment:
  BENCH_ONLY=single,topology,teardown,memory,ownwork,ffi   run only these parts
  BENCH_CALLS=N          RPCs per measurement at 64 in flight (default 10000)
  BENCH_CALLS_C1=N       RPCs per measurement at 1 in flight (default 3000)
  BENCH_WARMUP=N         warm-up RPCs per workload (default 3000)
  BENCH_ROUNDS=N         interleaved rounds; each broker round runs between two echo rounds (default 5)
  BENCH_WORKLOADS=allocDestroy,bindUnbind,allocDestroyAudited,allocDestroyJournaled,bindUnbindJournaled,bindUnbindCached
  BENCH_CONCURRENCY=1,64 in-flight levels (narrow a profiling run)
  BENCH_TOPOLOGIES=N     VM topologies per mode (default 200)
  BENCH_TEARDOWN_SIZES=10,100,1000,10000   BENCH_TEARDOWN_REPS=N (default 9)
  BENCH_OWNWORK_ITERS=N  BENCH_MEM_CONTEXTS=N  BENCH_MEM_PER_CONTEXT=N  BENCH_FFI_CALLS=N
  BENCH_AUDIT=0          skip the audit-log row       BENCH_JOURNAL=0   skip the journal rows
  BENCH_CACHED=0         skip the row with BindDevice/UnbindDevice answered from a cache (the RPC layer alone)
  BENCH_LOG_LEVEL=LEVEL  daemon log level (default info)
  BENCH_PROFILE=1        CPU profiles of the servers into .cache/bench/prof (read with npm run bench:prof-top -- FILE)
  BENCH_SERVER_NODE_FLAGS="FLAGS"   node flags for the server processes, e.g. --perf-basic-prof
  BENCH_ALT_DIST=DIR     a second build's compiled bench/ directory, measured in the same rounds
`;
handleArgs(USAGE);

const CONCURRENCIES = (envList('BENCH_CONCURRENCY') ?? ['1', '64']).map(Number) as (1 | 64)[];
const only = envList('BENCH_ONLY');
const wants = (s: string) => !only || only.includes(s);
const logLevel = process.env['BENCH_LOG_LEVEL'] ?? 'info';

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** A broker round and the echo rounds run right before and right after it. */
interface Bracketed {
  result: LoadResult;
  echo: [LoadResult, LoadResult];
}

function medianGc(rounds: GcPerRpc[]): GcPerRpc {
  return {
    youngMsPer1k: median(rounds.map((g) => g.youngMsPer1k)),
    fullPer10k: median(rounds.map((g) => g.fullPer10k)),
    fullMsPer1k: median(rounds.map((g) => g.fullMsPer1k)),
  };
}

function aggregate(rounds: LoadResult[], bracketed?: Bracketed[]): Aggregate {
  const m = (f: (r: LoadResult) => number) => median(rounds.map(f));
  const agg: Aggregate = {
    concurrency: rounds[0]!.concurrency,
    rounds,
    rpcPerSec: m((r) => r.rpcPerSec),
    p50Us: m((r) => r.latencyUs.p50),
    p99Us: m((r) => r.latencyUs.p99),
    maxUs: m((r) => r.latencyUs.max),
    serverCpuUsPerRpc: m((r) => r.serverCpuUsPerRpc ?? NaN),
    clientCpuUsPerRpc: m((r) => r.clientCpuUsPerRpc),
    clientGc: medianGc(rounds.map((r) => r.clientGc)),
  };
  const serverGc = rounds.map((r) => r.serverGc).filter((g) => g !== undefined);
  if (serverGc.length === rounds.length) agg.serverGc = medianGc(serverGc);
  if (bracketed) {
    // Each broker round against the mean of the echo rounds on either side of it (the machine's
    // load drifts; a neighbour on each side cancels a linear drift), then the median over rounds.
    const per = (f: (r: LoadResult) => number) => bracketed.map(({ result, echo: [a, b] }) => f(result) / ((f(a) + f(b)) / 2));
    const thr = per((r) => r.rpcPerSec);
    agg.vsEcho = {
      throughput: median(thr),
      throughputRange: minMax(thr),
      p50: median(per((r) => r.latencyUs.p50)),
      p99: median(per((r) => r.latencyUs.p99)),
      p99Range: minMax(per((r) => r.latencyUs.p99)),
      max: median(per((r) => r.latencyUs.max)),
      serverCpu: median(per((r) => r.serverCpuUsPerRpc ?? NaN)),
      clientCpu: median(per((r) => r.clientCpuUsPerRpc)),
    };
  }
  return agg;
}

async function singleOps(s: Servers, results: Results): Promise<void> {
  const rounds = envInt('BENCH_ROUNDS', 5);
  const callsC1 = envInt('BENCH_CALLS_C1', 3000);
  const callsC64 = envInt('BENCH_CALLS', 10000);
  const calls = (c: number) => (c === 1 ? callsC1 : callsC64);
  const warm = envInt('BENCH_WARMUP', 3000);
  const all: Workload[] = [
    'allocDestroy',
    'bindUnbind',
    ...(s.audited ? (['allocDestroyAudited'] as const) : []),
    ...(s.journaled ? (['allocDestroyJournaled', 'bindUnbindJournaled'] as const) : []),
    ...(s.cached ? (['bindUnbindCached'] as const) : []),
    ...(s.alt ? (['allocDestroyAlt', 'bindUnbindAlt'] as const) : []),
  ];
  const picked = envList('BENCH_WORKLOADS');
  const workloads = all.filter((w) => !picked || picked.includes(w));
  log(`warm-up: ${warm} RPCs per workload`);
  for (const w of ['echo', ...workloads] as Workload[]) await runWorkload(s, w, 64, warm);
  const echoRuns: Record<number, LoadResult[]> = {};
  const raw: Record<string, Record<number, Bracketed[]>> = {};
  const run = async (w: Workload, c: number, r: number) => {
    const res = await runWorkload(s, w, c, calls(c));
    log(`round ${r + 1}/${rounds} ${w} @${c}: ${Math.round(res.rpcPerSec)} RPC/s, p99 ${Math.round(res.latencyUs.p99)} µs, CPU µs/RPC server ${Math.round(res.serverCpuUsPerRpc ?? NaN)} client ${Math.round(res.clientCpuUsPerRpc)}, server GC: young ${res.serverGc ? res.serverGc.youngMsPer1k.toFixed(1) : '?'} ms/1k RPC, full ${res.serverGc ? res.serverGc.fullPer10k.toFixed(1) : '?'}/10k RPC`);
    return res;
  };
  for (let r = 0; r < rounds; r++) {
    for (const c of CONCURRENCIES) {
      // echo, A, echo, B, echo, …: every broker round has an echo round on each side. The order
      // alternates so no workload always follows the same neighbour.
      const order = (r % 2 ? [...workloads].reverse() : workloads).filter((w) => !ONLY_AT_64.includes(w) || c === 64);
      let before = await run('echo', c, r);
      (echoRuns[c] ??= []).push(before);
      for (const w of order) {
        const result = await run(w, c, r);
        const after = await run('echo', c, r);
        echoRuns[c]!.push(after);
        ((raw[w] ??= {})[c] ??= []).push({ result, echo: [before, after] });
        before = after;
      }
    }
  }
  results.transport = Object.fromEntries(CONCURRENCIES.map((c) => [c, aggregate(echoRuns[c]!)]));
  results.singleOps = {};
  for (const w of workloads) {
    results.singleOps[w] = Object.fromEntries(Object.entries(raw[w]!).map(([c, bs]) => [c, aggregate(bs.map((b) => b.result), bs)]));
  }
  results.config['rounds'] = rounds;
  results.config['callsPerMeasurement'] = { 1: callsC1, 64: callsC64 };
  results.config['warmup'] = warm;
}

async function inChild<T>(script: string, cmd: string, args: unknown): Promise<T> {
  const child = await Child.start(script, [], `${script}-${cmd}`);
  try {
    return await child.request<T>(cmd, args);
  } finally {
    await child.stop();
  }
}

async function main(): Promise<void> {
  const started = new Date();
  const machine = machineInfo();
  const steal0 = stealTicks();
  console.log(`machine: ${machineLine(machine)}`);
  const results: Results = { version: 1, startedAt: started.toISOString(), machine, config: { logLevel, only: only ?? 'all' } };
  const profile = process.env['BENCH_PROFILE'] === '1';
  const execArgv = [
    ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${path.join(CACHE, 'prof')}`] : []),
    ...(envList('BENCH_SERVER_NODE_FLAGS', ' ') ?? []),
  ];

  const needServers = wants('single') || wants('topology') || wants('teardown');
  if (needServers) {
    const topoParallel = 8;
    const altDist = process.env['BENCH_ALT_DIST'] ? path.resolve(process.env['BENCH_ALT_DIST']) : undefined;
    if (altDist) results.config['altDist'] = altDist;
    const s = await startServers({ devices: 64 + 4 * topoParallel, logLevel, audit: process.env['BENCH_AUDIT'] !== '0', journal: process.env['BENCH_JOURNAL'] !== '0', cached: process.env['BENCH_CACHED'] !== '0', execArgv, altDist });
    try {
      if (wants('single')) await singleOps(s, results);
      if (wants('topology')) {
        const count = envInt('BENCH_TOPOLOGIES', 200);
        const rounds = 4;
        await compareTopologies(s, ['separate'], 1, 20, 1); // warm-up
        const applyNote = await probeApplyTopology(s);
        const modes: TopologyMode[] = applyNote ? ['separate'] : ['separate', 'apply'];
        if (!applyNote) await compareTopologies(s, ['apply'], 1, 20, 1);
        log(`topology: ${count} VMs one at a time, then ${count} with ${topoParallel} at once (${modes.join(' vs ')})`);
        const serial = await compareTopologies(s, modes, 1, count, rounds);
        const parallel = await compareTopologies(s, modes, topoParallel, count, rounds);
        // Echo at 1 in flight, same run: what bare round trips cost next to a topology.
        const echo1 = await runWorkload(s, 'echo', 1, 26 * Math.min(100, count));
        results.topology = { serial, parallel, echoP50Us: echo1.latencyUs.p50, ...(applyNote ? { applyNote } : {}) };
      }
      if (wants('teardown')) {
        const sizes = (envList('BENCH_TEARDOWN_SIZES') ?? ['10', '100', '1000', '10000']).map(Number);
        const reps = envInt('BENCH_TEARDOWN_REPS', 9);
        log(`teardown over RPC: ${sizes.join(', ')} objects, ${reps} interleaved repetitions`);
        await teardownScaling(s, [100, 1000], 2); // warm-up
        const rpc = await teardownScaling(s, sizes, reps);
        log('teardown in-process (Broker class, no gRPC)');
        const inproc = await inChild<InprocTeardownPoint[]>('inproc', 'teardown', { sizes, reps: 2 * reps, logLevel });
        results.teardown = { rpc, inproc };
      }
    } finally {
      await s.stop();
    }
  }
  if (wants('ownwork')) {
    log('broker own work (in-process)');
    results.ownWork = await inChild('inproc', 'ownwork', { iterations: envInt('BENCH_OWNWORK_ITERS', 100_000), rounds: 5, logLevel });
  }
  if (wants('memory')) {
    const contexts = envInt('BENCH_MEM_CONTEXTS', 1000);
    const perContext = envInt('BENCH_MEM_PER_CONTEXT', 100);
    log(`memory: ${contexts * perContext} objects across ${contexts} contexts`);
    const total = await inChild<Record<string, number>>('inproc', 'memory', { contexts, perContext, simOnly: false, logLevel });
    const sim = await inChild<Record<string, number>>('inproc', 'memory', { contexts, perContext, simOnly: true, logLevel });
    results.memory = { total, sim };
  }
  if (wants('ffi')) {
    log('koffi vs C: ioctl(FIONREAD)');
    results.ffi = await inChild('ffi', 'ffi', { n: envInt('BENCH_FFI_CALLS', 200_000), rounds: 15, asyncN: 20_000 });
  }

  const steal1 = stealTicks();
  results.finishedAt = new Date().toISOString();
  results.durationSec = Math.round((Date.now() - started.getTime()) / 1000);
  if (steal0 !== undefined && steal1 !== undefined) results.stealTicks = steal1 - steal0;
  results.targets = evaluateTargets(results);
  const md = markdown(results);
  console.log(`\n${md}`);
  writeResults(results, md);
}

function writeResults(results: Results, md: string): void {
  const dir = path.join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = results.startedAt.replace(/[:]/g, '-').replace(/\.\d+Z$/, 'Z');
  const json = `${JSON.stringify(results, null, 2)}\n`;
  for (const [name, body] of [
    [`latest.json`, json],
    [`latest.md`, md],
    [`${stamp}.json`, json],
    [`${stamp}.md`, md],
  ] as const) {
    const file = path.join(dir, name);
    writeFileSync(`${file}.tmp`, body);
    renameSync(`${file}.tmp`, file);
  }
  log(`wrote bench/results/latest.{json,md} and ${stamp}.{json,md}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
