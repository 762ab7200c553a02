/**
 * Protobuf decoding from a compiled plan (wire-plan.ts): the message
 * `fromBinary(schema, bytes)` gives, built as a copy of `create(schema)` and
 * filled field by field. The readers are protobuf-es's own (BinaryReader,
 * varint.js), ported to read from one buffer without a reader object per
 * message. Whatever this path does not take as it comes (an unknown field, a
 * wire type other than the field's, a singular field or oneof seen twice,
 * bytes past a length, invalid UTF-8, any error) sends the whole input to
 * `fromBinary`, whose result or error is then the answer.
 */
import { fromBinary, ScalarType, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { getTextEncoding } from '@bufbuild/protobuf/wire';
import { FALLBACK, fallbacks, planFor, subPlan, wireTypeOf, type DecoderCode, type FieldPlan, type Message, type Plan } from './wire-plan.js';

/** protobuf-es's default recursion limit. */
const MAX_DEPTH = 100;

const EMPTY = Buffer.alloc(0);
/** The input as a Buffer (a view, never a copy), for `toString('latin1')` on ASCII strings. */
let buf: Buffer = EMPTY;
let pos = 0;
let view: DataView | undefined;

function check(): void {
  if (pos > buf.length) throw FALLBACK;
}

/** varint32read (protobuf-es wire/varint.js). */
function uint32(): number {
  let b = buf[pos++]!;
  let result = b & 0x7f;
  if ((b & 0x80) === 0) return check(), result;
  b = buf[pos++]!;
  result |= (b & 0x7f) << 7;
  if ((b & 0x80) === 0) return check(), result;
  b = buf[pos++]!;
  result |= (b & 0x7f) << 14;
  if ((b & 0x80) === 0) return check(), result;
  b = buf[pos++]!;
  result |= (b & 0x7f) << 21;
  if ((b & 0x80) === 0) return check(), result;
  b = buf[pos++]!;
  result |= (b & 0x0f) << 28;
  for (let read = 5; (b & 0x80) !== 0 && read < 10; read++) b = buf[pos++]!;
  if ((b & 0x80) !== 0) throw FALLBACK;
  check();
  return result >>> 0;
}

/** varint64read: the low and high 32 bits. */
function varint64(): [number, number] {
  let lo = 0;
  let hi = 0;
  for (let shift = 0; shift < 28; shift += 7) {
    const b = buf[pos++]!;
    lo |= (b & 0x7f) << shift;
    if ((b & 0x80) === 0) return check(), [lo, hi];
  }
  const middle = buf[pos++]!;
  lo |= (middle & 0x0f) << 28;
  hi = (middle & 0x70) >> 4;
  if ((middle & 0x80) === 0) return check(), [lo, hi];
  for (let shift = 3; shift <= 31; shift += 7) {
    const b = buf[pos++]!;
    hi |= (b & 0x7f) << shift;
    if ((b & 0x80) === 0) return check(), [lo, hi];
  }
  throw FALLBACK;
}

const scratch = new DataView(new ArrayBuffer(8));

function int64Of(lo: number, hi: number, signed: boolean): bigint {
  // Small non-negative values (handles, sizes) need no DataView round trip.
  if (hi === 0 && lo >= 0) return BigInt(lo);
  scratch.setInt32(0, lo, true);
  scratch.setInt32(4, hi, true);
  return signed ? scratch.getBigInt64(0, true) : scratch.getBigUint64(0, true);
}

function fixedView(n: number): DataView {
  if (pos + n > buf.length) throw FALLBACK;
  return (view ??= new DataView(buf.buffer, buf.byteOffset, buf.byteLength));
}

/** Reads a length and steps over that many bytes; returns where they start (they end at `pos`). */
function skipDelimited(): number {
  const len = uint32();
  const start = pos;
  pos += len;
  check();
  return start;
}

function lengthDelimited(): Uint8Array {
  const start = skipDelimited();
  return buf.subarray(start, pos);
}

/** Up to this many bytes, an ASCII check and a latin1 copy beat TextDecoder. */
const ASCII_FAST_BYTES = 128;

function readString(strict: boolean): string {
  const start = skipDelimited();
  // Most strings here are IDs and names in ASCII, where latin1 is UTF-8. Both ways give one flat
  // string (a string built a character at a time is a rope, which every later regex test or Map
  // lookup first has to flatten); the latin1 copy skips TextDecoder's setup and the subarray view,
  // about 200 ns a string.
  if (pos - start <= ASCII_FAST_BYTES) {
    let ascii = true;
    for (let i = start; i < pos; i++) {
      if (buf[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) return buf.toString('latin1', start, pos);
  }
  // protobuf-es's own decoder, as fromBinary.
  return getTextEncoding().decodeUtf8(buf.subarray(start, pos), strict);
}

function readScalar(t: ScalarType, strict: boolean): unknown {
  switch (t) {
    case ScalarType.STRING:
      return readString(strict);
    case ScalarType.BOOL: {
      const [lo, hi] = varint64();
      return lo !== 0 || hi !== 0;
    }
    case ScalarType.INT32:
      return uint32() | 0;
    case ScalarType.UINT32:
      return uint32();
    case ScalarType.SINT32: {
      const z = uint32();
      return (z >>> 1) ^ -(z & 1);
    }
    case ScalarType.INT64: {
      const [lo, hi] = varint64();
      return int64Of(lo, hi, true);
    }
    case ScalarType.UINT64: {
      const [lo, hi] = varint64();
      return int64Of(lo, hi, false);
    }
    case ScalarType.SINT64: {
      let [lo, hi] = varint64();
      const s = -(lo & 1);
      lo = ((lo >>> 1) | ((hi & 1) << 31)) ^ s;
      hi = (hi >>> 1) ^ s;
      return int64Of(lo, hi, true);
    }
    case ScalarType.BYTES:
      return lengthDelimited();
    case ScalarType.FIXED32:
      return fixedView(4).getUint32((pos += 4) - 4, true);
    case ScalarType.SFIXED32:
      return fixedView(4).getInt32((pos += 4) - 4, true);
    case ScalarType.FLOAT:
      return fixedView(4).getFloat32((pos += 4) - 4, true);
    case ScalarType.DOUBLE:
      return fixedView(8).getFloat64((pos += 8) - 8, true);
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64: {
      const v = fixedView(8);
      const lo = v.getInt32(pos, true);
      const hi = v.getInt32(pos + 4, true);
      pos += 8;
      return int64Of(lo, hi, t === ScalarType.SFIXED64);
    }
  }
}

/**
 * The decoder's per-type code, generated once per plan: a fresh copy of
 * `create(schema)` as one object literal (same members, same order), and a
 * reader that stores each singular non-oneof field under its own name. A loop
 * over `m[p.name]` made every store a megamorphic keyed store. The source is
 * built from the descriptors' property names only (quoted with
 * JSON.stringify), never from input bytes; lists, oneofs and anything else go
 * through readField as before.
 */
function compile(plan: Plan): DecoderCode {
  const members = Object.keys(plan.template).map((name, i) => {
    const kind = plan.fresh.find((f) => f.name === name)?.kind;
    const value = kind === 'list' ? '[]' : kind === 'oneof' ? '{ case: undefined }' : kind === 'bytes' ? 'new Uint8Array(0)' : `template[${i}]`;
    return `${JSON.stringify(name)}: ${value}`;
  });
  const cases = plan.fields.map((p, i) => {
    if (p.list || p.oneof !== undefined) return `case ${p.field.number}: return readField(fields[${i}], tag & 7, m, depth);`;
    const key = JSON.stringify(p.name);
    const value = p.message !== undefined ? `readNested(fields[${i}], depth)` : `readScalar(${p.scalar!}, ${p.field.utf8Validation ? 'true' : 'false'})`;
    return [
      `case ${p.field.number}:`,
      `  if ((tag & 7) !== ${p.wireType}) throw FALLBACK;`,
      // A singular message seen twice is merged by protobuf-es.
      ...(p.message !== undefined ? [`  if (m[${key}] !== undefined) throw FALLBACK;`] : []),
      `  m[${key}] = ${value};`,
      '  return;',
    ].join('\n');
  });
  const make = new Function(
    'FALLBACK',
    'template',
    'fields',
    'readField',
    'readNested',
    'readScalar',
    `return {
  zero: () => ({ ${members.join(', ')} }),
  read(m, tag, depth) {
    switch (tag >>> 3) {
${cases.join('\n')}
    }
    throw FALLBACK; // unknown field: fromBinary keeps it in $unknown
  },
};`,
  ) as (...args: unknown[]) => DecoderCode;
  return make(FALLBACK, Object.values(plan.template), plan.fields, readField, readNested, readScalar);
}

function readMessage(plan: Plan, end: number, depth: number): Message {
  if (depth > MAX_DEPTH || end > buf.length) throw FALLBACK;
  const compiled = (plan.decoder ??= compile(plan));
  const m = compiled.zero();
  while (pos < end) {
    const start = pos;
    const tag = uint32();
    // protobuf-es refuses tags that overflow uint32, field number 0 and wire types above 5.
    if (pos - start > 5 || (pos - start === 5 && buf[pos - 1]! > 0x0f)) throw FALLBACK;
    compiled.read(m, tag, depth);
  }
  if (pos !== end) throw FALLBACK;
  return m;
}

function readNested(p: FieldPlan, depth: number): Message {
  const len = uint32();
  return readMessage(subPlan(p), pos + len, depth + 1);
}

function readField(p: FieldPlan, wireType: number, m: Message, depth: number): void {
  const strict = p.field.utf8Validation;
  if (p.list) {
    const list = m[p.name] as unknown[];
    if (p.message !== undefined) {
      if (wireType !== 2) throw FALLBACK;
      list.push(readNested(p, depth));
      return;
    }
    const own = wireTypeOf(p.scalar!);
    if (wireType === 2 && own !== 2) {
      // Packed, whatever the field's own packing: readers accept both.
      const end = uint32() + pos;
      if (end > buf.length) throw FALLBACK;
      while (pos < end) list.push(readScalar(p.scalar!, strict));
      if (pos !== end) throw FALLBACK;
      return;
    }
    if (wireType !== own) throw FALLBACK;
    list.push(readScalar(p.scalar!, strict));
    return;
  }
  if (wireType !== p.wireType) throw FALLBACK;
  const value = p.message !== undefined ? readNested(p, depth) : readScalar(p.scalar!, strict);
  if (p.oneof !== undefined) {
    // A second member (or the same one again) replaces or merges in protobuf-es: its call.
    if ((m[p.oneof] as { case: unknown }).case !== undefined) throw FALLBACK;
    m[p.oneof] = { case: p.name, value };
    return;
  }
  // A singular message seen twice is merged by protobuf-es.
  if (p.message !== undefined && m[p.name] !== undefined) throw FALLBACK;
  m[p.name] = value;
}

/** `fromBinary(schema, bytes)`. */
export function decodeMessage<Desc extends DescMessage>(schema: Desc, bytes: Uint8Array): MessageShape<Desc> {
  const plan = planFor(schema);
  if (plan) {
    buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    pos = 0;
    view = undefined;
    try {
      return readMessage(plan, bytes.length, 1) as MessageShape<Desc>;
    } catch {
      // FALLBACK, or an error protobuf-es will raise in its own words (e.g. invalid UTF-8).
    } finally {
      // Let go of the caller's bytes.
      buf = EMPTY;
      view = undefined;
    }
  }
  fallbacks.decode++;
  return fromBinary(schema, bytes);
}
