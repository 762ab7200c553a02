/**
 * Request validation: the `(buf.validate.field)` rules written in
 * proto/vfio_broker/v1, checked by protovalidate before a handler runs, and
 * turned into the broker's own MISSING_FIELD / INVALID_FIELD errors so a
 * client sees one error shape whichever layer refused its input.
 */
import type { DescEnum, DescField, DescMessage, Message } from '@bufbuild/protobuf';
import { isReflectList, isReflectMap, isReflectMessage, pathToString, reflect, type Path } from '@bufbuild/protobuf/reflect';
import { createValidator, type Violation } from '@bufbuild/protovalidate';
import { BrokerError } from '../broker/errors.js';

/** How much of a client's value an error message repeats. */
const ECHO_CHARS = 64;
/** How many further violations an error message names after the first. */
const MORE_FIELDS = 3;

// One validator for the process: it compiles each message's rules once, on
// first use, and reuses the plan for every later request of that type.
// Schema patterns are ours (proto/vfio_broker/v1) and simple; the platform RegExp
// matches them far faster than the pure-JS RE2 engine protovalidate defaults to.
// fast-validate.ts matches `pattern` rules with this same function.
const patterns = new Map<string, RegExp>();
export function regexMatch(pattern: string, against: string): boolean {
  let re = patterns.get(pattern);
  if (!re) patterns.set(pattern, (re = new RegExp(pattern)));
  return re.test(against);
}
const validator = createValidator({ regexMatch });

/**
 * The error to answer a request with, or undefined when it satisfies every
 * rule. The first violation (in field order) decides the reason and the
 * `field`; the message names the rest so a client can fix them all at once.
 */
export function validationError(schema: DescMessage, message: Message): BrokerError | undefined {
  // The generic signature wants the exact shape; any message of `schema` is one.
  const result = validator.validate(schema, message as never);
  switch (result.kind) {
    case 'valid':
      return undefined;
    case 'error':
      // A rule that does not compile or evaluate is our bug, not the client's input.
      return new BrokerError('INTERNAL', `${schema.typeName}: request rules could not be evaluated: ${result.error.message}`);
    case 'invalid': {
      const [first, ...rest] = result.violations;
      if (!first) return new BrokerError('INVALID_FIELD', `${schema.typeName} is invalid`);
      const field = fieldPath(first);
      let text = describe(first, schema, message);
      if (rest.length > 0) {
        const others = [...new Set(rest.map(fieldPath))].filter((f) => f !== field);
        if (others.length > 0) {
          const named = others.slice(0, MORE_FIELDS).join(', ');
          text += ` (also invalid: ${named}${others.length > MORE_FIELDS ? `, +${others.length - MORE_FIELDS} more` : ''})`;
        }
      }
      return new BrokerError(first.ruleId === 'required' ? 'MISSING_FIELD' : 'INVALID_FIELD', text, { field });
    }
  }
}

function fieldPath(v: Violation): string {
  return pathToString(v.field) || '(message)';
}

/** `context_id: must match `^ctx-[0-9a-f]{24}$`; got "abc"`, in the client's terms. */
function describe(v: Violation, schema: DescMessage, message: Message): string {
  const path = fieldPath(v);
  const found = v.forKey ? undefined : valueAt(schema, message, v.field);
  const choices = found?.field.enum ? ` (one of ${enumChoices(found.field.enum)})` : '';
  if (v.ruleId === 'required') return `${path} is required${choices}`;
  // protovalidate phrases every rule as "value …"; after the field name that reads better without it.
  const what = v.message.replace(/^value /, '').replace(/^does not match regex pattern /, 'must match ');
  const got = found ? gotText(v.ruleId, found.value) : undefined;
  return `${path}: ${what}${got === undefined ? '' : `; got ${got}`}${choices}`;
}

/** The field a violation names and its value, or undefined if the path cannot be followed. */
function valueAt(schema: DescMessage, message: Message, path: Path): { field: DescField; value: unknown } | undefined {
  let current: unknown = reflect(schema, message);
  let field: DescField | undefined;
  for (const item of path) {
    switch (item.kind) {
      case 'field':
        if (!isReflectMessage(current)) return undefined;
        field = item;
        current = current.get(item);
        break;
      case 'list_sub':
        if (!isReflectList(current)) return undefined;
        current = current.get(item.index);
        break;
      case 'map_sub':
        if (!isReflectMap(current)) return undefined;
        current = current.get(item.key);
        break;
      default:
        return undefined;
    }
  }
  return field && { field, value: current };
}

/** A short, printable account of the value: its size for size rules, else an excerpt. */
function gotText(ruleId: string, value: unknown): string | undefined {
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (typeof value !== 'string') return undefined;
  if (/_bytes$/.test(ruleId)) return `${Buffer.byteLength(value)} bytes`;
  const chars = [...value];
  if (/(^|[._])(min_|max_)?len$/.test(ruleId)) return `${chars.length} characters`;
  // JSON quoting escapes control characters, so the excerpt stays one printable line.
  if (chars.length <= ECHO_CHARS) return JSON.stringify(value);
  return `${JSON.stringify(chars.slice(0, ECHO_CHARS).join(''))}… (${chars.length} characters)`;
}

/** The values a client can choose from: every defined value but the zero "unspecified" one. */
function enumChoices(e: DescEnum): string {
  return e.values
    .filter((v) => v.number !== 0)
    .map((v) => v.name)
    .join(', ');
}
