/**
 * The simulated host's PCI inventory: the same shape the linux backend reads
 * from sysfs, plus which physical IOMMU instance each function sits behind
 * (vIOMMU and vDEVICE checks compare instances, kernel-uapi.md §3.9–3.11).
 */
import type { PciFunction } from '../types.js';

export interface SimPciFunction extends PciFunction {
  /** Physical IOMMU instance name, e.g. `iommu0`. */
  iommu: string;
}

const BDF_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const CDEV_RE = /^vfio[0-9]+$/;

/**
 * Drivers that manage DMA themselves (`driver_managed_dma`) and so do not
 * claim the group's default domain. Any other bound driver makes a sibling's
 * VFIO bind fail with EPERM (§3.15 "group's DMA already owned ... by a kernel
 * driver on a sibling device").
 */
const DMA_MANAGED_DRIVERS = new Set(['vfio-pci', 'pci-stub', 'pcieport']);

export function driverClaimsDefaultDomain(fn: PciFunction): boolean {
  if (fn.driver === undefined) return false;
  // vfio-pci variant drivers (mlx5_vfio_pci, nvgrace_gpu_vfio_pci, ...) are VFIO too.
  if (DMA_MANAGED_DRIVERS.has(fn.driver) || fn.driver.includes('vfio')) return false;
  return true;
}

/**
 * A small host: two NVMe SSDs and two NIC VFs behind `iommu0` (their PF stays
 * on its kernel driver), and a GPU plus its HDMI audio function sharing one
 * IOMMU group behind `iommu1`, with a third SSD there too.
 */
export const DEMO_PCI_FUNCTIONS: readonly SimPciFunction[] = Object.freeze([
  fn('0000:01:00.0', 0x144d, 0xa80a, 12, 'vfio0', 'vfio-pci', 'iommu0', 'NVMe SSD (Samsung PM9A3)'),
  fn('0000:02:00.0', 0x144d, 0xa808, 13, 'vfio1', 'vfio-pci', 'iommu0', 'NVMe SSD (Samsung 970 EVO Plus)'),
  fn('0000:03:00.0', 0x8086, 0x1593, 14, undefined, 'ice', 'iommu0', 'Ethernet PF (Intel E810-C)'),
  fn('0000:03:01.0', 0x8086, 0x1889, 15, 'vfio2', 'vfio-pci', 'iommu0', 'Ethernet VF (Intel E810 VF)'),
  fn('0000:03:01.1', 0x8086, 0x1889, 16, 'vfio3', 'vfio-pci', 'iommu0', 'Ethernet VF (Intel E810 VF)'),
  fn('0000:41:00.0', 0x10de, 0x2684, 30, 'vfio4', 'vfio-pci', 'iommu1', 'GPU (NVIDIA AD102)'),
  fn('0000:41:00.1', 0x10de, 0x22ba, 30, 'vfio5', 'vfio-pci', 'iommu1', 'HDMI audio (NVIDIA AD102)'),
  fn('0000:42:00.0', 0x1e0f, 0x0007, 31, 'vfio6', 'vfio-pci', 'iommu1', 'NVMe SSD (KIOXIA CD6)'),
]);

function fn(
  bdf: string,
  vendorId: number,
  deviceId: number,
  iommuGroup: number,
  cdev: string | undefined,
  driver: string | undefined,
  iommu: string,
  description: string,
): SimPciFunction {
  return Object.freeze({ bdf, vendorId, deviceId, iommuGroup, cdev, driver, iommu, description });
}

/**
 * Checks a config-supplied inventory and returns frozen copies. Throws an
 * Error naming the first bad entry (index and BDF) and what is wrong with it.
 */
export function validateInventory(devices: readonly SimPciFunction[]): readonly SimPciFunction[] {
  const byBdf = new Map<string, number>();
  const byCdev = new Map<string, number>();
  const iommuOfGroup = new Map<number, string>();
  const out: SimPciFunction[] = [];

  devices.forEach((d, i) => {
    const where = `sim device #${i}${typeof d?.bdf === 'string' ? ` (${d.bdf})` : ''}`;
    function bad(why: string): never {
      throw new Error(`${where}: ${why}`);
    }
    if (typeof d !== 'object' || d === null) bad('entry is not an object');
    if (typeof d.bdf !== 'string' || !BDF_RE.test(d.bdf)) {
      bad(`malformed BDF ${JSON.stringify(d.bdf)} (want dddd:bb:dd.f, lower-case hex)`);
    }
    const prevBdf = byBdf.get(d.bdf);
    if (prevBdf !== undefined) bad(`duplicate BDF, already used by sim device #${prevBdf}`);
    byBdf.set(d.bdf, i);

    if (!isU16(d.vendorId)) bad(`vendorId ${String(d.vendorId)} is not a 16-bit integer`);
    if (!isU16(d.deviceId)) bad(`deviceId ${String(d.deviceId)} is not a 16-bit integer`);
    if (!Number.isInteger(d.iommuGroup) || d.iommuGroup < 0) {
      bad(`iommuGroup ${String(d.iommuGroup)} is not a non-negative integer`);
    }
    if (typeof d.iommu !== 'string' || d.iommu.length === 0) bad('iommu instance name is missing');
    // An IOMMU group is formed by one IOMMU; its functions cannot straddle two.
    const groupIommu = iommuOfGroup.get(d.iommuGroup);
    if (groupIommu !== undefined && groupIommu !== d.iommu) {
      bad(`IOMMU group ${d.iommuGroup} is behind ${groupIommu}, not ${d.iommu}`);
    }
    iommuOfGroup.set(d.iommuGroup, d.iommu);

    if (d.cdev !== undefined) {
      if (typeof d.cdev !== 'string' || !CDEV_RE.test(d.cdev)) {
        bad(`malformed cdev ${JSON.stringify(d.cdev)} (want vfioN)`);
      }
      const prevCdev = byCdev.get(d.cdev);
      if (prevCdev !== undefined) bad(`duplicate cdev ${d.cdev}, already used by sim device #${prevCdev}`);
      byCdev.set(d.cdev, i);
    }
    if (d.driver !== undefined && (typeof d.driver !== 'string' || d.driver.length === 0)) {
      bad('driver must be a non-empty string or undefined');
    }
    out.push(
      Object.freeze({
        bdf: d.bdf,
        vendorId: d.vendorId,
        deviceId: d.deviceId,
        iommuGroup: d.iommuGroup,
        cdev: d.cdev,
        driver: d.driver,
        iommu: d.iommu,
        ...(d.description !== undefined ? { description: d.description } : {}),
      }),
    );
  });
  return Object.freeze(out);
}

function isU16(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
}
