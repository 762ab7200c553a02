/**
 * KernelBackend decorators. `interceptKernel` routes every kernel call
 * through one `around` function that knows the call's KernelOp; metrics
 * (`instrumentKernel`) and test-time fault injection (`injectKernelFaults`)
 * are built on it, so the list of calls is written once.
 */
import type { SimFaults } from './sim/faults.js';
import { KernelError, type DeviceFile, type KernelBackend, type KernelOp } from './types.js';

/** Runs `call` (the backend's own method) for kernel call `op`; may observe, delay or refuse it. */
export type KernelCallAround = <R>(op: KernelOp, call: () => Promise<R>) => Promise<R>;

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
    openIommufd: () => around('open_iommufd', () => kernel.openIommufd()),
    closeIommufd: (f) => around('close_iommufd', () => kernel.closeIommufd(f)),
    openDevice: (cdev) => around('open_device', () => kernel.openDevice(cdev)),
    closeDevice: (f) => around('close_device', () => kernel.closeDevice(f)),
    bindIommufd: (d, i) => around('bind_iommufd', () => kernel.bindIommufd(d, i)),
    attachPt: (d, pt) => around('attach_pt', () => kernel.attachPt(d, pt)),
    detachPt: (d) => around('detach_pt', () => kernel.detachPt(d)),
    destroy: (i, id) => around('destroy', () => kernel.destroy(i, id)),
    ioasAlloc: (i) => around('ioas_alloc', () => kernel.ioasAlloc(i)),
    hwptAlloc: (i, a) => around('hwpt_alloc', () => kernel.hwptAlloc(i, a)),
    viommuAlloc: (i, a) => around('viommu_alloc', () => kernel.viommuAlloc(i, a)),
    vdeviceAlloc: (i, a) => around('vdevice_alloc', () => kernel.vdeviceAlloc(i, a)),
    getHwInfo: (i, d) => around('get_hw_info', () => kernel.getHwInfo(i, d)),
    ioasMapFile: (i, a) => around('ioas_map_file', () => kernel.ioasMapFile(i, a)),
    ioasUnmap: (i, id, iova, length) => around('ioas_unmap', () => kernel.ioasUnmap(i, id, iova, length)),
  };
}

export type KernelCallObserver = (op: KernelOp, seconds: number, result: string) => void;

/**
 * Reports every kernel call's duration and result (errno name or `ok`) for
 * metrics: two clock reads per call. One `then` rather than an async wrapper,
 * which would add a promise and a turn of the microtask queue to every call.
 */
export function instrumentKernel(kernel: KernelBackend, observe: KernelCallObserver): KernelBackend {
  const around = <R>(op: KernelOp, call: () => Promise<R>): Promise<R> => {
    const start = performance.now();
    const failed = (err: unknown): never => {
      observe(op, (performance.now() - start) / 1000, err instanceof KernelError ? err.errno : 'exception');
      throw err;
    };
    let pending: Promise<R>;
    try {
      pending = call();
    } catch (err) {
      // A backend that throws instead of rejecting still fails as a rejected call.
      return Promise.reject(err).catch(failed);
    }
    return pending.then((value) => {
      observe(op, (performance.now() - start) / 1000, 'ok');
      return value;
    }, failed);
  };
  return interceptKernel(kernel, around);
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
    return call();
  });
}
