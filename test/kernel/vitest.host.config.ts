/**
 * vitest config for the real-kernel lane's HOST step: `*.host.test.ts` under
 * test/kernel/ (the layout check against the lane kernel's uAPI headers), run
 * by run-lane.sh before the VM boots. The root vitest.config.ts excludes
 * test/kernel/**, so `npm test` never picks these up.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  root: fileURLToPath(new URL('../..', import.meta.url)),
  test: {
    include: ['test/kernel/**/*.host.test.ts'],
    exclude: ['node_modules/**'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
