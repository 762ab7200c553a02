import { describe, expect, it } from 'vitest';
import { IdAllocator, OBJECT_ID_MAX, OBJECT_ID_MIN } from '../../src/kernel/sim/index.js';

describe('IdAllocator (kernel-uapi.md §0 IDs)', () => {
  it('starts at 1 and covers 1..0x7FFFFFFF', () => {
    expect(OBJECT_ID_MIN).toBe(1);
    expect(OBJECT_ID_MAX).toBe(0x7fff_ffff);
    const ids = new IdAllocator();
    expect([ids.alloc(), ids.alloc(), ids.alloc()]).toEqual([1, 2, 3]);
  });

  it('hands out the lowest free ID and reuses a freed ID immediately', () => {
    const ids = new IdAllocator();
    for (let i = 0; i < 5; i++) ids.alloc();
    ids.free(4);
    ids.free(2);
    expect(ids.alloc()).toBe(2);
    expect(ids.alloc()).toBe(4);
    expect(ids.alloc()).toBe(6);
  });

  it('never reuses a tombstoned ID until reset', () => {
    const ids = new IdAllocator();
    ids.alloc();
    const t = ids.alloc() as number;
    ids.alloc();
    ids.tombstone(t);
    expect(ids.isTombstone(t)).toBe(true);
    expect(ids.tombstones()).toEqual([2]);
    expect(ids.alloc()).toBe(4);
    expect(() => ids.free(t)).toThrow(/not allocated/);
    ids.reset();
    expect(ids.tombstones()).toEqual([]);
    expect(ids.alloc()).toBe(1);
  });

  it('rejects freeing an ID that was never allocated', () => {
    const ids = new IdAllocator();
    ids.alloc();
    expect(() => ids.free(0)).toThrow();
    expect(() => ids.free(2)).toThrow();
  });

  it('returns undefined when the range is exhausted', () => {
    const ids = new IdAllocator(1, 2);
    expect([ids.alloc(), ids.alloc(), ids.alloc()]).toEqual([1, 2, undefined]);
    ids.free(1);
    expect(ids.alloc()).toBe(1);
  });

  it('matches a naive lowest-free model over a long pseudo-random sequence', () => {
    const ids = new IdAllocator();
    const live = new Set<number>();
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    for (let step = 0; step < 3000; step++) {
      if (live.size === 0 || rnd() < 0.55) {
        let expected = 1;
        while (live.has(expected)) expected++;
        const got = ids.alloc() as number;
        expect(got).toBe(expected);
        live.add(got);
      } else {
        const arr = [...live];
        const victim = arr[Math.floor(rnd() * arr.length)] as number;
        live.delete(victim);
        ids.free(victim);
      }
    }
  });
});
