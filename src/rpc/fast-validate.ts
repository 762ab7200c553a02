/**
 * A compiled first pass over the buf.validate rules of a request: it answers
 * "certainly valid" or "ask protovalidate". Every request is still held to
 * every rule; protovalidate (validation.ts) runs whenever this pass is not
 * sure, so refusals, their wording and every rule not listed here stay
 * protovalidate's.
 *
 * Why: protovalidate evaluates rules through a generic planner over
 * reflection, a few µs per message, which for a 23-step ApplyTopology was a
 * visible share of the daemon's CPU. The API's requests use a few standard
 * rules; those are compiled here once per message type into plain checks.
 * Each check is at least as strict as its rule (`max_len` counts UTF-16
 * units, never fewer than code points), so "certainly valid" here implies
 * valid there; test/unit/fast-validate.test.ts checks that on random
 * messages. A message type using anything else (CEL, `ignore`, message-level
 * rules, other standard rules, predefined rules) is never answered here.
 */
import { getOption, hasOption, isFieldSet, type DescField, type DescMessage, type Message } from '@bufbuild/protobuf';
import {
  BytesRulesSchema,
  EnumRulesSchema,
  field as fieldRulesExt,
  FieldRulesSchema,
  message as messageRulesExt,
  oneof as oneofRulesExt,
  OneofRulesSchema,
  RepeatedRulesSchema,
  StringRulesSchema,
  UInt32RulesSchema,
  UInt64RulesSchema,
  type FieldRules,
} from '@bufbuild/protovalidate/gen/buf/validate/validate_pb.js';
import { regexMatch } from './validation.js';

type Value = Record<string, unknown>;
/** True when what it checks is certainly valid. */
type Check = (m: Value) => boolean;
type ValueCheck = (v: unknown) => boolean;

const compiled = new Map<DescMessage, Check | null>();
const ASCII = /^[\x00-\x7f]*$/;

/** Whether only the `allowed` fields of a rules message are set (and no predefined-rule extensions). */
function only(schema: DescMessage, rules: Message, allowed: readonly string[]): boolean {
  if ((rules as { $unknown?: unknown[] }).$unknown?.length) return false;
  return schema.fields.every((f) => !isFieldSet(rules as never, f) || allowed.includes(f.localName));
}

/**
 * A rule's value when it is set. The rules messages are proto2: an unset
 * field reads its default through the prototype, so presence is asked for.
 */
function ruleOf<T>(schema: DescMessage, rules: Message, name: string): T | undefined {
  const f = schema.fields.find((x) => x.localName === name)!;
  return isFieldSet(rules as never, f) ? ((rules as unknown as Record<string, T>)[name] as T) : undefined;
}

/** The check for a value under its field's type rules; null when a rule is outside this pass. */
function typeCheck(rules: FieldRules): ValueCheck | null {
  const t = rules.type;
  switch (t.case) {
    case undefined:
      return () => true;
    case 'string': {
      const r = t.value;
      if (!only(StringRulesSchema, r, ['maxLen', 'maxBytes', 'pattern'])) return null;
      const maxLen = Number(ruleOf<bigint>(StringRulesSchema, r, 'maxLen') ?? Infinity);
      const maxBytes = Number(ruleOf<bigint>(StringRulesSchema, r, 'maxBytes') ?? Infinity);
      const pattern = ruleOf<string>(StringRulesSchema, r, 'pattern');
      return (v) => {
        if (typeof v !== 'string' || v.length > maxLen) return false;
        // A UTF-16 unit is at most 3 UTF-8 bytes; ASCII is exactly 1.
        if (v.length * 3 > maxBytes && !(v.length <= maxBytes && ASCII.test(v))) return false;
        return pattern === undefined || regexMatch(pattern, v);
      };
    }
    case 'bytes': {
      const r = t.value;
      if (!only(BytesRulesSchema, r, ['maxLen'])) return null;
      const maxLen = Number(ruleOf<bigint>(BytesRulesSchema, r, 'maxLen') ?? Infinity);
      return (v) => v instanceof Uint8Array && v.byteLength <= maxLen;
    }
    case 'uint32':
    case 'uint64': {
      const r = t.value;
      if (!only(t.case === 'uint32' ? UInt32RulesSchema : UInt64RulesSchema, r, ['lt', 'lte', 'gt', 'gte'])) return null;
      const lt = r.lessThan;
      const gt = r.greaterThan;
      // Both bounds can mean an excluded range in protovalidate: not here (the API uses one).
      if (lt.case !== undefined && gt.case !== undefined) return null;
      return (v) => {
        if (typeof v !== (t.case === 'uint32' ? 'number' : 'bigint')) return false;
        const x = v as number | bigint;
        if (lt.case === 'lt' && !(x < lt.value)) return false;
        if (lt.case === 'lte' && !(x <= lt.value)) return false;
        if (gt.case === 'gt' && !(x > gt.value)) return false;
        if (gt.case === 'gte' && !(x >= gt.value)) return false;
        return true;
      };
    }
    default:
      return null;
  }
}

/** Whether a field's value is its zero value (unset, for implicit presence). */
function isZero(f: DescField, v: unknown): boolean {
  if (f.fieldKind === 'list') return (v as unknown[]).length === 0;
  if (f.fieldKind === 'message') return v === undefined;
  if (f.fieldKind === 'enum') return v === 0;
  return v === '' || v === 0 || v === 0n || v === false || (v instanceof Uint8Array && v.byteLength === 0);
}

/** The check for one field (not in a oneof): null when it is outside this pass, undefined when there is nothing to check. */
function fieldCheck(f: DescField, seen: Set<DescMessage>): Check | null | undefined {
  const rules = hasOption(f, fieldRulesExt) ? getOption(f, fieldRulesExt) : undefined;
  if (rules && !only(FieldRulesSchema, rules, ['required', 'string', 'bytes', 'uint32', 'uint64', 'enum', 'repeated'])) return null;
  const name = f.localName;
  const nested = f.fieldKind === 'message' || (f.fieldKind === 'list' && f.listKind === 'message') ? compile(f.message, seen) : undefined;
  if (nested === null) return null;
  const checks: ((v: unknown) => boolean)[] = [];
  if (rules && ruleOf<boolean>(FieldRulesSchema, rules, 'required') === true) checks.push((v) => !isZero(f, v));
  if (rules && rules.type.case !== undefined) {
    if (f.fieldKind === 'list') {
      const r = rules.type.case === 'repeated' ? rules.type.value : undefined;
      if (!r || !only(RepeatedRulesSchema, r, ['minItems', 'maxItems'])) return null;
      const min = Number(ruleOf<bigint>(RepeatedRulesSchema, r, 'minItems') ?? 0n);
      const max = Number(ruleOf<bigint>(RepeatedRulesSchema, r, 'maxItems') ?? Infinity);
      checks.push((v) => (v as unknown[]).length >= min && (v as unknown[]).length <= max);
    } else if (f.fieldKind === 'enum') {
      const r = rules.type.case === 'enum' ? rules.type.value : undefined;
      if (!r || !only(EnumRulesSchema, r, ['definedOnly', 'notIn'])) return null;
      const defined = new Set(f.enum.values.map((x) => x.number));
      const definedOnly = ruleOf<boolean>(EnumRulesSchema, r, 'definedOnly') === true;
      const notIn = new Set(r.notIn);
      checks.push((v) => (!definedOnly || defined.has(v as number)) && !notIn.has(v as number));
    } else if (f.fieldKind === 'scalar') {
      const c = typeCheck(rules);
      if (!c) return null;
      checks.push(c);
    } else {
      return null;
    }
  }
  if (nested) {
    checks.push(f.fieldKind === 'list' ? (v) => (v as Value[]).every(nested) : (v) => v === undefined || nested(v as Value));
  }
  if (checks.length === 0) return undefined;
  return (m) => {
    const v = m[name];
    for (const c of checks) if (!c(v)) return false;
    return true;
  };
}

/** The check for a oneof: its own `required`, and the chosen member's message, if any. */
function oneofCheck(schema: DescMessage, index: number, seen: Set<DescMessage>): Check | null {
  const oneof = schema.oneofs[index]!;
  const rules = hasOption(oneof, oneofRulesExt) ? getOption(oneof, oneofRulesExt) : undefined;
  if (rules && !only(OneofRulesSchema, rules, ['required'])) return null;
  const members = new Map<string, Check | undefined>();
  for (const f of oneof.fields) {
    // Rules on a member, or scalar members' values: not here (none in the API).
    if (hasOption(f, fieldRulesExt) || f.fieldKind !== 'message') return null;
    const nested = compile(f.message, seen);
    if (nested === null) return null;
    members.set(f.localName, nested);
  }
  const required = rules !== undefined && ruleOf<boolean>(OneofRulesSchema, rules, 'required') === true;
  const name = oneof.localName;
  return (m) => {
    const o = m[name] as { case: string | undefined; value?: unknown };
    if (o.case === undefined) return !required;
    const nested = members.get(o.case);
    return nested === undefined || nested(o.value as Value);
  };
}

function compile(schema: DescMessage, seen = new Set<DescMessage>()): Check | null {
  if (compiled.has(schema)) return compiled.get(schema)!;
  if (seen.has(schema)) return null; // recursive types: protovalidate
  seen.add(schema);
  let check: Check | null = null;
  build: {
    if (hasOption(schema, messageRulesExt)) break build;
    const checks: Check[] = [];
    for (const f of schema.fields) {
      if (f.oneof) continue;
      if (f.fieldKind === 'map') break build;
      const c = fieldCheck(f, seen);
      if (c === null) break build;
      if (c) checks.push(c);
    }
    for (let i = 0; i < schema.oneofs.length; i++) {
      const c = oneofCheck(schema, i, seen);
      if (c === null) break build;
      checks.push(c);
    }
    check = (m) => {
      for (const c of checks) if (!c(m)) return false;
      return true;
    };
  }
  compiled.set(schema, check);
  return check;
}

/** True only when every buf.validate rule of `schema` certainly holds for `message`. */
export function certainlyValid(schema: DescMessage, message: Message): boolean {
  const check = compile(schema);
  return check !== null && check(message as unknown as Value);
}
