/**
 * Protobuf encoding from a compiled plan (wire-plan.ts): the bytes of
 * `toBinary(schema, create(schema, message))` without protobuf-es's
 * reflection, chunk arrays and per-string TextEncoder calls. Values outside
 * what the field allows, unknown fields and unsupported schemas go to
 * protobuf-es, so its bytes and its errors stay the reference.
 */
import { create, isMessage, ScalarType, toBinary, type DescMessage } from '@bufbuild/protobuf';
import { FLOAT32_MAX, FLOAT32_MIN, getTextEncoding, INT32_MAX, INT32_MIN, UINT32_MAX } from '@bufbuild/protobuf/wire';
import { FALLBACK, fallbacks, planFor, subPlan, type FieldPlan, type Message, type Plan } from './wire-plan.js';

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

let out = new Uint8Array(4096);
let at = 0;
/** Fixed-width values are written little-endian through this scratch space. */
const scratch = new Uint8Array(8);
const view = new DataView(scratch.buffer);

function room(n: number): void {
  if (at + n <= out.length) return;
  const next = new Uint8Array(Math.max(out.length * 2, at + n));
  next.set(out.subarray(0, at));
  out = next;
}

function varint(v: number): void {
  room(5);
  while (v > 0x7f) {
    out[at++] = (v & 0x7f) | 0x80;
    v = v >>> 7;
  }
  out[at++] = v;
}

function varintBig(v: bigint): void {
  if (v <= 0xffffffffn) return varint(Number(v));
  room(10);
  while (v > 0x7fn) {
    out[at++] = Number(v & 0x7fn) | 0x80;
    v >>= 7n;
  }
  out[at++] = Number(v);
}

function int32(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < INT32_MIN || v > INT32_MAX) throw FALLBACK;
  return v;
}

function uint32(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > UINT32_MAX) throw FALLBACK;
  return v;
}

function bigint(v: unknown, min: bigint, max: bigint): bigint {
  if (typeof v !== 'bigint' || v < min || v > max) throw FALLBACK;
  return v;
}

function raw(bytes: Uint8Array): void {
  room(bytes.length);
  out.set(bytes, at);
  at += bytes.length;
}

function writeString(s: unknown): void {
  if (typeof s !== 'string') throw FALLBACK;
  const n = s.length;
  const lengthAt = at;
  varint(n);
  room(n);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) {
      // Not ASCII: protobuf-es's own encoder (it replaces lone surrogates), then copy.
      at = lengthAt;
      const bytes = getTextEncoding().encodeUtf8(s);
      varint(bytes.length);
      raw(bytes);
      return;
    }
    out[at + i] = c;
  }
  at += n;
}

function writeScalar(t: ScalarType, v: unknown): void {
  switch (t) {
    case ScalarType.STRING:
      return writeString(v);
    case ScalarType.BOOL:
      if (typeof v !== 'boolean') throw FALLBACK;
      room(1);
      out[at++] = v ? 1 : 0;
      return;
    case ScalarType.INT32: {
      let x = int32(v);
      if (x >= 0) return varint(x);
      room(10);
      for (let i = 0; i < 9; i++) {
        out[at++] = (x & 127) | 128;
        x = x >> 7;
      }
      out[at++] = 1;
      return;
    }
    case ScalarType.UINT32:
      return varint(uint32(v));
    case ScalarType.SINT32: {
      const x = int32(v);
      return varint(((x << 1) ^ (x >> 31)) >>> 0);
    }
    case ScalarType.UINT64:
      return varintBig(bigint(v, 0n, UINT64_MAX));
    case ScalarType.INT64:
      return varintBig(BigInt.asUintN(64, bigint(v, INT64_MIN, INT64_MAX)));
    case ScalarType.SINT64: {
      const x = bigint(v, INT64_MIN, INT64_MAX);
      return varintBig(BigInt.asUintN(64, (x << 1n) ^ (x >> 63n)));
    }
    case ScalarType.BYTES:
      if (!(v instanceof Uint8Array)) throw FALLBACK;
      varint(v.byteLength);
      return raw(v);
    case ScalarType.DOUBLE:
      if (typeof v !== 'number') throw FALLBACK;
      view.setFloat64(0, v, true);
      return raw(scratch);
    case ScalarType.FLOAT:
      if (typeof v !== 'number' || (Number.isFinite(v) && (v > FLOAT32_MAX || v < FLOAT32_MIN))) throw FALLBACK;
      view.setFloat32(0, v, true);
      return raw(scratch.subarray(0, 4));
    case ScalarType.FIXED32:
      view.setUint32(0, uint32(v), true);
      return raw(scratch.subarray(0, 4));
    case ScalarType.SFIXED32:
      view.setInt32(0, int32(v), true);
      return raw(scratch.subarray(0, 4));
    case ScalarType.FIXED64:
      view.setBigUint64(0, bigint(v, 0n, UINT64_MAX), true);
      return raw(scratch);
    case ScalarType.SFIXED64:
      view.setBigInt64(0, bigint(v, INT64_MIN, INT64_MAX), true);
      return raw(scratch);
  }
}

/** A zero value (not written under implicit presence), as isScalarZeroValue decides. */
function isZero(t: ScalarType, v: unknown): boolean {
  switch (t) {
    case ScalarType.BOOL:
      return v === false;
    case ScalarType.STRING:
      return v === '';
    case ScalarType.BYTES:
      return v instanceof Uint8Array && v.byteLength === 0;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return Object.is(v, 0);
    default:
      return v == 0; // 0n, 0 and "0", like protobuf-es
  }
}

/** Reserves one byte for the length of what follows; returns where it is, for `endDelimited`. */
function beginDelimited(): number {
  room(1);
  return at++;
}

/** Writes the length of the bytes since `beginDelimited`, moving them if it needs more than one byte. */
function endDelimited(lengthAt: number): void {
  const start = lengthAt + 1;
  const len = at - start;
  if (len < 0x80) {
    out[lengthAt] = len;
    return;
  }
  let size = 1;
  for (let x = len; x > 0x7f; x >>>= 7) size++;
  room(size - 1);
  out.copyWithin(start + size - 1, start, at);
  at = lengthAt;
  varint(len);
  at = start + size - 1 + len;
}

function writeNested(tag: number, sub: Plan, item: unknown): void {
  if (typeof item !== 'object' || item === null) throw FALLBACK;
  varint(tag);
  const lengthAt = beginDelimited();
  writeMessage(sub, item as Message);
  endDelimited(lengthAt);
}

function writeMessage(plan: Plan, msg: Message): void {
  (plan.write ??= compileWriter(plan))(msg);
}

/**
 * The field loop of one message type, generated once: the same checks, in the
 * same order, for every field of the plan, but reading each property by its
 * own name. A loop over `msg[p.name]` makes every read a megamorphic keyed
 * load, which cost more than the writing itself. The source is built from the
 * descriptors' property names only (quoted with JSON.stringify), never from
 * message data.
 */
function compileWriter(plan: Plan): (msg: Message) => void {
  const body = ['const unknown = msg.$unknown;', 'if (unknown !== undefined && unknown.length > 0) throw FALLBACK;', 'let v;'];
  plan.fields.forEach((p, i) => {
    const key = JSON.stringify(p.name);
    if (p.oneof !== undefined) {
      body.push(
        `v = msg[${JSON.stringify(p.oneof)}];`,
        `if (v !== undefined && v.case === ${key}) {`,
        '  v = v.value;',
        '  if (v === undefined || v === null) throw FALLBACK;',
        `  writeField(fields[${i}], v);`,
        '}',
      );
      return;
    }
    body.push(`v = msg[${key}];`, 'if (v !== undefined) {', '  if (v === null) throw FALLBACK;');
    if (p.list) {
      body.push('  if (!Array.isArray(v)) throw FALLBACK;', `  if (v.length !== 0) writeField(fields[${i}], v);`);
    } else if (p.message !== undefined) {
      body.push(`  writeField(fields[${i}], v);`);
    } else if (p.implicit) {
      body.push(`  if (!isZero(${p.scalar!}, v)) writeField(fields[${i}], v);`);
    } else {
      body.push(`  if (hasOwn.call(msg, ${key})) writeField(fields[${i}], v);`);
    }
    body.push('}');
  });
  const make = new Function('FALLBACK', 'writeField', 'fields', 'isZero', 'hasOwn', `return function write(msg) {\n${body.join('\n')}\n};`) as (
    ...args: unknown[]
  ) => (msg: Message) => void;
  return make(FALLBACK, writeField, plan.fields, isZero, Object.prototype.hasOwnProperty);
}

function writeField(p: FieldPlan, v: unknown): void {
  if (p.message !== undefined) {
    const sub = subPlan(p);
    if (!p.list) return writeNested(p.tag, sub, v);
    for (const item of v as unknown[]) writeNested(p.tag, sub, item);
    return;
  }
  if (!p.list) {
    varint(p.tag);
    return writeScalar(p.scalar!, v);
  }
  const items = v as unknown[];
  if (p.packed) {
    varint(p.tag);
    const lengthAt = beginDelimited();
    for (const item of items) writeScalar(p.scalar!, item);
    endDelimited(lengthAt);
    return;
  }
  for (const item of items) {
    varint(p.tag);
    writeScalar(p.scalar!, item);
  }
}

/**
 * The message's bytes, as `toBinary(schema, create(schema, message))`. Takes
 * a message or an init shape (a handler's plain result), so a response needs
 * no `create()` just to be serialized.
 */
export function encodeMessage(schema: DescMessage, message: object): Buffer {
  const plan = planFor(schema);
  if (plan) {
    at = 0;
    try {
      writeMessage(plan, message as Message);
      const bytes = Buffer.allocUnsafe(at);
      bytes.set(out.subarray(0, at));
      return bytes;
    } catch (err) {
      if (err !== FALLBACK) throw err;
    }
  }
  fallbacks.encode++;
  const full = isMessage(message, schema) ? message : create(schema, message as never);
  const bytes = toBinary(schema, full);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
