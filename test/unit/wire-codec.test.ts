/**
 * The compiled codecs against protobuf-es on random messages of every type
 * the services carry: the same bytes as toBinary (from messages and from
 * init shapes), the same messages as fromBinary, and on corrupted input the
 * same message or the same error.
 */
import { create, fromBinary, toBinary, type DescMessage } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { ObjectInfoSchema } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { decodeMessage } from '../../src/rpc/wire-decode.js';
import { encodeMessage } from '../../src/rpc/wire-encode.js';
import { fallbacks, planFor } from '../../src/rpc/wire-plan.js';
import { initShape, prng, randomMessage } from '../helpers/random-message.js';

const SCHEMAS: DescMessage[] = [...BrokerService.methods, ...AdminService.methods].flatMap((m) => [m.input, m.output]);

function outcome(f: () => unknown): { ok: unknown } | { error: string } {
  try {
    return { ok: f() };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

describe('compiled protobuf codecs', () => {
  it('cover every request and response type of the services', () => {
    const unsupported = SCHEMAS.filter((s) => !planFor(s)).map((s) => s.typeName);
    expect(unsupported).toEqual([]);
  });

  for (const schema of SCHEMAS) {
    it(`${schema.typeName}: same bytes and messages as protobuf-es`, () => {
      fc.assert(
        fc.property(fc.integer(), (seed) => {
          const rnd = prng(seed);
          const msg = randomMessage(rnd, schema);
          const bytes = toBinary(schema, msg as never);
          const before = { ...fallbacks };
          expect(new Uint8Array(encodeMessage(schema, msg))).toEqual(bytes);
          const init = initShape(rnd, msg) as object;
          expect(new Uint8Array(encodeMessage(schema, init))).toEqual(toBinary(schema, create(schema, init as never)));
          const wire = Buffer.from(bytes);
          expect(decodeMessage(schema, wire)).toStrictEqual(fromBinary(schema, wire));
          // Valid messages and their bytes take the compiled path, not protobuf-es's.
          expect(fallbacks).toEqual(before);
          // Corrupted: a flipped byte, a cut, or stray bytes (unknown fields, bad tags, bad lengths).
          const bad = Buffer.from(wire);
          const at = Math.floor(rnd() * bad.length);
          if (bad.length > 0) bad[at] = bad[at]! ^ (1 << Math.floor(rnd() * 8));
          const variants = [bad, wire.subarray(0, Math.floor(rnd() * wire.length)), Buffer.concat([wire, Buffer.from([Math.floor(rnd() * 256), Math.floor(rnd() * 256), 1, 2])])];
          for (const v of variants) expect(outcome(() => decodeMessage(schema, v))).toStrictEqual(outcome(() => fromBinary(schema, v)));
        }),
        { numRuns: 150 },
      );
    });
  }

  it('decode unpacked repeated scalars and leave unknown fields to protobuf-es', () => {
    const schema = ObjectInfoSchema;
    const f = schema.fields.find((x) => x.fieldKind === 'list' && x.listKind === 'scalar' && x.packed)!;
    const unpacked = Buffer.from([(f.number << 3) | 0, 5, (f.number << 3) | 0, 0x80, 0x01]);
    expect(decodeMessage(schema, unpacked)).toStrictEqual(fromBinary(schema, unpacked));
    expect((decodeMessage(schema, unpacked) as unknown as Record<string, unknown>)[f.localName]).toEqual([5n, 128n]);
    const unknown = Buffer.from([(1000 << 3) & 0x7f | 0x80, 1000 >> 4, 7]);
    expect(decodeMessage(schema, unknown)).toStrictEqual(fromBinary(schema, unknown));
  });

  it('refuse what protobuf-es refuses, with its error', () => {
    const schema = BrokerService.method.bindDevice.input;
    for (const bytes of [Buffer.from([0x0a, 0x05, 0x61]), Buffer.from([0x0a, 0x02, 0xc3, 0x28]), Buffer.from([0x07])]) {
      expect(outcome(() => decodeMessage(schema, bytes))).toStrictEqual(outcome(() => fromBinary(schema, bytes)));
      expect(outcome(() => decodeMessage(schema, bytes))).toHaveProperty('error');
    }
    expect(() => encodeMessage(BrokerService.method.openContext.input, { leaseSeconds: -1 })).toThrow(/cannot encode/);
  });
});
