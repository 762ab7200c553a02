/**
 * Lowest-free ID allocator, the sim's stand-in for the iommufd object xarray
 * (`xa_alloc` with XA_FLAGS_ALLOC1 over `xa_limit_31b`, kernel-uapi.md §0).
 *
 * Why a heap of freed IDs and a high-water mark: the kernel always hands out
 * the lowest free index, and a freed ID is reusable at once, so the next
 * allocation after a destroy must return that ID again (§3.1 "success").
 * Tombstones (§4.3) are IDs that stay reserved without an object: they are
 * never pushed back onto the free heap until `reset()` (iommufd release,
 * which calls `xa_destroy`).
 */

export const OBJECT_ID_MIN = 1;
export const OBJECT_ID_MAX = 0x7fff_ffff;

export class IdAllocator {
  private readonly freed: number[] = [];
  private next: number;
  private readonly reservedTombstones = new Set<number>();

  constructor(
    private readonly min: number = OBJECT_ID_MIN,
    private readonly max: number = OBJECT_ID_MAX,
  ) {
    this.next = min;
  }

  /** Lowest free ID, or undefined when the range is exhausted (the kernel says EBUSY then). */
  alloc(): number | undefined {
    if (this.freed.length > 0) return this.popMin();
    if (this.next > this.max) return undefined;
    return this.next++;
  }

  /** Returns an ID to the pool; the next `alloc()` may return it. */
  free(id: number): void {
    if (id < this.min || id >= this.next || this.reservedTombstones.has(id)) {
      throw new Error(`IdAllocator: freeing ${id}, which is not allocated`);
    }
    this.push(id);
  }

  /** Keeps `id` allocated with no object behind it (REMOVE_OBJ_TOMBSTONE, §4.3). */
  tombstone(id: number): void {
    this.reservedTombstones.add(id);
  }

  isTombstone(id: number): boolean {
    return this.reservedTombstones.has(id);
  }

  tombstones(): number[] {
    return [...this.reservedTombstones].sort((a, b) => a - b);
  }

  /** Forgets everything, tombstones included (xa_destroy at iommufd release, §4.4). */
  reset(): void {
    this.freed.length = 0;
    this.reservedTombstones.clear();
    this.next = this.min;
  }

  // Binary min-heap over `freed`.
  private push(id: number): void {
    const h = this.freed;
    h.push(id);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = h[parent] as number;
      if (p <= id) break;
      h[i] = p;
      i = parent;
    }
    h[i] = id;
  }

  private popMin(): number {
    const h = this.freed;
    const top = h[0] as number;
    const last = h.pop() as number;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let smallest = i;
        let value = last;
        if (l < h.length && (h[l] as number) < value) {
          smallest = l;
          value = h[l] as number;
        }
        if (r < h.length && (h[r] as number) < value) smallest = r;
        if (smallest === i) break;
        h[i] = h[smallest] as number;
        i = smallest;
      }
      h[i] = last;
    }
    return top;
  }
}
