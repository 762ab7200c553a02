/**
 * Differential conformance harness: a scenario drives one kernel backend
 * through a `Recorder`, which records a TRACE of every call (the op, its
 * arguments, and either `ok` with the returned IDs/values or the errno name)
 * next to the result the scenario expects from kernel-uapi.md.
 *
 * The same scenario code runs on the sim and on the real kernel, so the two
 * traces line up step by step; `run.ts` compares them. Hardware-dependent
 * steps (the VFIO device sits behind the mock IOMMU on the sim and behind
 * Intel VT-d in the QEMU lane) carry a `hardware` note that says what is
 * excluded from the comparison and why.
 */
import type { ErrnoName } from '../../src/kernel/errno.js';
import {
  KernelError,
  kernelId,
  type DeviceFile,
  type HwInfo,
  type HwptAllocArgs,
  type IommufdFile,
  type KernelBackend,
  type KernelObjectId,
  type VdeviceAllocArgs,
  type ViommuAllocArgs,
} from '../../src/kernel/types.js';

/** What MOCK_DOMAIN returns, on both backends (kernel-uapi.md §6.2). */
export interface MockDeviceIds {
  stdevId: KernelObjectId;
  hwptId: KernelObjectId;
  idevId: KernelObjectId;
}

/** A backend with the IOMMUFD_TEST mock-device calls: SimKernel and LinuxKernel both fit. */
export interface SelftestKernel extends KernelBackend {
  selftestMockDomain(iommufd: IommufdFile, ptId: KernelObjectId, devFlags?: number): Promise<MockDeviceIds>;
  selftestMockDomainReplace(iommufd: IommufdFile, stdevId: KernelObjectId, ptId: KernelObjectId): Promise<KernelObjectId>;
  selftestDestroyMockDevice(iommufd: IommufdFile, stdevId: KernelObjectId): Promise<void>;
}

export interface ConformanceTarget {
  /** For reports, e.g. `sim linux-6.17` or `linux 7.2.13`. */
  readonly label: string;
  readonly kernel: SelftestKernel;
  /** cdev of the vfio-pci device for the VFIO scenarios (sim: a demo device; lane: the edu device). */
  readonly vfioCdev: string;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Outcome = { ok: true; value: Json } | { ok: false; errno: string };

/** Why a step's result depends on the IOMMU hardware, and what is still compared. */
export interface HardwareDependence {
  /** `outcome`: success vs errno is compared, returned values are not. `none`: nothing is. */
  compare: 'outcome' | 'none';
  why: string;
}

export interface Step {
  index: number;
  /** The call, e.g. `destroy`, `hwpt_alloc`, `mock_domain`. */
  op: string;
  /** What the scenario meant, e.g. `IOAS held by its automatic HWPT`. */
  note: string;
  args: Json;
  outcome: Outcome;
  /** The documented result (for hardware-dependent steps: the sim's mock-IOMMU result). */
  expected: Outcome;
  hardware?: HardwareDependence;
}

export interface Trace {
  scenario: string;
  steps: Step[];
  /** Set when the scenario stopped early (a step it needed failed) or the harness threw. */
  aborted?: string;
}

export const ok = (value: Json = null): Outcome => ({ ok: true, value });
export const err = (errno: ErrnoName): Outcome => ({ ok: false, errno });

/** Thrown to stop a scenario whose later steps need a value a failed step did not produce. */
export class ScenarioAbort extends Error {}

interface StepOptions {
  note?: string;
  hardware?: HardwareDependence;
}

const NO_ID = kernelId(0);

/**
 * Runs calls against one target and records them. Every call returns the
 * kernel's value, or a harmless stand-in (ID 0, which never names an object,
 * §0) when it failed as expected; a call expected to succeed that fails
 * aborts the scenario, except hardware-dependent ones.
 */
export class Recorder {
  readonly steps: Step[] = [];
  private readonly iommufds = new Set<IommufdFile>();
  private readonly devices = new Set<DeviceFile>();

  constructor(readonly target: ConformanceTarget) {}

  private get k(): SelftestKernel {
    return this.target.kernel;
  }

  async openIommufd(): Promise<IommufdFile> {
    const fd = await this.call('open_iommufd', null, () => this.k.openIommufd(), ok(), () => null);
    if (fd === undefined) throw new ScenarioAbort('open_iommufd failed');
    this.iommufds.add(fd);
    return fd;
  }

  async closeIommufd(fd: IommufdFile, note?: string): Promise<void> {
    this.iommufds.delete(fd);
    await this.call('close_iommufd', null, () => this.k.closeIommufd(fd), ok(), () => null, { note });
  }

  /** Opens the target's VFIO cdev (the cdev name is not recorded: it differs by design). */
  async openDevice(note?: string): Promise<DeviceFile> {
    const dev = await this.call('open_device', null, () => this.k.openDevice(this.target.vfioCdev), ok(), () => null, { note });
    if (dev === undefined) throw new ScenarioAbort('open_device failed');
    this.devices.add(dev);
    return dev;
  }

  async closeDevice(dev: DeviceFile, note?: string): Promise<void> {
    this.devices.delete(dev);
    await this.call('close_device', null, () => this.k.closeDevice(dev), ok(), () => null, { note });
  }

  async bind(dev: DeviceFile, fd: IommufdFile, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    return this.id('bind_iommufd', null, () => this.k.bindIommufd(dev, fd), expected, opts);
  }

  async attach(dev: DeviceFile, ptId: KernelObjectId, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    return this.id('attach_pt', { ptId }, () => this.k.attachPt(dev, ptId), expected, opts);
  }

  async detach(dev: DeviceFile, expected: Outcome, opts?: StepOptions): Promise<void> {
    await this.call('detach_pt', null, () => this.k.detachPt(dev), expected, () => null, opts);
  }

  async destroy(fd: IommufdFile, id: KernelObjectId, expected: Outcome, opts?: StepOptions): Promise<void> {
    await this.call('destroy', { id }, () => this.k.destroy(fd, id), expected, () => null, opts);
  }

  async ioasAlloc(fd: IommufdFile, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    return this.id('ioas_alloc', null, () => this.k.ioasAlloc(fd), expected, opts);
  }

  async hwptAlloc(fd: IommufdFile, args: HwptAllocArgs, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    const a = { flags: args.flags >>> 0, devId: args.devId, ptId: args.ptId, dataType: args.dataType >>> 0, dataLen: args.data.length };
    return this.id('hwpt_alloc', a, () => this.k.hwptAlloc(fd, args), expected, opts);
  }

  async viommuAlloc(fd: IommufdFile, args: ViommuAllocArgs, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    const a = { type: args.type >>> 0, devId: args.devId, hwptId: args.hwptId };
    return this.id('viommu_alloc', a, () => this.k.viommuAlloc(fd, args), expected, opts);
  }

  async vdeviceAlloc(fd: IommufdFile, args: VdeviceAllocArgs, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    const a = { viommuId: args.viommuId, devId: args.devId, virtId: `0x${args.virtId.toString(16)}` };
    return this.id('vdevice_alloc', a, () => this.k.vdeviceAlloc(fd, args), expected, opts);
  }

  async getHwInfo(fd: IommufdFile, devId: KernelObjectId, expected: Outcome, opts?: StepOptions): Promise<void> {
    await this.call('get_hw_info', { devId }, () => this.k.getHwInfo(fd, devId), expected, hwInfoJson, opts);
  }

  /** TEST_CMD MOCK_DOMAIN, or MOCK_DOMAIN_FLAGS when `devFlags` is given (§6.2). */
  async mockDomain(fd: IommufdFile, ptId: KernelObjectId, expected: Outcome, devFlags?: number, opts?: StepOptions): Promise<MockDeviceIds> {
    const op = devFlags === undefined ? 'mock_domain' : 'mock_domain_flags';
    const args: Json = devFlags === undefined ? { ptId } : { ptId, devFlags };
    const m = await this.call(op, args, () => this.k.selftestMockDomain(fd, ptId, devFlags), expected, mockJson, opts);
    return m ?? { stdevId: NO_ID, hwptId: NO_ID, idevId: NO_ID };
  }

  async mockReplace(fd: IommufdFile, stdevId: KernelObjectId, ptId: KernelObjectId, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    return this.id('mock_domain_replace', { stdevId, ptId }, () => this.k.selftestMockDomainReplace(fd, stdevId, ptId), expected, opts);
  }

  /** IOMMU_DESTROY(stdev): unbinds the mock device (§6.2). */
  async destroyMock(fd: IommufdFile, stdevId: KernelObjectId, expected: Outcome, opts?: StepOptions): Promise<void> {
    await this.call('destroy_mock_device', { stdevId }, () => this.k.selftestDestroyMockDevice(fd, stdevId), expected, () => null, opts);
  }

  /** Closes whatever the scenario left open (devices first, §4.6 step 11); not recorded. */
  async cleanup(): Promise<void> {
    for (const dev of [...this.devices].reverse()) await this.k.closeDevice(dev).catch(() => undefined);
    for (const fd of [...this.iommufds].reverse()) await this.k.closeIommufd(fd).catch(() => undefined);
    this.devices.clear();
    this.iommufds.clear();
  }

  private async id(op: string, args: Json, fn: () => Promise<KernelObjectId>, expected: Outcome, opts?: StepOptions): Promise<KernelObjectId> {
    return (await this.call(op, args, fn, expected, (v) => v, opts)) ?? NO_ID;
  }

  private async call<T>(
    op: string,
    args: Json,
    fn: () => Promise<T>,
    expected: Outcome,
    toJson: (v: T) => Json,
    opts: StepOptions = {},
  ): Promise<T | undefined> {
    let outcome: Outcome;
    let value: T | undefined;
    try {
      value = await fn();
      outcome = { ok: true, value: toJson(value) };
    } catch (e) {
      if (!(e instanceof KernelError)) {
        // Not a kernel answer (a harness or backend bug): record it so it shows up as a difference.
        outcome = { ok: false, errno: `THREW ${e instanceof Error ? e.message : String(e)}` };
      } else {
        outcome = { ok: false, errno: e.errno };
      }
    }
    this.steps.push({
      index: this.steps.length,
      op,
      note: opts.note ?? '',
      args,
      outcome,
      expected,
      ...(opts.hardware ? { hardware: opts.hardware } : {}),
    });
    if (!outcome.ok && expected.ok && !opts.hardware) {
      throw new ScenarioAbort(`step ${this.steps.length - 1} ${op} failed with ${outcome.errno}; the scenario needs its result`);
    }
    return outcome.ok ? value : undefined;
  }
}

function mockJson(m: MockDeviceIds): Json {
  return { stdevId: m.stdevId, hwptId: m.hwptId, idevId: m.idevId };
}

function hwInfoJson(info: HwInfo): Json {
  return {
    type: `0x${info.type.toString(16)}`,
    capabilities: `0x${info.capabilities.toString(16)}`,
    maxPasidLog2: info.maxPasidLog2,
    data: Buffer.from(info.data).toString('hex'),
  };
}

/** Expected MOCK_DOMAIN result. */
export function mock(stdevId: number, hwptId: number, idevId: number): Outcome {
  return ok({ stdevId, hwptId, idevId });
}

/** Expected GET_HW_INFO result of the selftest mock IOMMU (§6.3). */
export function mockHwInfo(capabilities: number, maxPasidLog2 = 0): Outcome {
  // `struct iommu_test_hw_info` {flags 0, test_reg 0xdeadbeef}, little-endian.
  return ok({ type: '0xfeedbeef', capabilities: `0x${capabilities.toString(16)}`, maxPasidLog2, data: '00000000efbeadde' });
}
