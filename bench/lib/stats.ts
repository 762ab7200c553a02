/**
 * Small statistics and environment helpers shared by the benches.
 *
 * Every figure the benches publish is a ratio or a distribution measured side
 * by side in the same run: the machine is shared and noisy, so an absolute
 * time means little on its own.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';

/** Percentile of an ascending-sorted sample, nearest-rank. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

export interface Distribution {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

/** p50/p99/max/mean of the first `n` samples (sorted in place). */
export function distribution(samples: Float64Array, n = samples.length): Distribution {
  const s = samples.subarray(0, n).sort();
  let sum = 0;
  for (let i = 0; i < n; i++) sum += s[i] as number;
  return { n, p50: percentile(s, 50), p99: percentile(s, 99), max: s[n - 1] ?? NaN, mean: n ? sum / n : NaN };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function minMax(xs: readonly number[]): [number, number] {
  return [Math.min(...xs), Math.max(...xs)];
}

/** Integer from the environment, with a default. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}=${raw}: expected a non-negative number`);
  return Math.floor(n);
}

export function envList(name: string, separator = ','): string[] | undefined {
  const raw = process.env[name];
  return raw ? raw.split(separator).map((s) => s.trim()).filter(Boolean) : undefined;
}

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  node: string;
  kernel: string;
  loadAvgAtStart: [number, number, number];
  totalMemGiB: number;
  /** CPU steal and a note when the machine is visibly busy at start. */
  note: string;
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  const load = os.loadavg() as [number, number, number];
  const cores = cpus.length;
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores,
    node: process.version,
    kernel: os.release(),
    loadAvgAtStart: [round(load[0], 2), round(load[1], 2), round(load[2], 2)],
    totalMemGiB: round(os.totalmem() / 2 ** 30, 1),
    note: load[0] > cores * 0.5 ? `busy at start: 1-min load ${load[0].toFixed(2)} on ${cores} cores` : '',
  };
}

export function machineLine(m: MachineInfo): string {
  return `${m.cpuModel}, ${m.cores} cores, Node ${m.node}, Linux ${m.kernel}, ${m.totalMemGiB} GiB, load average at start ${m.loadAvgAtStart.join(' / ')}`;
}

/** CPU time of this process in microseconds (user + system). */
export function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** Steal ticks from /proc/stat, to show how noisy the host was during a section. */
export function stealTicks(): number | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    return fields[7];
  } catch {
    return undefined;
  }
}

export function round(x: number, digits = 2): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Compact human format for a number: 1234 → "1234", 0.01234 → "0.0123". */
export function fmt(x: number | undefined, digits = 3): string {
  if (x === undefined || !Number.isFinite(x)) return 'n/a';
  if (Math.abs(x) >= 100) return Math.round(x).toString();
  return Number(x.toPrecision(digits)).toString();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
