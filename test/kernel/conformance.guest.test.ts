/**
 * Differential conformance in the QEMU lane (runs inside the guest; see
 * README.md here): every scenario of test/conformance runs on the real
 * kernel through LinuxKernel (IOMMUFD_TEST mock devices plus the edu
 * device's VFIO cdev) and on a fresh sim (profile linux-6.17). Any
 * difference in result or errno fails, except the documented hardware
 * exclusions (test/conformance/scenarios-vfio.ts). The real kernel is the
 * truth: a difference means the sim is wrong, or a scenario expectation is.
 *
 *   test/kernel/run-vm.sh 'vitest run --config test/kernel/vitest.guest.config.ts conformance'
 *
 * Writes both traces and the differences to $VFIO_BROKER_RESULTS_DIR/conformance.json.
 * Skipped outside the guest (no /dev/iommu).
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLinuxKernel, type LinuxKernel } from '../../src/kernel/linux/index.js';
import { createSimKernel, type SimKernel } from '../../src/kernel/sim/index.js';
import type { ConformanceTarget, Trace } from '../conformance/harness.js';
import {
  checkExpectations,
  compareTraces,
  describe as describeOutcome,
  formatDifference,
  formatMismatch,
  runScenario,
  type Difference,
} from '../conformance/run.js';
import { SCENARIOS } from '../conformance/scenarios.js';

const IN_GUEST = existsSync('/dev/iommu');

/** The edu device's cdev name: guest-init exports its path; else the first VFIO cdev. */
function vfioCdev(): string | undefined {
  const fromEnv = process.env.VFIO_BROKER_TEST_VFIO_DEV;
  if (fromEnv) return basename(fromEnv);
  try {
    return readdirSync('/dev/vfio/devices').find((n) => /^vfio\d+$/.test(n));
  } catch {
    return undefined;
  }
}

describe.skipIf(!IN_GUEST)('differential conformance: real kernel vs sim linux-6.17', () => {
  let real: LinuxKernel;
  let sim: SimKernel;
  let realTarget: ConformanceTarget;
  let simTarget: ConformanceTarget;
  let cdev: string | undefined;
  const simTraces: Trace[] = [];
  const realTraces: Trace[] = [];
  const allDiffs: Difference[] = [];

  beforeAll(async () => {
    real = createLinuxKernel({ selftestDevices: true });
    const caps = await real.probe();
    if (!real.selftestDevicesEnabled) throw new Error(`kernel ${caps.release} has no IOMMUFD_TEST (CONFIG_IOMMUFD_TEST)`);
    cdev = vfioCdev();
    realTarget = { label: `linux ${caps.release}`, kernel: real, vfioCdev: cdev ?? 'vfio-missing' };
    sim = createSimKernel({ profile: 'linux-6.17' });
    simTarget = { label: 'sim linux-6.17', kernel: sim, vfioCdev: 'vfio0' };
    process.stdout.write(`conformance: ${realTarget.label} (VFIO device ${cdev ?? 'none'}) vs ${simTarget.label}\n`);
  }, 120_000);

  afterAll(async () => {
    await real?.shutdown();
    const out = process.env.VFIO_BROKER_RESULTS_DIR;
    if (out) {
      const report = { real: realTarget?.label, sim: simTarget?.label, differences: allDiffs, realTraces, simTraces };
      writeFileSync(join(out, 'conformance.json'), `${JSON.stringify(report, null, 2)}\n`);
    }
    const hw = realTraces.flatMap((t) => t.steps.filter((s) => s.hardware).map((s) => `  ${t.scenario} #${s.index} ${s.op}: real ${describeOutcome(s.outcome)}, sim ${describeOutcome(simTraces.find((x) => x.scenario === t.scenario)?.steps[s.index]?.outcome ?? { ok: true, value: null })}`));
    const steps = realTraces.reduce((n, t) => n + t.steps.length, 0);
    process.stdout.write(
      `conformance: ${realTraces.length} scenarios, ${steps} steps on the real kernel, ${allDiffs.length} difference(s)\n` +
        (hw.length ? `hardware-dependent steps (excluded from the comparison):\n${hw.join('\n')}\n` : ''),
    );
  }, 60_000);

  it.each(SCENARIOS.map((sc) => [sc.name, sc] as const))('%s', async (_name, scenario) => {
    if (scenario.vfio && cdev === undefined) throw new Error('no VFIO cdev in the guest (guest-init binds the edu device to vfio-pci)');
    const realTrace = await runScenario(realTarget, scenario);
    const simTrace = await runScenario(simTarget, scenario);
    realTraces.push(realTrace);
    simTraces.push(simTrace);
    const diffs = compareTraces([simTrace], [realTrace]);
    allDiffs.push(...diffs);
    // Also name where the real kernel departs from the documented expectation (hardware steps excluded).
    const docs = checkExpectations(realTrace, false).map((m) => `  vs kernel-uapi.md expectation: ${formatMismatch(m)}`);
    expect([...diffs.map(formatDifference), ...docs]).toEqual([]);
  }, 300_000);

  it('the sim kept no files open', () => {
    expect(sim.openFileCount()).toBe(0);
    expect(real.openFileCount()).toBe(0);
  });
});
