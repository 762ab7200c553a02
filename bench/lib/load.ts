/**
 * Closed-loop load: `concurrency` workers each issue one RPC at a time until
 * the run's RPC budget is spent. Every RPC's latency is recorded; throughput
 * is RPCs over the wall time of the whole run.
 */
import { gcPerRpc, gcTotals, type GcPerRpc, type GcTotals } from './gc.js';
import { distribution, type Distribution } from './stats.js';

export interface LoadResult {
  concurrency: number;
  rpcs: number;
  wallMs: number;
  rpcPerSec: number;
  /** Per-RPC latency in microseconds. */
  latencyUs: Distribution;
  /** Server CPU time per RPC in microseconds, when the server reported it. */
  serverCpuUsPerRpc?: number;
  /**
   * This (client) process's CPU time per RPC in microseconds. Client and
   * server share the machine's cores, so a client that pays more per RPC
   * (protobuf encode/decode, which the echo client skips) leaves less for the server.
   */
  clientCpuUsPerRpc: number;
  /** Young- and full-GC activity of the server and of this (client) process during the run. */
  serverGc?: GcPerRpc;
  clientGc: GcPerRpc;
}

/** What a server reports about itself before and after a run (a build from before GC counting reports no `gc`). */
export interface ServerUsage {
  cpuUs: number;
  gc?: GcTotals;
}

export class LatencyRecorder {
  readonly samples: Float64Array;
  n = 0;
  constructor(capacity: number) {
    this.samples = new Float64Array(capacity);
  }

  /** Runs one RPC and records its latency. */
  async time<T>(call: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const value = await call();
    if (this.n < this.samples.length) this.samples[this.n++] = (performance.now() - t0) * 1000;
    return value;
  }
}

/**
 * `iteration(worker, k, rec)` issues `rpcsPerIteration` RPCs through `rec`.
 * Workers stop claiming iterations once `totalRpcs` have been claimed.
 */
export async function closedLoop(
  concurrency: number,
  totalRpcs: number,
  rpcsPerIteration: number,
  iteration: (worker: number, k: number, rec: LatencyRecorder) => Promise<void>,
  serverUsage?: () => Promise<ServerUsage>,
): Promise<LoadResult> {
  const rec = new LatencyRecorder(totalRpcs + rpcsPerIteration * concurrency);
  let claimed = 0;
  const server0 = serverUsage ? await serverUsage() : undefined;
  const clientGc0 = gcTotals();
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  const worker = async (w: number) => {
    for (let k = 0; claimed < totalRpcs; k++) {
      claimed += rpcsPerIteration;
      await iteration(w, k, rec);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  const wallMs = performance.now() - t0;
  const client = process.cpuUsage(client0);
  const server1 = serverUsage ? await serverUsage() : undefined;
  const result: LoadResult = {
    concurrency,
    rpcs: rec.n,
    wallMs,
    rpcPerSec: rec.n / (wallMs / 1000),
    latencyUs: distribution(rec.samples, rec.n),
    clientCpuUsPerRpc: (client.user + client.system) / rec.n,
    clientGc: gcPerRpc(clientGc0, gcTotals(), rec.n),
  };
  if (server0 && server1) {
    result.serverCpuUsPerRpc = (server1.cpuUs - server0.cpuUs) / rec.n;
    if (server0.gc && server1.gc) result.serverGc = gcPerRpc(server0.gc, server1.gc, rec.n);
  }
  return result;
}
