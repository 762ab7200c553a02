/**
 * vitest config for the real-kernel lane: only guest tests (`*.guest.test.ts`
 * under test/kernel/), run inside the QEMU guest by run-vm.sh / run-lane.sh.
 * The root vitest.config.ts excludes test/kernel/** so `npm test` never picks
 * these up. The guest is slow (TCG, 2 vCPUs): long timeouts, one file at a time.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  root: fileURLToPath(new URL('../..', import.meta.url)),
  test: {
    include: ['test/kernel/**/*.guest.test.ts'],
    exclude: ['node_modules/**'],
    testTimeout: 300_000,
    hookTimeout: 120_000,
    fileParallelism: false,
  },
});
