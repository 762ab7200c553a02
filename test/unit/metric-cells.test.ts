import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { CellCounter, CellHistogram } from '../../src/obs/metric-cells.js';

const BUCKETS = [1e-6, 1e-4, 0.01, 1];
const SAMPLES: [string, string, number][] = [
  ['A', 'OK', 5e-7],
  ['A', 'OK', 0.5],
  ['B', 'NOT_FOUND', 0.002],
  ['A', 'OK', 7],
  ['A', 'INTERNAL', 1e-4],
  ['B', 'NOT_FOUND', 1],
];

/** The same observations through prom-client's classes and through cells. */
function pair() {
  const theirs = new Registry();
  const ours = new Registry();
  const c1 = new Counter({ name: 'x_total', help: 'h', labelNames: ['method', 'code'], registers: [theirs] });
  const h1 = new Histogram({ name: 'x_seconds', help: 'h', labelNames: ['method', 'code'], buckets: BUCKETS, registers: [theirs] });
  const u1 = new Histogram({ name: 'wait_seconds', help: 'h', buckets: BUCKETS, registers: [theirs] });
  const c2 = new CellCounter({ name: 'x_total', help: 'h', labelNames: ['method', 'code'], registers: [ours] });
  const h2 = new CellHistogram({ name: 'x_seconds', help: 'h', labelNames: ['method', 'code'], buckets: BUCKETS, registers: [ours] });
  const u2 = new CellHistogram({ name: 'wait_seconds', help: 'h', buckets: BUCKETS, registers: [ours] });
  for (const [method, code, v] of SAMPLES) {
    c1.inc({ method, code });
    h1.observe({ method, code }, v);
    u1.observe(v);
    c2.labels(method, code).inc();
    h2.observe({ method, code }, v);
    u2.labels().observe(v);
  }
  c1.inc({ method: 'C', code: 'OK' }, 0);
  c2.inc({ method: 'C', code: 'OK' }, 0);
  return { theirs, ours };
}

describe('metric cells', () => {
  it('export the same Prometheus text as prom-client', async () => {
    const { theirs, ours } = pair();
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('export the same JSON as prom-client', async () => {
    const { theirs, ours } = pair();
    expect(await ours.getMetricsAsJSON()).toEqual(await theirs.getMetricsAsJSON());
  });

  it('export an unlabelled histogram before any observation, as prom-client does', async () => {
    const theirs = new Registry();
    const ours = new Registry();
    new Histogram({ name: 'w', help: 'h', buckets: BUCKETS, registers: [theirs] });
    new CellHistogram({ name: 'w', help: 'h', buckets: BUCKETS, registers: [ours] });
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it('return one cell per label combination and refuse bad values', () => {
    const c = new CellCounter({ name: 'y_total', help: 'h', labelNames: ['a', 'b'], registers: [] });
    expect(c.labels('1', '2')).toBe(c.labels('1', '2'));
    expect(c.labels('1', '2')).not.toBe(c.labels('2', '1'));
    expect(() => c.labels('1')).toThrow(/2 label values/);
    expect(() => c.labels('1', '2').inc(-1)).toThrow(TypeError);
    const h = new CellHistogram({ name: 'z', help: 'h', buckets: BUCKETS, registers: [] });
    expect(() => h.labels().observe(Number.NaN)).toThrow(TypeError);
  });
});
