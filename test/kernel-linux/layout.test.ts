import { describe, expect, it } from 'vitest';
import { ALL_STRUCTS } from '../../src/kernel/linux/structs.js';
import { parseLayout, parseMinsz, readReference } from './reference.js';

const layout = parseLayout(readReference('struct-layout-x86_64.txt'));
const minsz = parseMinsz(readReference('struct-minsz.txt'));

/**
 * Fields the compiled reference does not print for these structs (the
 * layout dump lists only some members of a few structs); the header is at
 * offset 0/4 in every iommufd struct. Kept exact: a name here that the
 * reference does print fails the test.
 */
const NOT_IN_REFERENCE = new Set([
  'iommu_hwpt_invalidate.size',
  'iommu_fault_alloc.size',
  'iommu_fault_alloc.flags',
  // The dump gives vfio_region_info's size only; vfio-irq-codecs.test.ts checks its fields against vfio.h.
  ...['argsz', 'flags', 'index', 'cap_offset', 'size', 'offset'].map((f) => `vfio_region_info.${f}`),
]);

/**
 * Structs the reference does not compile at all, and ioctls missing from
 * struct-minsz.txt: checked by hand against vfio.h in vfio-irq-codecs.test.ts,
 * and against the compiled headers by the lane's layout check. Exact, like
 * NOT_IN_REFERENCE.
 */
const STRUCTS_NOT_IN_REFERENCE = new Set(['vfio_irq_info', 'vfio_irq_set']);
const IOCTLS_NOT_IN_MINSZ = new Set(['VFIO_DEVICE_GET_REGION_INFO', 'VFIO_DEVICE_GET_IRQ_INFO', 'VFIO_DEVICE_SET_IRQS']);

describe('struct layouts match struct-layout-x86_64.txt', () => {
  it('the reference parsed', () => {
    expect(layout.structs.size).toBeGreaterThan(30);
    expect(minsz.size).toBeGreaterThan(20);
  });

  it('the exemptions are exact: every exempted struct and ioctl is still missing from the reference', () => {
    for (const name of STRUCTS_NOT_IN_REFERENCE) expect(layout.structs.has(name), `${name} is in the reference now; drop the exemption`).toBe(false);
    for (const name of IOCTLS_NOT_IN_MINSZ) expect(minsz.has(name), `${name} is in struct-minsz.txt now; drop the exemption`).toBe(false);
    const names = new Set<string>(ALL_STRUCTS.map((c) => c.name));
    for (const name of STRUCTS_NOT_IN_REFERENCE) expect(names.has(name)).toBe(true);
  });

  for (const codec of ALL_STRUCTS.filter((c) => !STRUCTS_NOT_IN_REFERENCE.has(c.name))) {
    describe(codec.name, () => {
      const ref = layout.structs.get(codec.name);

      it('is in the reference with the same sizeof', () => {
        expect(ref, `${codec.name} missing from the reference`).toBeDefined();
        expect(codec.full).toBe(ref!.size);
        expect(codec.full % ref!.align).toBe(0);
      });

      it('has every field the reference lists, at the same offset and size', () => {
        for (const [field, f] of ref!.fields) {
          const ours = (codec.fields as Record<string, { offset: number; size: number } | undefined>)[field];
          expect(ours, `${codec.name}.${field} missing from the codec`).toBeDefined();
          expect(ours!.offset, `${codec.name}.${field} offset`).toBe(f.offset);
          if (f.size !== undefined) expect(ours!.size, `${codec.name}.${field} size`).toBe(f.size);
        }
      });

      it('has no field the reference does not vouch for', () => {
        for (const field of Object.keys(codec.fields)) {
          const key = `${codec.name}.${field}`;
          if (NOT_IN_REFERENCE.has(key)) expect(ref!.fields.has(field), `${key} is listed now; drop the exemption`).toBe(false);
          else expect(ref!.fields.has(field), `${key} is not in the reference`).toBe(true);
        }
      });

      it('field sizes agree with their kinds and fit the struct', () => {
        const widths: Record<string, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };
        for (const [field, f] of Object.entries(codec.fields as Record<string, { offset: number; size: number; kind: string }>)) {
          if (f.kind !== 'bytes') expect(f.size, `${codec.name}.${field}`).toBe(widths[f.kind]);
          // Natural alignment: every u64 is __aligned_u64 (§0).
          if (f.kind !== 'bytes') expect(f.offset % f.size, `${codec.name}.${field} alignment`).toBe(0);
          expect(f.offset + f.size).toBeLessThanOrEqual(codec.full);
        }
      });

      if (codec.ioctl !== undefined && !IOCTLS_NOT_IN_MINSZ.has(codec.ioctl)) {
        it(`min and full sizes match struct-minsz.txt (${codec.ioctl})`, () => {
          const m = minsz.get(codec.ioctl!);
          expect(m, `${codec.ioctl} missing from struct-minsz.txt`).toBeDefined();
          expect(codec.min).toBe(m!.min);
          expect(codec.full).toBe(m!.full);
        });
      }

      it('size history grows from at least min to full', () => {
        const steps = codec.spec.sizes;
        expect(steps.length).toBeGreaterThan(0);
        expect(steps[steps.length - 1]![2]).toBe(codec.full);
        let prev = 0;
        for (const [, , size] of steps) {
          expect(size).toBeGreaterThanOrEqual(codec.min);
          expect(size).toBeGreaterThan(prev);
          prev = size;
        }
      });
    });
  }
});
