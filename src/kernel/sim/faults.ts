/**
 * Fault injection for the sim, in the spirit of the kernel's `fail_iommufd`
 * attribute (kernel-uapi.md §2 "Fault injection") but aimed at whole calls:
 * an injected failure happens at syscall entry, so it has no side effect.
 *
 * Counted calls: every KernelOp except `close_iommufd` and `close_device`.
 * close(2) cannot fail (§4.5), so closes are neither counted nor failed.
 * `probe`, `listPciFunctions` and `shutdown` are not kernel calls at all.
 */
import type { ErrnoName } from '../errno.js';
import type { KernelOp } from '../types.js';

/** Ops that can never fail and therefore never take part in fault injection. */
export const UNFAILABLE_OPS: ReadonlySet<KernelOp> = new Set<KernelOp>(['close_iommufd', 'close_device']);

export interface FaultFilter {
  /** Only these ops are counted toward the rule and can fail. Default: all counted ops. */
  ops?: readonly KernelOp[];
}

interface NthRule {
  remaining: number;
  readonly errno: ErrnoName;
  readonly ops: ReadonlySet<KernelOp> | undefined;
}

interface RandomRule {
  readonly rate: number;
  readonly errnos: readonly ErrnoName[];
  readonly next: () => number;
  readonly ops: ReadonlySet<KernelOp> | undefined;
}

export class SimFaults {
  private calls = 0;
  private nth: NthRule[] = [];
  private random: RandomRule | undefined;
  private latency: { ms: number; ops: ReadonlySet<KernelOp> | undefined } | undefined;

  /** Number of counted kernel calls made so far (failed ones included). */
  get callCount(): number {
    return this.calls;
  }

  /**
   * The n-th (1-based) counted call from now that matches `opts.ops` fails
   * with `errno`. Several rules may be pending at once; each fires once. If
   * two come due on the same call, the one registered first gives the errno
   * and both are used up.
   */
  failNth(n: number, errno: ErrnoName, opts: FaultFilter = {}): void {
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`failNth: n must be a positive integer, got ${n}`);
    this.nth.push({ remaining: n, errno, ops: toOpSet(opts.ops) });
  }

  /**
   * Each counted call matching `opts.ops` fails with probability `rate`, the
   * errno picked from `errnos`; deterministic for a given seed.
   */
  failRandomly(rate: number, errnos: readonly ErrnoName[], seed: number, opts: FaultFilter = {}): void {
    if (!(rate >= 0 && rate <= 1)) throw new RangeError(`failRandomly: rate must be in [0, 1], got ${rate}`);
    if (errnos.length === 0) throw new RangeError('failRandomly: errnos must not be empty');
    this.random = { rate, errnos: [...errnos], next: mulberry32(seed), ops: toOpSet(opts.ops) };
  }

  /**
   * Makes matching calls take `ms` before they act, like a large IOAS map or
   * a device reset on real hardware; 0 removes the delay.
   */
  setLatency(ms: number, opts: FaultFilter = {}): void {
    if (!(ms >= 0)) throw new RangeError(`setLatency: ms must be >= 0, got ${ms}`);
    this.latency = ms === 0 ? undefined : { ms, ops: toOpSet(opts.ops) };
  }

  /** How long a call of `op` takes before acting. */
  latencyOf(op: KernelOp): number {
    const l = this.latency;
    return l && (!l.ops || l.ops.has(op)) ? l.ms : 0;
  }

  /** Removes every pending rule and delay; `callCount` keeps counting. */
  clear(): void {
    this.nth = [];
    this.random = undefined;
    this.latency = undefined;
  }

  /** Called at the entry of every kernel call; returns the errno to inject, if any. */
  onCall(op: KernelOp): ErrnoName | undefined {
    if (UNFAILABLE_OPS.has(op)) return undefined;
    this.calls++;
    let injected: ErrnoName | undefined;
    for (const rule of this.nth) {
      if (rule.ops && !rule.ops.has(op)) continue;
      rule.remaining--;
      if (rule.remaining === 0 && injected === undefined) injected = rule.errno;
    }
    this.nth = this.nth.filter((r) => r.remaining > 0);
    if (injected !== undefined) return injected;
    const r = this.random;
    if (r && (!r.ops || r.ops.has(op)) && r.next() < r.rate) {
      return r.errnos[Math.floor(r.next() * r.errnos.length)] ?? r.errnos[0];
    }
    return undefined;
  }
}

function toOpSet(ops: readonly KernelOp[] | undefined): ReadonlySet<KernelOp> | undefined {
  return ops === undefined ? undefined : new Set(ops);
}

/** Small, well-known 32-bit PRNG; good enough for reproducible fault schedules (and the tests' and soak's random choices). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
