/**
 * Daemon configuration and sim inventory for the benches and the soak.
 */
import { defaultConfig, type Config, type SimDeviceConfig } from '../../src/config/config.js';

/** Devices per simulated physical IOMMU instance: a VM's devices must share one for vIOMMU/vDEVICE. */
export const DEVICES_PER_IOMMU = 4;

/**
 * `count` fake VFIO PCI functions with distinct BDFs, cdevs and IOMMU groups
 * (one function per group, so binds in different contexts never conflict).
 * Consecutive runs of DEVICES_PER_IOMMU devices sit behind the same IOMMU.
 */
export function benchInventory(count: number): SimDeviceConfig[] {
  const out: SimDeviceConfig[] = [];
  for (let i = 0; i < count; i++) {
    const bus = 0x10 + (i >> 5);
    if (bus > 0xff) throw new Error(`benchInventory: ${count} devices do not fit the bus numbering`);
    const hex = (n: number, w: number) => n.toString(16).padStart(w, '0');
    out.push({
      bdf: `0000:${hex(bus, 2)}:${hex(i & 31, 2)}.0`,
      vendorId: 0x1af4,
      deviceId: 0x1041,
      iommuGroup: 1000 + i,
      cdev: `vfio${i}`,
      driver: 'vfio-pci',
      iommu: `iommu${Math.floor(i / DEVICES_PER_IOMMU) % 8}`,
      description: `bench device ${i}`,
    });
  }
  return out;
}

export interface BenchDaemonOptions {
  socketPath: string;
  devices: number;
  /** Audit log file, or '' for none. */
  auditPath: string;
  logLevel: Config['log']['level'];
  /** Restart journal file (fdatasync), or '' / absent for none, whatever STATE_DIRECTORY says. */
  journalPath?: string;
  /** Every device is assigned to this tenant. */
  tenant?: string;
  /** Answer BindDevice and UnbindDevice from a cache (cached-broker.ts): the RPC layer alone. */
  cachedBindUnbind?: boolean;
}

/** The daemon as the RPC benches run it: production defaults except for what the bench needs. */
export function benchDaemonConfig(o: BenchDaemonOptions): Config {
  const config = defaultConfig();
  config.socket.path = o.socketPath;
  config.metrics.address = '';
  config.audit.path = o.auditPath;
  config.restart.journalPath = o.journalPath ?? '';
  config.log.level = o.logLevel;
  config.sim.devices = benchInventory(o.devices);
  for (const d of config.sim.devices) config.assignments[d.bdf] = o.tenant ?? config.identity.defaultTenant;
  // Teardown scaling holds 10k objects in one context; 64 workers each own a context.
  config.quotas.default = { ...config.quotas.default, contexts: 100_000, objects: 100_000_000 };
  config.shutdown.drainSeconds = 2;
  return config;
}
