import { describe, expect, it } from 'vitest';
import { injectKernelFaults, instrumentKernel, interceptKernel } from '../../src/kernel/instrumented.js';
import { createSimKernel, SimFaults } from '../../src/kernel/sim/index.js';
import { isKernelError, KERNEL_OPS, type KernelBackend, type KernelOp } from '../../src/kernel/types.js';

/** Calls that are not on KernelBackend itself (LinuxKernel extras), so no decorator sees them. */
const LINUX_EXTRAS: ReadonlySet<KernelOp> = new Set(['ioas_map', 'ioas_iova_ranges', 'device_get_info', 'device_reset']);

describe('interceptKernel', () => {
  it('routes every kernel call of KernelBackend through `around`, named by its KernelOp', async () => {
    // A backend whose every method resolves: only the routing is under test.
    const stub = new Proxy({ name: 'sim' } as KernelBackend, {
      get: (target, prop) => (prop === 'name' ? target.name : () => Promise.resolve(undefined)),
    });
    const seen: KernelOp[] = [];
    const k = interceptKernel(stub, (op, call) => {
      seen.push(op);
      return call.invoke();
    });
    const none = undefined as never;
    await Promise.all([
      k.openIommufd(),
      k.closeIommufd(none),
      k.openDevice('vfio0'),
      k.closeDevice(none),
      k.bindIommufd(none, none),
      k.attachPt(none, none),
      k.detachPt(none),
      k.destroy(none, none),
      k.ioasAlloc(none),
      k.hwptAlloc(none, none),
      k.viommuAlloc(none, none),
      k.vdeviceAlloc(none, none),
      k.getHwInfo(none, none),
      k.ioasMapFile(none, none),
      k.ioasUnmap(none, none, 0n, 0n),
      k.probe(),
      k.listPciFunctions(),
    ]);
    expect([...seen].sort()).toEqual(KERNEL_OPS.filter((op) => !LINUX_EXTRAS.has(op)).sort());
  });
});

describe('instrumentKernel', () => {
  it('reports each call with its op and result: ok, or the errno', async () => {
    const sim = createSimKernel({ profile: 'linux-6.17' });
    await sim.probe();
    const results: string[] = [];
    const k = instrumentKernel(sim, (op, seconds, result) => {
      expect(seconds).toBeGreaterThanOrEqual(0);
      results.push(`${op}:${result}`);
    });
    const file = await k.openIommufd();
    const ioas = await k.ioasAlloc(file);
    await k.destroy(file, ioas);
    await k.destroy(file, ioas).catch(() => undefined);
    await k.closeIommufd(file);
    expect(results).toEqual(['open_iommufd:ok', 'ioas_alloc:ok', 'destroy:ok', 'destroy:ENOENT', 'close_iommufd:ok']);
  });
});

describe('injectKernelFaults', () => {
  it('fails the n-th matching call before it reaches the backend, which therefore never sees it', async () => {
    const sim = createSimKernel({ profile: 'linux-6.17' });
    await sim.probe();
    const faults = new SimFaults();
    const k = injectKernelFaults(sim, faults);
    const file = await k.openIommufd();
    const a = await k.ioasAlloc(file);
    const b = await k.ioasAlloc(file);
    faults.failNth(2, 'EINTR', { ops: ['destroy'] });
    await k.destroy(file, a);
    const err = await k.destroy(file, b).catch((e: unknown) => e);
    expect(isKernelError(err, 'EINTR')).toBe(true);
    expect((err as Error).message).toContain('injected fault');
    // The backend never got the failed call: b is still there, and destroyable.
    expect(sim.objects(file).map((o) => o.id)).toEqual([b]);
    await k.destroy(file, b);
    expect(sim.objects(file)).toEqual([]);
    // The sim's own fault rules are separate and untouched.
    expect(sim.faults.callCount).toBeGreaterThan(0);
    expect(faults.callCount).toBe(6); // open, 2 allocs, 3 destroys
    await k.closeIommufd(file);
  });

  it('never fails a close (close(2) cannot fail) and applies latency before the call', async () => {
    const sim = createSimKernel({ profile: 'linux-6.13' });
    await sim.probe();
    const faults = new SimFaults();
    faults.failRandomly(1, ['EIO'], 1);
    const k = injectKernelFaults(sim, faults);
    await expect(k.openIommufd()).rejects.toThrow(/open_iommufd: EIO/);
    faults.clear();
    const file = await k.openIommufd();
    faults.failRandomly(1, ['EIO'], 1);
    faults.setLatency(30, { ops: ['close_iommufd'] });
    const t0 = Date.now();
    await k.closeIommufd(file);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
    expect(sim.openFileCount()).toBe(0);
  });
});
