/**
 * Counters and histograms for the request path, exported through a
 * prom-client Registry exactly as prom-client's own Counter and Histogram
 * would export them (same series, bucket bounds, `le` labels and order).
 *
 * Why not prom-client's classes: their `inc()` and `observe()` validate the
 * label object and build a hash string from it on every call, and `labels()`
 * children still do both per call. Every RPC records several series (its
 * method and code, one histogram sample per kernel call, its queue wait), so
 * that per-call work showed up in profiles of the daemon. Here a label
 * combination is resolved once to a cell (nested Maps keyed by the label
 * values, no string building) and recording is a few arithmetic operations.
 */
import type { Registry } from 'prom-client';

interface Cell {
  readonly labels: Readonly<Record<string, string>>;
}

export class CounterCell implements Cell {
  value = 0;
  constructor(readonly labels: Readonly<Record<string, string>>) {}

  inc(by = 1): void {
    if (!(by >= 0) || !Number.isFinite(by)) throw new TypeError(`counter increment must be a finite number ≥ 0, got ${by}`);
    this.value += by;
  }
}

export class HistogramCell implements Cell {
  /** Per-bucket counts (not cumulative); a value above the last bound only counts in +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`histogram value must be finite, got ${value}`);
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= bounds[i]!) {
        this.counts[i]!++;
        break;
      }
    }
    this.sum += value;
    this.count++;
  }
}

interface MetricValue {
  labels: Record<string, string | number>;
  /** Histogram series carry their labels here and `le` in `labels`, as prom-client's do. */
  sharedLabels?: Readonly<Record<string, string>>;
  value: number;
  metricName?: string;
  /** prom-client's histogram series carry `exemplar` (null on buckets without exemplars). */
  exemplar?: null;
}

interface Options<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  registers: Registry[];
}

/** Label values → cell, one nested Map level per label name. */
abstract class CellMetric<L extends string, C extends Cell> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly aggregator = 'sum';
  /** In creation order, which is the order prom-client exports series in. */
  protected readonly cells: C[] = [];
  private readonly root = new Map<string, unknown>();

  constructor(o: Options<L>) {
    this.name = o.name;
    this.help = o.help;
    this.labelNames = o.labelNames ?? [];
    for (const r of o.registers) r.registerMetric(this as never);
  }

  protected abstract makeCell(labels: Record<string, string>): C;

  /** The cell for these label values, in `labelNames` order; the same object every time. */
  labels(...values: string[]): C {
    if (values.length !== this.labelNames.length) throw new Error(`${this.name}: expected ${this.labelNames.length} label values, got ${values.length}`);
    let level = this.root;
    for (let i = 0; i < values.length - 1; i++) {
      let next = level.get(values[i]!) as Map<string, unknown> | undefined;
      if (!next) level.set(values[i]!, (next = new Map()));
      level = next;
    }
    const key = values.length === 0 ? '' : values[values.length - 1]!;
    let cell = level.get(key) as C | undefined;
    if (!cell) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((n, i) => (labels[n] = values[i]!));
      cell = this.makeCell(labels);
      level.set(key, cell);
      this.cells.push(cell);
    }
    return cell;
  }

  /** prom-client's object form, `{ label: value }`, for callers off the hot path. */
  protected cellOf(labels: Partial<Record<L, string>> | undefined): C {
    return this.labels(...this.labelNames.map((n) => String(labels?.[n] ?? '')));
  }

  async getForPromString(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: this.aggregator };
  }

  /** The JSON form (`getMetricsAsJSON`): shared labels merged after `le`, like prom-client. */
  async get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const data = await this.getForPromString();
    data.values = data.values.map(({ sharedLabels, ...v }) => ({ ...v, labels: { ...v.labels, ...sharedLabels } }));
    return data;
  }

  abstract readonly type: 'counter' | 'histogram';
  protected abstract values(): MetricValue[];
  abstract reset(): void;
}

export class CellCounter<L extends string = string> extends CellMetric<L, CounterCell> {
  readonly type = 'counter';

  protected makeCell(labels: Record<string, string>): CounterCell {
    return new CounterCell(labels);
  }

  /** Same call shapes as prom-client's Counter: `inc()`, `inc(n)`, `inc(labels)`, `inc(labels, n)`. */
  inc(labels?: Partial<Record<L, string>> | number, by?: number): void {
    if (typeof labels === 'number') this.cellOf(undefined).inc(labels);
    else this.cellOf(labels).inc(by);
  }

  protected values(): MetricValue[] {
    return this.cells.map((c) => ({ value: c.value, labels: { ...c.labels } }));
  }

  /** Zeroes every series (prom-client drops them; nothing in the daemon resets). */
  reset(): void {
    for (const c of this.cells) c.value = 0;
  }
}

export class CellHistogram<L extends string = string> extends CellMetric<L, HistogramCell> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];

  constructor(o: Options<L> & { buckets: readonly number[] }) {
    super(o);
    this.buckets = [...o.buckets];
    // prom-client exports an unlabelled histogram from the start, at zero.
    if (this.labelNames.length === 0) this.labels();
  }

  protected makeCell(labels: Record<string, string>): HistogramCell {
    return new HistogramCell(labels, this.buckets);
  }

  observe(labels: Partial<Record<L, string>> | number, value?: number): void {
    if (typeof labels === 'number') this.cellOf(undefined).observe(labels);
    else this.cellOf(labels).observe(value as number);
  }

  protected values(): MetricValue[] {
    const out: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const c of this.cells) {
      let acc = 0;
      this.buckets.forEach((le, i) => {
        acc += c.counts[i]!;
        out.push({ labels: { le }, sharedLabels: c.labels, value: acc, metricName: bucket, exemplar: null });
      });
      out.push(
        { labels: { le: '+Inf' }, sharedLabels: c.labels, value: c.count, metricName: bucket, exemplar: null },
        { labels: {}, sharedLabels: c.labels, value: c.sum, metricName: `${this.name}_sum` },
        { labels: {}, sharedLabels: c.labels, value: c.count, metricName: `${this.name}_count` },
      );
    }
    return out;
  }

  reset(): void {
    for (const c of this.cells) {
      c.counts.fill(0);
      c.sum = 0;
      c.count = 0;
    }
  }
}
