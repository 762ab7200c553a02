/**
 * Managed devices on the sim: what `driver_override` + `drivers_probe` do on
 * a real host (libvirt's managed hostdevs). Preparing gives the function to
 * vfio-pci, which registers a new VFIO cdev; releasing gives it back to the
 * driver it had, which is refused while a device fd is open (a real unbind
 * would block until the fd closes, §4.5).
 */
import type { SimPciFunction } from './inventory.js';

export const VFIO_PCI = 'vfio-pci';

export class SimDrivers {
  /** The driver each function had before it was prepared. */
  private readonly original = new Map<string, string | undefined>();

  constructor(private readonly inventory: SimPciFunction[]) {}

  private indexOf(bdf: string): number {
    const i = this.inventory.findIndex((f) => f.bdf === bdf);
    if (i < 0) throw new Error(`no PCI function ${bdf}`);
    return i;
  }

  /** The lowest `vfioN` not in use, as the kernel's cdev minor allocator hands out. */
  private nextCdev(): string {
    const used = new Set(this.inventory.map((f) => f.cdev));
    for (let n = 0; ; n++) if (!used.has(`vfio${n}`)) return `vfio${n}`;
  }

  prepare(bdf: string): SimPciFunction {
    const i = this.indexOf(bdf);
    const fn = this.inventory[i]!;
    if (fn.driver === VFIO_PCI) return fn;
    this.original.set(bdf, fn.driver);
    const next = Object.freeze({ ...fn, driver: VFIO_PCI, cdev: this.nextCdev() });
    this.inventory[i] = next;
    return next;
  }

  release(bdf: string, hasOpenFile: boolean): SimPciFunction {
    const i = this.indexOf(bdf);
    const fn = this.inventory[i]!;
    if (!this.original.has(bdf)) return fn; // never prepared here: leave it alone
    if (hasOpenFile) throw new Error(`refusing to release ${bdf}: ${fn.cdev ?? 'its VFIO device'} is still open; close the device first`);
    const next = Object.freeze({ ...fn, driver: this.original.get(bdf), cdev: undefined });
    this.original.delete(bdf);
    this.inventory[i] = next;
    return next;
  }
}
