/**
 * Compiled protobuf codecs for the messages on every call's path: the plan
 * both directions share (wire-encode.ts, wire-decode.ts).
 *
 * protobuf-es 2 encodes and decodes by reflection: a wrapper object per
 * (nested) message, a try block per scalar, a chunk array per nested message
 * and a TextEncoder call per string. For ApplyTopology's 23-step request and
 * response that was most of the daemon's CPU time in the bench's topology rounds. These
 * codecs are built once per message type from the same descriptors and give
 * the same bytes as `toBinary` and the same message objects as `fromBinary`.
 * Anything outside the proto3 subset the API uses (maps, groups, closed enums,
 * 64-bit fields as strings, unknown fields) and anything unusual in a message
 * or on the wire (out-of-range values, a repeated singular field, malformed
 * input) goes to protobuf-es itself, so its results and errors stay exactly
 * its own. test/unit/wire-codec.test.ts checks the equivalence on random
 * messages and corrupted bytes of every type the services carry.
 */
import { create, ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';

/** Thrown (and caught: it never leaves the codec) when a message or input needs protobuf-es's own path. */
export const FALLBACK: unique symbol = Symbol('fallback');
const IMPLICIT = 2; // google.protobuf.FeatureSet.FieldPresence.IMPLICIT
const EDITION_PROTO3 = 999;

export type Message = Record<string, unknown>;

/** How often each direction handed a message to protobuf-es (tests check the fast path is taken). */
export const fallbacks = { encode: 0, decode: 0 };

export interface FieldPlan {
  field: DescField;
  name: string;
  /** The oneof's property, when the field is a member of one. */
  oneof: string | undefined;
  /** Wire type the field's values are written with (2 for packed lists). */
  wireType: number;
  scalar: ScalarType | undefined;
  message: DescMessage | undefined;
  /** The message field's own plan, looked up on first use (types may refer to each other). */
  sub?: Plan;
  list: boolean;
  packed: boolean;
  /** Implicit presence: a zero value is not written. */
  implicit: boolean;
  tag: number;
}

export interface Plan {
  fields: FieldPlan[];
  /** `create(schema)`, copied for every decoded message (its mutable members made fresh). */
  template: Message;
  fresh: { name: string; kind: 'list' | 'oneof' | 'bytes' }[];
  /** The generated field loop of the encoder (wire-encode.ts), made on first use. */
  write?: (msg: Message) => void;
  /** The generated parts of the decoder (wire-decode.ts), made on first use. */
  decoder?: DecoderCode;
}

/** A message type's generated decoder: a fresh `create(schema)` copy, and the reader of one field by tag. */
export interface DecoderCode {
  zero: () => Message;
  read: (m: Message, tag: number, depth: number) => void;
}

const plans = new Map<DescMessage, Plan | undefined>();

export function wireTypeOf(t: ScalarType): number {
  switch (t) {
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 1;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 5;
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return 2;
    default:
      return 0;
  }
}

/** The plan of a message field's type; only called for fields of a supported plan, so it exists. */
export function subPlan(p: FieldPlan): Plan {
  return (p.sub ??= planFor(p.message!)!);
}

/** The plan for a schema, or undefined when it (or a message it contains) is outside the subset. */
export function planFor(schema: DescMessage, seen?: Set<DescMessage>): Plan | undefined {
  // Every encode and decode asks: a cached plan costs one lookup, no allocation.
  const cached = plans.get(schema);
  if (cached !== undefined || plans.has(schema)) return cached;
  seen ??= new Set();
  if (seen.has(schema)) return undefined; // recursive types go to protobuf-es
  seen.add(schema);
  let plan: Plan | undefined;
  const ok =
    schema.file.edition === EDITION_PROTO3 &&
    schema.fields.every(
      (f) =>
        f.fieldKind !== 'map' &&
        !('delimitedEncoding' in f && f.delimitedEncoding) &&
        !(f.fieldKind === 'scalar' && f.longAsString) &&
        !(f.fieldKind === 'list' && f.listKind === 'scalar' && f.longAsString) &&
        !((f.fieldKind === 'enum' || (f.fieldKind === 'list' && f.listKind === 'enum')) && !f.enum.open) &&
        !((f.fieldKind === 'message' || (f.fieldKind === 'list' && f.listKind === 'message')) && !planFor(f.message, seen)),
    );
  if (ok) {
    const fields = [...schema.fields].sort((a, b) => a.number - b.number).map(fieldPlan);
    const template = create(schema) as unknown as Message;
    const fresh: Plan['fresh'] = [];
    for (const [name, v] of Object.entries(template)) {
      if (Array.isArray(v)) fresh.push({ name, kind: 'list' });
      else if (v instanceof Uint8Array) fresh.push({ name, kind: 'bytes' });
      else if (typeof v === 'object' && v !== null) fresh.push({ name, kind: 'oneof' });
    }
    plan = { fields, template, fresh };
  }
  plans.set(schema, plan);
  return plan;
}

function fieldPlan(f: DescField): FieldPlan {
  const scalar = f.fieldKind === 'scalar' || (f.fieldKind === 'list' && f.listKind === 'scalar') ? f.scalar : f.fieldKind === 'enum' || (f.fieldKind === 'list' && f.listKind === 'enum') ? ScalarType.INT32 : undefined;
  const message = f.fieldKind === 'message' || (f.fieldKind === 'list' && f.listKind === 'message') ? f.message : undefined;
  const list = f.fieldKind === 'list';
  const packed = list && f.packed;
  const wireType = message || packed ? 2 : wireTypeOf(scalar!);
  return { field: f, name: f.localName, oneof: f.oneof?.localName, wireType, scalar, message, list, packed, implicit: f.presence === IMPLICIT, tag: ((f.number << 3) | wireType) >>> 0 };
}
