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
  type PciFunction,
  type VdeviceAllocArgs,
  type ViommuAllocArgs,
} from '../types.js';
import * as dataplane from './dataplane.js';
import { IoctlCaller, userPointer, type CallMode } from './ioctl-call.js';
import { LinuxBackendError, probeKernel, type ProbeResult } from './probe.js';
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
    return this.pci.listFunctions();
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
    await this.sys.close(file.fdNumber);
  }

  async openDevice(cdev: string): Promise<DeviceFile> {
    this.version();
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
    if (!this.devices.delete(file)) return;
    await this.sys.close(file.fdNumber);
  }

  async bindIommufd(device: DeviceFile, iommufd: IommufdFile): Promise<KernelObjectId> {
    const out = await this.onDevice(device, 'bind_iommufd', 'VFIO_DEVICE_BIND_IOMMUFD', VFIO_DEVICE_BIND_IOMMUFD_STRUCT, {
      flags: 0,
      iommufd: this.iommufdFd(iommufd, 'bind_iommufd'),
    }, 'async');
    return kernelId(out.out_devid);
  }

  async attachPt(device: DeviceFile, ptId: KernelObjectId): Promise<KernelObjectId> {
    const out = await this.onDevice(device, 'attach_pt', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', VFIO_DEVICE_ATTACH_IOMMUFD_PT_STRUCT, {
      flags: 0,
      pt_id: ptId,
    }, 'async');
    return kernelId(out.pt_id);
  }

  async detachPt(device: DeviceFile): Promise<void> {
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
    await Promise.all([...this.devices].map((d) => this.closeDevice(d)));
    await Promise.all([...this.iommufds].map((f) => this.closeIommufd(f)));
  }

  // ---- Beyond KernelBackend ----

  /** The probe's result (after probe()). */
  get capabilities(): ProbeResult | undefined {
    return this.probed;
  }

  /** Files currently open through this backend. */
  openFileCount(): number {
    return this.iommufds.size + this.devices.size;
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
