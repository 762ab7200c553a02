/**
 * Random protobuf-es messages of any schema, from a seed: every field kind,
 * zero and extreme values, non-ASCII and invalid-UTF-16 strings, unknown enum
 * numbers; and plain init shapes of them. For the codec and validation tests.
 */
import { create, ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { mulberry32 } from '../../src/kernel/sim/faults.js';

export type Rnd = () => number;

/** The sim's fault-schedule PRNG: seeded, so a failing random message can be reproduced. */
export const prng: (seed: number) => Rnd = mulberry32;

export const pick = <T>(rnd: Rnd, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;

const STRINGS = ['', 'a', 'ctx-0123456789abcdef01234567', '0000:10:01.0', 'x'.repeat(65), 'y'.repeat(300), 'é', 'naïve-步骤', '😀', '\ud800', 'a\u0000b'];
const I32 = [0, 1, -1, 127, 128, 300, 2 ** 31 - 1, -(2 ** 31), -129];
const U32 = [0, 1, 127, 128, 16383, 16384, 2 ** 32 - 1, 2 ** 31];
const I64 = [0n, 1n, -1n, 127n, 128n, 2n ** 32n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n)];
const U64 = [0n, 1n, 127n, 128n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 63n, 2n ** 64n - 1n];
const FLOATS = [0, -0, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -3.25, 3.4e38, 1e-40];
const DOUBLES = [0, -0, 0.1, 1e300, Number.NaN, Number.NEGATIVE_INFINITY, -2.5];

function scalar(rnd: Rnd, t: ScalarType): unknown {
  switch (t) {
    case ScalarType.STRING:
      return pick(rnd, STRINGS);
    case ScalarType.BOOL:
      return rnd() < 0.5;
    case ScalarType.BYTES:
      return Uint8Array.from({ length: pick(rnd, [0, 1, 8, 127, 128, 200]) }, () => Math.floor(rnd() * 256));
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return pick(rnd, I32);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return pick(rnd, U32);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return pick(rnd, I64);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return pick(rnd, U64);
    case ScalarType.FLOAT:
      return pick(rnd, FLOATS);
    case ScalarType.DOUBLE:
      return pick(rnd, DOUBLES);
  }
}

function value(rnd: Rnd, f: DescField, depth: number): unknown {
  switch (f.fieldKind) {
    case 'scalar':
      return scalar(rnd, f.scalar);
    case 'enum':
      return rnd() < 0.9 ? pick(rnd, f.enum.values).number : pick(rnd, [77, -5]);
    case 'message':
      return randomMessage(rnd, f.message, depth + 1);
    case 'list': {
      const n = pick(rnd, [0, 1, 2, 5]);
      return Array.from({ length: n }, () =>
        f.listKind === 'scalar' ? scalar(rnd, f.scalar) : f.listKind === 'enum' ? pick(rnd, f.enum.values).number : randomMessage(rnd, f.message, depth + 1),
      );
    }
    case 'map':
      return {};
  }
}

export function randomMessage(rnd: Rnd, schema: DescMessage, depth = 0): Record<string, unknown> {
  const m = create(schema) as unknown as Record<string, unknown>;
  for (const oneof of schema.oneofs) {
    if (rnd() < 0.3) continue;
    const f = pick(rnd, oneof.fields);
    if (f.fieldKind === 'message' && depth > 4) continue;
    m[oneof.localName] = { case: f.localName, value: value(rnd, f, depth) };
  }
  for (const f of schema.fields) {
    if (f.oneof || rnd() < 0.35) continue;
    if (depth > 4 && (f.fieldKind === 'message' || f.fieldKind === 'list')) continue;
    m[f.localName] = value(rnd, f, depth);
  }
  return m;
}

/** A plain init shape: no $typeName anywhere, and zero or empty fields left out at random. */
export function initShape(rnd: Rnd, v: unknown): unknown {
  if (Array.isArray(v)) return v.map((x) => initShape(rnd, x));
  if (v === null || typeof v !== 'object' || v instanceof Uint8Array) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === '$typeName') continue;
    const empty = x === '' || x === 0 || x === 0n || x === false || (Array.isArray(x) && x.length === 0) || (typeof x === 'object' && x !== null && 'case' in x && x.case === undefined);
    if (empty && rnd() < 0.5) continue;
    out[k] = initShape(rnd, x);
  }
  return out;
}
