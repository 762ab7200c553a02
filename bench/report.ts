/**
 * The bench's result shape, its targets, and the Markdown report.
 */
import type { GcPerRpc } from './lib/gc.js';
import type { LoadResult } from './lib/load.js';
import { fmt, machineLine, type MachineInfo } from './lib/stats.js';
import type { TeardownPoint, TopologyComparison } from './rpc.js';

/** A per-round difference: median and interquartile range, ns. */
interface Overhead {
  median: number;
  iqr: [number, number];
}

export interface Aggregate {
  concurrency: number;
  rounds: LoadResult[];
  /** Medians over rounds. */
  rpcPerSec: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
  serverCpuUsPerRpc: number;
  clientCpuUsPerRpc: number;
  /** Medians over rounds. */
  serverGc?: GcPerRpc;
  clientGc: GcPerRpc;
  /** Medians of per-round ratios to the echo ceiling at the same concurrency. */
  vsEcho?: {
    throughput: number;
    throughputRange: [number, number];
    p50: number;
    p99: number;
    p99Range: [number, number];
    max: number;
    serverCpu: number;
    clientCpu: number;
  };
}

export interface InprocTeardownPoint {
  objects: number;
  reps: number;
  closeUs: number;
  perObjectUs: number;
}

export interface Target {
  name: string;
  target: string;
  figure: string;
  met: boolean | 'n/a';
}

export interface Results {
  version: 1;
  startedAt: string;
  finishedAt?: string;
  durationSec?: number;
  stealTicks?: number;
  machine: MachineInfo;
  config: Record<string, unknown>;
  transport?: Record<string, Aggregate>;
  singleOps?: Record<string, Record<string, Aggregate>>;
  topology?: { serial: TopologyComparison; parallel: TopologyComparison; echoP50Us: number; applyNote?: string };
  teardown?: { rpc: TeardownPoint[]; inproc: InprocTeardownPoint[] };
  memory?: { total: Record<string, number>; sim: Record<string, number> };
  ownWork?: { iterations: number; rounds: number; nsPerOp: Record<string, number>; allRounds: Record<string, number[]> };
  ffi?: Record<string, unknown> & {
    error?: string;
    nsPerCall?: Record<string, number>;
    koffiBufferOverheadNs?: Overhead;
    wrapperOverheadNs?: Overhead;
    wrapperFreshOverheadNs?: Overhead;
    napiOverheadNs?: Overhead;
  };
  targets?: Target[];
}

const LABELS: Record<string, string> = {
  allocDestroy: 'AllocIoas + DestroyObject',
  bindUnbind: 'BindDevice + UnbindDevice',
  allocDestroyAudited: 'AllocIoas + DestroyObject, audit log on (fdatasync)',
  allocDestroyJournaled: 'AllocIoas + DestroyObject, restart journal on (fdatasync)',
  bindUnbindJournaled: 'BindDevice + UnbindDevice, restart journal on (fdatasync)',
  bindUnbindCached: 'BindDevice + UnbindDevice answered from a cache (the RPC layer alone)',
  allocDestroyAlt: 'AllocIoas + DestroyObject, candidate build',
  bindUnbindAlt: 'BindDevice + UnbindDevice, candidate build',
};

const BROKER_BASE = 'broker (as the daemon runs it)';

function ratioOf(points: { objects: number; closeUs: number }[] | undefined, big: number, small: number): number | undefined {
  const a = points?.find((p) => p.objects === big);
  const b = points?.find((p) => p.objects === small);
  return a && b ? a.closeUs / b.closeUs : undefined;
}

export function ownWorkUs(r: Results): number | undefined {
  const ns = r.ownWork?.nsPerOp;
  if (!ns || ns[BROKER_BASE] === undefined || ns['sim'] === undefined) return undefined;
  return (ns[BROKER_BASE] - ns['sim']) / 1000;
}

export function evaluateTargets(r: Results): Target[] {
  const t: Target[] = [];
  for (const w of ['allocDestroy', 'bindUnbind']) {
    const a = r.singleOps?.[w]?.['64']?.vsEcho;
    if (!a) continue;
    t.push({ name: `${LABELS[w]} throughput @64 in flight`, target: '≥ 0.85× echo', figure: `${fmt(a.throughput)}× (rounds ${fmt(a.throughputRange[0])}–${fmt(a.throughputRange[1])})`, met: a.throughput >= 0.85 });
    t.push({ name: `${LABELS[w]} p99 @64 in flight`, target: '≤ 1.25× echo', figure: `${fmt(a.p99)}× (rounds ${fmt(a.p99Range[0])}–${fmt(a.p99Range[1])})`, met: a.p99 <= 1.25 });
  }
  const own = ownWorkUs(r);
  if (own !== undefined) t.push({ name: "Broker's own work per op (in-process, minus bare sim)", target: '≤ 10 µs', figure: `${fmt(own)} µs`, met: own <= 10 });
  const td = ratioOf(r.teardown?.rpc, 10_000, 1_000);
  if (td !== undefined) {
    const inproc = ratioOf(r.teardown?.inproc, 10_000, 1_000);
    const fastest = (n: number) => Math.min(...(r.teardown?.rpc.find((p) => p.objects === n)?.allCloseUs ?? [NaN]));
    const minRatio = fastest(10_000) / fastest(1_000);
    t.push({
      name: 'Teardown scaling, close 10k / close 1k objects (RPC, medians)',
      target: '≤ 12 (linear)',
      figure: `${fmt(td)}× (fastest reps ${fmt(minRatio)}×; in-process ${inproc !== undefined ? fmt(inproc) : 'n/a'}×)`,
      met: td <= 12,
    });
  }
  const mem = r.memory?.total['bytesPerObject'];
  if (mem !== undefined) t.push({ name: 'Heap per live object (100k objects, 1k contexts, broker + sim)', target: '≤ 2048 B', figure: `${Math.round(mem)} B`, met: mem <= 2048 });
  if (r.topology) {
    const g = r.topology.serial.speedupGraph;
    const e2e = r.topology.serial.speedupTotal;
    t.push({
      name: 'ApplyTopology vs separate RPCs (graph: 23 RPCs vs 1; 1 VM at a time)',
      target: '≥ 10× faster',
      figure: g ? `${fmt(g.median)}× (rounds ${fmt(g.range[0])}–${fmt(g.range[1])}); end to end 26 vs 4 RPCs: ${fmt(e2e?.median)}×` : (r.topology.applyNote ?? 'not available yet'),
      met: g ? g.median >= 10 : 'n/a',
    });
  }
  if (r.ffi) {
    // The backend's own sync path (argument area + wrapper); raw koffi with a Buffer when the wrapper did not load.
    const k = r.ffi.wrapperOverheadNs ?? r.ffi.koffiBufferOverheadNs;
    const buffer = r.ffi.koffiBufferOverheadNs;
    const fresh = r.ffi.wrapperFreshOverheadNs;
    const floor = r.ffi.napiOverheadNs;
    t.push({
      name: 'koffi overhead per ioctl, as the backend issues a sync ioctl (vs the same loop in C)',
      target: '≤ 100 ns',
      figure:
        k === undefined
          ? String(r.ffi.error)
          : `${fmt(k.median)} ns (rounds IQR ${fmt(k.iqr[0])}–${fmt(k.iqr[1])})` +
            (buffer && r.ffi.wrapperOverheadNs ? `; a reused Buffer argument: ${fmt(buffer.median)} ns` : '') +
            (fresh ? `; a fresh 32-byte Buffer: ${fmt(fresh.median)} ns` : '') +
            (floor ? `; floor for any Node-API FFI (a hand-written addon, same call): ${fmt(floor.median)} ns` : ''),
      met: k === undefined ? 'n/a' : k.median <= 100,
    });
  }
  return t;
}

function status(m: boolean | 'n/a'): string {
  return m === 'n/a' ? 'n/a' : m ? 'met' : '**not met**';
}

/**
 * Which GC regime each process ran in. A grpc-js process that has had a full
 * GC under load promotes most per-call objects from then on, so young-GC time
 * per RPC jumps severalfold and full GCs recur; a process measured before
 * that point looks cheaper than it will be once it has run a while.
 */
function gcTable(out: string[], transport: Record<string, Aggregate>, singleOps: Record<string, Record<string, Aggregate>>): void {
  const cells = (g: GcPerRpc | undefined) => (g ? `${fmt(g.youngMsPer1k)} | ${fmt(g.fullPer10k)} | ${fmt(g.fullMsPer1k)}` : '? | ? | ?');
  out.push('### Garbage collection during those rounds', '');
  out.push('Medians over rounds, from each process\'s own `perf_hooks` GC entries. Young GC is V8\'s scavenger; a full GC is a mark-compact (its ms include the incremental marking before it). After its first full GC under load a grpc-js process, echo server or daemon, promotes most per-call objects from then on (measured with `--trace-gc-nvp`: about 0.5 KB per echo RPC before, 3 to 5 KB after), so a row with several times the young-GC ms of another ran in that regime.', '');
  out.push('| Workload | In flight | server young-GC ms per 1k RPC | server full GCs per 10k RPC | server full-GC ms per 1k RPC | client young-GC ms per 1k RPC | client full GCs per 10k RPC | client full-GC ms per 1k RPC |', '|---|---|---|---|---|---|---|---|');
  for (const [c, e] of Object.entries(transport)) out.push(`| Echo (transport ceiling) | ${c} | ${cells(e.serverGc)} | ${cells(e.clientGc)} |`);
  for (const [w, byC] of Object.entries(singleOps)) {
    for (const [c, a] of Object.entries(byC)) out.push(`| ${LABELS[w] ?? w} | ${c} | ${cells(a.serverGc)} | ${cells(a.clientGc)} |`);
  }
  out.push('');
}

export function markdown(r: Results): string {
  const out: string[] = [];
  out.push(`# vfio-broker bench, ${r.startedAt}`, '');
  out.push(`Machine: ${machineLine(r.machine)}${r.machine.note ? ` (${r.machine.note})` : ''}.`);
  out.push(`Run took ${r.durationSec ?? '?'} s${r.stealTicks !== undefined ? `; CPU steal during the run: ${r.stealTicks} ticks` : ''}. Every figure is a ratio to, or a distribution next to, a baseline measured in the same run.`, '');
  if (r.targets?.length) {
    out.push('## Targets', '', '| Target | Goal | Measured | Status |', '|---|---|---|---|');
    for (const t of r.targets) out.push(`| ${t.name} | ${t.target} | ${t.figure} | ${status(t.met)} |`);
    out.push('');
  }
  if (r.transport && r.singleOps) {
    out.push('## Single operations vs the echo ceiling', '');
    out.push('Daemon and echo server each in their own process on a Unix socket; the client is the typed grpc-js client. Medians over interleaved rounds; "×echo" is the median over rounds of each broker round against the mean of the echo rounds run just before and just after it. Server CPU is the server process\'s user+system time per RPC; client CPU is the load generator\'s (it shares the cores with the server).', '');
    out.push('| Workload | In flight | RPC/s | ×echo | p50 µs | ×echo | p99 µs | ×echo | max µs | ×echo | server CPU µs/RPC | ×echo | client CPU µs/RPC | ×echo |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const [c, e] of Object.entries(r.transport)) {
      out.push(`| Echo (transport ceiling) | ${c} | ${fmt(e.rpcPerSec)} | 1 | ${fmt(e.p50Us)} | 1 | ${fmt(e.p99Us)} | 1 | ${fmt(e.maxUs)} | 1 | ${fmt(e.serverCpuUsPerRpc)} | 1 | ${fmt(e.clientCpuUsPerRpc)} | 1 |`);
    }
    for (const [w, byC] of Object.entries(r.singleOps)) {
      for (const [c, a] of Object.entries(byC)) {
        const v = a.vsEcho;
        out.push(
          `| ${LABELS[w] ?? w} | ${c} | ${fmt(a.rpcPerSec)} | ${fmt(v?.throughput)} | ${fmt(a.p50Us)} | ${fmt(v?.p50)} | ${fmt(a.p99Us)} | ${fmt(v?.p99)} | ${fmt(a.maxUs)} | ${fmt(v?.max)} | ${fmt(a.serverCpuUsPerRpc)} | ${fmt(v?.serverCpu)} | ${fmt(a.clientCpuUsPerRpc)} | ${fmt(v?.clientCpu)} |`,
        );
      }
    }
    out.push('');
    gcTable(out, r.transport, r.singleOps);
    if (r.singleOps['allocDestroyJournaled'] || r.singleOps['bindUnbindJournaled']) {
      out.push(
        'The journal rows run the daemon with `restart.journalPath` set (fdatasync group commit before each reply), as the systemd unit does by default, but without an fd store: the bench has no NOTIFY_SOCKET, so the per-device FDSTORE message the unit also sends is not in these figures.',
        '',
      );
    }
    if (r.singleOps['bindUnbindCached']) {
      out.push(
        'The cached row is the same daemon with BindDevice and UnbindDevice answered from a cache after each context\'s first real pair (bench/lib/cached-broker.ts): the same requests through grpc-js, identity, decoding, validation, the handler, metrics and encoding, without the broker and the simulated kernel. Its distance from echo is the RPC layer\'s share of the Bind+Unbind gap; its distance from the Bind+Unbind row is the broker\'s and the simulated kernel\'s. Like every row it is a median of a few noisy rounds, so read the split across runs, not from one.',
        '',
      );
    }
  }
  if (r.topology) {
    const { serial, parallel, echoP50Us } = r.topology;
    out.push('## VM topology (26 operations: open, 4× bind, IOAS, 4× attach, nest parent, vIOMMU, 4× vDEVICE, 4× nested HWPT, 4× attach nested, list, close)', '');
    out.push('"graph" is the 23 steps between open and list. Interleaved rounds; distributions pool all rounds.', '');
    out.push('| Run | VMs at once | Topologies | end to end p50 ms | p99 ms | max ms | graph p50 ms | graph p99 ms | topologies/s | end to end p50 in echo round trips |', '|---|---|---|---|---|---|---|---|---|---|');
    for (const cmp of [serial, parallel]) {
      for (const t of Object.values(cmp.byMode)) {
        const name = t.mode === 'separate' ? '26 separate RPCs' : 'open + ApplyTopology + list + close';
        out.push(`| ${name} | ${t.parallel} | ${t.count} | ${fmt(t.totalUs.p50 / 1000)} | ${fmt(t.totalUs.p99 / 1000)} | ${fmt(t.totalUs.max / 1000)} | ${fmt(t.graphUs.p50 / 1000)} | ${fmt(t.graphUs.p99 / 1000)} | ${fmt(t.topologiesPerSec)} | ${fmt(t.totalUs.p50 / echoP50Us)} |`);
      }
      if (cmp.speedupGraph) {
        out.push(`| speed-up, ${cmp.byMode.separate?.parallel} at once | | | ${fmt(cmp.speedupTotal?.median)}× | | | ${fmt(cmp.speedupGraph.median)}× | | | |`);
      }
    }
    if (r.topology.applyNote) out.push(`| ApplyTopology | | | ${r.topology.applyNote} | | | | | | |`);
    out.push('');
  }
  if (r.teardown) {
    out.push('## Teardown scaling (CloseContext of a context holding N IOASes)', '');
    out.push(`Sizes interleaved within each of ${r.teardown.rpc[0]?.reps ?? '?'} repetitions; a full GC in the daemon and the client before each timed close, so garbage left by filling the context is not charged to the close. Medians.`, '');
    out.push('| Objects | RPC: median close ms | µs/object | ×(10 objects) | in-process: median close ms | µs/object |', '|---|---|---|---|---|---|');
    const base = r.teardown.rpc[0]?.closeUs ?? NaN;
    for (const p of r.teardown.rpc) {
      const ip = r.teardown.inproc.find((q) => q.objects === p.objects);
      out.push(`| ${p.objects} | ${fmt(p.closeUs / 1000)} | ${fmt(p.perObjectUs)} | ${fmt(p.closeUs / base)} | ${ip ? fmt(ip.closeUs / 1000) : ''} | ${ip ? fmt(ip.perObjectUs) : ''} |`);
    }
    out.push('');
  }
  if (r.memory) {
    const { total, sim } = r.memory;
    out.push('## Memory (heapUsed after full GC)', '');
    out.push('| Setup | Objects | Contexts | bytes/object (all) | bytes/context | bytes/object (marginal) |', '|---|---|---|---|---|---|');
    for (const [name, m] of [['Broker + sim', total], ['sim alone (same kernel objects)', sim]] as const) {
      out.push(`| ${name} | ${m['objects']} | ${m['contexts']} | ${Math.round(m['bytesPerObject'] ?? NaN)} | ${Math.round(m['bytesPerContext'] ?? NaN)} | ${Math.round(m['bytesPerObjectMarginal'] ?? NaN)} |`);
    }
    out.push(`| Broker\'s share | | | ${Math.round((total['bytesPerObject'] ?? NaN) - (sim['bytesPerObject'] ?? NaN))} | ${Math.round((total['bytesPerContext'] ?? NaN) - (sim['bytesPerContext'] ?? NaN))} | ${Math.round((total['bytesPerObjectMarginal'] ?? NaN) - (sim['bytesPerObjectMarginal'] ?? NaN))} |`, '');
  }
  if (r.ownWork) {
    const ns = r.ownWork.nsPerOp;
    const sim = ns['sim'] ?? NaN;
    out.push('## Broker\'s own work (in-process, AllocIoas/DestroyObject, one context)', '');
    out.push('| Variant | ns/op | ×bare sim | minus bare sim, µs/op |', '|---|---|---|---|');
    for (const [name, v] of Object.entries(ns)) out.push(`| ${name} | ${fmt(v)} | ${fmt(v / sim)} | ${fmt((v - sim) / 1000)} |`);
    out.push('');
  }
  if (r.ffi) {
    out.push('## Linux backend FFI: ioctl(FIONREAD) on a pipe', '');
    if (r.ffi.error) out.push(`Not measured: ${r.ffi.error}`, '');
    else {
      const n = r.ffi.nsPerCall ?? {};
      const c = n['cIoctl'] ?? NaN;
      out.push('| Path | ns/call | ×C | minus C, ns |', '|---|---|---|---|');
      const rows: [string, number | undefined, number][] = [
        ['C ioctl loop (gcc -O2)', n['cIoctl'], c],
        ['koffi ioctl, Buffer argument (reused, already off the V8 heap)', n['koffiIoctl'], c],
        ['koffi ioctl, fixed address as intptr_t', n['koffiIoctlAddress'], c],
        ['hand-written Node-API addon, same ioctl and arguments (no FFI layer: the floor under koffi)', n['napiIoctl'], c],
        ['project wrapper, argument area (how the backend issues sync ioctls)', n['wrapperIoctl'], c],
        ['project wrapper, fresh 32-byte Buffer per call (includes Buffer.alloc)', n['wrapperFreshIoctl'], c],
        ['C getppid (no arguments)', n['cGetppid'], n['cGetppid'] ?? NaN],
        ['koffi getppid (koffi\'s fixed cost per call)', n['koffiGetppid'], n['cGetppid'] ?? NaN],
        ['hand-written Node-API addon, getppid (a Node-API call\'s fixed cost)', n['napiGetppid'], n['cGetppid'] ?? NaN],
        ['C fstat (reference)', n['cFstat'], n['cFstat'] ?? NaN],
        ['Node fs.fstatSync (reference: Node-native binding)', n['nodeFstatSync'], n['cFstat'] ?? NaN],
      ];
      for (const [name, v, base] of rows) out.push(`| ${name} | ${fmt(v)} | ${fmt((v ?? NaN) / base)} | ${fmt((v ?? NaN) - base)} |`);
      out.push('', `Node-native ioctl baseline: ${String(r.ffi['nodeNativeIoctl'])}. Async wrapper (libuv worker): ${fmt(r.ffi['asyncWrapperUsPerCall'] as number | undefined)} µs/call sequential.${r.ffi['wrapperNote'] ? ` ${String(r.ffi['wrapperNote'])}` : ''}${r.ffi['napiNote'] ? ` ${String(r.ffi['napiNote'])}.` : ''}`, '');
    }
  }
  return out.join('\n');
}
