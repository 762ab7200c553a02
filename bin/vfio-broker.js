#!/usr/bin/env node
// The vfio-broker command. `npm run build` compiles src/ to dist/.
import { main } from '../dist/cli/main.js';

await main();
