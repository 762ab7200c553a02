/**
 * Generates a C program from the linux backend's TypeScript tables (struct
 * codecs, ioctl numbers, uAPI constants) that prints, as the C compiler sees
 * the kernel's own uAPI headers, offsetof/sizeof/type of every codec field,
 * sizeof/alignof of every codec struct and the value of every ioctl and
 * constant; and compares that output with the tables. Driven by
 * test/kernel/layout.host.test.ts on the host, against the headers the lane's
 * kernel build installed. Nothing here is written down twice: adding a codec
 * (an exported StructCodec of structs.ts) or an ioctl adds it to the check.
 *
 * How fields are printed:
 * - plain and union members alike by their C designator: `in_data_type`
 *   (member of an anonymous union), `mock_domain.out_stdev_id` (member of a
 *   named struct inside iommu_test_cmd's anonymous union). `offsetof` takes
 *   both. TS fields that overlap must be union members in C; offsets agreeing
 *   with offsetof proves it, and the DWARF pass (gdb-layout.ts) lists them.
 * - arrays (`__reserved[3]`) and aggregates (`dirty`): offsetof and sizeof
 *   work; _Generic sees an array as a pointer to its element, so the type is
 *   printed as `u8[]` etc. and any aggregate as `aggregate`; both must be
 *   `bytes` in TS.
 * - bitfields: offsetof, sizeof and typeof are compile errors. Listed in
 *   SPECIAL_FIELDS as `bitfield`, they are probed at run time instead: zero a
 *   struct, decrement the field (all ones), and report the bits that changed.
 *   The TS field must cover those bytes.
 * - flexible array members: no sizeof. Listed as `flex`, only offsetof is
 *   printed and the TS field must be a 0-byte `bytes` at that offset.
 * A field of either kind that is not listed fails to compile; the test says
 * to list it here.
 */
import {
  HW_INFO_TYPE,
  HWPT_ALLOC_DIRTY_TRACKING,
  HWPT_ALLOC_NEST_PARENT,
  HWPT_ALLOC_PASID,
  HWPT_DATA_TYPE,
  HWPT_FAULT_ID_VALID,
  VIOMMU_TYPE,
} from '../../../src/kernel/types.js';
import { IOCTL_DEFS, IOCTL_NAMES, ioctlNumbers } from '../../../src/kernel/linux/ioctl-numbers.js';
import { MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID } from '../../../src/kernel/linux/selftest.js';
import { StructCodec, type FieldKind, type FieldSpec } from '../../../src/kernel/linux/struct-codec.js';
import * as structs from '../../../src/kernel/linux/structs.js';

/** Any codec, field types erased. */
export type AnyCodec = Pick<StructCodec<Record<string, FieldSpec>>, 'name' | 'full' | 'fields'>;

/** Fields C cannot offsetof/sizeof (see the module comment), by `struct.field`. Exact: an unused entry fails the check. */
export const SPECIAL_FIELDS: Readonly<Record<string, 'bitfield' | 'flex'>> = {
  // The eventfds of VFIO_DEVICE_SET_IRQS follow the header (device-request.ts).
  'vfio_irq_set.data': 'flex',
};

/**
 * Every codec the backend defines: ALL_STRUCTS plus any StructCodec exported
 * by structs.ts (so one left out of ALL_STRUCTS is still checked; the test
 * also reports it).
 */
export function allCodecs(): { codecs: AnyCodec[]; notInAllStructs: string[] } {
  const listed = new Set<unknown>(structs.ALL_STRUCTS);
  const exported = (Object.values(structs) as unknown[]).filter((v): v is AnyCodec => v instanceof StructCodec);
  const codecs: AnyCodec[] = [...structs.ALL_STRUCTS];
  const notInAllStructs: string[] = [];
  for (const c of exported) {
    if (!listed.has(c)) {
      codecs.push(c);
      notInAllStructs.push(c.name);
    }
  }
  return { codecs, notInAllStructs };
}

export interface ConstantDef {
  /** Where the value lives in TypeScript, for messages. */
  ts: string;
  /** The C identifier (enumerator or macro). */
  c: string;
  value: number;
}

/**
 * uAPI constants the backend hard-codes. The only hand-written mapping here:
 * TS names do not spell the C ones. Groups are mapped by prefix, so a new key
 * in VIOMMU_TYPE & co. is checked without an edit.
 */
export function allConstants(): ConstantDef[] {
  const group = (tsName: string, prefix: string, table: Record<string, number>): ConstantDef[] =>
    Object.entries(table).map(([k, v]) => ({ ts: `${tsName}.${k}`, c: `${prefix}${k}`, value: v }));
  const one = (ts: string, c: string, value: number): ConstantDef => ({ ts, c, value });
  return [
    one('IOAS_MAP_FIXED_IOVA', 'IOMMU_IOAS_MAP_FIXED_IOVA', structs.IOAS_MAP_FIXED_IOVA),
    one('IOAS_MAP_WRITEABLE', 'IOMMU_IOAS_MAP_WRITEABLE', structs.IOAS_MAP_WRITEABLE),
    one('IOAS_MAP_READABLE', 'IOMMU_IOAS_MAP_READABLE', structs.IOAS_MAP_READABLE),
    one('HWPT_ALLOC_NEST_PARENT', 'IOMMU_HWPT_ALLOC_NEST_PARENT', HWPT_ALLOC_NEST_PARENT),
    one('HWPT_ALLOC_DIRTY_TRACKING', 'IOMMU_HWPT_ALLOC_DIRTY_TRACKING', HWPT_ALLOC_DIRTY_TRACKING),
    one('HWPT_FAULT_ID_VALID', 'IOMMU_HWPT_FAULT_ID_VALID', HWPT_FAULT_ID_VALID),
    one('HWPT_ALLOC_PASID', 'IOMMU_HWPT_ALLOC_PASID', HWPT_ALLOC_PASID),
    ...group('VIOMMU_TYPE', 'IOMMU_VIOMMU_TYPE_', VIOMMU_TYPE),
    ...group('HWPT_DATA_TYPE', 'IOMMU_HWPT_DATA_', HWPT_DATA_TYPE),
    ...group('HW_INFO_TYPE', 'IOMMU_HW_INFO_TYPE_', HW_INFO_TYPE),
    ...group('IOMMU_TEST_OP', 'IOMMU_TEST_OP_', structs.IOMMU_TEST_OP),
    one('MOCK_FLAGS_DEVICE_NO_DIRTY', 'MOCK_FLAGS_DEVICE_NO_DIRTY', MOCK_FLAGS_DEVICE_NO_DIRTY),
    one('MOCK_FLAGS_DEVICE_PASID', 'MOCK_FLAGS_DEVICE_PASID', MOCK_FLAGS_DEVICE_PASID),
    one('VFIO_DEVICE_FLAGS_RESET', 'VFIO_DEVICE_FLAGS_RESET', structs.VFIO_DEVICE_FLAGS_RESET),
    one('VFIO_DEVICE_FLAGS_PCI', 'VFIO_DEVICE_FLAGS_PCI', structs.VFIO_DEVICE_FLAGS_PCI),
    one('VFIO_DEVICE_FLAGS_CAPS', 'VFIO_DEVICE_FLAGS_CAPS', structs.VFIO_DEVICE_FLAGS_CAPS),
    // Region access and the request IRQ (vfio-irq-structs.ts, device-request.ts): same spelling in C.
    ...(
      [
        'VFIO_REGION_INFO_FLAG_READ',
        'VFIO_REGION_INFO_FLAG_WRITE',
        'VFIO_REGION_INFO_FLAG_MMAP',
        'VFIO_PCI_BAR0_REGION_INDEX',
        'VFIO_PCI_CONFIG_REGION_INDEX',
        'VFIO_IRQ_INFO_EVENTFD',
        'VFIO_PCI_ERR_IRQ_INDEX',
        'VFIO_PCI_REQ_IRQ_INDEX',
        'VFIO_IRQ_SET_DATA_NONE',
        'VFIO_IRQ_SET_DATA_EVENTFD',
        'VFIO_IRQ_SET_ACTION_TRIGGER',
      ] as const
    ).map((name) => one(name, name, structs[name])),
  ];
}

/** The ioctl table as TS computes it for x86_64 (the lane's headers are x86's). */
export function allIoctls(): { name: string; value: number }[] {
  const numbers = ioctlNumbers('x64');
  return IOCTL_NAMES.map((name) => ({ name, value: numbers[name] }));
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;
const DESIGNATOR = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

export interface LayoutInput {
  codecs: readonly AnyCodec[];
  ioctls: readonly { name: string; value: number }[];
  constants: readonly ConstantDef[];
  special?: Readonly<Record<string, 'bitfield' | 'flex'>>;
  /** Headers to include after linux/types.h (default: the iommufd, VFIO and self-test headers). */
  headers?: readonly string[];
}

export const UAPI_HEADERS = ['linux/iommufd.h', 'linux/vfio.h', 'iommufd_test.h'] as const;

/** The C source. Also declares a pointer to each struct so the DWARF (-g) describes them for gdb-layout.ts. */
export function generateLayoutC(input: LayoutInput): string {
  const special = input.special ?? SPECIAL_FIELDS;
  const out: string[] = [];
  out.push(
    '/* Generated by test/kernel/layout/gen-layout-c.ts from the linux backend\'s TypeScript tables. Do not edit. */',
    '#include <stddef.h>',
    '#include <stdio.h>',
    '#include <string.h>',
    '#include <linux/types.h>',
    '#include <linux/ioctl.h>',
    ...(input.headers ?? UAPI_HEADERS).map((h) => `#include <${h}>`),
    '',
    '/* C type of a member; arrays decay to a pointer to their element, aggregates fall to default. */',
    '#define CTYPE(x) _Generic((x), \\',
    '  unsigned char: "u8", unsigned short: "u16", unsigned int: "u32", unsigned long: "u64", unsigned long long: "u64", \\',
    '  signed char: "s8", short: "s16", int: "s32", long: "s64", long long: "s64", char: "char", \\',
    '  unsigned char *: "u8[]", unsigned short *: "u16[]", unsigned int *: "u32[]", unsigned long *: "u64[]", \\',
    '  unsigned long long *: "u64[]", signed char *: "s8[]", char *: "char[]", int *: "s32[]", \\',
    '  default: "aggregate")',
    '#define FIELD(S, F, NAME) printf("field %s %s off=%zu size=%zu type=%s\\n", #S, NAME, \\',
    '  offsetof(struct S, F), sizeof(((struct S *)0)->F), CTYPE(((struct S *)0)->F))',
    '#define FLEX(S, F, NAME) printf("flex %s %s off=%zu\\n", #S, NAME, offsetof(struct S, F))',
    '',
    '/* A bitfield: set it to all ones in a zeroed struct and report the bits that changed. */',
    'static __attribute__((unused)) void bits(const char *s, const char *f, const unsigned char *p, size_t n) {',
    '  size_t first = (size_t)-1, last = 0;',
    '  for (size_t i = 0; i < n * 8; i++)',
    '    if (p[i / 8] & (1u << (i % 8))) { if (first == (size_t)-1) first = i; last = i; }',
    '  if (first == (size_t)-1) { printf("bitfield %s %s none\\n", s, f); return; }',
    '  printf("bitfield %s %s off=%zu size=%zu bit=%zu width=%zu\\n", s, f, first / 8, last / 8 - first / 8 + 1, first % 8, last - first + 1);',
    '}',
    '#define BITFIELD(S, F, NAME) do { struct S v; memset(&v, 0, sizeof v); v.F--; bits(#S, NAME, (const unsigned char *)&v, sizeof v); } while (0)',
    '',
  );
  for (const c of input.codecs) {
    if (!IDENT.test(c.name)) throw new Error(`codec name ${JSON.stringify(c.name)} is not a C identifier`);
    out.push(`struct ${c.name} *layout_type_${c.name};`);
  }
  out.push('', 'int main(void) {');
  for (const c of input.codecs) {
    out.push(`  printf("struct %s size=%zu align=%zu\\n", "${c.name}", sizeof(struct ${c.name}), _Alignof(struct ${c.name}));`);
    for (const field of Object.keys(c.fields)) {
      if (!DESIGNATOR.test(field)) throw new Error(`${c.name}.${field} is not a C member designator`);
      const how = special[`${c.name}.${field}`];
      const macro = how === 'bitfield' ? 'BITFIELD' : how === 'flex' ? 'FLEX' : 'FIELD';
      out.push(`  ${macro}(${c.name}, ${field}, "${field}");`);
    }
  }
  for (const { name } of input.ioctls) {
    if (!IDENT.test(name)) throw new Error(`ioctl name ${name} is not a C identifier`);
    // Macros: a name the headers lack is reported, not a compile error.
    out.push(
      `#ifdef ${name}`,
      `  printf("ioctl %s value=%lu\\n", "${name}", (unsigned long)(${name}));`,
      '#else',
      `  printf("ioctl %s missing\\n", "${name}");`,
      '#endif',
    );
  }
  for (const k of input.constants) {
    if (!IDENT.test(k.c)) throw new Error(`constant name ${k.c} is not a C identifier`);
    // Mostly enumerators (no #ifdef possible): a missing one is a compile error naming it.
    out.push(`  printf("const %s value=%llu\\n", "${k.c}", (unsigned long long)(${k.c}));`);
  }
  out.push('  return 0;', '}', '');
  return out.join('\n');
}

export interface CField {
  off: number;
  size: number;
  type: string;
  /** Bitfields: bit offset in the first byte and width. */
  bit?: number;
  width?: number;
  how: 'field' | 'bitfield' | 'flex';
}

export interface CLayout {
  structs: Map<string, { size: number; align: number; fields: Map<string, CField> }>;
  ioctls: Map<string, number | undefined>;
  constants: Map<string, number>;
}

/** Parses the program's output (one record per line, see generateLayoutC). */
export function parseLayoutOutput(text: string): CLayout {
  const layout: CLayout = { structs: new Map(), ioctls: new Map(), constants: new Map() };
  const kv = (rest: string[]): Record<string, string> => Object.fromEntries(rest.map((p) => p.split('=') as [string, string]));
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [tag, a, b, ...rest] = line.trim().split(/\s+/);
    if (tag === 'struct') {
      const v = kv([b!, ...rest]);
      layout.structs.set(a!, { size: Number(v['size']), align: Number(v['align']), fields: new Map() });
    } else if (tag === 'field' || tag === 'flex' || tag === 'bitfield') {
      const s = layout.structs.get(a!);
      if (!s) throw new Error(`layout output: ${tag} before its struct: ${line}`);
      const v = kv(rest);
      s.fields.set(b!, {
        off: rest[0] === 'none' ? -1 : Number(v['off']),
        size: tag === 'flex' ? 0 : Number(v['size'] ?? 0),
        type: tag === 'field' ? v['type']! : tag,
        ...(tag === 'bitfield' ? { bit: Number(v['bit']), width: Number(v['width']) } : {}),
        how: tag,
      });
    } else if (tag === 'ioctl') {
      layout.ioctls.set(a!, b === 'missing' ? undefined : Number(kv([b!])['value']));
    } else if (tag === 'const') {
      layout.constants.set(a!, Number(kv([b!])['value']));
    } else {
      throw new Error(`layout output: unexpected line ${JSON.stringify(line)}`);
    }
  }
  return layout;
}

const SCALAR_CTYPE: Record<Exclude<FieldKind, 'bytes'>, string> = { u8: 'u8', u16: 'u16', u32: 'u32', s32: 's32', u64: 'u64' };

export interface LayoutComparison {
  differences: string[];
  counts: {
    structs: number;
    fields: number;
    unionMembers: number;
    arrayOrAggregate: number;
    bitfields: number;
    flex: number;
    ioctls: number;
    constants: number;
  };
}

/** Every difference between the TS tables and the compiler's answer, one line each. */
export function compareLayout(input: LayoutInput, c: CLayout): LayoutComparison {
  const special = input.special ?? SPECIAL_FIELDS;
  const diffs: string[] = [];
  const counts = { structs: 0, fields: 0, unionMembers: 0, arrayOrAggregate: 0, bitfields: 0, flex: 0, ioctls: 0, constants: 0 };
  const usedSpecial = new Set<string>();
  for (const codec of input.codecs) {
    const cs = c.structs.get(codec.name);
    if (!cs) {
      diffs.push(`struct ${codec.name}: not printed by the C program`);
      continue;
    }
    counts.structs++;
    if (cs.size !== codec.full) diffs.push(`struct ${codec.name}: sizeof is ${cs.size} in C, full = ${codec.full} in TS`);
    if (codec.full % cs.align !== 0) diffs.push(`struct ${codec.name}: TS full ${codec.full} is not a multiple of the C alignment ${cs.align}`);
    const fields = Object.entries(codec.fields);
    for (const [name, ts] of fields) {
      const where = `${codec.name}.${name}`;
      const cf = cs.fields.get(name);
      if (!cf) {
        diffs.push(`${where}: not printed by the C program`);
        continue;
      }
      counts.fields++;
      const how = special[where];
      if (how) usedSpecial.add(where);
      if (fields.some(([other, o]) => other !== name && o.offset < ts.offset + ts.size && ts.offset < o.offset + o.size)) counts.unionMembers++;
      if (cf.how === 'bitfield') {
        counts.bitfields++;
        if (cf.off < 0) diffs.push(`${where}: bitfield probe found no bits`);
        else if (ts.offset > cf.off || ts.offset + ts.size < cf.off + cf.size) {
          diffs.push(`${where}: C bitfield spans bytes ${cf.off}..${cf.off + cf.size - 1} (bit ${cf.bit}, width ${cf.width}); TS field covers ${ts.offset}..${ts.offset + ts.size - 1}`);
        }
        continue;
      }
      if (cf.how === 'flex') {
        counts.flex++;
        if (cf.off !== ts.offset) diffs.push(`${where}: offsetof ${cf.off} in C, ${ts.offset} in TS`);
        if (ts.kind !== 'bytes' || ts.size !== 0) diffs.push(`${where}: a flexible array member must be bytes of size 0 in TS (is ${ts.kind} ${ts.size})`);
        continue;
      }
      if (cf.off !== ts.offset) diffs.push(`${where}: offsetof ${cf.off} in C, ${ts.offset} in TS`);
      if (cf.size !== ts.size) diffs.push(`${where}: sizeof ${cf.size} in C, ${ts.size} in TS`);
      if (ts.kind === 'bytes') {
        counts.arrayOrAggregate++;
        if (!(cf.type.endsWith('[]') || cf.type === 'aggregate')) diffs.push(`${where}: C type ${cf.type} is a scalar; TS says bytes`);
      } else if (cf.type !== SCALAR_CTYPE[ts.kind]) {
        diffs.push(`${where}: C type ${cf.type}, TS kind ${ts.kind}`);
      }
    }
  }
  for (const key of Object.keys(special)) if (!usedSpecial.has(key)) diffs.push(`SPECIAL_FIELDS lists ${key}, which no codec has`);
  for (const { name, value } of input.ioctls) {
    counts.ioctls++;
    if (!c.ioctls.has(name)) diffs.push(`ioctl ${name}: not printed by the C program`);
    else if (c.ioctls.get(name) === undefined) diffs.push(`ioctl ${name}: not defined by the headers`);
    else if (c.ioctls.get(name) !== value) {
      diffs.push(`ioctl ${name}: 0x${c.ioctls.get(name)!.toString(16)} in C, 0x${value.toString(16)} in TS (${JSON.stringify(IOCTL_DEFS[name as keyof typeof IOCTL_DEFS])})`);
    }
  }
  for (const k of input.constants) {
    counts.constants++;
    const v = c.constants.get(k.c);
    if (v === undefined) diffs.push(`constant ${k.c}: not printed by the C program`);
    else if (v !== k.value >>> 0 && v !== k.value) diffs.push(`constant ${k.c} = ${v} in C; ${k.ts} = ${k.value} in TS`);
  }
  return { differences: diffs, counts };
}

/**
 * ioctl macros the headers define (`#define NAME _IO(IOMMUFD_TYPE|VFIO_TYPE, ...)`,
 * possibly continued on the next line); for the informational "not in TS" list.
 */
export function ioctlMacrosInHeader(text: string): string[] {
  const names: string[] = [];
  for (const m of text.matchAll(/#define\s+([A-Z][A-Z0-9_]*)\s+(?:\\\s*\n\s*)?_IO\(\s*(?:IOMMUFD_TYPE|VFIO_TYPE)\b/g)) names.push(m[1]!);
  return names;
}
