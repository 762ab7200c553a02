/**
 * The host's PCI functions as sysfs shows them, and the driver switching
 * libvirt does for managed hostdevs (virPCIDeviceBindToStub / ReattachDevice):
 * `driver_override` + `driver/unbind` + `drivers_probe` to hand a function to
 * vfio-pci, and the reverse to give it back to its own driver.
 *
 * Paths are built only from validated BDFs, cdev names and driver names read
 * back from sysfs links; the root is injectable so tests run on a temp tree.
 */
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { basename } from 'node:path';
import type { PciFunction } from '../types.js';

const BDF_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const SHORT_BDF_RE = /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
export const CDEV_RE = /^vfio[0-9]+$/;
const DRIVER_RE = /^[A-Za-z0-9_.-]+$/;
export const VFIO_PCI_DRIVER = 'vfio-pci';

/** File operations on sysfs; the default uses node:fs, tests may wrap it to play the kernel's part. */
export interface SysfsIo {
  readFile(path: string): Promise<string>;
  /** Writes an attribute: O_WRONLY|O_TRUNC and never O_CREAT (sysfs attributes exist or the write is wrong). */
  writeFile(path: string, data: string): Promise<void>;
  readlink(path: string): Promise<string>;
  readdir(path: string): Promise<string[]>;
}

export const nodeSysfsIo: SysfsIo = {
  readFile: (path) => fsp.readFile(path, 'utf8'),
  writeFile: (path, data) => fsp.writeFile(path, data, { flag: fsConstants.O_WRONLY | fsConstants.O_TRUNC }),
  readlink: (path) => fsp.readlink(path),
  readdir: (path) => fsp.readdir(path),
};

/** A refused or failed sysfs operation; the message is meant for the operator. */
export class SysfsError extends Error {
  override readonly name = 'SysfsError';
}

/** `0000:3b:00.0` or `3b:00.0`, any case → `0000:3b:00.0`; undefined when not a PCI address. */
export function normalizeBdf(raw: string): string | undefined {
  const id = raw.trim().toLowerCase();
  if (BDF_RE.test(id)) return id;
  if (SHORT_BDF_RE.test(id)) return `0000:${id}`;
  return undefined;
}

export interface PciSysfsOptions {
  /** sysfs mount point; /sys by default. */
  root?: string;
  /**
   * BDFs the broker may hand to vfio-pci (prepare/release) and list. Without
   * one, every function with an IOMMU group is listed and prepare/release
   * refuse everything: rebinding host devices must be opted into per device.
   */
  allowlist?: readonly string[] | undefined;
  io?: SysfsIo;
}

export class PciSysfs {
  readonly root: string;
  private readonly io: SysfsIo;
  private readonly allowlist: ReadonlySet<string> | undefined;
  /** Driver each prepared function had before prepareDevice, for releaseDevice (this process only). */
  private readonly originals = new Map<string, string | undefined>();

  constructor(options: PciSysfsOptions = {}) {
    this.root = (options.root ?? '/sys').replace(/\/+$/, '');
    this.io = options.io ?? nodeSysfsIo;
    if (options.allowlist !== undefined) {
      const set = new Set<string>();
      for (const raw of options.allowlist) {
        const bdf = normalizeBdf(raw);
        if (bdf === undefined) throw new SysfsError(`allowlist: "${raw}" is not a PCI address (expected DDDD:BB:DD.F)`);
        set.add(bdf);
      }
      this.allowlist = set;
    }
  }

  /** Whether `bdf` is in the configured allowlist (false when none is configured). */
  isAllowed(bdf: string): boolean {
    const id = normalizeBdf(bdf);
    return id !== undefined && this.allowlist !== undefined && this.allowlist.has(id);
  }

  get hasAllowlist(): boolean {
    return this.allowlist !== undefined;
  }

  /**
   * Functions under bus/pci/devices that have an IOMMU group (VFIO cannot use
   * any other), restricted to the allowlist when one is configured; by BDF.
   */
  async listFunctions(): Promise<PciFunction[]> {
    let names: string[];
    try {
      names = await this.io.readdir(`${this.root}/bus/pci/devices`);
    } catch (err) {
      throw new SysfsError(`cannot list ${this.root}/bus/pci/devices: ${(err as Error).message}`);
    }
    const out: PciFunction[] = [];
    for (const name of names.sort()) {
      if (!BDF_RE.test(name)) continue;
      if (this.allowlist !== undefined && !this.allowlist.has(name)) continue;
      const fn = await this.readFunction(name);
      if (fn !== undefined) out.push(fn);
    }
    return out;
  }

  /** One function, or undefined when it does not exist or has no IOMMU group. */
  async readFunction(raw: string): Promise<PciFunction | undefined> {
    const bdf = this.bdf(raw);
    const dir = this.deviceDir(bdf);
    const group = await this.linkName(`${dir}/iommu_group`);
    if (group === undefined || !/^\d+$/.test(group)) return undefined;
    const vendorId = parseHexId(await this.io.readFile(`${dir}/vendor`), `${dir}/vendor`);
    const deviceId = parseHexId(await this.io.readFile(`${dir}/device`), `${dir}/device`);
    return {
      bdf,
      vendorId,
      deviceId,
      iommuGroup: Number(group),
      cdev: await this.cdevOf(bdf),
      driver: await this.driverOf(bdf),
    };
  }

  /** Name of the driver bound to `bdf`, from the `driver` link. */
  async driverOf(raw: string): Promise<string | undefined> {
    const name = await this.linkName(`${this.deviceDir(this.bdf(raw))}/driver`);
    return name !== undefined && DRIVER_RE.test(name) ? name : undefined;
  }

  /** The VFIO cdev (`vfioN`) of `bdf`, present while a VFIO driver with cdev support holds it. */
  async cdevOf(raw: string): Promise<string | undefined> {
    try {
      const entries = await this.io.readdir(`${this.deviceDir(this.bdf(raw))}/vfio-dev`);
      return entries.filter((e) => CDEV_RE.test(e)).sort()[0];
    } catch {
      return undefined;
    }
  }

  /** The PCI function behind a cdev, from `class/vfio-dev/<cdev>/device`. */
  async functionOfCdev(cdev: string): Promise<string | undefined> {
    if (!CDEV_RE.test(cdev)) return undefined;
    const name = await this.linkName(`${this.root}/class/vfio-dev/${cdev}/device`);
    return name !== undefined ? normalizeBdf(name) : undefined;
  }

  /**
   * Hands `bdf` to vfio-pci: driver_override = vfio-pci, unbind from the
   * current driver, then drivers_probe. The old driver is remembered for
   * releaseDevice. A function already on vfio-pci is left alone. IOMMU group
   * siblings are not touched: every function of a group must end up on
   * vfio-pci (or unbound) before VFIO bind succeeds (kernel-uapi.md §3.15).
   */
  async prepareDevice(raw: string): Promise<PciFunction> {
    const bdf = this.allowedBdf(raw, 'prepare');
    const dir = await this.existingDeviceDir(bdf);
    const current = await this.driverOf(bdf);
    if (current !== VFIO_PCI_DRIVER) {
      if (!this.originals.has(bdf)) this.originals.set(bdf, current);
      await this.io.writeFile(`${dir}/driver_override`, VFIO_PCI_DRIVER);
      if (current !== undefined) await this.io.writeFile(`${dir}/driver/unbind`, bdf);
      await this.io.writeFile(`${this.root}/bus/pci/drivers_probe`, bdf);
      const after = await this.driverOf(bdf);
      if (after !== VFIO_PCI_DRIVER) {
        await this.restoreDriver(bdf);
        throw new SysfsError(
          `${bdf}: vfio-pci did not bind (driver now ${after ?? 'none'}); is the vfio-pci module loaded and does the ` +
            `function have an IOMMU group? The original driver was given it back`,
        );
      }
    }
    const fn = await this.readFunction(bdf);
    if (fn === undefined) throw new SysfsError(`${bdf}: no IOMMU group after binding vfio-pci`);
    return fn;
  }

  /**
   * Gives `bdf` back: unbind from vfio-pci, clear driver_override and
   * reprobe, so the kernel picks the native driver; if it does not pick the
   * one prepareDevice replaced, bind that one explicitly (as libvirt does).
   * The caller must have closed the function's VFIO device file first, or
   * the kernel's unbind blocks until it is closed (§4.5).
   */
  async releaseDevice(raw: string): Promise<PciFunction | undefined> {
    const bdf = this.allowedBdf(raw, 'release');
    await this.existingDeviceDir(bdf);
    await this.restoreDriver(bdf);
    return this.readFunction(bdf);
  }

  /** The driver prepareDevice found on `bdf` (undefined: none, or never prepared). */
  originalDriver(raw: string): string | undefined {
    return this.originals.get(this.bdf(raw));
  }

  private async restoreDriver(bdf: string): Promise<void> {
    const dir = this.deviceDir(bdf);
    if ((await this.driverOf(bdf)) === VFIO_PCI_DRIVER) await this.io.writeFile(`${dir}/driver/unbind`, bdf);
    // An empty write (a lone newline) clears the override (drivers/pci/pci-sysfs.c driver_override_store).
    await this.io.writeFile(`${dir}/driver_override`, '\n');
    await this.io.writeFile(`${this.root}/bus/pci/drivers_probe`, bdf);
    const original = this.originals.get(bdf);
    this.originals.delete(bdf);
    if (original === undefined || !DRIVER_RE.test(original)) return;
    // Bound by the reprobe: the original driver, or another one that won it (not ours to fight).
    if ((await this.driverOf(bdf)) !== undefined) return;
    try {
      await this.io.writeFile(`${this.root}/bus/pci/drivers/${original}/bind`, bdf);
    } catch (err) {
      throw new SysfsError(`${bdf}: could not rebind the original driver ${original}: ${(err as Error).message}`);
    }
  }

  private allowedBdf(raw: string, what: string): string {
    const bdf = this.bdf(raw);
    if (this.allowlist === undefined) {
      throw new SysfsError(`refusing to ${what} ${bdf}: no device allowlist is configured, so no host device may be rebound`);
    }
    if (!this.allowlist.has(bdf)) {
      throw new SysfsError(`refusing to ${what} ${bdf}: it is not in the configured device allowlist`);
    }
    return bdf;
  }

  private bdf(raw: string): string {
    const bdf = normalizeBdf(raw);
    if (bdf === undefined) throw new SysfsError(`"${raw.slice(0, 64)}" is not a PCI address (expected DDDD:BB:DD.F)`);
    return bdf;
  }

  private deviceDir(bdf: string): string {
    return `${this.root}/bus/pci/devices/${bdf}`;
  }

  private async existingDeviceDir(bdf: string): Promise<string> {
    const dir = this.deviceDir(bdf);
    try {
      await this.io.readFile(`${dir}/vendor`);
    } catch {
      throw new SysfsError(`${bdf}: no such PCI function under ${this.root}/bus/pci/devices`);
    }
    return dir;
  }

  /** Last component of a symlink's target, or undefined when there is no link. */
  private async linkName(path: string): Promise<string | undefined> {
    try {
      return basename(await this.io.readlink(path));
    } catch {
      return undefined;
    }
  }
}

function parseHexId(text: string, path: string): number {
  const value = Number.parseInt(text.trim(), 16);
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new SysfsError(`${path}: unexpected content "${text.trim()}"`);
  return value;
}
