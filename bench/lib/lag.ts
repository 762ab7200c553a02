/**
 * Event-loop lag of this process, and how much of it was the machine's.
 *
 * A 10 ms interval timer records how late each tick runs (as
 * monitorEventLoopDelay does). On a shared machine part of that delay is the
 * main thread waiting on the run queue while other processes hold both cores:
 * Linux counts that time per thread (/proc/self/task/PID/schedstat, second
 * field, "time spent waiting on a runqueue"). The daemon's own lag is the
 * delay minus that wait: its own work, its GC and its I/O, but not a kernel
 * build next door. Without schedstat the own lag is the whole delay.
 */
import { readFileSync } from 'node:fs';

function runQueueWaitMs(): number | undefined {
  try {
    const fields = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').trim().split(/\s+/);
    const ns = Number(fields[1]);
    return Number.isFinite(ns) ? ns / 1e6 : undefined;
  } catch {
    return undefined;
  }
}

export interface LagFigures {
  samples: number;
  /** Tick delay beyond the period, ms. */
  raw: { p50: number; p99: number; max: number };
  /** The same minus the main thread's run-queue wait in each tick. */
  own: { p50: number; p99: number; max: number };
  /** Share of all delay spent waiting for a CPU. */
  machineShare: number;
  schedstat: boolean;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export class LagMonitor {
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  private lastWait: number | undefined;
  private readonly raw: number[] = [];
  private readonly own: number[] = [];

  constructor(private readonly periodMs = 10) {}

  start(): void {
    this.last = performance.now();
    this.lastWait = runQueueWaitMs();
    this.timer = setInterval(() => this.tick(), this.periodMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const now = performance.now();
    const wait = runQueueWaitMs();
    const lag = Math.max(0, now - this.last - this.periodMs);
    const waited = wait !== undefined && this.lastWait !== undefined ? wait - this.lastWait : 0;
    this.raw.push(lag);
    this.own.push(Math.max(0, lag - waited));
    this.last = now;
    this.lastWait = wait;
  }

  figures(): LagFigures {
    const raw = [...this.raw].sort((a, b) => a - b);
    const own = [...this.own].sort((a, b) => a - b);
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    const total = sum(raw);
    return {
      samples: raw.length,
      raw: { p50: pct(raw, 50), p99: pct(raw, 99), max: raw.at(-1) ?? Number.NaN },
      own: { p50: pct(own, 50), p99: pct(own, 99), max: own.at(-1) ?? Number.NaN },
      machineShare: total > 0 ? (total - sum(own)) / total : 0,
      schedstat: runQueueWaitMs() !== undefined,
    };
  }
}
