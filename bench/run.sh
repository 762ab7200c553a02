#!/usr/bin/env bash
# Compiles src/ and bench/ into .cache/bench-dist (incremental) and runs one
# bench entry point with node: `bench/run.sh main` (npm run bench) or
# `bench/run.sh soak` (npm run soak). Extra arguments go to the script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
entry="${1:?usage: bench/run.sh ENTRY [ARGS...]}"
shift
"$root/node_modules/.bin/tsc" -p bench/tsconfig.json
exec node --expose-gc ${BENCH_NODE_OPTIONS:-} ".cache/bench-dist/bench/${entry}.js" "$@"
