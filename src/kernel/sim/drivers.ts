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
  /** The registered cdevs, as the kernel finds a cdev by its inode rather than by walking the bus. */
  private readonly byCdev = new Map<string, number>();

  constructor(private readonly inventory: SimPciFunction[]) {
    inventory.forEach((fn, i) => {
      if (fn.cdev !== undefined) this.byCdev.set(fn.cdev, i);
    });
  }

  /** The function behind `/dev/vfio/devices/<cdev>`, if vfio-pci registered it. */
  functionOf(cdev: string): SimPciFunction | undefined {
    const i = this.byCdev.get(cdev);
    return i === undefined ? undefined : this.inventory[i];
  }

  private indexOf(bdf: string): number {
    const i = this.inventory.findIndex((f) => f.bdf === bdf);
    if (i < 0) throw new Error(`no PCI function ${bdf}`);
    return i;
  }

  /** The lowest `vfioN` not in use, as the kernel's cdev minor allocator hands out. */
  private nextCdev(): string {
    for (let n = 0; ; n++) if (!this.byCdev.has(`vfio${n}`)) return `vfio${n}`;
  }

  prepare(bdf: string): SimPciFunction {
    const i = this.indexOf(bdf);
    const fn = this.inventory[i]!;
    if (fn.driver === VFIO_PCI) return fn;
    this.original.set(bdf, fn.driver);
    const next = Object.freeze({ ...fn, driver: VFIO_PCI, cdev: this.nextCdev() });
    this.inventory[i] = next;
    if (fn.cdev !== undefined) this.byCdev.delete(fn.cdev);
    this.byCdev.set(next.cdev, i);
    return next;
  }

  release(bdf: string, hasOpenFile: boolean): SimPciFunction {
    const i = this.indexOf(bdf);
    const fn = this.inventory[i]!;
    if (!this.original.has(bdf)) return fn; // never prepared here: leave it alone
    if (hasOpenFile) throw new Error(`refusing to release ${bdf}: ${fn.cdev ?? 'its VFIO device'} is still open; close the device first`);
    const next = Object.freeze({ ...fn, driver: this.original.get(bdf), cdev: undefined });
    if (fn.cdev !== undefined) this.byCdev.delete(fn.cdev);
    this.original.delete(bdf);
    this.inventory[i] = next;
    return next;
  }
}
