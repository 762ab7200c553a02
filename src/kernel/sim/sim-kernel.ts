/**
 * The simulated kernel backend: file descriptors, the iommufd contexts behind
 * them and the VFIO device files, wired to the per-ioctl logic in
 * `iommufd-ioctls.ts` and `vfio.ts`. Behaviour follows kernel-uapi.md; the
 * sim's IOMMU is the kernel's selftest mock IOMMU (§6.3).
 *
 * Methods are async to match KernelBackend but run synchronously: the sim is
 * single-threaded, so there are never concurrent short-term users (the
 * EBUSY-from-a-racing-ioctl case of §2 cannot happen here).
 */
import { closeSync } from 'node:fs';
import { createMemfd } from '../memfd.js';
import {
  KernelError,
  kernelId,
  type DeviceFile,
  type IoasMapFileArgs,
  type HwInfo,
  type HwptAllocArgs,
  type IommufdFile,
  type KernelBackend,
  type KernelCapabilities,
  type KernelObjectId,
  type KernelOp,
  type KernelProfile,
  type LookupProbe,
  type PciFunction,
  type VdeviceAllocArgs,
  type ViommuAllocArgs,
} from '../types.js';
import * as adopt from './adopt.js';
import { SimFaults } from './faults.js';
import { SimDrivers } from './drivers.js';
import { IdAllocator } from './ids.js';
import { DEMO_PCI_FUNCTIONS, validateInventory, type SimPciFunction } from './inventory.js';
import * as ioctl from './iommufd-ioctls.js';
import { describe, mappingInfo, type SimMappingInfo, type SimObjectInfo } from './introspect.js';
import * as ioasMap from './ioas-map.js';
import { fail, IommufdContext, SimFailure } from './objects.js';
import { ioctlsFor, OP_IOCTL, PROFILE_TRAITS, type ProfileTraits } from './profiles.js';
import * as selftest from './selftest.js';
import type { SimMockDevice } from './selftest.js';
import * as vfio from './vfio.js';
import type { DeviceFileState, IommufdFileState } from './vfio.js';

export type { SimMappingInfo, SimObjectInfo } from './introspect.js';
export type { SimMockDevice } from './selftest.js';

export interface SimKernelOptions {
  profile?: KernelProfile;
  /** Host inventory; defaults to DEMO_PCI_FUNCTIONS. Validated at construction. */
  devices?: readonly SimPciFunction[];
  /**
   * ioctls this kernel pretends not to have (e.g. IOMMU_IOAS_MAP_FILE, as
   * before 6.13): left out of probe() and answered with ENOTTY.
   */
  withoutIoctls?: readonly string[];
}

/** First fd number handed out; 0–2 are stdio in a real process. */
const FIRST_FD = 3;

export class SimKernel implements KernelBackend {
  readonly name = 'sim' as const;
  readonly profile: KernelProfile;
  /** Fault injection; see faults.ts for which calls count. */
  readonly faults = new SimFaults();

  private readonly traits: ProfileTraits;
  private readonly inventory: SimPciFunction[];
  private readonly drivers: SimDrivers;
  /** One fd table for both kinds of file, lowest free number first like open(2). */
  private readonly fdNumbers = new IdAllocator(FIRST_FD, 0x7fff_ffff);
  /** iommufd files whose fd is open or whose context is still alive. */
  private readonly iommufds = new Map<IommufdFile, IommufdFileState>();
  private readonly deviceFiles = new Map<DeviceFile, DeviceFileState>();
  /** Open device files per function, as the kernel keeps a device's open count. */
  private readonly openFilesOf = new Map<string, number>();
  /**
   * A real fd per device file (a memfd named `vfio-sim:BDF`), so it can be
   * handed to a VMM or put in the fd store. Made on first use: a memfd_create
   * and close cost more than the rest of a sim bind and unbind together.
   */
  private readonly osFds = new Map<DeviceFile, number>();
  private readonly missing: ReadonlySet<string>;
  private readonly requestListeners: ((bdf: string) => void)[] = [];
  /** Host-side unbinds waiting for the device's fds to close (§4.5). */
  private readonly pendingUnbinds = new Map<string, (() => void)[]>();
  private readonly host: vfio.Host;
  private readonly mockBus: selftest.MockBus;
  /** fd-store stand-ins for iommufd fds (restart; adopt.ts). */
  private readonly storeFds = new adopt.SimStoreFds();

  constructor(options: SimKernelOptions = {}) {
    this.profile = options.profile ?? 'linux-6.17';
    const traits = PROFILE_TRAITS[this.profile];
    if (traits === undefined) throw new Error(`unknown sim kernel profile ${String(this.profile)}`);
    this.traits = traits;
    this.inventory = [...validateInventory(options.devices ?? DEMO_PCI_FUNCTIONS)];
    this.drivers = new SimDrivers(this.inventory);
    this.missing = new Set(options.withoutIoctls ?? []);
    this.mockBus = new selftest.MockBus(this.inventory);
    const boundByGroup = new Map<number, Set<vfio.BoundDeviceFile>>();
    const membersByGroup = new Map<number, number[]>();
    this.inventory.forEach((fn, i) => {
      const members = membersByGroup.get(fn.iommuGroup);
      if (members) members.push(i);
      else membersByGroup.set(fn.iommuGroup, [i]);
    });
    this.host = {
      traits,
      inventory: this.inventory,
      groupMembers: (group) => membersByGroup.get(group) ?? [],
      boundInGroup(group) {
        let bound = boundByGroup.get(group);
        if (bound === undefined) boundByGroup.set(group, (bound = new Set()));
        return bound;
      },
    };
  }

  async probe(): Promise<KernelCapabilities> {
    return {
      backend: 'sim',
      release: this.traits.release,
      profile: this.profile,
      ioctls: ioctlsFor(this.traits).filter((name) => !this.missing.has(name)),
      selftest: true,
    };
  }

  /** Binds the function to vfio-pci (a new cdev appears); see drivers.ts. */
  async prepareDevice(bdf: string): Promise<PciFunction> {
    return this.drivers.prepare(bdf);
  }

  /** Gives the function back to its original driver; refused while a device fd is open. */
  async releaseDevice(bdf: string): Promise<PciFunction> {
    return this.drivers.release(bdf, this.hasOpenFile(bdf));
  }

  async listPciFunctions(): Promise<PciFunction[]> {
    return this.inventory.map((f) => ({
      bdf: f.bdf,
      vendorId: f.vendorId,
      deviceId: f.deviceId,
      iommuGroup: f.iommuGroup,
      cdev: f.cdev,
      driver: f.driver,
      ...(f.description !== undefined ? { description: f.description } : {}),
    }));
  }

  openIommufd(): Promise<IommufdFile> {
    return this.call('open_iommufd', () => {
      const handle: IommufdFile = Object.freeze({ kind: 'iommufd', fdNumber: this.allocFd() });
      this.iommufds.set(handle, { handle, fdOpen: true, refs: 1, ctx: new IommufdContext() });
      return handle;
    });
  }

  /** Drops the fd; the context dies only when no bound device still holds the file (§4.4). */
  async closeIommufd(file: IommufdFile): Promise<void> {
    const state = this.iommufds.get(file);
    if (!state?.fdOpen) return;
    state.fdOpen = false;
    this.fdNumbers.free(file.fdNumber);
    this.storeFds.forget(file);
    state.refs--;
    this.releaseIfUnreferenced(state);
  }

  openDevice(cdev: string): Promise<DeviceFile> {
    return this.call('open_device', () => {
      const pci = this.drivers.functionOf(cdev);
      if (pci === undefined) fail('ENOENT', `/dev/vfio/devices/${cdev} does not exist`);
      // open() succeeds repeatedly; only one file may bind (§3.15).
      const handle: DeviceFile = Object.freeze({ kind: 'device', fdNumber: this.allocFd(), cdev });
      this.deviceFiles.set(handle, { handle, pci, binding: undefined });
      this.openFilesOf.set(pci.bdf, (this.openFilesOf.get(pci.bdf) ?? 0) + 1);
      return handle;
    });
  }

  /** Detach, unbind, tombstone/keep the vDEVICE per profile; never fails (§4.5). */
  async closeDevice(file: DeviceFile): Promise<void> {
    const df = this.deviceFiles.get(file);
    if (df === undefined) return;
    const iommufd = vfio.unbind(this.host, df);
    this.deviceFiles.delete(file);
    const stillOpen = this.openFilesOf.get(df.pci.bdf)! - 1;
    if (stillOpen === 0) this.openFilesOf.delete(df.pci.bdf);
    else this.openFilesOf.set(df.pci.bdf, stillOpen);
    this.fdNumbers.free(file.fdNumber);
    const fd = this.osFds.get(file);
    this.osFds.delete(file);
    if (fd !== undefined) closeSync(fd);
    if (iommufd) this.releaseIfUnreferenced(iommufd);
    this.settleHostUnbind(df.pci.bdf);
  }

  osFd(file: DeviceFile): number | undefined {
    let fd = this.osFds.get(file);
    const df = this.deviceFiles.get(file);
    if (fd === undefined && df !== undefined) {
      fd = createMemfd(`vfio-sim:${df.pci.bdf}`);
      this.osFds.set(file, fd);
    }
    return fd;
  }

  onDeviceRequest(listener: (bdf: string) => void): void {
    this.requestListeners.push(listener);
  }

  /**
   * The host unbinds the device's driver (sysfs `driver/unbind`, or a surprise
   * removal). Like vfio_unregister_group_dev, it sends the request
   * notification and blocks until every fd of the device is closed; the
   * promise resolves then. A device with no open fd is released at once.
   */
  hostUnbind(bdf: string): Promise<void> {
    if (!this.hasOpenFile(bdf)) return Promise.resolve();
    return new Promise((resolve) => {
      const waiting = this.pendingUnbinds.get(bdf) ?? [];
      waiting.push(resolve);
      this.pendingUnbinds.set(bdf, waiting);
      for (const listener of this.requestListeners) listener(bdf);
    });
  }

  private hasOpenFile(bdf: string): boolean {
    return this.openFilesOf.has(bdf);
  }

  private settleHostUnbind(bdf: string): void {
    if (this.hasOpenFile(bdf)) return;
    for (const resolve of this.pendingUnbinds.get(bdf) ?? []) resolve();
    this.pendingUnbinds.delete(bdf);
  }

  bindIommufd(device: DeviceFile, iommufd: IommufdFile): Promise<KernelObjectId> {
    return this.call('bind_iommufd', () => {
      const df = this.deviceFile(device);
      const file = this.iommufds.get(iommufd);
      return kernelId(vfio.bind(this.host, df, file?.fdOpen ? file : undefined).id);
    });
  }

  attachPt(device: DeviceFile, ptId: KernelObjectId): Promise<KernelObjectId> {
    return this.call('attach_pt', () => kernelId(vfio.attach(this.host, this.deviceFile(device), ptId)));
  }

  detachPt(device: DeviceFile): Promise<void> {
    return this.call('detach_pt', () => vfio.detach(this.deviceFile(device)));
  }

  destroy(iommufd: IommufdFile, id: KernelObjectId): Promise<void> {
    return this.call('destroy', () => this.context(iommufd).destroyById(id));
  }

  ioasAlloc(iommufd: IommufdFile): Promise<KernelObjectId> {
    return this.call('ioas_alloc', () => kernelId(ioctl.ioasAlloc(this.context(iommufd)).id));
  }

  hwptAlloc(iommufd: IommufdFile, args: HwptAllocArgs): Promise<KernelObjectId> {
    return this.call('hwpt_alloc', () => kernelId(ioctl.hwptAlloc(this.context(iommufd), this.traits, args)));
  }

  viommuAlloc(iommufd: IommufdFile, args: ViommuAllocArgs): Promise<KernelObjectId> {
    return this.call('viommu_alloc', () =>
      kernelId(ioctl.viommuAlloc(this.context(iommufd), this.traits, args).id),
    );
  }

  vdeviceAlloc(iommufd: IommufdFile, args: VdeviceAllocArgs): Promise<KernelObjectId> {
    return this.call('vdevice_alloc', () => kernelId(ioctl.vdeviceAlloc(this.context(iommufd), this.traits, args)));
  }

  getHwInfo(iommufd: IommufdFile, devId: KernelObjectId): Promise<HwInfo> {
    return this.call('get_hw_info', () => ioctl.getHwInfo(this.context(iommufd), this.traits, devId));
  }

  ioasMapFile(iommufd: IommufdFile, args: IoasMapFileArgs): Promise<bigint> {
    return this.call('ioas_map_file', () => ioasMap.mapFile(() => this.context(iommufd).get(args.ioasId, 'IOAS'), args));
  }

  ioasUnmap(iommufd: IommufdFile, ioasId: KernelObjectId, iova: bigint, length: bigint): Promise<bigint> {
    return this.call('ioas_unmap', () => ioasMap.unmap(() => this.context(iommufd).get(ioasId, 'IOAS'), iova, length));
  }

  // ---- Restart without teardown (adopt.ts) ----

  storeFd(file: IommufdFile | DeviceFile): number | undefined {
    return file.kind === 'device' ? this.osFd(file) : this.storeFds.iommufdFd(this.iommufds.get(file));
  }

  adoptFile(fd: number): Promise<IommufdFile | DeviceFile> {
    return this.call('adopt_file', () => this.storeFds.adopt(fd, this.iommufds, this.deviceFiles, (f) => this.osFds.get(f)));
  }

  lookupProbe(iommufd: IommufdFile, probe: LookupProbe): Promise<void> {
    return this.call(adopt.LOOKUP_OP[probe.ioctl], () => adopt.lookup(this.context(iommufd), probe));
  }

  deviceBound(device: DeviceFile): Promise<boolean> {
    return this.call('device_get_info', () => adopt.deviceBound(this.deviceFile(device)));
  }

  // ---- IOMMUFD_TEST mock devices: LinuxKernel's API and KernelOp names (§6.2, sim/selftest.ts) ----

  /** TEST_CMD MOCK_DOMAIN, or MOCK_DOMAIN_FLAGS when `devFlags` is given: open + BIND + ATTACH(ptId) in one. */
  selftestMockDomain(iommufd: IommufdFile, ptId: KernelObjectId, devFlags?: number): Promise<SimMockDevice> {
    return this.call('bind_iommufd', () => {
      const m = selftest.mockDomain(this.host, this.mockBus, this.context(iommufd), ptId, (devFlags ?? 0) >>> 0);
      return { stdevId: kernelId(m.stdevId), hwptId: kernelId(m.hwptId), idevId: kernelId(m.idevId) };
    });
  }

  /** TEST_CMD MOCK_DOMAIN_REPLACE: the mock's second ATTACH; returns the HWPT now attached. */
  selftestMockDomainReplace(iommufd: IommufdFile, stdevId: KernelObjectId, ptId: KernelObjectId): Promise<KernelObjectId> {
    return this.call('attach_pt', () =>
      kernelId(selftest.mockDomainReplace(this.host, this.context(iommufd), stdevId, ptId)),
    );
  }

  /**
   * IOMMU_DESTROY(stdev), the mock's close(device fd): detach, unbind,
   * tombstone the vDEVICE on 6.17+ (§4.3). Like the real ioctl it has no
   * type check, so it is exactly `destroy`.
   */
  selftestDestroyMockDevice(iommufd: IommufdFile, stdevId: KernelObjectId): Promise<void> {
    return this.call('close_device', () => this.context(iommufd).destroyById(stdevId));
  }

  /** Closes every device file, then every iommufd fd, so all contexts are released. */
  async shutdown(): Promise<void> {
    for (const handle of [...this.deviceFiles.keys()]) await this.closeDevice(handle);
    for (const handle of [...this.iommufds.keys()]) await this.closeIommufd(handle);
  }

  // ---- Introspection for tests (not part of KernelBackend) ----

  /** The context's objects sorted by ID; [] once the context was released. */
  objects(file: IommufdFile): SimObjectInfo[] {
    const state = this.iommufds.get(file);
    return state ? state.ctx.list().map(describe) : [];
  }

  /** An IOAS's mappings in IOVA order; [] for an unknown IOAS or a released context. */
  mappings(file: IommufdFile, ioasId: number): SimMappingInfo[] {
    const obj = this.iommufds.get(file)?.ctx.lookup(ioasId);
    return obj?.type === 'IOAS' ? obj.areas.map(mappingInfo) : [];
  }

  /** Tombstoned IDs of the context (reserved, ENOENT, never reused until release). */
  tombstones(file: IommufdFile): number[] {
    return this.iommufds.get(file)?.ctx.tombstones() ?? [];
  }

  /** Objects across every live context, including ones whose fd is already closed. */
  liveObjectCount(): number {
    let n = 0;
    for (const s of this.iommufds.values()) n += s.ctx.size;
    return n;
  }

  /** Open fds: iommufd fds not yet closed plus device files not yet closed. */
  openFileCount(): number {
    let n = this.deviceFiles.size;
    for (const s of this.iommufds.values()) if (s.fdOpen) n++;
    return n;
  }

  /** iommufd contexts not yet released (an fd or a bound device still holds them). */
  liveContextCount(): number {
    return this.iommufds.size;
  }

  /** The HWPT the device is attached to, or undefined when unbound or detached. */
  attachedPt(device: DeviceFile): KernelObjectId | undefined {
    const df = this.deviceFiles.get(device);
    const hwpt = df ? vfio.attachedHwpt(df) : undefined;
    return hwpt ? kernelId(hwpt.id) : undefined;
  }

  /** The DEVICE id of a bound device file, or undefined. */
  boundDevId(device: DeviceFile): KernelObjectId | undefined {
    const dev = this.deviceFiles.get(device)?.binding?.dev;
    return dev ? kernelId(dev.id) : undefined;
  }

  // ---- internals ----

  /**
   * Runs one kernel call: fault injection at entry, SimFailure → KernelError.
   * Every modelled syscall goes through here, and it never throws: failures are
   * rejections. Methods return its promise as it is rather than being async,
   * which would wrap it in a second promise settled two microtask turns later.
   */
  private call<T>(op: KernelOp, body: () => T): Promise<T> {
    const delay = this.faults.latencyOf(op);
    if (delay > 0) return new Promise((resolve) => setTimeout(resolve, delay)).then(() => this.act(op, body));
    return this.act(op, body);
  }

  private act<T>(op: KernelOp, body: () => T): Promise<T> {
    try {
      const ioctl = OP_IOCTL[op];
      if (ioctl !== undefined && this.missing.has(ioctl)) throw new KernelError('ENOTTY', op, `this kernel has no ${ioctl}`);
      const injected = this.faults.onCall(op);
      if (injected !== undefined) throw new KernelError(injected, op, 'injected fault');
      return Promise.resolve(body());
    } catch (err) {
      if (err instanceof SimFailure) return Promise.reject(new KernelError(err.errno, op, err.detail));
      return Promise.reject(err);
    }
  }

  private allocFd(): number {
    const fd = this.fdNumbers.alloc();
    if (fd === undefined) throw new Error('sim: fd table exhausted');
    return fd;
  }

  /** An iommufd ioctl needs an open iommufd fd; anything else is EBADF. */
  private context(file: IommufdFile): IommufdContext {
    const state = this.iommufds.get(file);
    if (!state?.fdOpen) fail('EBADF', `iommufd fd ${file.fdNumber} is not open`);
    return state.ctx;
  }

  private deviceFile(file: DeviceFile): DeviceFileState {
    const df = this.deviceFiles.get(file);
    if (df === undefined) fail('EBADF', `device fd ${file.fdNumber} is not open`);
    return df;
  }

  /** Final release once the fd and every bound device are gone (§4.4). */
  private releaseIfUnreferenced(state: IommufdFileState): void {
    if (state.refs > 0) return;
    state.ctx.release();
    this.iommufds.delete(state.handle);
  }
}

/** Builds a sim backend; `profile` defaults to linux-6.17, `devices` to DEMO_PCI_FUNCTIONS. */
export function createSimKernel(options: SimKernelOptions = {}): SimKernel {
  return new SimKernel(options);
}
