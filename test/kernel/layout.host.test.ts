/**
 * Layout check against the lane kernel's own uAPI headers (runs on the HOST,
 * before the VM boots: run-lane.sh step "layout"; see README.md here).
 *
 *   VFIO_BROKER_UAPI_INCLUDE=<cache entry>/usr/include \
 *     vitest run --config test/kernel/vitest.host.config.ts
 *
 * 1. layout/gen-layout-c.ts turns the TS tables (every StructCodec of
 *    structs.ts, every ioctl of IOCTL_DEFS, the uAPI constants) into a C
 *    program; gcc compiles it against the headers (`make headers_install`
 *    output plus iommufd_test.h) and its output is compared with the tables:
 *    sizeof/alignof per struct, offsetof/sizeof/C type per field, every ioctl
 *    number and constant.
 * 2. layout/gdb-layout.ts reads the same binary's DWARF (gdb `ptype /o`) for
 *    the other direction: every byte of every C member must be covered by a
 *    TS field, so a member TS lacks is found too.
 * Any difference fails. Artifacts (layout.c, the program's output, gdb's
 * output, layout-report.json) go to $VFIO_BROKER_VM_OUT/layout
 * (default test/kernel/.out/layout).
 *
 * Without VFIO_BROKER_UAPI_INCLUDE the headers of the cache's `current`
 * entry are used; with neither, the suite is skipped.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IOCTL_DEFS } from '../../src/kernel/linux/ioctl-numbers.js';
import { coverage, parsePtype, type CoverageResult, type GdbStruct } from './layout/gdb-layout.js';
import {
  allCodecs,
  allConstants,
  allIoctls,
  compareLayout,
  generateLayoutC,
  ioctlMacrosInHeader,
  parseLayoutOutput,
  SPECIAL_FIELDS,
  type AnyCodec,
  type CLayout,
  type LayoutInput,
} from './layout/gen-layout-c.js';

const LANE_DIR = path.dirname(fileURLToPath(import.meta.url));
const OUT_DIR = path.join(process.env['VFIO_BROKER_VM_OUT'] ?? path.join(LANE_DIR, '.out'), 'layout');

/** The uapi include directory: the env var, else the cache's current entry. */
function uapiInclude(): { dir: string | undefined; from: string } {
  const env = process.env['VFIO_BROKER_UAPI_INCLUDE'];
  if (env) return { dir: env, from: 'VFIO_BROKER_UAPI_INCLUDE' };
  const cache = process.env['VFIO_BROKER_KERNEL_CACHE'] ?? path.join(os.homedir(), '.cache', 'vfio-broker', 'kernel');
  try {
    const entry = readFileSync(path.join(cache, 'current'), 'utf8').trim();
    return { dir: readFileSync(path.join(cache, entry, 'uapi-include-path'), 'utf8').trim(), from: `${cache}/${entry}/uapi-include-path` };
  } catch {
    return { dir: undefined, from: 'nowhere (no VFIO_BROKER_UAPI_INCLUDE, no kernel cache entry)' };
  }
}

const INCLUDE = uapiInclude();
const inc = (): string => INCLUDE.dir!;

function run(cmd: string, args: string[], what: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`${what}: ${cmd} could not run: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status}):\n${r.stderr}${r.stdout}`);
  if (r.stderr.trim() !== '') process.stdout.write(`layout: ${what} said:\n${r.stderr}`);
  return r.stdout;
}

/** Why gcc failed, with the fix when it is a field offsetof cannot take. */
function compileHint(stderr: string): string {
  if (/bit-field|flexible array|incomplete type/.test(stderr)) {
    return '\nA codec field is a bitfield or a flexible array member: list it in SPECIAL_FIELDS (test/kernel/layout/gen-layout-c.ts).';
  }
  if (/has no member named|undeclared/.test(stderr)) {
    return '\nA codec field, struct or constant does not exist under that name in these headers: the TS tables and the kernel disagree.';
  }
  return '';
}

/** Generates, compiles (gcc, -g) and runs the layout program in `dir`; reads its DWARF with gdb. */
function buildAndRun(dir: string, input: LayoutInput, ...includes: string[]): { layout: CLayout; gdb: Map<string, GdbStruct> | undefined; gdbMissing: string | undefined } {
  mkdirSync(dir, { recursive: true });
  const src = path.join(dir, 'layout.c');
  const bin = path.join(dir, 'layout');
  writeFileSync(src, generateLayoutC(input));
  const cc = process.env['CC'] ?? 'gcc';
  const r = spawnSync(cc, ['-std=gnu11', '-g', '-O0', '-Wall', ...includes.flatMap((i) => ['-I', i]), '-o', bin, src], { encoding: 'utf8' });
  if (r.error) throw new Error(`${cc} could not run (${r.error.message}); run test/kernel/setup-host.sh`);
  if (r.status !== 0) throw new Error(`compiling ${src} against ${includes.join(' ')} failed:\n${r.stderr}${compileHint(r.stderr)}`);
  if (r.stderr.trim() !== '') process.stdout.write(`layout: ${cc} warnings:\n${r.stderr}`);
  const output = run(bin, [], 'the layout program');
  writeFileSync(path.join(dir, 'layout.txt'), output);
  const gdbArgs = ['-batch', '-nx', '-ex', 'set width 0', '-ex', 'set height 0', ...input.codecs.flatMap((k) => ['-ex', `ptype /o struct ${k.name}`]), bin];
  const g = spawnSync('gdb', gdbArgs, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (g.error) {
    return { layout: parseLayoutOutput(output), gdb: undefined, gdbMissing: `gdb could not run (${g.error.message}); it reads the member list from DWARF: run test/kernel/setup-host.sh` };
  }
  writeFileSync(path.join(dir, 'gdb-ptype.txt'), g.stdout + g.stderr);
  return { layout: parseLayoutOutput(output), gdb: parsePtype(g.stdout), gdbMissing: undefined };
}

describe.skipIf(INCLUDE.dir === undefined)(`uAPI layout vs the kernel headers (${INCLUDE.dir ?? 'none'})`, () => {
  const { codecs, notInAllStructs } = allCodecs();
  const input: LayoutInput = { codecs, ioctls: allIoctls(), constants: allConstants() };
  let c: CLayout;
  let gdb: Map<string, GdbStruct> | undefined;
  let gdbMissing: string | undefined;
  let headerIoctls: string[] = [];
  const coverages = new Map<string, CoverageResult>();

  beforeAll(() => {
    const inc = INCLUDE.dir!;
    for (const h of ['linux/iommufd.h', 'linux/vfio.h', 'iommufd_test.h']) {
      if (!existsSync(path.join(inc, h))) throw new Error(`${inc}/${h} missing (include dir from ${INCLUDE.from}); rebuild the kernel entry (build-kernel.sh)`);
    }
    const built = buildAndRun(OUT_DIR, input, inc);
    c = built.layout;
    gdb = built.gdb;
    gdbMissing = built.gdbMissing;
    headerIoctls = ['linux/iommufd.h', 'linux/vfio.h', 'iommufd_test.h'].flatMap((h) => ioctlMacrosInHeader(readFileSync(path.join(inc, h), 'utf8')));
  }, 120_000);

  afterAll(() => {
    if (!c) return;
    const cmp = compareLayout(input, c);
    const cov = [...coverages.values()];
    const sum = (k: keyof CoverageResult['counts']) => cov.reduce((n, r) => n + r.counts[k], 0);
    const known = new Set(Object.keys(IOCTL_DEFS));
    const iommufdNotInTs = headerIoctls.filter((n) => n.startsWith('IOMMU_') && !known.has(n));
    const vfioNotInTs = headerIoctls.filter((n) => n.startsWith('VFIO_') && !known.has(n));
    const report = {
      include: INCLUDE.dir,
      counts: cmp.counts,
      dwarf: gdb ? { structs: cov.length, members: sum('members'), namedInTs: sum('named'), coveredBySiblings: sum('coveredBySiblings'), paddingBytes: sum('paddingBytes') } : gdbMissing,
      differences: [...cmp.differences, ...cov.flatMap((r) => r.differences)],
      headerIoctlsNotInTs: { iommufd: iommufdNotInTs, vfio: vfioNotInTs },
      codecsNotInAllStructs: notInAllStructs,
    };
    writeFileSync(path.join(OUT_DIR, 'layout-report.json'), `${JSON.stringify(report, null, 2)}\n`);
    const n = cmp.counts;
    process.stdout.write(
      `layout: headers ${INCLUDE.dir}\n` +
        `layout: compared ${n.structs} structs (sizeof, alignof), ${n.fields} fields (offsetof, sizeof, C type; ` +
        `${n.unionMembers} union members, ${n.arrayOrAggregate} arrays/aggregates, ${n.bitfields} bitfields, ${n.flex} flexible arrays), ` +
        `${n.ioctls} ioctl numbers, ${n.constants} constants\n` +
        (gdb
          ? `layout: DWARF: ${report.dwarf && typeof report.dwarf === 'object' ? `${report.dwarf.members} C members in ${report.dwarf.structs} structs, ${report.dwarf.namedInTs} named in TS, ` +
            `${report.dwarf.coveredBySiblings} covered by union siblings, ${report.dwarf.paddingBytes} padding bytes` : ''}\n`
          : `layout: DWARF pass not run: ${gdbMissing}\n`) +
        `layout: ${report.differences.length} difference(s)${report.differences.length ? `:\n  ${report.differences.join('\n  ')}` : ''}\n` +
        `layout: (info) ioctls in the headers the backend does not use: ${iommufdNotInTs.length} iommufd${iommufdNotInTs.length ? ` (${iommufdNotInTs.join(', ')})` : ''}, ${vfioNotInTs.length} VFIO\n` +
        `layout: artifacts in ${OUT_DIR}\n`,
    );
  });

  it('every exported codec is in ALL_STRUCTS (which layout.test.ts walks)', () => {
    expect(notInAllStructs).toEqual([]);
    expect(codecs.length).toBeGreaterThanOrEqual(20);
  });

  it('struct sizes, and offsetof/sizeof/C type of every codec field, match the headers', () => {
    const { differences } = compareLayout(input, c);
    expect(differences.filter((d) => !d.startsWith('ioctl ') && !d.startsWith('constant '))).toEqual([]);
  });

  it('every ioctl number matches the headers', () => {
    const { differences, counts } = compareLayout(input, c);
    expect(counts.ioctls).toBe(Object.keys(IOCTL_DEFS).length);
    expect(differences.filter((d) => d.startsWith('ioctl '))).toEqual([]);
  });

  it('every uAPI constant the backend hard-codes matches the headers', () => {
    const { differences } = compareLayout(input, c);
    expect(differences.filter((d) => d.startsWith('constant '))).toEqual([]);
  });

  it('every byte of every C member is covered by a TS field (DWARF, gdb ptype /o)', () => {
    if (!gdb) throw new Error(gdbMissing);
    const diffs: string[] = [];
    for (const codec of codecs) {
      const s = gdb.get(codec.name);
      if (!s) {
        diffs.push(`${codec.name}: gdb found no such struct in the DWARF`);
        continue;
      }
      if (s.size !== codec.full) diffs.push(`${codec.name}: DWARF size ${s.size}, TS full ${codec.full}`);
      const r = coverage(codec.name, s, codec.fields);
      coverages.set(codec.name, r);
      diffs.push(...r.differences);
    }
    expect(diffs).toEqual([]);
  });

  // Negative controls: the comparison must see a wrong table. Mutations of copies, compared with the real output.
  describe('the check fails on wrong tables', () => {
    const mutate = (name: string, edit: (fields: Record<string, { offset: number; size: number; kind: string }>) => void, full?: number): AnyCodec[] =>
      codecs.map((k) => {
        if (k.name !== name) return k;
        const fields = Object.fromEntries(Object.entries(k.fields).map(([f, s]) => [f, { ...s }]));
        edit(fields);
        return { name: k.name, full: full ?? k.full, fields } as AnyCodec;
      });
    // Only what the mutation adds: the real comparison's own differences are reported by the tests above.
    const diffsFor = (changed: Partial<LayoutInput>) => {
      const baseline = new Set(compareLayout(input, c).differences);
      return compareLayout({ ...input, ...changed }, c).differences.filter((d) => !baseline.has(d));
    };
    const coverageAdds = (name: string, fields: AnyCodec['fields']) => {
      const s = gdb!.get(name)!;
      const baseline = new Set(coverage(name, s, codecs.find((k) => k.name === name)!.fields).differences);
      return coverage(name, s, fields).differences.filter((d) => !baseline.has(d));
    };

    it('a moved field, a wrong kind, a wrong sizeof, an unknown field', () => {
      expect(diffsFor({ codecs: mutate('iommu_destroy', (f) => { f['id']!.offset = 0; }) })).toEqual(['iommu_destroy.id: offsetof 4 in C, 0 in TS']);
      expect(diffsFor({ codecs: mutate('vfio_device_bind_iommufd', (f) => { f['iommufd']!.kind = 'u32'; }) })).toEqual([
        'vfio_device_bind_iommufd.iommufd: C type s32, TS kind u32',
      ]);
      expect(diffsFor({ codecs: mutate('iommu_hw_info', () => undefined, 48) })).toEqual(['struct iommu_hw_info: sizeof is 40 in C, full = 48 in TS']);
      expect(diffsFor({ codecs: mutate('iommu_hw_info', (f) => { f['__reserved']!.kind = 'u32'; f['__reserved']!.size = 3; }) })).toEqual([
        'iommu_hw_info.__reserved: C type u8[], TS kind u32',
      ]);
    });

    it('a wrong ioctl number or constant, an unused SPECIAL_FIELDS entry', () => {
      // _IOR-style direction/size bits where the kernel uses plain _IO (kernel-uapi.md §1.3).
      const ioctls = allIoctls().map((i) => (i.name === 'IOMMU_DESTROY' ? { ...i, value: (i.value | (8 << 16) | (2 << 30)) >>> 0 } : i));
      expect(diffsFor({ ioctls })).toEqual([expect.stringMatching(/^ioctl IOMMU_DESTROY: 0x3b80 in C, 0x80083b80 in TS/)]);
      const constants = allConstants().map((k) => (k.c === 'IOMMU_VIOMMU_TYPE_SELFTEST' ? { ...k, value: 1 } : k));
      expect(diffsFor({ constants })).toEqual(['constant IOMMU_VIOMMU_TYPE_SELFTEST = 3735928559 in C; VIOMMU_TYPE.SELFTEST = 1 in TS']);
      expect(diffsFor({ special: { ...SPECIAL_FIELDS, 'iommu_destroy.nope': 'bitfield' } })).toEqual(['SPECIAL_FIELDS lists iommu_destroy.nope, which no codec has']);
    });

    it('a C member the codec lacks (DWARF coverage)', () => {
      if (!gdb) throw new Error(gdbMissing);
      const hw = codecs.find((k) => k.name === 'iommu_hw_info')!;
      const { out_capabilities: _dropped, ...rest } = hw.fields;
      expect(coverageAdds('iommu_hw_info', rest)).toEqual([
        'iommu_hw_info.out_capabilities (bytes 32..39) is in the C struct but bytes 32,33,34,35,36,37,38,39 are covered by no TS field',
      ]);
      // The test-cmd union: TS models it as one `dirty` range plus a few named members; dropping `dirty` exposes the rest.
      const tc = codecs.find((k) => k.name === 'iommu_test_cmd')!;
      const { dirty: _d, ...noDirty } = tc.fields;
      expect(coverageAdds('iommu_test_cmd', noDirty).length).toBeGreaterThan(10);
    });
  });
  it('handles bitfields, flexible array members and union members explicitly (synthetic header)', () => {
    const dir = path.join(OUT_DIR, 'synthetic');
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      path.join(dir, 'layout_selftest.h'),
      [
        '#include <linux/types.h>',
        'struct layout_selftest {',
        '\t__u32 a;',
        '\t__u32 lo : 3, hi : 13;',
        '\t__u8 b;',
        '\tunion { __u32 x; __u16 y; };',
        '\t__aligned_u64 tail;',
        '\t__u8 data[];',
        '};',
        '',
      ].join('\n'),
    );
    const f = (offset: number, size: number, kind: string) => ({ offset, size, kind }) as never;
    const codec = {
      name: 'layout_selftest',
      full: 24,
      fields: { a: f(0, 4, 'u32'), lo: f(4, 1, 'u8'), hi: f(4, 2, 'bytes'), b: f(6, 1, 'u8'), x: f(8, 4, 'u32'), y: f(8, 2, 'u16'), tail: f(16, 8, 'u64'), data: f(24, 0, 'bytes') },
    } as AnyCodec;
    const special = { 'layout_selftest.lo': 'bitfield', 'layout_selftest.hi': 'bitfield', 'layout_selftest.data': 'flex' } as const;
    const synth: LayoutInput = { codecs: [codec], ioctls: [], constants: [], special, headers: ['layout_selftest.h'] };
    const built = buildAndRun(dir, synth, inc(), dir);
    const s = built.layout.structs.get('layout_selftest')!;
    expect(s.fields.get('lo')).toMatchObject({ how: 'bitfield', off: 4, size: 1, bit: 0, width: 3 });
    expect(s.fields.get('hi')).toMatchObject({ how: 'bitfield', off: 4, size: 2, bit: 3, width: 13 });
    expect(s.fields.get('data')).toMatchObject({ how: 'flex', off: 24 });
    const cmp = compareLayout(synth, built.layout);
    expect(cmp.differences).toEqual([]);
    expect(cmp.counts).toMatchObject({ bitfields: 2, flex: 1, unionMembers: 4 });
    // A bitfield outside its TS bytes is a difference.
    const moved = { ...codec, fields: { ...codec.fields, hi: f(5, 1, 'u8') } } as AnyCodec;
    expect(compareLayout({ ...synth, codecs: [moved] }, built.layout).differences).toEqual([
      'layout_selftest.hi: C bitfield spans bytes 4..5 (bit 3, width 13); TS field covers 5..5',
    ]);
    if (!built.gdb) throw new Error(built.gdbMissing);
    const g = built.gdb.get('layout_selftest')!;
    expect(g.members.map((m) => m.path)).toEqual(['a', 'lo', 'hi', 'b', 'x', 'y', 'tail', 'data']);
    const cov = coverage('layout_selftest', g, codec.fields);
    expect(cov.differences).toEqual([]);
    expect(cov.counts.paddingBytes).toBe(1 + 4); // after b, after the union
    const { b: _b, ...noB } = codec.fields;
    expect(coverage('layout_selftest', g, noB).differences).toEqual(['layout_selftest.b (bytes 6..6) is in the C struct but bytes 6 are covered by no TS field']);
  });
});
