/**
 * The `linux` kernel backend: KernelBackend on a real iommufd (`/dev/iommu`)
 * and VFIO device cdevs (`/dev/vfio/devices/vfioN`), through koffi.
 *
 * - `probe()` must run first (the daemon always does): it fixes the kernel
 *   version, and with it the struct size sent for every ioctl (§2).
 * - Handles are checked against the files this backend opened before any
 *   syscall: a closed fd number can be reused by anything else in the
 *   process, so a stale handle must never reach ioctl(2) (EBADF instead).
 * - Device paths are built only from a validated cdev name; clients never
 *   pass paths.
 */
import {
  KernelError,
  kernelId,
  type DeviceFile,
  type HwInfo,
  type HwptAllocArgs,
  type IommufdFile,
  type KernelBackend,
  type KernelCapabilities,
  type KernelObjectId,
  type KernelOp,
  type LookupProbe,
  type PciFunction,
  type VdeviceAllocArgs,
  type ViommuAllocArgs,
} from '../types.js';
import { LOOKUP_OP } from '../object-probe.js';
import * as adopt from './adopt.js';
import * as dataplane from './dataplane.js';
import { DeviceRequests } from './device-request.js';
import { IoctlCaller, userPointer, type CallMode } from './ioctl-call.js';
import { LinuxBackendError, probeKernel, type ProbeResult } from './probe.js';
import { isMockCdev, MockDevices, mockFunctions } from './mock-devices.js';
import * as selftest from './selftest.js';
import type { Layout, StructCodec, StructInput, StructValues } from './struct-codec.js';
import {
  IOMMU_DESTROY_STRUCT,
  IOMMU_HW_INFO_STRUCT,
  IOMMU_HWPT_ALLOC_STRUCT,
  IOMMU_IOAS_ALLOC_STRUCT,
  IOMMU_VDEVICE_ALLOC_STRUCT,
  IOMMU_VIOMMU_ALLOC_STRUCT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT,
  VFIO_DEVICE_BIND_IOMMUFD_STRUCT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT,
} from './structs.js';
import { CDEV_RE, PciSysfs, SysfsError, type SysfsIo } from './sysfs.js';
import { createLibcSyscalls, OPEN_RDWR_CLOEXEC, type Syscalls } from './syscalls.js';
import type { IoctlName } from './ioctl-numbers.js';
import type { KernelVersion } from './version.js';
import type { Logger } from 'pino';

export interface LinuxKernelOptions {
  /** Directory holding `iommu` and `vfio/devices/` (default /dev). */
  devRoot?: string;
  /** sysfs mount point (default /sys). */
  sysfsRoot?: string;
  /** BDFs the broker may list, open and rebind (see PciSysfs); undefined = list all, rebind none. */
  allowlist?: readonly string[] | undefined;
  /** Enables the IOMMUFD_TEST mock-device helpers when the kernel has them (§6). Off by default. */
  selftestDevices?: boolean;
  /** Use instead of uname's release (tests; distro kernels that backport uAPI). */
  release?: string | undefined;
  /** Syscall layer (default: libc through koffi). Tests inject a scripted kernel. */
  sys?: Syscalls;
  /** sysfs file operations (default: node:fs). */
  sysfsIo?: SysfsIo;
  /** For device-request warnings (default: silent). */
  log?: Logger | undefined;
}

/** First-release bytes of a GET_HW_INFO payload buffer; retried larger if the kernel has more (§3.8). */
const HW_INFO_FIRST_LEN = 256;
const HW_INFO_MAX_LEN = 64 * 1024;

export class LinuxKernel implements KernelBackend {
  readonly name = 'linux' as const;
  /** sysfs inventory and vfio-pci driver switching. */
  readonly pci: PciSysfs;

  private readonly sys: Syscalls;
  private readonly devRoot: string;
  private readonly selftestRequested: boolean;
  private readonly releaseOverride: string | undefined;
  private readonly caller: IoctlCaller;
  private probed: ProbeResult | undefined;
  private probing: Promise<ProbeResult> | undefined;
  private readonly iommufds = new Set<IommufdFile>();
  private readonly devices = new Set<DeviceFile>();
  /** IOMMUFD_TEST mock devices posing as VFIO devices (mock-devices.ts); empty unless enabled. */
  private readonly mocks: MockDevices;
  /** vfio-pci request IRQs of bound devices (device-request.ts). */
  private readonly requests: DeviceRequests;

  constructor(options: LinuxKernelOptions = {}) {
    this.sys = options.sys ?? createLibcSyscalls();
    this.devRoot = (options.devRoot ?? '/dev').replace(/\/+$/, '');
    this.selftestRequested = options.selftestDevices === true;
    this.releaseOverride = options.release;
    this.pci = new PciSysfs({
      ...(options.sysfsRoot !== undefined ? { root: options.sysfsRoot } : {}),
      allowlist: options.allowlist,
      ...(options.sysfsIo !== undefined ? { io: options.sysfsIo } : {}),
    });
    this.caller = new IoctlCaller(this.sys, () => this.version());
    this.requests = new DeviceRequests({
      sys: this.sys,
      log: options.log,
      fdOf: (d) => this.osFd(d),
      functionOfCdev: (cdev) => this.pci.functionOfCdev(cdev),
    });
    this.mocks = new MockDevices({
      ioasAlloc: (iommufd) => this.ioasAlloc(iommufd),
      destroy: (iommufd, id) => this.destroy(iommufd, id),
      mockDomain: (iommufd, ptId) => this.selftestMockDomain(iommufd, ptId),
      mockDomainReplace: (iommufd, stdevId, ptId) => this.selftestMockDomainReplace(iommufd, stdevId, ptId),
    });
  }

  /** §5.2 detection; runs once, later calls return the same answer. */
  async probe(): Promise<KernelCapabilities> {
    this.probing ??= probeKernel({ sys: this.sys, devRoot: this.devRoot, release: this.releaseOverride });
    try {
      this.probed = await this.probing;
    } catch (err) {
      this.probing = undefined;
      throw err;
    }
    const p = this.probed;
    return { backend: 'linux', release: p.release, profile: p.profile, ioctls: [...p.ioctls], selftest: p.selftest };
  }

  async listPciFunctions(): Promise<PciFunction[]> {
    const functions = await this.pci.listFunctions();
    return this.selftestDevicesEnabled ? [...functions, ...mockFunctions()] : functions;
  }

  async openIommufd(): Promise<IommufdFile> {
    this.version();
    const fd = this.sys.open(`${this.devRoot}/iommu`, OPEN_RDWR_CLOEXEC, { op: 'open_iommufd', what: 'open' });
    const file: IommufdFile = Object.freeze({ kind: 'iommufd', fdNumber: fd });
    this.iommufds.add(file);
    return file;
  }

  /** Async: the last close of a context unmaps and unpins everything (§4.4). */
  async closeIommufd(file: IommufdFile): Promise<void> {
    if (!this.iommufds.delete(file)) return;
    this.mocks.forgetIommufd(file);
    await this.sys.close(file.fdNumber);
  }

  async openDevice(cdev: string): Promise<DeviceFile> {
    this.version();
    if (isMockCdev(cdev)) {
      if (!this.selftestDevicesEnabled) throw new KernelError('ENOENT', 'open_device', `${cdev}: mock devices are not enabled`);
      return this.mocks.openDevice(cdev);
    }
    if (!CDEV_RE.test(cdev)) throw new KernelError('EINVAL', 'open_device', `"${cdev.slice(0, 32)}" is not a VFIO cdev name`);
    if (this.pci.hasAllowlist) {
      const bdf = await this.pci.functionOfCdev(cdev);
      if (bdf === undefined || !this.pci.isAllowed(bdf)) {
        throw new KernelError('EPERM', 'open_device', `${cdev} (${bdf ?? 'unknown function'}) is not in the device allowlist`);
      }
    }
    const fd = this.sys.open(`${this.devRoot}/vfio/devices/${cdev}`, OPEN_RDWR_CLOEXEC, { op: 'open_device', what: `open ${cdev}` });
    const file: DeviceFile = Object.freeze({ kind: 'device', fdNumber: fd, cdev });
    this.devices.add(file);
    return file;
  }

  /** Async: vfio-pci disables and resets the function on the last close (§4.5). */
  async closeDevice(file: DeviceFile): Promise<void> {
    if (this.mocks.owns(file)) return this.mocks.close(file);
    this.requests.disarm(file); // device request: forget the eventfd before the fd number is freed
    if (!this.devices.delete(file)) return;
    await this.sys.close(file.fdNumber);
  }

  async bindIommufd(device: DeviceFile, iommufd: IommufdFile): Promise<KernelObjectId> {
    if (this.mocks.owns(device)) return this.mocks.bind(device, iommufd);
    const out = await this.onDevice(device, 'bind_iommufd', 'VFIO_DEVICE_BIND_IOMMUFD', VFIO_DEVICE_BIND_IOMMUFD_STRUCT, {
      flags: 0,
      iommufd: this.iommufdFd(iommufd, 'bind_iommufd'),
    }, 'async');
    await this.requests.arm(device); // device request: the host's unbind now reaches onDeviceRequest
    return kernelId(out.out_devid);
  }

  async attachPt(device: DeviceFile, ptId: KernelObjectId): Promise<KernelObjectId> {
    if (this.mocks.owns(device)) return this.mocks.attach(device, ptId);
    const out = await this.onDevice(device, 'attach_pt', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT, {
      flags: 0,
      pt_id: ptId,
    }, 'async');
    return kernelId(out.pt_id);
  }

  async detachPt(device: DeviceFile): Promise<void> {
    if (this.mocks.owns(device)) return this.mocks.detach(device);
    await this.onDevice(device, 'detach_pt', 'VFIO_DEVICE_DETACH_IOMMUFD_PT', VFIO_DEVICE_DETACH_IOMMUFD_PT_STRUCT, { flags: 0 }, 'async');
  }

  /** Async: destroying a mapped IOAS unmaps it, and DESTROY may wait for short-term users (§3.1). */
  async destroy(iommufd: IommufdFile, id: KernelObjectId): Promise<void> {
    await this.onIommufd(iommufd, 'destroy', 'IOMMU_DESTROY', IOMMU_DESTROY_STRUCT, { id }, 'async');
  }

  async ioasAlloc(iommufd: IommufdFile): Promise<KernelObjectId> {
    const out = await this.onIommufd(iommufd, 'ioas_alloc', 'IOMMU_IOAS_ALLOC', IOMMU_IOAS_ALLOC_STRUCT, { flags: 0 }, 'sync');
    return kernelId(out.out_ioas_id);
  }

  /** Async: a HWPT_PAGING on a mapped IOAS is filled with every mapping at allocation. */
  async hwptAlloc(iommufd: IommufdFile, args: HwptAllocArgs): Promise<KernelObjectId> {
    const data = Buffer.from(args.data);
    const out = await this.onIommufd(
      iommufd,
      'hwpt_alloc',
      'IOMMU_HWPT_ALLOC',
      IOMMU_HWPT_ALLOC_STRUCT,
      {
        flags: args.flags >>> 0,
        dev_id: args.devId,
        pt_id: args.ptId,
        data_type: args.dataType >>> 0,
        data_len: data.length,
        data_uptr: userPointer(data),
      },
      'async',
      [data],
    );
    return kernelId(out.out_hwpt_id);
  }

  async viommuAlloc(iommufd: IommufdFile, args: ViommuAllocArgs): Promise<KernelObjectId> {
    const out = await this.onIommufd(iommufd, 'viommu_alloc', 'IOMMU_VIOMMU_ALLOC', IOMMU_VIOMMU_ALLOC_STRUCT, {
      flags: 0,
      type: args.type >>> 0,
      dev_id: args.devId,
      hwpt_id: args.hwptId,
    }, 'sync');
    return kernelId(out.out_viommu_id);
  }

  async vdeviceAlloc(iommufd: IommufdFile, args: VdeviceAllocArgs): Promise<KernelObjectId> {
    const out = await this.onIommufd(iommufd, 'vdevice_alloc', 'IOMMU_VDEVICE_ALLOC', IOMMU_VDEVICE_ALLOC_STRUCT, {
      viommu_id: args.viommuId,
      dev_id: args.devId,
      virt_id: args.virtId,
    }, 'sync');
    return kernelId(out.out_vdevice_id);
  }

  /** Default-type request (flags 0); the payload buffer grows once if the driver's is larger. */
  async getHwInfo(iommufd: IommufdFile, devId: KernelObjectId): Promise<HwInfo> {
    let len = HW_INFO_FIRST_LEN;
    for (;;) {
      const data = Buffer.alloc(len);
      const out = await this.onIommufd(iommufd, 'get_hw_info', 'IOMMU_GET_HW_INFO', IOMMU_HW_INFO_STRUCT, {
        flags: 0,
        dev_id: devId,
        data_len: len,
        data_uptr: userPointer(data),
      }, 'sync', [data]);
      // data_len comes back as the driver's full length; only min(ours, theirs) was copied (§3.8).
      if (out.data_len > len && len < HW_INFO_MAX_LEN) {
        len = Math.min(out.data_len, HW_INFO_MAX_LEN);
        continue;
      }
      return {
        type: out.out_data_type,
        data: new Uint8Array(data.subarray(0, Math.min(out.data_len, len))),
        capabilities: out.out_capabilities,
        maxPasidLog2: out.out_max_pasid_log2,
      };
    }
  }

  /** Closes every device file, then every iommufd, so all contexts are released (§4.6 step 11). */
  async shutdown(): Promise<void> {
    await this.mocks.closeAll();
    await Promise.all([...this.devices].map((d) => this.closeDevice(d)));
    await Promise.all([...this.iommufds].map((f) => this.closeIommufd(f)));
    await this.requests.stop(); // device request: ends the poll loop and closes its wake-up eventfd
  }

  /** Device request (device-request.ts): called with the BDF when the host asks for a bound device back. */
  onDeviceRequest(listener: (bdf: string) => void): void {
    this.requests.onRequest(listener);
  }

  /** Whether the device's vfio-pci request IRQ is armed (lane tests). */
  deviceRequestArmed(file: DeviceFile): boolean {
    return this.requests.isArmed(file);
  }

  // ---- Beyond KernelBackend ----

  /** The probe's result (after probe()). */
  get capabilities(): ProbeResult | undefined {
    return this.probed;
  }

  /** Files currently open through this backend. */
  openFileCount(): number {
    return this.iommufds.size + this.devices.size + this.mocks.size;
  }

  /** Hands `bdf` to vfio-pci (allowlisted devices only); see PciSysfs.prepareDevice. */
  async prepareDevice(bdf: string): Promise<PciFunction> {
    return this.pci.prepareDevice(bdf);
  }

  /** Gives `bdf` back to its own driver; refused while this backend holds its VFIO device open (§4.5). */
  async releaseDevice(bdf: string): Promise<PciFunction | undefined> {
    const cdev = await this.pci.cdevOf(bdf);
    if (cdev !== undefined && [...this.devices].some((d) => d.cdev === cdev)) {
      throw new SysfsError(`refusing to release ${bdf}: ${cdev} is still open; close the device first`);
    }
    return this.pci.releaseDevice(bdf);
  }

  async ioasMap(iommufd: IommufdFile, args: dataplane.IoasMapArgs): Promise<bigint> {
    return dataplane.ioasMap(this.caller, this.iommufdFd(iommufd, dataplane.EXTRA_OP.ioasMap), args);
  }

  async ioasMapFile(iommufd: IommufdFile, args: dataplane.IoasMapFileArgs): Promise<bigint> {
    return dataplane.ioasMapFile(this.caller, this.iommufdFd(iommufd, dataplane.EXTRA_OP.ioasMapFile), args);
  }

  /** The VFIO cdev fd itself, while this backend holds it open (handed to VMMs by SCM_RIGHTS). */
  osFd(file: DeviceFile): number | undefined {
    return this.devices.has(file) ? file.fdNumber : undefined;
  }

  async ioasUnmap(iommufd: IommufdFile, ioasId: KernelObjectId, iova: bigint, length: bigint): Promise<bigint> {
    return dataplane.ioasUnmap(this.caller, this.iommufdFd(iommufd, dataplane.EXTRA_OP.ioasUnmap), ioasId, iova, length);
  }

  async ioasIovaRanges(iommufd: IommufdFile, ioasId: KernelObjectId): Promise<dataplane.IovaRanges> {
    return dataplane.ioasIovaRanges(this.caller, this.iommufdFd(iommufd, dataplane.EXTRA_OP.ioasIovaRanges), ioasId);
  }

  async deviceGetInfo(device: DeviceFile): Promise<dataplane.VfioDeviceInfo> {
    return dataplane.deviceGetInfo(this.caller, this.deviceFd(device, dataplane.EXTRA_OP.deviceGetInfo));
  }

  async deviceReset(device: DeviceFile): Promise<void> {
    return dataplane.deviceReset(this.caller, this.deviceFd(device, dataplane.EXTRA_OP.deviceReset));
  }

  // ---- Restart without teardown (adopt.ts; object-probe.ts says which lookup proves what) ----

  storeFd(file: IommufdFile | DeviceFile): number | undefined {
    return (file.kind === 'iommufd' ? this.iommufds.has(file) : this.devices.has(file)) ? file.fdNumber : undefined;
  }

  async adoptFile(fd: number): Promise<IommufdFile | DeviceFile> {
    const file = adopt.adoptFile(fd, this.devRoot);
    if (file.kind === 'iommufd') this.iommufds.add(file);
    else {
      this.devices.add(file);
      await this.requests.arm(file); // the dead daemon's request eventfd went with it
    }
    return file;
  }

  async lookupProbe(iommufd: IommufdFile, probe: LookupProbe): Promise<void> {
    return adopt.lookupProbe(this.caller, this.iommufdFd(iommufd, LOOKUP_OP[probe.ioctl]), probe);
  }

  async deviceBound(device: DeviceFile): Promise<boolean> {
    return adopt.deviceBound(this.caller, this.deviceFd(device, 'device_get_info'));
  }

  // ---- IOMMUFD_TEST mock devices (selftest.ts has the mapping to VFIO) ----

  /** Whether the mock-device helpers may be used: requested in options and found by probe(). */
  get selftestDevicesEnabled(): boolean {
    return this.selftestRequested && this.probed?.selftest === true;
  }

  /** Mirrors open + BIND + ATTACH(ptId) in one call (§6.2). */
  async selftestMockDomain(iommufd: IommufdFile, ptId: KernelObjectId, devFlags?: number): Promise<selftest.MockDevice> {
    const fd = this.selftestFd(iommufd, 'bind_iommufd');
    return selftest.mockDomain(this.caller, fd, ptId, devFlags);
  }

  /** Mirrors a second ATTACH (replace); returns the HWPT now attached. */
  async selftestMockDomainReplace(iommufd: IommufdFile, stdevId: KernelObjectId, ptId: KernelObjectId): Promise<KernelObjectId> {
    return selftest.mockDomainReplace(this.caller, this.selftestFd(iommufd, 'attach_pt'), stdevId, ptId);
  }

  /** Mirrors close(device fd): unbinds the mock device, tombstoning its vDEVICE on 6.17+ (§4.3). */
  async selftestDestroyMockDevice(iommufd: IommufdFile, stdevId: KernelObjectId): Promise<void> {
    return selftest.destroyMockDevice(this.caller, this.selftestFd(iommufd, 'close_device'), stdevId);
  }

  // ---- internals ----

  private version(): KernelVersion {
    if (this.probed === undefined) throw new LinuxBackendError('LinuxKernel: probe() must complete before any kernel call');
    return this.probed.version;
  }

  private iommufdFd(file: IommufdFile, op: KernelOp): number {
    if (!this.iommufds.has(file)) throw new KernelError('EBADF', op, `iommufd fd ${file.fdNumber} is not open in this backend`);
    return file.fdNumber;
  }

  private deviceFd(file: DeviceFile, op: KernelOp): number {
    if (!this.devices.has(file)) throw new KernelError('EBADF', op, `device fd ${file.fdNumber} (${file.cdev}) is not open in this backend`);
    return file.fdNumber;
  }

  private selftestFd(iommufd: IommufdFile, op: KernelOp): number {
    if (!this.selftestDevicesEnabled) {
      const why = this.selftestRequested ? 'the kernel has no IOMMUFD_TEST (CONFIG_IOMMUFD_TEST)' : 'selftestDevices is not enabled';
      throw new KernelError('EOPNOTSUPP', op, `mock devices unavailable: ${why}`);
    }
    return this.iommufdFd(iommufd, op);
  }

  private onIommufd<L extends Layout>(
    file: IommufdFile,
    op: KernelOp,
    name: IoctlName,
    codec: StructCodec<L>,
    values: StructInput<L>,
    mode: CallMode,
    pointees?: readonly Buffer[],
  ): Promise<StructValues<L>> {
    return this.caller.call({ fd: this.iommufdFd(file, op), op, name, codec, values, mode, ...(pointees ? { pointees } : {}) });
  }

  private onDevice<L extends Layout>(
    file: DeviceFile,
    op: KernelOp,
    name: IoctlName,
    codec: StructCodec<L>,
    values: StructInput<L>,
    mode: CallMode,
  ): Promise<StructValues<L>> {
    return this.caller.call({ fd: this.deviceFd(file, op), op, name, codec, values, mode });
  }
}

/** Builds the linux backend. Nothing touches the kernel until probe(). */
export function createLinuxKernel(options: LinuxKernelOptions = {}): LinuxKernel {
  return new LinuxKernel(options);
}
