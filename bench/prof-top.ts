/**
 * Top frames of V8 CPU profiles (`node --cpu-prof`), e.g. the daemon's under
 * `BENCH_PROFILE=1 npm run bench`:
 *
 *   bench/run.sh prof-top .cache/bench/prof/CPU.*.cpuprofile [--top 30]
 *     [--rpcs N] [--focus name,name,...]
 *
 * Prints self time by function and by module (package or source file),
 * inclusive time by module, and inclusive time of the functions named in
 * --focus (matched against "function module"). With --rpcs, times are also
 * given in µs per RPC (busy time over N RPCs served during the profile).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function moduleOf(url: string): string {
  if (url === '') return '(native/VM)';
  if (url.startsWith('node:')) return url.split('/').slice(0, 2).join('/');
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const src = url.indexOf('/src/');
  return src >= 0 ? url.slice(src + 1).replace(/^.*?(src\/)/, '$1') : path.basename(url);
}

function analyse(file: string, top: number, rpcs: number | undefined, focus: string[]): void {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0;
    self.set(id, (self.get(id) ?? 0) + dt);
    total += dt;
  });
  const fnSelf = new Map<string, number>();
  const modSelf = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const focused = new Map<string, number>();
  let idle = 0;
  for (const [id, t] of self) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') {
      idle += t;
      continue;
    }
    // Inclusive time of focus functions: counted once per stack.
    const hit = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      const label = `${f.functionName || '(anonymous)'} ${moduleOf(f.url)}`;
      for (const want of focus) if (label.includes(want)) hit.add(want);
    }
    for (const h of hit) focused.set(h, (focused.get(h) ?? 0) + t);
    const key = `${functionName || '(anonymous)'} ${moduleOf(url)}:${lineNumber + 1}`;
    fnSelf.set(key, (fnSelf.get(key) ?? 0) + t);
    modSelf.set(moduleOf(url), (modSelf.get(moduleOf(url)) ?? 0) + t);
    // Inclusive time per module: each module counted once per stack.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const m = moduleOf(byId.get(cur)!.callFrame.url);
      if (!seen.has(m)) {
        seen.add(m);
        inclusive.set(m, (inclusive.get(m) ?? 0) + t);
      }
    }
  }
  const busy = total - idle;
  const pct = (t: number) => `${((100 * t) / busy).toFixed(1).padStart(5)}%${rpcs ? ` ${(t / rpcs).toFixed(1).padStart(6)} µs/RPC` : ''}`;
  console.log(`\n${file}\n  ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy; percentages are of busy time`);
  console.log('\n  self time by function:');
  for (const [k, t] of [...fnSelf].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(t)}  ${k}`);
  console.log('\n  self time by module:');
  for (const [k, t] of [...modSelf].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(t)}  ${k}`);
  console.log('\n  inclusive time by module (on the stack):');
  for (const [k, t] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(t)}  ${k}`);
  if (focus.length) {
    console.log('\n  inclusive time of focus functions:');
    for (const want of focus) console.log(`  ${pct(focused.get(want) ?? 0)}  ${want}`);
  }
}

const args = process.argv.slice(2);
const flags = new Map<string, string>();
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a.startsWith('--')) flags.set(a, args[++i] ?? '');
  else files.push(a);
}
const top = Number(flags.get('--top') ?? 30);
const rpcs = flags.has('--rpcs') ? Number(flags.get('--rpcs')) : undefined;
const focus = (flags.get('--focus') ?? '').split(',').filter(Boolean);
if (files.length === 0) {
  console.error('usage: bench/run.sh prof-top FILE.cpuprofile... [--top N]');
  process.exit(2);
}
for (const f of files) analyse(f, top, rpcs, focus);
