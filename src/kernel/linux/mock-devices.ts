/**
 * IOMMUFD_TEST mock devices as inventory devices, so the whole broker (and so
 * a client over gRPC) can drive vIOMMU/vDEVICE on a real kernel: no emulated
 * PCI hardware has an IOMMU with nesting (kernel-uapi.md §6). Testing only,
 * behind `selftestDevices`; the kernel must have CONFIG_IOMMUFD_TEST.
 *
 * Each mock function is listed under a PCI address in domain `ffff` (no real
 * host enumerates it) with a pseudo cdev `iommufd-mockN`. The VFIO calls map
 * onto TEST_CMD as selftest.ts describes, with one adaptation: a mock device
 * cannot exist unattached (§6.2), so BIND creates it attached to a private
 * "parking" IOAS with no mappings, which blocks DMA just as an unattached VFIO
 * device is blocked. DETACH moves it back there. Both the parking IOAS and its
 * automatic HWPT are kernel objects the broker never sees; they use up IDs
 * the VFIO flow would not, which is harmless because the broker keeps its own
 * handles and never predicts kernel IDs.
 */
import { KernelError, type DeviceFile, type IommufdFile, type KernelObjectId, type KernelOp, type PciFunction } from '../types.js';
import * as selftest from './selftest.js';

/** How many mock functions are listed when mock devices are enabled. */
export const MOCK_FUNCTION_COUNT = 4;
const MOCK_CDEV_RE = /^iommufd-mock([0-9]+)$/;
/** IOMMU group numbers for the mocks: far above any real group, one group per mock (§6.2). */
const MOCK_GROUP_BASE = 0x7fff_0000;

export function isMockCdev(cdev: string): boolean {
  return MOCK_CDEV_RE.test(cdev);
}

/** The mock functions as the inventory lists them. */
export function mockFunctions(): PciFunction[] {
  return Array.from({ length: MOCK_FUNCTION_COUNT }, (_, n) => ({
    bdf: `ffff:00:${n.toString(16).padStart(2, '0')}.0`,
    vendorId: 0,
    deviceId: 0,
    iommuGroup: MOCK_GROUP_BASE + n,
    cdev: `iommufd-mock${n}`,
    driver: 'iommufd-selftest',
    description: 'IOMMUFD_TEST mock device (testing only)',
  }));
}

/** The kernel side of the mock calls: the linux backend's TEST_CMD, IOAS_ALLOC and DESTROY. */
export interface MockKernelCalls {
  ioasAlloc(iommufd: IommufdFile): Promise<KernelObjectId>;
  destroy(iommufd: IommufdFile, id: KernelObjectId): Promise<void>;
  mockDomain(iommufd: IommufdFile, ptId: KernelObjectId): Promise<selftest.MockDevice>;
  mockDomainReplace(iommufd: IommufdFile, stdevId: KernelObjectId, ptId: KernelObjectId): Promise<KernelObjectId>;
}

interface BoundMock {
  readonly iommufd: IommufdFile;
  readonly parkingIoas: KernelObjectId;
  readonly device: selftest.MockDevice;
  /** On the parking IOAS: what an unattached VFIO device is. */
  parked: boolean;
}

export class MockDevices {
  /** Open mock "device files", bound or not; a cdev may be open once at a time, like a bound VFIO cdev. */
  private readonly open = new Map<DeviceFile, BoundMock | undefined>();
  private nextFdNumber = -1;

  constructor(private readonly calls: MockKernelCalls) {}

  owns(file: DeviceFile): boolean {
    return this.open.has(file);
  }

  get size(): number {
    return this.open.size;
  }

  /** open(2) of the pseudo cdev. Negative fd numbers mark them as fd-less in logs. */
  openDevice(cdev: string): DeviceFile {
    const m = MOCK_CDEV_RE.exec(cdev);
    if (!m || Number(m[1]) >= MOCK_FUNCTION_COUNT) throw new KernelError('ENOENT', 'open_device', `no mock device ${cdev.slice(0, 32)}`);
    return this.track(Object.freeze({ kind: 'device', fdNumber: this.nextFdNumber--, cdev }));
  }

  /** BIND: creates the mock device on a fresh parking IOAS; either both exist afterwards or neither. */
  async bind(file: DeviceFile, iommufd: IommufdFile): Promise<KernelObjectId> {
    if (this.open.get(file) !== undefined) throw new KernelError('EINVAL', 'bind_iommufd', `${file.cdev} is already bound`);
    for (const [other, b] of this.open) {
      if (b && other.cdev === file.cdev) throw new KernelError('EINVAL', 'bind_iommufd', `another open file of ${file.cdev} is already bound`);
    }
    const parkingIoas = await this.calls.ioasAlloc(iommufd);
    let device: selftest.MockDevice;
    try {
      device = await this.calls.mockDomain(iommufd, parkingIoas);
    } catch (err) {
      await this.calls.destroy(iommufd, parkingIoas).catch(() => undefined);
      throw err;
    }
    this.open.set(file, { iommufd, parkingIoas, device, parked: true });
    return device.idevId;
  }

  /** ATTACH (and replace): MOCK_DOMAIN_REPLACE; the kernel frees the parking IOAS's automatic HWPT. */
  async attach(file: DeviceFile, ptId: KernelObjectId): Promise<KernelObjectId> {
    const bound = this.bound(file, 'attach_pt');
    const hwpt = await this.calls.mockDomainReplace(bound.iommufd, bound.device.stdevId, ptId);
    bound.parked = false;
    return hwpt;
  }

  /** DETACH: back onto the parking IOAS; succeeds when nothing was attached, like VFIO's. */
  async detach(file: DeviceFile): Promise<void> {
    const bound = this.bound(file, 'detach_pt');
    if (bound.parked) return;
    await this.calls.mockDomainReplace(bound.iommufd, bound.device.stdevId, bound.parkingIoas);
    bound.parked = true;
  }

  /**
   * close(2): IOMMU_DESTROY(stdev) detaches and unbinds the device and, on
   * 6.17+, tombstones its vDEVICE (§4.3), exactly as closing a VFIO device
   * fd does; then the parking IOAS goes. close never fails: if the iommufd
   * is already gone the kernel destroyed both with it (§6.2), and anything
   * else left behind is freed when the iommufd closes.
   */
  async close(file: DeviceFile): Promise<void> {
    if (!this.open.has(file)) return;
    const bound = this.open.get(file);
    this.open.delete(file);
    if (!bound) return;
    await this.calls.destroy(bound.iommufd, bound.device.stdevId).catch(() => undefined);
    await this.calls.destroy(bound.iommufd, bound.parkingIoas).catch(() => undefined);
  }

  /** The iommufd closed: its mock devices went with it (a mock DEVICE holds no file reference, §6.2). */
  forgetIommufd(iommufd: IommufdFile): void {
    for (const [file, bound] of this.open) if (bound?.iommufd === iommufd) this.open.set(file, undefined);
  }

  async closeAll(): Promise<void> {
    for (const file of [...this.open.keys()]) await this.close(file);
  }

  private track(file: DeviceFile): DeviceFile {
    this.open.set(file, undefined);
    return file;
  }

  private bound(file: DeviceFile, op: KernelOp): BoundMock {
    if (!this.open.has(file)) throw new KernelError('EBADF', op, `mock device file ${file.cdev} is not open`);
    const bound = this.open.get(file);
    // Every device ioctl before a successful bind is EINVAL (§3.15).
    if (!bound) throw new KernelError('EINVAL', op, `${file.cdev} is not bound`);
    return bound;
  }
}
