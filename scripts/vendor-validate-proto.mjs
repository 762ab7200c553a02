#!/usr/bin/env node
/**
 * Prints buf/validate/validate.proto as .proto source, rebuilt from the
 * compiled descriptor that @bufbuild/protovalidate ships
 * (`file_buf_validate_validate`). buf cannot reach the BSR here and the npm
 * package ships no .proto file, so this is how proto/ gets the definitions
 * its `(buf.validate.field)` annotations need:
 *
 *   node scripts/vendor-validate-proto.mjs > proto/buf/validate/validate.proto
 *
 * Only the wire contract has to be exact (names, numbers, types, labels), since
 * the runtime validator reads our annotations with its own compiled copy of
 * this file. The `(buf.validate.predefined)` CEL rules validate.proto puts on
 * its own fields are left out: they are extension options this printer cannot
 * name (the extension is declared in the very file being printed) and nothing
 * here reads them from the vendored source. Anything else the printer cannot
 * represent faithfully (groups, editions, services, unknown options elsewhere)
 * makes it fail instead of printing a different schema.
 */
import { isFieldSet } from '@bufbuild/protobuf';
import {
  FieldDescriptorProtoSchema,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
} from '@bufbuild/protobuf/wkt';
import { file_buf_validate_validate } from '@bufbuild/protovalidate/gen/buf/validate/validate_pb.js';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The installed package's version (its package.json is not in "exports"). */
function protovalidateVersion() {
  let dir = path.dirname(fileURLToPath(import.meta.resolve('@bufbuild/protovalidate')));
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      const json = JSON.parse(readFileSync(pkg, 'utf8'));
      if (json.name === '@bufbuild/protovalidate') return json.version;
    }
    const up = path.dirname(dir);
    if (up === dir) fail('cannot find the @bufbuild/protovalidate package.json');
    dir = up;
  }
}
const PROTOVALIDATE_VERSION = protovalidateVersion();

/** Extension number of `buf.validate.predefined` on google.protobuf.FieldOptions. */
const PREDEFINED_EXTENSION = 1160;
/** Exclusive upper bound of field numbers: `max` in a range. */
const FIELD_NUMBER_END = 536_870_912;

const SCALAR = new Map([
  [Type.DOUBLE, 'double'],
  [Type.FLOAT, 'float'],
  [Type.INT64, 'int64'],
  [Type.UINT64, 'uint64'],
  [Type.INT32, 'int32'],
  [Type.FIXED64, 'fixed64'],
  [Type.FIXED32, 'fixed32'],
  [Type.BOOL, 'bool'],
  [Type.STRING, 'string'],
  [Type.BYTES, 'bytes'],
  [Type.UINT32, 'uint32'],
  [Type.SFIXED32, 'sfixed32'],
  [Type.SFIXED64, 'sfixed64'],
  [Type.SINT32, 'sint32'],
  [Type.SINT64, 'sint64'],
]);

let omittedPredefined = 0;

/** proto2 presence: a field of FieldDescriptorProto set in the descriptor. */
function has(f, localName) {
  return isFieldSet(f, FieldDescriptorProtoSchema.field[localName]);
}

/** The oneof a field is declared in, if any (proto3 optional is a synthetic oneof). */
function realOneof(f) {
  return has(f, 'oneofIndex') && !f.proto3Optional ? f.oneofIndex : undefined;
}

function fail(msg) {
  throw new Error(`vendor-validate-proto: ${msg}`);
}

function quote(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else out += [...Buffer.from(ch, 'utf8')].map((b) => `\\${b.toString(8).padStart(3, '0')}`).join('');
  }
  return `${out}"`;
}

/** protoc's default json_name: drop underscores, capitalise the next letter. */
function defaultJsonName(name) {
  let out = '';
  let upper = false;
  for (const ch of name) {
    if (ch === '_') upper = true;
    else {
      out += upper ? ch.toUpperCase() : ch;
      upper = false;
    }
  }
  return out;
}

/**
 * Options set on a descriptor, as `name = value` pairs. Fields of the options
 * message print by name; extension options arrive as unknown fields and only
 * `(buf.validate.predefined)` on fields may be dropped (see the header).
 */
function optionPairs(opts, where, { allowPredefined = false } = {}) {
  if (!opts) return [];
  const pairs = [];
  const schema = optionSchemas.get(opts.$typeName) ?? fail(`${where}: unexpected options type ${opts.$typeName}`);
  for (const field of schema.fields) {
    if (!isFieldSet(opts, field)) continue;
    const value = opts[field.localName];
    switch (field.fieldKind) {
      case 'scalar':
        pairs.push(`${field.name} = ${typeof value === 'string' ? quote(value) : String(value)}`);
        break;
      case 'enum':
        pairs.push(`${field.name} = ${enumValueName(field.enum, value, where)}`);
        break;
      case 'list':
        if (field.listKind !== 'enum' && field.listKind !== 'scalar') fail(`${where}: cannot print option ${field.name}`);
        for (const v of value) {
          pairs.push(`${field.name} = ${field.listKind === 'enum' ? enumValueName(field.enum, v, where) : typeof v === 'string' ? quote(v) : String(v)}`);
        }
        break;
      default:
        fail(`${where}: cannot print option ${field.name}`);
    }
  }
  for (const u of opts.$unknown ?? []) {
    if (allowPredefined && u.no === PREDEFINED_EXTENSION) {
      omittedPredefined++;
      continue;
    }
    fail(`${where}: cannot print extension option #${u.no}`);
  }
  return pairs;
}

function enumValueName(desc, number, where) {
  return desc.values.find((v) => v.number === number)?.name ?? fail(`${where}: enum value ${number} of ${desc.typeName}`);
}

function typeName(f) {
  if (f.type === Type.MESSAGE || f.type === Type.ENUM) return f.typeName; // fully qualified with a leading dot: never ambiguous
  if (f.type === Type.GROUP) fail(`${f.name}: groups are not supported`);
  return SCALAR.get(f.type) ?? fail(`${f.name}: unknown type ${f.type}`);
}

function defaultValue(f) {
  const v = f.defaultValue;
  if (f.type === Type.STRING) return quote(v);
  if (f.type === Type.BYTES) return `"${v}"`; // already C-escaped in the descriptor
  return v;
}

function fieldLine(f, syntax, { inOneof = false, isExtension = false, mapEntries = new Map(), where }) {
  const opts = [];
  if (has(f, 'defaultValue')) opts.push(`default = ${defaultValue(f)}`);
  if (!isExtension && has(f, 'jsonName') && f.jsonName !== defaultJsonName(f.name)) opts.push(`json_name = ${quote(f.jsonName)}`);
  opts.push(...optionPairs(f.options, `${where}.${f.name}`, { allowPredefined: true }));
  const suffix = opts.length ? ` [${opts.join(', ')}]` : '';

  const entry = f.type === Type.MESSAGE ? mapEntries.get(f.typeName) : undefined;
  if (entry) {
    const [k, v] = entry.field;
    return `map<${typeName(k)}, ${typeName(v)}> ${f.name} = ${f.number}${suffix};`;
  }
  let label = '';
  if (!inOneof) {
    if (f.label === Label.REPEATED) label = 'repeated ';
    else if (f.label === Label.REQUIRED) label = 'required ';
    else if (syntax === 'proto2' || f.proto3Optional) label = 'optional ';
  }
  return `${label}${typeName(f)} ${f.name} = ${f.number}${suffix};`;
}

function rangeText(start, endExclusive) {
  const last = endExclusive - 1;
  if (endExclusive === FIELD_NUMBER_END) return `${start} to max`;
  return last === start ? String(start) : `${start} to ${last}`;
}

function printEnum(e, indent, scope) {
  const where = `${scope}.${e.name}`;
  const out = [`${indent}enum ${e.name} {`];
  for (const p of optionPairs(e.options, where)) out.push(`${indent}  option ${p};`);
  for (const v of e.value) {
    const opts = optionPairs(v.options, `${where}.${v.name}`);
    out.push(`${indent}  ${v.name} = ${v.number}${opts.length ? ` [${opts.join(', ')}]` : ''};`);
  }
  // Enum reserved ranges are inclusive at both ends.
  if (e.reservedRange.length) {
    out.push(`${indent}  reserved ${e.reservedRange.map((r) => (r.start === r.end ? String(r.start) : `${r.start} to ${r.end === 2147483647 ? 'max' : r.end}`)).join(', ')};`);
  }
  if (e.reservedName.length) out.push(`${indent}  reserved ${e.reservedName.map(quote).join(', ')};`);
  out.push(`${indent}}`);
  return out;
}

function printExtensions(exts, syntax, indent, scope) {
  const out = [];
  let current;
  for (const x of exts) {
    if (x.extendee !== current) {
      if (current !== undefined) out.push(`${indent}}`);
      current = x.extendee;
      out.push(`${indent}extend ${x.extendee} {`);
    }
    out.push(`${indent}  ${fieldLine(x, syntax, { isExtension: true, where: `${scope}.${x.name}` })}`);
  }
  if (current !== undefined) out.push(`${indent}}`);
  return out;
}

function printMessage(m, syntax, indent, scope) {
  const where = `${scope}.${m.name}`;
  const inner = `${indent}  `;
  const out = [`${indent}message ${m.name} {`];
  for (const p of optionPairs(m.options, where)) out.push(`${inner}option ${p};`);

  const mapEntries = new Map(m.nestedType.filter((n) => n.options?.mapEntry).map((n) => [`${where}.${n.name}`, n]));
  const printedOneofs = new Set();
  for (const f of m.field) {
    const oneof = realOneof(f);
    if (oneof === undefined) {
      out.push(`${inner}${fieldLine(f, syntax, { mapEntries, where })}`);
      continue;
    }
    if (printedOneofs.has(oneof)) continue;
    printedOneofs.add(oneof);
    const decl = m.oneofDecl[oneof] ?? fail(`${where}: oneof #${oneof}`);
    out.push(`${inner}oneof ${decl.name} {`);
    for (const p of optionPairs(decl.options, `${where}.${decl.name}`)) out.push(`${inner}  option ${p};`);
    const members = m.field.filter((g) => realOneof(g) === oneof);
    // protoc requires oneof members to be declared together, so printing them
    // as one block at the first member's position keeps the field order.
    for (const g of members) out.push(`${inner}  ${fieldLine(g, syntax, { inOneof: true, where })}`);
    out.push(`${inner}}`);
  }

  for (const n of m.nestedType) if (!mapEntries.has(`${where}.${n.name}`)) out.push(...printMessage(n, syntax, inner, where));
  for (const e of m.enumType) out.push(...printEnum(e, inner, where));
  out.push(...printExtensions(m.extension, syntax, inner, where));
  for (const r of m.extensionRange) {
    const opts = optionPairs(r.options, `${where} extensions`);
    out.push(`${inner}extensions ${rangeText(r.start, r.end)}${opts.length ? ` [${opts.join(', ')}]` : ''};`);
  }
  if (m.reservedRange.length) out.push(`${inner}reserved ${m.reservedRange.map((r) => rangeText(r.start, r.end)).join(', ')};`);
  if (m.reservedName.length) out.push(`${inner}reserved ${m.reservedName.map(quote).join(', ')};`);
  out.push(`${indent}}`);
  return out;
}

const optionSchemas = new Map();

async function main() {
  const wkt = await import('@bufbuild/protobuf/wkt');
  for (const s of [
    wkt.FileOptionsSchema,
    wkt.MessageOptionsSchema,
    wkt.FieldOptionsSchema,
    wkt.OneofOptionsSchema,
    wkt.EnumOptionsSchema,
    wkt.EnumValueOptionsSchema,
    wkt.ExtensionRangeOptionsSchema,
  ]) {
    optionSchemas.set(s.typeName, s);
  }

  const file = file_buf_validate_validate.proto;
  const syntax = file.syntax === '' ? 'proto2' : file.syntax;
  if (syntax !== 'proto2' && syntax !== 'proto3') fail(`unsupported syntax ${file.syntax}`);
  if (file.service.length) fail('services are not supported');
  if (file.publicDependency.length || file.weakDependency.length) fail('public/weak imports are not supported');
  const scope = `.${file.package}`;

  const body = [`syntax = "${syntax}";`, '', `package ${file.package};`, ''];
  for (const d of file.dependency) body.push(`import ${quote(d)};`);
  body.push('');
  for (const p of optionPairs(file.options, file.name)) body.push(`option ${p};`);
  for (const m of file.messageType) body.push('', ...printMessage(m, syntax, '', scope));
  for (const e of file.enumType) body.push('', ...printEnum(e, '', scope));
  if (file.extension.length) body.push('', ...printExtensions(file.extension, syntax, '', scope));

  const header = [
    '// Copyright Buf Technologies, Inc. (github.com/bufbuild/protovalidate)',
    '//',
    '// Licensed under the Apache License, Version 2.0 (the "License");',
    '// you may not use this file except in compliance with the License.',
    '// You may obtain a copy of the License at',
    '//',
    '//      http://www.apache.org/licenses/LICENSE-2.0',
    '//',
    '// Unless required by applicable law or agreed to in writing, software',
    '// distributed under the License is distributed on an "AS IS" BASIS,',
    '// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.',
    '// See the License for the specific language governing permissions and',
    '// limitations under the License.',
    '',
    `// GENERATED from the compiled descriptor in @bufbuild/protovalidate ${PROTOVALIDATE_VERSION}`,
    '// (bufbuild/protovalidate, Apache-2.0) by scripts/vendor-validate-proto.mjs. Do not edit:',
    '//   node scripts/vendor-validate-proto.mjs > proto/buf/validate/validate.proto',
    '//',
    '// Names, numbers, types and labels match the upstream file exactly; comments',
    `// and the ${omittedPredefined} (buf.validate.predefined) CEL rule options on its own fields are`,
    '// omitted. The validator never reads this copy: it uses the descriptor it ships.',
    '',
  ];
  process.stdout.write(`${[...header, ...body].join('\n').replace(/\n{3,}/g, '\n\n')}\n`);
}

await main();
