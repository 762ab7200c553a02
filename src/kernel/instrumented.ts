/**
 * A KernelBackend decorator that reports every kernel call's duration and
 * result (errno name or `ok`), for metrics. It adds one closure call and two
 * clock reads per call, nothing else.
 */
import { KernelError, type DeviceFile, type KernelBackend, type KernelOp } from './types.js';

export type KernelCallObserver = (op: KernelOp, seconds: number, result: string) => void;

function timed<A extends unknown[], R>(op: KernelOp, observe: KernelCallObserver, fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args: A) => {
    const start = process.hrtime.bigint();
    try {
      const value = await fn(...args);
      observe(op, Number(process.hrtime.bigint() - start) / 1e9, 'ok');
      return value;
    } catch (err) {
      observe(op, Number(process.hrtime.bigint() - start) / 1e9, err instanceof KernelError ? err.errno : 'exception');
      throw err;
    }
  };
}

export function instrumentKernel(kernel: KernelBackend, observe: KernelCallObserver): KernelBackend {
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
    openIommufd: timed('open_iommufd', observe, () => kernel.openIommufd()),
    closeIommufd: timed('close_iommufd', observe, (f) => kernel.closeIommufd(f)),
    openDevice: timed('open_device', observe, (cdev) => kernel.openDevice(cdev)),
    closeDevice: timed('close_device', observe, (f) => kernel.closeDevice(f)),
    bindIommufd: timed('bind_iommufd', observe, (d, i) => kernel.bindIommufd(d, i)),
    attachPt: timed('attach_pt', observe, (d, pt) => kernel.attachPt(d, pt)),
    detachPt: timed('detach_pt', observe, (d) => kernel.detachPt(d)),
    destroy: timed('destroy', observe, (i, id) => kernel.destroy(i, id)),
    ioasAlloc: timed('ioas_alloc', observe, (i) => kernel.ioasAlloc(i)),
    hwptAlloc: timed('hwpt_alloc', observe, (i, a) => kernel.hwptAlloc(i, a)),
    viommuAlloc: timed('viommu_alloc', observe, (i, a) => kernel.viommuAlloc(i, a)),
    vdeviceAlloc: timed('vdevice_alloc', observe, (i, a) => kernel.vdeviceAlloc(i, a)),
    getHwInfo: timed('get_hw_info', observe, (i, d) => kernel.getHwInfo(i, d)),
    ioasMapFile: timed('ioas_map_file', observe, (i, a) => kernel.ioasMapFile(i, a)),
    ioasUnmap: timed('ioas_unmap', observe, (i, id, iova, length) => kernel.ioasUnmap(i, id, iova, length)),
  };
}
