import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { StructEncodeError, type FieldSpec } from '../../src/kernel/linux/struct-codec.js';
import {
  ALL_STRUCTS,
  IOMMU_DESTROY_STRUCT,
  IOMMU_HW_INFO_STRUCT,
  IOMMU_HWPT_ALLOC_STRUCT,
  IOMMU_IOAS_ALLOC_STRUCT,
  IOMMU_TEST_CMD_STRUCT,
  IOMMU_VIOMMU_ALLOC_STRUCT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_BIND_IOMMUFD_STRUCT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_INFO_STRUCT,
} from '../../src/kernel/linux/structs.js';

type Value = number | bigint | Uint8Array;

function arbitraryFor(f: FieldSpec): fc.Arbitrary<Value> {
  switch (f.kind) {
    case 'u8':
      return fc.integer({ min: 0, max: 0xff });
    case 'u16':
      return fc.integer({ min: 0, max: 0xffff });
    case 'u32':
      return fc.integer({ min: 0, max: 0xffff_ffff });
    case 's32':
      return fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
    case 'u64':
      return fc.bigInt({ min: 0n, max: 0xffff_ffff_ffff_ffffn });
    case 'bytes':
      return fc.uint8Array({ minLength: f.size, maxLength: f.size });
  }
}

/** Fields that do not overlap an earlier one (union members after the first are dropped), minus the header. */
function disjointFields(fields: Record<string, FieldSpec>, header: string | undefined): [string, FieldSpec][] {
  const taken: FieldSpec[] = [];
  const out: [string, FieldSpec][] = [];
  for (const [name, f] of Object.entries(fields)) {
    if (name === header) continue;
    if (taken.some((t) => f.offset < t.offset + t.size && t.offset < f.offset + f.size)) continue;
    taken.push(f);
    out.push([name, f]);
  }
  return out;
}

describe('struct codecs', () => {
  for (const codec of ALL_STRUCTS) {
    it(`${codec.name}: encode/decode round trip at full size`, () => {
      const fields = disjointFields(codec.fields as Record<string, FieldSpec>, codec.spec.header);
      const record = fc.record(Object.fromEntries(fields.map(([n, f]) => [n, arbitraryFor(f)])) as Record<string, fc.Arbitrary<Value>>);
      fc.assert(
        fc.property(record, (values) => {
          const buf = codec.encode(values as never);
          expect(buf.length).toBe(codec.full);
          const back = codec.decode(buf) as Record<string, Value>;
          for (const [name] of fields) expect(back[name], name).toEqual(values[name]);
          if (codec.spec.header !== undefined) expect(back[codec.spec.header]).toBe(codec.full);
        }),
        { numRuns: 50 },
      );
    });
  }

  it('absent fields encode as zero and the header carries the chosen size', () => {
    const buf = IOMMU_HWPT_ALLOC_STRUCT.encode({ dev_id: 3 }, 24);
    expect(buf.length).toBe(48);
    const v = IOMMU_HWPT_ALLOC_STRUCT.decode(buf);
    expect(v.size).toBe(24);
    expect(v.dev_id).toBe(3);
    expect(buf.subarray(24).every((b) => b === 0)).toBe(true);
    expect(IOMMU_IOAS_ALLOC_STRUCT.decode(IOMMU_IOAS_ALLOC_STRUCT.encode({})).out_ioas_id).toBe(0);
  });

  it('a non-zero field past the declared size is refused as too new; zero is fine (§2)', () => {
    expect(() => IOMMU_VIOMMU_ALLOC_STRUCT.encode({ data_len: 8 }, 24)).toThrow(StructEncodeError);
    let caught: unknown;
    try {
      VFIO_DEVICE_BIND_IOMMUFD_STRUCT.encode({ token_uuid_ptr: 1n }, 16);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(StructEncodeError);
    expect((caught as StructEncodeError).reason).toBe('too-new');
    expect(() => IOMMU_VIOMMU_ALLOC_STRUCT.encode({ data_len: 0, data_uptr: 0n }, 24)).not.toThrow();
  });

  it('sizes outside min..full and values outside their field are refused', () => {
    expect(() => IOMMU_DESTROY_STRUCT.encode({}, 4)).toThrow(/size 4 outside 8..8/);
    expect(() => IOMMU_HWPT_ALLOC_STRUCT.encode({}, 56)).toThrow(StructEncodeError);
    expect(() => IOMMU_DESTROY_STRUCT.encode({ id: -1 })).toThrow(/does not fit u32/);
    expect(() => IOMMU_DESTROY_STRUCT.encode({ id: 2 ** 32 })).toThrow(StructEncodeError);
    expect(() => IOMMU_DESTROY_STRUCT.encode({ id: 1.5 })).toThrow(StructEncodeError);
    expect(() => VFIO_DEVICE_BIND_IOMMUFD_STRUCT.encode({ iommufd: 2 ** 31 })).toThrow(/s32/);
    expect(() => IOMMU_HW_INFO_STRUCT.encode({ data_uptr: 2n ** 64n })).toThrow(/u64/);
    expect(() => IOMMU_HW_INFO_STRUCT.encode({ __reserved: new Uint8Array(4) })).toThrow(/at most 3 bytes/);
    expect(() => IOMMU_DESTROY_STRUCT.encode({ nope: 1 } as never)).toThrow(/no field nope/);
  });

  it('decoding a short buffer reads missing fields as zero (an older kernel wrote less, §2 step 6)', () => {
    const v = IOMMU_HW_INFO_STRUCT.decode(Buffer.alloc(32, 0xff));
    expect(v.out_capabilities).toBe(0n);
    expect(v.out_data_type).toBe(0xffff_ffff);
    expect(v.out_max_pasid_log2).toBe(0xff);
  });

  it('union members share bytes (iommu_test_cmd, iommu_hw_info)', () => {
    const buf = IOMMU_TEST_CMD_STRUCT.encode({ op: 10, id: 7, 'mock_domain_replace.pt_id': 42 });
    const v = IOMMU_TEST_CMD_STRUCT.decode(buf);
    expect(v['mock_domain.out_stdev_id']).toBe(42);
    expect(v.size).toBe(72);
    expect(v.dirty.length).toBe(48);
    const hw = IOMMU_HW_INFO_STRUCT.decode(IOMMU_HW_INFO_STRUCT.encode({ in_data_type: 0xfeedbeef }));
    expect(hw.out_data_type).toBe(0xfeedbeef);
  });

  it('union members may be given together only when their bytes agree; zeros never clobber', () => {
    const agree = IOMMU_TEST_CMD_STRUCT.encode({ 'mock_domain.out_stdev_id': 5, 'mock_domain_replace.pt_id': 5 });
    expect(IOMMU_TEST_CMD_STRUCT.decode(agree)['trigger_vevent.dev_id']).toBe(5);
    expect(() => IOMMU_TEST_CMD_STRUCT.encode({ 'mock_domain.out_stdev_id': 5, 'mock_domain_replace.pt_id': 6 })).toThrow(/conflicts/);
    const zeroLater = IOMMU_TEST_CMD_STRUCT.encode({ 'mock_domain.out_stdev_id': 5, dirty: new Uint8Array(48) });
    expect(IOMMU_TEST_CMD_STRUCT.decode(zeroLater)['mock_domain.out_stdev_id']).toBe(5);
    // A decoded struct re-encodes to the same bytes (every overlapping member agrees).
    const round = IOMMU_TEST_CMD_STRUCT.encode({ op: 12, id: 3, 'mock_domain_flags.dev_flags': 4, 'mock_domain.out_idev_id': 9 });
    expect(IOMMU_TEST_CMD_STRUCT.encode(IOMMU_TEST_CMD_STRUCT.decode(round))).toEqual(round);
  });

  describe('sizeFor picks the struct size each kernel knows (§3, §5.1)', () => {
    const cases: [string, { sizeFor(v: readonly [number, number]): number | undefined }, [number, number], number | undefined][] = [
      ['hwpt_alloc 6.5', IOMMU_HWPT_ALLOC_STRUCT, [6, 5], undefined],
      ['hwpt_alloc 6.6', IOMMU_HWPT_ALLOC_STRUCT, [6, 6], 24],
      ['hwpt_alloc 6.10', IOMMU_HWPT_ALLOC_STRUCT, [6, 10], 40],
      ['hwpt_alloc 6.13', IOMMU_HWPT_ALLOC_STRUCT, [6, 13], 48],
      ['hw_info 6.13', IOMMU_HW_INFO_STRUCT, [6, 13], 40],
      ['viommu_alloc 6.16', IOMMU_VIOMMU_ALLOC_STRUCT, [6, 16], 24],
      ['viommu_alloc 6.17', IOMMU_VIOMMU_ALLOC_STRUCT, [6, 17], 40],
      ['viommu_alloc 7.2', IOMMU_VIOMMU_ALLOC_STRUCT, [7, 2], 40],
      ['bind 6.16', VFIO_DEVICE_BIND_IOMMUFD_STRUCT, [6, 16], 16],
      ['bind 7.0', VFIO_DEVICE_BIND_IOMMUFD_STRUCT, [7, 0], 24],
      ['attach 6.14', VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT, [6, 14], 12],
      ['attach 6.15', VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT, [6, 15], 16],
      ['detach 6.14', VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT, [6, 14], 8],
      ['detach 6.15', VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT, [6, 15], 12],
      ['device_info 6.13', VFIO_DEVICE_INFO_STRUCT, [6, 13], 24],
      ['test_cmd 6.13', IOMMU_TEST_CMD_STRUCT, [6, 13], 72],
    ];
    for (const [label, codec, version, size] of cases) {
      it(label, () => expect(codec.sizeFor(version)).toBe(size));
    }
  });
});
