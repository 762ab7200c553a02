/**
 * The compiled first validation pass (src/rpc/fast-validate.ts) may only say
 * "certainly valid" when protovalidate agrees; it must say so for ordinary
 * valid requests, or it saves nothing.
 */
import { create, type DescMessage, type MessageInitShape } from '@bufbuild/protobuf';
import { createValidator } from '@bufbuild/protovalidate';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { certainlyValid } from '../../src/rpc/fast-validate.js';
import { regexMatch } from '../../src/rpc/validation.js';
import { pick, prng, randomMessage } from '../helpers/random-message.js';

const validator = createValidator({ regexMatch });
const REQUESTS: DescMessage[] = [...new Set([...BrokerService.methods, ...AdminService.methods].map((m) => m.input))];
/** Request types this pass leaves to protovalidate, and why. */
const NOT_COMPILED: Record<string, string> = { 'vfio_broker.v1.ListContextsRequest': 'uses ignore = IGNORE_IF_ZERO_VALUE' };

const CTX = 'ctx-0123456789abcdef01234567';
const m = BrokerService.method;
const VALID: [DescMessage, MessageInitShape<DescMessage>][] = [
  [m.openContext.input, { label: 'vm1', leaseSeconds: 30 }],
  [m.closeContext.input, { contextId: CTX }],
  [m.bindDevice.input, { contextId: CTX, deviceId: '0000:10:01.0' }],
  [m.unbindDevice.input, { contextId: CTX, device: 3n }],
  [m.allocIoas.input, { contextId: CTX }],
  [m.destroyObject.input, { contextId: CTX, handle: 7n }],
  [m.attachDevice.input, { contextId: CTX, device: 1n, target: 2n }],
  [m.allocHwpt.input, { contextId: CTX, device: 1n, kind: HwptKind.NESTED, parent: 4n, dataType: 0xdead, data: new Uint8Array(8) }],
  [m.allocViommu.input, { contextId: CTX, device: 1n, nestParent: 4n, type: ViommuType.SELFTEST }],
  [m.allocVdevice.input, { contextId: CTX, viommu: 5n, device: 1n, virtId: 0x99n }],
  [m.listObjects.input, { contextId: CTX }],
  [
    m.applyTopology.input,
    {
      contextId: CTX,
      steps: [
        { name: 'dev0', action: { case: 'bind', value: { deviceId: '0000:10:01.0' } } },
        { name: 'ioas', action: { case: 'allocIoas', value: {} } },
        { name: 'attach-1', action: { case: 'attach', value: { device: 'dev0', target: 'ioas' } } },
        { name: 'np', action: { case: 'allocHwpt', value: { device: 'dev0', kind: HwptKind.NEST_PARENT, parent: 'ioas' } } },
        { name: 'viommu', action: { case: 'allocViommu', value: { device: 'dev0', nestParent: 'np', type: ViommuType.SELFTEST } } },
        { name: 'vdev0', action: { case: 'allocVdevice', value: { viommu: 'viommu', device: 'dev0', virtId: 0x100n } } },
      ],
    },
  ],
];

const valid = (schema: DescMessage, msg: unknown) => validator.validate(schema, msg as never).kind === 'valid';

describe('compiled validation pass', () => {
  it('compiles every request type but the ones it names', () => {
    const compiled = REQUESTS.filter((s) => {
      // A type the pass handles says "certainly valid" for some message; probe with a valid one when we have it.
      const fixture = VALID.find(([v]) => v === s);
      return fixture ? certainlyValid(s, create(s, fixture[1])) : !NOT_COMPILED[s.typeName];
    });
    expect(REQUESTS.filter((s) => !compiled.includes(s)).map((s) => s.typeName)).toEqual(Object.keys(NOT_COMPILED));
  });

  it('says "certainly valid" for ordinary valid requests', () => {
    for (const [schema, init] of VALID) {
      const msg = create(schema, init);
      expect(valid(schema, msg), schema.typeName).toBe(true);
      expect(certainlyValid(schema, msg), schema.typeName).toBe(true);
    }
  });

  for (const schema of REQUESTS) {
    it(`${schema.typeName}: never certain when protovalidate refuses`, () => {
      fc.assert(
        fc.property(fc.integer(), (seed) => {
          const rnd = prng(seed);
          // Random messages, and valid fixtures with one field replaced at random.
          const fixture = VALID.find(([v]) => v === schema);
          const msg = randomMessage(rnd, schema) as Record<string, unknown>;
          if (fixture && rnd() < 0.5) {
            const base = create(schema, fixture[1]) as unknown as Record<string, unknown>;
            const f = pick(rnd, schema.fields);
            const key = f.oneof ? f.oneof.localName : f.localName;
            base[key] = msg[key];
            if (certainlyValid(schema, base as never)) expect(valid(schema, base)).toBe(true);
          }
          if (certainlyValid(schema, msg as never)) expect(valid(schema, msg)).toBe(true);
        }),
        { numRuns: 300 },
      );
    });
  }

  it('leaves what it cannot be sure of to protovalidate', () => {
    const bind = m.bindDevice.input;
    // Over max_len in UTF-16 units but maybe not in code points: not certain, protovalidate decides.
    const emoji = create(bind, { contextId: CTX, deviceId: '😀'.repeat(17) });
    expect(certainlyValid(bind, emoji)).toBe(false);
    expect(certainlyValid(bind, create(bind, { contextId: 'ctx-nope', deviceId: '0000:10:01.0' }))).toBe(false);
    expect(certainlyValid(bind, create(bind, { contextId: CTX }))).toBe(false);
  });
});
