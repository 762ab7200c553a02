/**
 * The data plane and the host's reclaim of a device, on the real kernel
 * (runs inside the QEMU guest; see README.md here): the daemon in-process
 * with the `linux` backend, driven over gRPC and its fd socket, on the edu
 * device guest-init bound to vfio-pci (behind the emulated Intel VT-d).
 *
 *   test/kernel/run-vm.sh 'vitest run --config test/kernel/vitest.guest.config.ts dataplane'
 *
 * - LeaseDeviceFd + the fd socket: the handed-off fd is the bound cdev; a
 *   VMM-side region read through it (GET_REGION_INFO on BAR0, pread) returns
 *   edu's identification register.
 * - MapMemory of a memfd (IOMMU_IOAS_MAP_FILE): a fixed IOVA comes back as
 *   asked, a kernel-chosen one is aligned, both lie in IOAS_IOVA_RANGES; the
 *   edu device then DMAs through the mapping (RAM → device → RAM), so the
 *   VT-d domain really translates the IOVA to the memfd's pages; UnmapMemory.
 * - A sysfs unbind of edu from vfio-pci (a child process: the write blocks
 *   until the device's last fd closes) fires the vfio-pci request IRQ the
 *   backend armed at bind: the daemon tears the device down, the owner's
 *   WatchContext gets teardown + device_removed, the unbind completes. The
 *   device is then given back to vfio-pci for later test files.
 *
 * Writes $VFIO_BROKER_RESULTS_DIR/dataplane.json. Skipped outside the guest.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, readdirSync, readlinkSync, readSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeviceObject } from '../../src/broker/objects.js';
import type { Daemon } from '../../src/daemon.js';
import type { WatchContextResponse } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { TeardownAction, TeardownReason } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { irqInfo } from '../../src/kernel/linux/device-request.js';
import type { LinuxKernel } from '../../src/kernel/linux/index.js';
import { VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_REQ_IRQ_INDEX, VFIO_REGION_INFO_FLAG_READ } from '../../src/kernel/linux/structs.js';
import { createLibcSyscalls } from '../../src/kernel/linux/syscalls.js';
import { createMemfd } from '../../src/kernel/memfd.js';
import { kernelId } from '../../src/kernel/types.js';
import { redeemDeviceFd, uploadMemfd } from '../../src/rpc/handoff-client.js';
import type { AdminClient, BrokerClient } from '../helpers/daemon.js';
import { asTenantMetadata } from '../helpers/daemon.js';
import { eduDma, eduId, enableDma, openEdu, restoreCommand } from './edu.js';
import { inRanges, kernelFds, startGuestDaemon, stopGuestDaemon, writeSummary, type GuestDaemon } from './guest-daemon.js';

const IN_GUEST = existsSync('/dev/iommu');
const TENANT = 'guest-dataplane';
const meta = { metadata: asTenantMetadata(TENANT) };
const MIB = 1n << 20n;
const FIXED_IOVA = 0x10_0000n; // low (edu's DMA mask is 28 bits), page aligned, far from the MSI window
const SYS = '/sys/bus/pci';

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

const driverOf = (bdf: string) => (existsSync(`${SYS}/devices/${bdf}/driver`) ? path.basename(readlinkSync(`${SYS}/devices/${bdf}/driver`)) : undefined);
const cdevsOf = (bdf: string) => (existsSync(`${SYS}/devices/${bdf}/vfio-dev`) ? readdirSync(`${SYS}/devices/${bdf}/vfio-dev`) : []);

/** guest-init left driver_override = vfio-pci, so a reprobe gives the function back to vfio-pci. */
function rebindVfioPci(bdf: string): void {
  if (driverOf(bdf) === undefined) writeFileSync(`${SYS}/drivers_probe`, bdf);
}

/** A shell writing to sysfs: the unbind blocks in the kernel until the device's last fd closes. */
function unbindInChild(bdf: string): { done: Promise<number | null> } {
  const child = spawn('sh', ['-c', `printf %s "$1" > ${SYS}/drivers/vfio-pci/unbind`, 'unbind', bdf], { stdio: 'ignore' });
  return { done: new Promise((resolve) => child.on('exit', (code) => resolve(code))) };
}

function until<T>(what: string, get: () => T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = () => {
      const v = get();
      if (v !== undefined) resolve(v);
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 50);
    };
    tick();
  });
}

describe.skipIf(!IN_GUEST)('data plane and device request on the real kernel (linux backend, edu)', () => {
  let guest: GuestDaemon | undefined;
  let daemon: Daemon;
  let kernel: LinuxKernel;
  let broker: BrokerClient;
  let admin: AdminClient;
  let bdf: string;
  let cdev: string;
  let fdsBefore: string[];
  let pendingUnbind: Promise<number | null> | undefined;
  const summary: Record<string, unknown> = {};

  /** A context with the edu device bound, and the backend's DeviceFile for it. */
  async function bound(label: string) {
    const { contextId } = await broker.openContext({ label }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: bdf }, meta)).device!.handle;
    const file = (daemon.broker.inspectContext(contextId)!.registry.get(Number(device) as never) as DeviceObject).file;
    return { contextId, device, file };
  }

  beforeAll(async () => {
    fdsBefore = kernelFds();
    guest = await startGuestDaemon('dataplane');
    ({ daemon, kernel, broker, admin } = guest);
    const edu = (await admin.listDevices({})).devices.find((d) => d.cdev !== '' && d.vendorId === 0x1234 && d.pciDeviceId === 0x11e8)!;
    expect(edu, 'the edu device on vfio-pci').toBeDefined();
    bdf = edu.id;
    cdev = edu.cdev;
    await admin.assignDevice({ deviceId: bdf, tenant: TENANT });
  }, 180_000);

  afterAll(async () => {
    await stopGuestDaemon(guest ?? {}); // closes every fd, which also lets a stuck unbind finish
    if (pendingUnbind) summary['unbindExitAfterStop'] = await Promise.race([pendingUnbind, new Promise((r) => setTimeout(() => r('still blocked'), 30_000))]);
    if (bdf) rebindVfioPci(bdf);
    summary['driverAtEnd'] = bdf ? driverOf(bdf) : undefined;
    summary['fdsAfterStop'] = kernelFds();
    const json = writeSummary('dataplane.json', summary, hex);
    process.stdout.write(`dataplane: ${json.replace(/\s+/g, ' ')}\n`);
    if (bdf) expect(driverOf(bdf)).toBe('vfio-pci');
    if (fdsBefore) expect(kernelFds()).toEqual(fdsBefore);
  }, 120_000);

  it('LeaseDeviceFd hands over the bound cdev; BAR0 read through it is the edu identification register', async () => {
    const { contextId, device, file } = await bound('dataplane-lease');
    expect(kernel.deviceRequestArmed(file)).toBe(true);
    const lease = await broker.leaseDeviceFd({ contextId, device }, meta);
    const fd = await redeemDeviceFd(lease.socketPath, lease.token);
    try {
      expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe(`/dev/vfio/devices/${cdev}`);
      expect(fd).not.toBe(file.fdNumber); // our own copy, not the daemon's
      const edu = openEdu(fd);
      const id = eduId(edu);
      const req = irqInfo(createLibcSyscalls(), fd, VFIO_PCI_REQ_IRQ_INDEX);
      summary['lease'] = { bar0: { size: edu.bar0.size, offset: edu.bar0.offset, flags: edu.bar0.flags }, id: hex(id), reqIrq: req };
      expect(edu.bar0.size).toBe(MIB);
      expect(edu.bar0.flags & VFIO_REGION_INFO_FLAG_READ).toBeTruthy();
      expect(id & 0xff).toBe(0xed);
      expect(id & 0xff00).toBe(0);
      expect(req.count).toBe(1);
      expect(req.flags & VFIO_IRQ_INFO_EVENTFD).toBeTruthy();
    } finally {
      closeSync(fd);
    }
    await broker.closeContext({ contextId }, meta);
    expect(kernel.deviceRequestArmed(file)).toBe(false);
    expect(kernelFds()).toEqual(fdsBefore);
  });

  it('MapMemory of a memfd: fixed and kernel-chosen IOVAs inside IOAS_IOVA_RANGES, edu DMA through the mapping, UnmapMemory', async () => {
    const { contextId, device } = await bound('dataplane-map');
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!;
    // Attached first, so the ranges are the VT-d domain's aperture and the DMA is translated.
    await broker.attachDevice({ contextId, device, target: ioas.handle }, meta);
    const { ranges, alignment } = await kernel.ioasIovaRanges(daemon.broker.inspectContext(contextId)!.iommufd, kernelId(ioas.kernelId));
    summary['iovaRanges'] = { ranges: ranges.map((r) => `${hex(r.start)}..${hex(r.last)}`), alignment };
    const memfd = createMemfd('guest-ram', Number(4n * MIB));
    const upload = async () => {
      const slot = await broker.prepareMemoryUpload({ contextId }, meta);
      await uploadMemfd(slot.socketPath, slot.token, memfd);
      return slot.token;
    };
    try {
      const fixed = await broker.mapMemory({ contextId, ioas: ioas.handle, iova: FIXED_IOVA, fixedIova: true, length: 2n * MIB, readable: true, writeable: true, uploadToken: await upload() }, meta);
      const chosen = await broker.mapMemory({ contextId, ioas: ioas.handle, length: MIB, offset: 2n * MIB, readable: true, writeable: true, uploadToken: await upload() }, meta);
      summary['maps'] = { fixed: { iova: fixed.iova, length: fixed.length }, chosen: { iova: chosen.iova, length: chosen.length } };
      expect(fixed).toEqual(expect.objectContaining({ iova: FIXED_IOVA, length: 2n * MIB }));
      expect(chosen.length).toBe(MIB);
      expect(chosen.iova % 4096n).toBe(0n);
      expect(chosen.iova % (alignment > 0n ? alignment : 1n)).toBe(0n);
      expect(inRanges(ranges, fixed.iova, fixed.length)).toBe(true);
      expect(inRanges(ranges, chosen.iova, chosen.length)).toBe(true);
      expect(chosen.iova + MIB <= FIXED_IOVA || chosen.iova >= FIXED_IOVA + 2n * MIB).toBe(true);

      // The device reads RAM at FIXED_IOVA (memfd offset 0) and writes it back one page further.
      const pattern = Buffer.from(Array.from({ length: 1024 }, (_, i) => (i * 7 + 3) & 0xff));
      writeSync(memfd, pattern, 0, pattern.length, 0);
      const lease = await broker.leaseDeviceFd({ contextId, device }, meta);
      const fd = await redeemDeviceFd(lease.socketPath, lease.token);
      try {
        const edu = openEdu(fd);
        const command = enableDma(edu);
        summary['pciCommand'] = command;
        await eduDma(edu, { iova: FIXED_IOVA, bufOffset: 0, length: pattern.length, toRam: false });
        await eduDma(edu, { iova: FIXED_IOVA + 4096n, bufOffset: 0, length: pattern.length, toRam: true });
        restoreCommand(edu, command.before);
      } finally {
        closeSync(fd);
      }
      const back = Buffer.alloc(pattern.length);
      readSync(memfd, back, 0, back.length, 4096);
      summary['dmaRoundTrip'] = back.equals(pattern) ? 'equal' : `differs: ${back.subarray(0, 16).toString('hex')}`;
      expect(back.equals(pattern)).toBe(true);

      const u1 = await broker.unmapMemory({ contextId, ioas: ioas.handle, iova: fixed.iova, length: fixed.length }, meta);
      const u2 = await broker.unmapMemory({ contextId, ioas: ioas.handle, iova: chosen.iova, length: chosen.length }, meta);
      expect([u1.unmappedBytes, u2.unmappedBytes]).toEqual([2n * MIB, MIB]);
      const rest = await broker.unmapMemory({ contextId, ioas: ioas.handle, iova: 0n, length: (1n << 64n) - 1n }, meta);
      expect(rest.unmappedBytes).toBe(0n);
    } finally {
      closeSync(memfd);
      await broker.closeContext({ contextId }, meta);
    }
    expect(kernelFds()).toEqual(fdsBefore);
  });

  it('a sysfs unbind fires the request IRQ: the daemon tears the device down, tells the owner, the unbind completes; then vfio-pci again', async () => {
    const { contextId, device, file } = await bound('dataplane-reclaim');
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!.handle;
    const auto = (await broker.attachDevice({ contextId, device, target: ioas }, meta)).hwpt!.handle;
    expect(kernel.deviceRequestArmed(file)).toBe(true);
    const events: WatchContextResponse[] = [];
    const watch = broker.watchContext({ contextId }, meta);
    watch.on('data', (e: WatchContextResponse) => events.push(e));
    watch.on('error', () => undefined);
    await until('the watch to be ready', () => (events.length > 0 ? true : undefined));

    let exited = false;
    pendingUnbind = unbindInChild(bdf).done.then((code) => {
      exited = true;
      return code;
    });
    const removed = await until('device_removed', () => events.find((e) => e.event.case === 'deviceRemoved'));
    const code = await pendingUnbind;
    pendingUnbind = undefined;
    expect(exited).toBe(true);
    expect(code).toBe(0);
    const teardown = events.find((e) => e.event.case === 'teardown')!;
    const report = teardown.event.case === 'teardown' ? teardown.event.value.report! : undefined;
    summary['reclaim'] = {
      events: events.map((e) => e.event.case),
      steps: report?.steps.map((s) => `${TeardownAction[s.action]} ${s.handle}`),
      driverAfterUnbind: driverOf(bdf) ?? null,
    };
    expect(events.map((e) => e.event.case).slice(-2)).toEqual(['teardown', 'deviceRemoved']);
    expect(report?.reason).toBe(TeardownReason.DEVICE_REQUEST);
    expect(report?.steps.map((s) => [s.action, s.handle])).toEqual([
      [TeardownAction.DETACH, device],
      [TeardownAction.AUTO_FREED, auto],
      [TeardownAction.CLOSE_DEVICE, device],
    ]);
    expect(removed.event.case === 'deviceRemoved' && removed.event.value).toMatchObject({ device, deviceId: bdf });
    expect(kernel.deviceRequestArmed(file)).toBe(false);
    expect(driverOf(bdf)).toBeUndefined();
    expect(existsSync(`/dev/vfio/devices/${cdev}`)).toBe(false);
    watch.cancel();
    await broker.closeContext({ contextId }, meta);

    // Back to vfio-pci, with the same cdev, and bindable through the daemon again.
    rebindVfioPci(bdf);
    expect(driverOf(bdf)).toBe('vfio-pci');
    expect(cdevsOf(bdf)).toEqual([cdev]);
    await until(`/dev/vfio/devices/${cdev}`, () => (existsSync(`/dev/vfio/devices/${cdev}`) ? true : undefined), 10_000);
    const again = await bound('dataplane-after-rebind');
    expect(kernel.deviceRequestArmed(again.file)).toBe(true);
    const { teardown: closed } = await broker.closeContext({ contextId: again.contextId }, meta);
    expect(closed!.steps.map((s) => s.action)).toEqual([TeardownAction.CLOSE_DEVICE, TeardownAction.CLOSE_IOMMUFD]);
    expect(kernelFds()).toEqual(fdsBefore);
  });
});
