/**
 * A sysfs tree in a temp dir, shaped like the real one (devices reached
 * through bus/pci/devices symlinks, `driver` and `iommu_group` links,
 * vfio-dev/vfioN for VFIO-bound functions), plus an emulation of the
 * kernel's reaction to the driver-switching writes, wrapped around the real
 * file operations.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { nodeSysfsIo, type SysfsIo } from '../../src/kernel/linux/sysfs.js';

export interface FakeFunction {
  bdf: string;
  vendor: number;
  device: number;
  group: number | undefined;
  driver: string | undefined;
  /** The driver a reprobe without override picks (what udev/modalias would match). */
  native?: string | undefined;
}

export class FakeSysfs {
  readonly root: string;
  /** Every attribute write, in order: [path relative to root, data]. */
  readonly writes: [string, string][] = [];
  /** Drivers whose module is "loaded" (have a directory under bus/pci/drivers). */
  private readonly natives = new Map<string, string | undefined>();
  private nextCdev = 0;
  private readonly cdevs = new Map<string, string>();

  constructor(functions: FakeFunction[], drivers: string[] = ['nvme', 'ice', 'vfio-pci']) {
    this.root = mkdtempSync(join(tmpdir(), 'vfio-broker-sysfs-'));
    for (const d of drivers) this.addDriver(d);
    mkdirSync(this.path('bus/pci/devices'), { recursive: true });
    writeFileSync(this.path('bus/pci/drivers_probe'), '');
    for (const f of functions) this.addFunction(f);
  }

  path(rel: string): string {
    return join(this.root, rel);
  }

  cleanup(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  addDriver(name: string): void {
    mkdirSync(this.path(`bus/pci/drivers/${name}`), { recursive: true });
    for (const attr of ['bind', 'unbind']) writeFileSync(this.path(`bus/pci/drivers/${name}/${attr}`), '');
  }

  addFunction(f: FakeFunction): void {
    const rel = `devices/pci0000:00/${f.bdf}`;
    mkdirSync(this.path(rel), { recursive: true });
    writeFileSync(this.path(`${rel}/vendor`), `0x${f.vendor.toString(16).padStart(4, '0')}\n`);
    writeFileSync(this.path(`${rel}/device`), `0x${f.device.toString(16).padStart(4, '0')}\n`);
    writeFileSync(this.path(`${rel}/driver_override`), '(null)\n');
    if (f.group !== undefined) {
      mkdirSync(this.path(`kernel/iommu_groups/${f.group}`), { recursive: true });
      symlinkSync(`../../../kernel/iommu_groups/${f.group}`, this.path(`${rel}/iommu_group`));
    }
    symlinkSync(`../../../${rel}`, this.path(`bus/pci/devices/${f.bdf}`));
    this.natives.set(f.bdf, 'native' in f ? f.native : f.driver);
    if (f.driver !== undefined) this.bind(f.bdf, f.driver);
  }

  driverOf(bdf: string): string | undefined {
    const link = this.path(`bus/pci/devices/${bdf}/driver`);
    return existsSync(link) ? basename(readlinkSync(link)) : undefined;
  }

  override(bdf: string): string {
    return readFileSync(this.path(`bus/pci/devices/${bdf}/driver_override`), 'utf8');
  }

  /** The io the code under test uses: real file operations, then the kernel's reaction to the write. */
  io(): SysfsIo {
    return {
      ...nodeSysfsIo,
      writeFile: async (path, data) => {
        await nodeSysfsIo.writeFile(path, data);
        const rel = path.slice(this.root.length + 1);
        this.writes.push([rel, data]);
        this.react(rel, data);
      },
    };
  }

  private react(rel: string, data: string): void {
    const bdf = data.trim();
    const unbind = /^bus\/pci\/devices\/([^/]+)\/driver\/unbind$/.exec(rel) ?? /^bus\/pci\/drivers\/[^/]+\/unbind$/.exec(rel);
    if (unbind) return this.unbind(bdf);
    const bind = /^bus\/pci\/drivers\/([^/]+)\/bind$/.exec(rel);
    if (bind) return this.bind(bdf, bind[1]!);
    if (rel === 'bus/pci/drivers_probe') {
      if (this.driverOf(bdf) !== undefined) return;
      const override = this.override(bdf).trim();
      const wanted = override !== '' && override !== '(null)' ? override : this.natives.get(bdf);
      if (wanted !== undefined && existsSync(this.path(`bus/pci/drivers/${wanted}`))) this.bind(bdf, wanted);
    }
  }

  private bind(bdf: string, driver: string): void {
    const dev = `bus/pci/devices/${bdf}`;
    symlinkSync(`../../../bus/pci/drivers/${driver}`, this.path(`${dev}/driver`));
    if (driver === 'vfio-pci' && existsSync(this.path(`${dev}/iommu_group`))) {
      const cdev = `vfio${this.nextCdev++}`;
      this.cdevs.set(bdf, cdev);
      mkdirSync(this.path(`${dev}/vfio-dev/${cdev}`), { recursive: true });
      mkdirSync(this.path('class/vfio-dev'), { recursive: true });
      mkdirSync(this.path(`class/vfio-dev/${cdev}`), { recursive: true });
      symlinkSync(`../../../devices/pci0000:00/${bdf}`, this.path(`class/vfio-dev/${cdev}/device`));
    }
  }

  private unbind(bdf: string): void {
    const dev = `bus/pci/devices/${bdf}`;
    if (existsSync(this.path(`${dev}/vfio-dev`))) rmSync(this.path(`${dev}/vfio-dev`), { recursive: true });
    unlinkSync(this.path(`${dev}/driver`));
    const cdev = this.cdevs.get(bdf);
    if (cdev !== undefined) rmSync(this.path(`class/vfio-dev/${cdev}`), { recursive: true });
    this.cdevs.delete(bdf);
  }
}
