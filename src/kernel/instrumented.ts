/**
 * KernelBackend decorators. `interceptKernel` routes every kernel call
 * through one `around` function that knows the call's KernelOp; metrics
 * (`instrumentKernel`) and test-time fault injection (`injectKernelFaults`)
 * are built on it, so the list of calls is written once.
 */
import type { SimFaults } from './sim/faults.js';
import { KernelError, type DeviceFile, type KernelBackend, type KernelOp } from './types.js';

/**
 * One kernel call: the backend's method and its arguments. A plain object
 * rather than a closure per call, because V8 keeps a per-call closure's
 * optimized code only while a closure that ran it is alive, so each full GC
 * sends every such closure back to the compiler.
 */
export class KernelCall<R> {
  constructor(
    private readonly backend: KernelBackend,
    private readonly method: (...args: never[]) => Promise<R>,
    private readonly args: readonly unknown[],
  ) {}

  invoke(): Promise<R> {
    return Reflect.apply(this.method, this.backend, this.args) as Promise<R>;
  }
}

function callOf<A extends unknown[], R>(backend: KernelBackend, method: (...args: A) => Promise<R>, ...args: A): KernelCall<R> {
  // The arguments were checked against the method here; KernelCall only passes them on.
  return new KernelCall(backend, method as unknown as (...args: never[]) => Promise<R>, args);
}

/** Runs `call` (the backend's own method) for kernel call `op`; may observe, delay or refuse it. */
export type KernelCallAround = <R>(op: KernelOp, call: KernelCall<R>) => Promise<R>;

export function interceptKernel(kernel: KernelBackend, around: KernelCallAround): KernelBackend {
  return {
    name: kernel.name,
    probe: () => kernel.probe(),
    listPciFunctions: () => kernel.listPciFunctions(),
    shutdown: () => kernel.shutdown(),
    ...(kernel.prepareDevice ? { prepareDevice: (bdf: string) => kernel.prepareDevice!(bdf) } : {}),
    ...(kernel.releaseDevice ? { releaseDevice: (bdf: string) => kernel.releaseDevice!(bdf) } : {}),
    ...(kernel.onDeviceRequest ? { onDeviceRequest: (l: (bdf: string) => void) => kernel.onDeviceRequest!(l) } : {}),
    // Not a kernel call: a lookup of the fd the backend holds.
    ...(kernel.osFd ? { osFd: (f: DeviceFile) => kernel.osFd!(f) } : {}),
    openIommufd: () => around('open_iommufd', callOf(kernel, kernel.openIommufd)),
    closeIommufd: (f) => around('close_iommufd', callOf(kernel, kernel.closeIommufd, f)),
    openDevice: (cdev) => around('open_device', callOf(kernel, kernel.openDevice, cdev)),
    closeDevice: (f) => around('close_device', callOf(kernel, kernel.closeDevice, f)),
    bindIommufd: (d, i) => around('bind_iommufd', callOf(kernel, kernel.bindIommufd, d, i)),
    attachPt: (d, pt) => around('attach_pt', callOf(kernel, kernel.attachPt, d, pt)),
    detachPt: (d) => around('detach_pt', callOf(kernel, kernel.detachPt, d)),
    destroy: (i, id) => around('destroy', callOf(kernel, kernel.destroy, i, id)),
    ioasAlloc: (i) => around('ioas_alloc', callOf(kernel, kernel.ioasAlloc, i)),
    hwptAlloc: (i, a) => around('hwpt_alloc', callOf(kernel, kernel.hwptAlloc, i, a)),
    viommuAlloc: (i, a) => around('viommu_alloc', callOf(kernel, kernel.viommuAlloc, i, a)),
    vdeviceAlloc: (i, a) => around('vdevice_alloc', callOf(kernel, kernel.vdeviceAlloc, i, a)),
    getHwInfo: (i, d) => around('get_hw_info', callOf(kernel, kernel.getHwInfo, i, d)),
    ioasMapFile: (i, a) => around('ioas_map_file', callOf(kernel, kernel.ioasMapFile, i, a)),
    ioasUnmap: (i, id, iova, length) => around('ioas_unmap', callOf(kernel, kernel.ioasUnmap, i, id, iova, length)),
  };
}

export type KernelCallObserver = (op: KernelOp, seconds: number, result: string) => void;

/**
 * Reports every kernel call's duration and result (errno name or `ok`) for
 * metrics: two clock reads per call.
 */
export function instrumentKernel(kernel: KernelBackend, observe: KernelCallObserver): KernelBackend {
  return interceptKernel(kernel, (op, call) => observed(observe, op, performance.now(), call));
}

async function observed<R>(observe: KernelCallObserver, op: KernelOp, start: number, call: KernelCall<R>): Promise<R> {
  try {
    const value = await call.invoke();
    observe(op, (performance.now() - start) / 1000, 'ok');
    return value;
  } catch (err) {
    // A backend that throws instead of rejecting fails the same way.
    observe(op, (performance.now() - start) / 1000, err instanceof KernelError ? err.errno : 'exception');
    throw err;
  }
}

/**
 * The sim's fault rules (failNth, failRandomly, setLatency) in front of any
 * backend, for tests on the real kernel: an injected failure happens before
 * the call reaches the backend, so the kernel never sees it, exactly like the
 * sim's syscall-entry failures. What the kernel then does with the calls
 * that do reach it is its own behaviour, which is the point on a real kernel.
 */
export function injectKernelFaults(kernel: KernelBackend, faults: SimFaults): KernelBackend {
  return interceptKernel(kernel, async (op, call) => {
    const delay = faults.latencyOf(op);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    const errno = faults.onCall(op);
    if (errno !== undefined) throw new KernelError(errno, op, 'injected fault');
    return call.invoke();
  });
}
