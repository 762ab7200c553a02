/**
 * Every differential-conformance scenario, in run order (kernel-uapi.md §2,
 * §4, §6). Scenarios are backend-agnostic: they get a `Recorder` over a
 * `ConformanceTarget` and record a trace with the documented expectation
 * of every step (harness.ts). Names follow the kernel selftests of §6.5
 * (`fixture.test`) where one corresponds.
 */
import { CORE_SCENARIOS } from './scenarios-core.js';
import { VFIO_SCENARIOS } from './scenarios-vfio.js';
import { VIOMMU_SCENARIOS } from './scenarios-viommu.js';
import type { Scenario } from './fixtures.js';

export type { Scenario } from './fixtures.js';
export type { ConformanceTarget, SelftestKernel, Step, Trace } from './harness.js';

export const SCENARIOS: readonly Scenario[] = [...CORE_SCENARIOS, ...VIOMMU_SCENARIOS, ...VFIO_SCENARIOS];

const names = new Set<string>();
for (const sc of SCENARIOS) {
  if (names.has(sc.name)) throw new Error(`duplicate conformance scenario ${sc.name}`);
  names.add(sc.name);
}
