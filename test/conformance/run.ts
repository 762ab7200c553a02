/**
 * Runs conformance scenarios on a target and compares traces: the sim's
 * against the real kernel's (any difference in result or errno fails,
 * except what a step's `hardware` note excludes), and any trace against the
 * expectations written in the scenarios.
 */
import { isDeepStrictEqual } from 'node:util';
import { Recorder, ScenarioAbort, type ConformanceTarget, type Outcome, type Step, type Trace } from './harness.js';
import { SCENARIOS, type Scenario } from './scenarios.js';

export interface RunOptions {
  /** Scenarios to run (default: all). */
  scenarios?: readonly Scenario[];
  /** Skip the scenarios that use the VFIO device (a target without one). */
  skipVfio?: boolean;
}

/** Runs the scenarios one after another; each closes what it opened, even when it aborts. */
export async function runScenarios(target: ConformanceTarget, options: RunOptions = {}): Promise<Trace[]> {
  const traces: Trace[] = [];
  for (const scenario of options.scenarios ?? SCENARIOS) {
    if (options.skipVfio && scenario.vfio) continue;
    traces.push(await runScenario(target, scenario));
  }
  return traces;
}

export async function runScenario(target: ConformanceTarget, scenario: Scenario): Promise<Trace> {
  const s = new Recorder(target);
  let aborted: string | undefined;
  try {
    await scenario.run(s);
  } catch (e) {
    aborted = e instanceof ScenarioAbort ? e.message : `harness error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
  } finally {
    await s.cleanup();
  }
  return { scenario: scenario.name, steps: s.steps, ...(aborted !== undefined ? { aborted } : {}) };
}

export interface Difference {
  scenario: string;
  /** Step index, or -1 for the scenario as a whole. */
  step: number;
  op: string;
  note: string;
  args: unknown;
  sim: string;
  real: string;
}

/** Every place where the real kernel's traces differ from the sim's (`hardware` exclusions applied). */
export function compareTraces(sim: readonly Trace[], real: readonly Trace[]): Difference[] {
  const diffs: Difference[] = [];
  const realByName = new Map(real.map((t) => [t.scenario, t]));
  for (const s of sim) {
    const r = realByName.get(s.scenario);
    realByName.delete(s.scenario);
    if (r === undefined) {
      diffs.push(whole(s.scenario, 'ran', 'did not run'));
      continue;
    }
    const n = Math.max(s.steps.length, r.steps.length);
    for (let i = 0; i < n; i++) {
      const a = s.steps[i];
      const b = r.steps[i];
      if (a === undefined || b === undefined) {
        const step = (a ?? b) as Step;
        diffs.push(stepDiff(s.scenario, step, a ? describe(a.outcome) : '(no step)', b ? describe(b.outcome) : '(no step)'));
        continue;
      }
      if (a.op !== b.op || a.note !== b.note) {
        diffs.push(stepDiff(s.scenario, a, `${a.op} ${describe(a.outcome)}`, `${b.op} ${describe(b.outcome)}`));
        continue;
      }
      // `none`: neither the result nor the arguments (they may carry IDs of earlier hardware steps).
      if ((a.hardware ?? b.hardware)?.compare === 'none') continue;
      if (!sameOutcome(a, b)) diffs.push({ ...stepDiff(s.scenario, a, describe(a.outcome), describe(b.outcome)), args: { sim: a.args, real: b.args } });
      else if (!isDeepStrictEqual(a.args, b.args)) diffs.push(stepDiff(s.scenario, a, `args ${json(a.args)}`, `args ${json(b.args)}`));
    }
    if (s.aborted !== r.aborted) diffs.push(whole(s.scenario, s.aborted ?? 'completed', r.aborted ?? 'completed'));
  }
  for (const r of realByName.values()) diffs.push(whole(r.scenario, 'did not run', 'ran'));
  return diffs;
}

function sameOutcome(a: Step, b: Step): boolean {
  if ((a.hardware ?? b.hardware)?.compare === 'outcome') return a.outcome.ok === b.outcome.ok && (a.outcome.ok || b.outcome.ok || a.outcome.errno === b.outcome.errno);
  return isDeepStrictEqual(a.outcome, b.outcome);
}

export interface Mismatch {
  scenario: string;
  step: number;
  op: string;
  note: string;
  args: unknown;
  expected: string;
  actual: string;
}

/**
 * Steps whose result differs from the scenario's documented expectation.
 * `includeHardware: false` skips hardware-dependent steps, whose
 * expectation describes the mock IOMMU (use it for the real kernel).
 */
export function checkExpectations(trace: Trace, includeHardware = true): Mismatch[] {
  const out: Mismatch[] = [];
  for (const step of trace.steps) {
    if (step.hardware && !includeHardware) continue;
    if (!isDeepStrictEqual(step.outcome, step.expected)) {
      out.push({ scenario: trace.scenario, step: step.index, op: step.op, note: step.note, args: step.args, expected: describe(step.expected), actual: describe(step.outcome) });
    }
  }
  if (trace.aborted !== undefined) {
    out.push({ scenario: trace.scenario, step: -1, op: '(scenario)', note: '', args: null, expected: 'completed', actual: trace.aborted });
  }
  return out;
}

export function describe(o: Outcome): string {
  return o.ok ? `ok ${json(o.value)}` : o.errno;
}

export function formatDifference(d: Difference): string {
  const where = d.step < 0 ? d.scenario : `${d.scenario} #${d.step} ${d.op}${d.note ? ` (${d.note})` : ''} ${json(d.args)}`;
  return `${where}: sim ${d.sim} | real ${d.real}`;
}

export function formatMismatch(m: Mismatch): string {
  const where = m.step < 0 ? m.scenario : `${m.scenario} #${m.step} ${m.op}${m.note ? ` (${m.note})` : ''} ${json(m.args)}`;
  return `${where}: expected ${m.expected}, got ${m.actual}`;
}

/** One line per scenario: steps, hardware-excluded steps, and whether it completed. */
export function summarize(traces: readonly Trace[]): string {
  return traces
    .map((t) => {
      const hw = t.steps.filter((s) => s.hardware).length;
      return `${t.scenario}: ${t.steps.length} steps${hw ? `, ${hw} hardware-dependent` : ''}${t.aborted ? `, ABORTED (${t.aborted})` : ''}`;
    })
    .join('\n');
}

function stepDiff(scenario: string, step: Step, sim: string, real: string): Difference {
  return { scenario, step: step.index, op: step.op, note: step.note, args: step.args, sim, real };
}

function whole(scenario: string, sim: string, real: string): Difference {
  return { scenario, step: -1, op: '(scenario)', note: '', args: null, sim, real };
}

function json(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
}
