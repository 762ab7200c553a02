/**
 * Request validation: the protovalidate rules in proto/vfio_broker/v1, as
 * src/rpc/validation.ts reports them, and the vendored validate.proto they
 * are written against.
 */
import { clone, create, fromBinary, hasOption, toJson, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { createValidator } from '@bufbuild/protovalidate';
import { field as fieldRules, file_buf_validate_validate } from '@bufbuild/protovalidate/gen/buf/validate/validate_pb.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { AdminService, file_vfio_broker_v1_admin } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { AllocHwptRequestSchema, AllocViommuRequestSchema, AllocIoasRequestSchema, AttachDeviceRequestSchema, BindDeviceRequestSchema, BrokerService, file_vfio_broker_v1_broker } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { ApplyTopologyRequestSchema } from '../../src/gen/vfio_broker/v1/topology_pb.js';
import { AssignDeviceRequestSchema } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { validationError } from '../../src/rpc/validation.js';

// Counts validators: validation.ts must build one and reuse it.
vi.mock('@bufbuild/protovalidate', async (importOriginal) => {
  const mod = await importOriginal<typeof import('@bufbuild/protovalidate')>();
  return { ...mod, createValidator: vi.fn(mod.createValidator) };
});

const root = path.resolve(import.meta.dirname, '..', '..');
const CTX = 'ctx-0123456789abcdef01234567';
const U64_MAX = 2n ** 64n - 1n;

type Reason = 'MISSING_FIELD' | 'INVALID_FIELD';
/** A value the field must refuse, the reason, and words the message must contain. */
type Bad = [value: unknown, reason: Reason, says: string];

const HANDLES = new Set(['device', 'target', 'parent', 'nest_parent', 'viommu', 'handle', 'ioas']);
/**
 * Request fields that deliberately carry no rule: checked by the broker against the request's kind
 * (data_type, dirty_tracking), against each other (iova with fixed_iova, readable or writeable), or by
 * the kernel against the file and IOAS (offset, an unmap's iova: 0 is a valid IOVA).
 */
const NO_RULES = new Set([
  'vfio_broker.v1.AllocHwptRequest.data_type',
  'vfio_broker.v1.AllocHwptRequest.dirty_tracking',
  'vfio_broker.v1.MapMemoryRequest.iova',
  'vfio_broker.v1.MapMemoryRequest.fixed_iova',
  'vfio_broker.v1.MapMemoryRequest.offset',
  'vfio_broker.v1.MapMemoryRequest.readable',
  'vfio_broker.v1.MapMemoryRequest.writeable',
  'vfio_broker.v1.UnmapMemoryRequest.iova',
]);

/** A valid value for every request field, by field name. */
const VALID: Record<string, unknown> = {
  context_id: CTX,
  device_id: '0000:3b:00.0',
  tenant: 'acme',
  label: 'vm1',
  lease_seconds: 60,
  reason: 'host maintenance',
  kind: HwptKind.NESTED,
  type: ViommuType.SELFTEST,
  data_type: 1,
  data: new Uint8Array(16),
  dirty_tracking: false,
  virt_id: 0x99n,
  steps: [{ name: 'ioas', action: { case: 'allocIoas', value: {} } }],
  iova: 0x100_0000n,
  fixed_iova: true,
  length: 0x20_0000n,
  offset: 0n,
  readable: true,
  writeable: true,
  upload_token: '0123456789abcdef'.repeat(4),
};

/** More values that must pass: the edges of each rule. */
const ALSO_VALID: Record<string, unknown[]> = {
  device_id: ['3b:00.0', 'FFFF:3B:1f.7'],
  tenant: ['a', '0', 'x.y_z-1', 'a'.repeat(63)],
  label: ['', 'x'.repeat(128), 'é'.repeat(64)],
  lease_seconds: [0, 86_400],
  reason: ['', 'x'.repeat(256)],
  kind: [HwptKind.PAGING, HwptKind.NEST_PARENT],
  type: [ViommuType.ARM_SMMUV3, ViommuType.TEGRA241_CMDQV],
  data: [new Uint8Array(0), new Uint8Array(4096)],
  virt_id: [1n, U64_MAX],
  handle: [U64_MAX],
  // UnmapMemory's unmap-all is length 2^64-1.
  length: [1n, U64_MAX],
  upload_token: ['0'.repeat(64), 'f'.repeat(64)],
};

const BAD: Record<string, Bad[]> = {
  context_id: [
    ['', 'MISSING_FIELD', 'context_id is required'],
    ['abc', 'INVALID_FIELD', 'must match `^ctx-[0-9a-f]{24}$`; got "abc"'],
    ['ctx-0123456789ABCDEF01234567', 'INVALID_FIELD', 'must match'],
    [`${CTX}0`, 'INVALID_FIELD', 'must match'],
    [`ctx-${'a'.repeat(61)}`, 'INVALID_FIELD', 'at most 64 characters; got 65 characters'],
  ],
  device_id: [
    ['', 'MISSING_FIELD', 'device_id is required'],
    ['nonsense', 'INVALID_FIELD', 'must match'],
    ['0000:3b:00.8', 'INVALID_FIELD', 'must match'],
    ['0000:3b:00', 'INVALID_FIELD', 'must match'],
    ['00000:3b:00.0', 'INVALID_FIELD', 'must match'],
    ['0'.repeat(33), 'INVALID_FIELD', 'at most 32 characters'],
  ],
  tenant: [
    ['', 'MISSING_FIELD', 'tenant is required'],
    ['Acme', 'INVALID_FIELD', 'must match'],
    ['-acme', 'INVALID_FIELD', 'must match'],
    ['a b', 'INVALID_FIELD', 'must match'],
    ['a'.repeat(64), 'INVALID_FIELD', 'must match'],
  ],
  label: [
    ['x'.repeat(129), 'INVALID_FIELD', 'at most 128 bytes; got 129 bytes'],
    // 65 characters, 130 bytes: the limit is on bytes.
    ['é'.repeat(65), 'INVALID_FIELD', 'at most 128 bytes; got 130 bytes'],
  ],
  lease_seconds: [[86_401, 'INVALID_FIELD', 'less than or equal to 86400; got 86401']],
  reason: [['x'.repeat(257), 'INVALID_FIELD', 'at most 256 bytes; got 257 bytes']],
  kind: [
    [HwptKind.UNSPECIFIED, 'MISSING_FIELD', 'kind is required (one of HWPT_KIND_PAGING, HWPT_KIND_NEST_PARENT, HWPT_KIND_NESTED)'],
    [99, 'INVALID_FIELD', 'defined enum values; got 99'],
  ],
  type: [
    [ViommuType.UNSPECIFIED, 'MISSING_FIELD', 'type is required'],
    [-1, 'INVALID_FIELD', 'defined enum values; got -1'],
  ],
  data: [[new Uint8Array(4097), 'INVALID_FIELD', 'at most 4096 bytes; got 4097 bytes']],
  virt_id: [[0n, 'INVALID_FIELD', 'greater than 0; got 0']],
  length: [[0n, 'MISSING_FIELD', 'length is required']],
  upload_token: [
    ['', 'MISSING_FIELD', 'upload_token is required'],
    ['A'.repeat(64), 'INVALID_FIELD', 'must match `^[0-9a-f]{64}$`'],
    ['a'.repeat(63), 'INVALID_FIELD', 'must match'],
    ['a'.repeat(65), 'INVALID_FIELD', 'must match'],
    ['g'.repeat(64), 'INVALID_FIELD', 'must match'],
  ],
  steps: [
    [[], 'INVALID_FIELD', 'at least 1'],
    [Array.from({ length: 257 }, (_, i) => ({ name: `s${i}`, action: { case: 'allocIoas', value: {} } })), 'INVALID_FIELD', 'no more than 256 item(s)'],
  ],
};

/** Where a message's field differs from the field-name tables. */
const OVERRIDES: Record<string, { valid?: unknown[]; bad: Bad[] }> = {
  // An optional filter: empty lists every tenant's contexts.
  'vfio_broker.v1.ListContextsRequest.tenant': { valid: [''], bad: BAD['tenant']!.filter(([v]) => v !== '') },
};

function badCases(msg: DescMessage, f: DescField): Bad[] {
  const key = `${msg.typeName}.${f.name}`;
  if (OVERRIDES[key]) return OVERRIDES[key].bad;
  if (HANDLES.has(f.name)) return [[0n, 'MISSING_FIELD', `${f.name} is required`]];
  return BAD[f.name] ?? [];
}

function goodValues(msg: DescMessage, f: DescField): unknown[] {
  const key = `${msg.typeName}.${f.name}`;
  return [...(OVERRIDES[key]?.valid ?? []), ...(ALSO_VALID[HANDLES.has(f.name) ? 'handle' : f.name] ?? [])];
}

function validRequest(msg: DescMessage, override?: [DescField, unknown]) {
  const init: Record<string, unknown> = {};
  for (const f of msg.fields) init[f.localName] = HANDLES.has(f.name) ? 1n : VALID[f.name];
  if (override) init[override[0].localName] = override[1];
  return create(msg, init);
}

const requests = [BrokerService, AdminService].flatMap((service) => service.methods.map((m) => m.input));

describe('request rules (every request of BrokerService and AdminService)', () => {
  it('covers every request field: each has rules and test cases, or is knowingly rule-free', () => {
    const problems: string[] = [];
    for (const msg of requests) {
      for (const f of msg.fields) {
        const key = `${msg.typeName}.${f.name}`;
        const annotated = hasOption(f, fieldRules);
        if (NO_RULES.has(key)) {
          if (annotated) problems.push(`${key} has rules but is listed in NO_RULES`);
          continue;
        }
        if (!annotated) problems.push(`${key} has no (buf.validate.field) rules`);
        if (!HANDLES.has(f.name) && !(f.name in VALID)) problems.push(`${key} has no valid example`);
        if (badCases(msg, f).length === 0) problems.push(`${key} has no rejected examples`);
      }
    }
    expect(problems).toEqual([]);
  });

  describe.each(requests.map((msg) => [msg.name, msg] as const))('%s', (_name, msg) => {
    it('accepts a valid example and the edges of each rule', () => {
      expect(validationError(msg, validRequest(msg))).toBeUndefined();
      for (const f of msg.fields) {
        for (const value of goodValues(msg, f)) {
          expect(validationError(msg, validRequest(msg, [f, value])), `${f.name} = ${String(value).slice(0, 40)}`).toBeUndefined();
        }
      }
    });

    const cases = msg.fields.flatMap((f) => badCases(msg, f).map((bad, i) => [`${f.name} #${i + 1} (${bad[1]})`, f, bad] as const));
    if (cases.length === 0) return;
    it.each(cases)('rejects %s', (_label, f, [value, reason, says]) => {
      const err = validationError(msg, validRequest(msg, [f, value]));
      expect(err, `${f.name} = ${String(value).slice(0, 40)} was accepted`).toBeDefined();
      expect({ reason: err!.reason, field: err!.field }).toEqual({ reason, field: f.name });
      expect(err!.name).toBe('BrokerError');
      expect(err!.message.startsWith(`${f.name}`)).toBe(true);
      expect(err!.message).toContain(says);
    });
  });
});

describe('validationError messages', () => {
  it('rejects enum values the API does not define, naming the choices', () => {
    const hwpt = validationError(AllocHwptRequestSchema, validRequest(AllocHwptRequestSchema, [AllocHwptRequestSchema.field.kind!, 7]));
    expect(hwpt?.reason).toBe('INVALID_FIELD');
    expect(hwpt?.field).toBe('kind');
    expect(hwpt?.message).toBe(
      'kind: must be one of the defined enum values; got 7 (one of HWPT_KIND_PAGING, HWPT_KIND_NEST_PARENT, HWPT_KIND_NESTED)',
    );
    // The wire carries unknown enum numbers through to the handler unchanged.
    const wire = fromBinary(AllocViommuRequestSchema, new Uint8Array([0x20, 0x2a])); // field 4 (type) = 42
    expect(wire.type).toBe(42);
    const viommu = validationError(AllocViommuRequestSchema, validRequest(AllocViommuRequestSchema, [AllocViommuRequestSchema.field.type!, wire.type]));
    expect({ reason: viommu?.reason, field: viommu?.field }).toEqual({ reason: 'INVALID_FIELD', field: 'type' });
  });

  it('repeats at most 64 characters of client input, escaped', () => {
    const long = validationError(AssignDeviceRequestSchema, create(AssignDeviceRequestSchema, { deviceId: '0000:3b:00.0', tenant: 'Z'.repeat(10_000) }));
    expect(long?.field).toBe('tenant');
    expect(long?.message).toContain(`got "${'Z'.repeat(64)}"… (10000 characters)`);
    expect(long?.message).not.toContain('Z'.repeat(65));
    expect(long!.message.length).toBeLessThan(200);

    const tooLong = validationError(AllocIoasRequestSchema, create(AllocIoasRequestSchema, { contextId: `ctx-${'z'.repeat(10_000)}` }));
    expect(tooLong?.message).toBe('context_id: must be at most 64 characters; got 10004 characters');

    const control = validationError(BindDeviceRequestSchema, create(BindDeviceRequestSchema, { contextId: CTX, deviceId: '3b:00.0\n\u0000' }));
    expect(control?.message).toContain('got "3b:00.0\\n\\u0000"');
    expect(control?.message).not.toMatch(/[\n\u0000]/);
  });

  it('reports the first bad field and names the others', () => {
    const err = validationError(AttachDeviceRequestSchema, create(AttachDeviceRequestSchema, { contextId: 'nope', device: 0n, target: 0n }));
    expect(err?.field).toBe('context_id');
    expect(err?.reason).toBe('INVALID_FIELD');
    expect(err?.message).toBe('context_id: must match `^ctx-[0-9a-f]{24}$`; got "nope" (also invalid: device, target)');
  });

  it('creates one validator and reuses it for every request', () => {
    for (let i = 0; i < 200; i++) {
      for (const msg of requests) validationError(msg, validRequest(msg));
    }
    expect(validationError(AllocIoasRequestSchema, create(AllocIoasRequestSchema, {}))?.reason).toBe('MISSING_FIELD');
    expect(vi.mocked(createValidator)).toHaveBeenCalledTimes(1);
  });
});

describe('vendored buf/validate/validate.proto', () => {
  it('is the output of scripts/vendor-validate-proto.mjs', () => {
    const printed = execFileSync(process.execPath, [path.join(root, 'scripts', 'vendor-validate-proto.mjs')], { cwd: root, encoding: 'utf8' });
    expect(readFileSync(path.join(root, 'proto', 'buf', 'validate', 'validate.proto'), 'utf8')).toBe(printed);
  });

  it('compiles to the descriptor @bufbuild/protovalidate ships, except the options on its own fields', () => {
    const scratch = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-validate-'));
    try {
      const image = path.join(scratch, 'image.binpb');
      execFileSync(path.join(root, 'node_modules', '.bin', 'buf'), ['build', '-o', image], { cwd: root, stdio: 'pipe' });
      const built = fromBinary(FileDescriptorSetSchema, readFileSync(image)).file.find((f) => f.name === 'buf/validate/validate.proto');
      expect(built).toBeDefined();
      expect(comparable(built!)).toEqual(comparable(file_buf_validate_validate.proto));
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  it('is not generated again: src/gen imports the descriptor the validator uses', () => {
    expect(file_vfio_broker_v1_broker.dependencies).toContain(file_buf_validate_validate);
    expect(file_vfio_broker_v1_admin.dependencies).toContain(file_buf_validate_validate);
    const generated = readFileSync(path.join(root, 'src', 'gen', 'vfio_broker', 'v1', 'broker_pb.ts'), 'utf8');
    expect(generated).toContain('from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js"');
  });
});

/** The descriptor as JSON without what the vendored copy leaves out: field options and source info. */
function comparable(file: FileDescriptorProto) {
  const copy = clone(FileDescriptorProtoSchema, file);
  copy.sourceCodeInfo = undefined;
  const strip = (fields: { options?: unknown }[]) => {
    for (const f of fields) f.options = undefined;
  };
  const walk = (messages: FileDescriptorProto['messageType']) => {
    for (const m of messages) {
      strip(m.field);
      strip(m.extension);
      walk(m.nestedType);
    }
  };
  walk(copy.messageType);
  strip(copy.extension);
  return toJson(FileDescriptorProtoSchema, copy);
}

describe('ApplyTopology step rules', () => {
  it('names the step and field of a nested violation', () => {
    const steps = [
      { name: 'ok', action: { case: 'allocIoas', value: {} } },
      { name: 'bad name!', action: { case: 'allocIoas', value: {} } },
    ];
    const err = validationError(ApplyTopologyRequestSchema, create(ApplyTopologyRequestSchema, { contextId: CTX, steps } as never));
    expect(err?.field).toBe('steps[1].name');
    expect(err?.reason).toBe('INVALID_FIELD');
    const noAction = validationError(ApplyTopologyRequestSchema, create(ApplyTopologyRequestSchema, { contextId: CTX, steps: [{ name: 'x' }] } as never));
    expect(noAction?.reason).toBe('MISSING_FIELD');
    expect(noAction?.field).toMatch(/^steps\[0\]/);
    const badDevice = validationError(
      ApplyTopologyRequestSchema,
      create(ApplyTopologyRequestSchema, { contextId: CTX, steps: [{ name: 'd', action: { case: 'bind', value: { deviceId: 'nope' } } }] } as never),
    );
    expect(badDevice?.field).toBe('steps[0].bind.device_id');
  });
});
