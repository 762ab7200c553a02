/**
 * The conformance scenarios on the sim (profile linux-6.17), checked against
 * the expectations written in each scenario, so the sim is held to the
 * documented kernel behaviour in every `npm test` even without the QEMU
 * lane (test/kernel/conformance.guest.test.ts compares it with the real
 * kernel). Also checks the trace comparison itself.
 */
import { describe, expect, it } from 'vitest';
import { createSimKernel } from '../../src/kernel/sim/index.js';
import type { ConformanceTarget, Trace } from './harness.js';
import { checkExpectations, compareTraces, formatDifference, formatMismatch, runScenario, runScenarios, summarize } from './run.js';
import { SCENARIOS } from './scenarios.js';

function simTarget(): ConformanceTarget & { kernel: ReturnType<typeof createSimKernel> } {
  return { label: 'sim linux-6.17', kernel: createSimKernel({ profile: 'linux-6.17' }), vfioCdev: 'vfio0' };
}

describe('conformance scenarios on the sim (linux-6.17)', () => {
  // One kernel for every scenario, as in the VM: each scenario must clean up after itself.
  const target = simTarget();

  it.each(SCENARIOS.map((sc) => [sc.name, sc] as const))('%s', async (_name, scenario) => {
    const trace = await runScenario(target, scenario);
    expect(checkExpectations(trace).map(formatMismatch)).toEqual([]);
    expect(trace.steps.length).toBeGreaterThan(1);
  });

  it('leaves no open file and no live context behind', () => {
    expect(target.kernel.openFileCount()).toBe(0);
    expect(target.kernel.liveContextCount()).toBe(0);
  });
});

describe('compareTraces', () => {
  async function twoRuns(): Promise<[Trace[], Trace[]]> {
    return [await runScenarios(simTarget()), await runScenarios(simTarget())];
  }

  it('finds no difference between two sims, and prints a summary', async () => {
    const [a, b] = await twoRuns();
    expect(compareTraces(a, b)).toEqual([]);
    const total = a.reduce((n, t) => n + t.steps.length, 0);
    process.stdout.write(`conformance: ${a.length} scenarios, ${total} steps on the sim\n${summarize(a)}\n`);
  });

  it('reports a different errno, a different ID and a missing scenario', async () => {
    const [a, b] = await twoRuns();
    const first = b[0];
    const t = b.find((x) => x.scenario === 'ids.destroy_rules');
    if (!first || !t) throw new Error('scenario missing');
    const busy = t.steps.find((s) => s.note === 'DEVICE ids are always EBUSY');
    const alloc = t.steps.find((s) => s.op === 'hwpt_alloc');
    if (!busy || !alloc) throw new Error('step missing');
    busy.outcome = { ok: false, errno: 'ENOENT' };
    alloc.outcome = { ok: true, value: 6 };
    const diffs = compareTraces(a, b.filter((x) => x !== first));
    expect(diffs.map(formatDifference)).toEqual([
      `${first.scenario}: sim ran | real did not run`,
      expect.stringMatching(/^ids\.destroy_rules #\d+ destroy \(DEVICE ids are always EBUSY\) .*: sim EBUSY \| real ENOENT$/),
      expect.stringMatching(/^ids\.destroy_rules #\d+ hwpt_alloc .*: sim ok 5 \| real ok 6$/),
    ]);
  });

  it('applies hardware exclusions: outcome-only and none', async () => {
    const [a, b] = await twoRuns();
    const t = b.find((x) => x.scenario === 'vfio.hw_info_and_nesting');
    if (!t) throw new Error('scenario missing');
    const info = t.steps.find((s) => s.op === 'get_hw_info');
    const nest = t.steps.filter((s) => s.hardware?.compare === 'none');
    if (!info || nest.length !== 2) throw new Error('steps missing');
    info.outcome = { ok: true, value: { type: '0x1' } };
    for (const s of nest) s.outcome = { ok: false, errno: 'EOPNOTSUPP' };
    const viommu = nest[1];
    if (viommu) viommu.args = { hwptId: 0 }; // derived from the failed NEST_PARENT allocation
    expect(compareTraces(a, b)).toEqual([]);
    info.outcome = { ok: false, errno: 'ENOENT' };
    expect(compareTraces(a, b)).toHaveLength(1);
    // A real-kernel run is checked against the expectations without the hardware steps.
    for (const s of nest) s.outcome = { ok: false, errno: 'EOPNOTSUPP' };
    info.outcome = { ok: true, value: null };
    expect(checkExpectations(t, false)).toEqual([]);
    expect(checkExpectations(t, true)).toHaveLength(3);
  });
});
