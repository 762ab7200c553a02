/**
 * The vfio-pci request IRQ on the linux backend (device-request.ts): a
 * scripted kernel answers the ioctls, while the eventfds and the poll loop
 * are the real libc ones, so "the kernel signals the eventfd" is a real
 * write(2) to the eventfd the backend passed in VFIO_DEVICE_SET_IRQS.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import pino from 'pino';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createLinuxKernel } from '../../src/kernel/linux/backend.js';
import { createLibcSyscalls, POLLIN, type EventSyscalls } from '../../src/kernel/linux/syscalls.js';
import { VFIO_DEVICE_BIND_IOMMUFD_STRUCT, VFIO_IRQ_INFO_STRUCT, VFIO_IRQ_SET_STRUCT } from '../../src/kernel/linux/structs.js';
import type { ErrnoName } from '../../src/kernel/errno.js';
import { FakeKernel, writeFields } from './fake-kernel.js';
import { FakeSysfs } from './fake-sysfs.js';

const devRoot = '/fake/dev';
const EDU = '0000:00:02.0';
const NIC = '0000:00:03.0';

/** Real eventfd/poll, counting poll calls in flight (the loop must never hold more than one worker). */
function countingEvents() {
  const real = createLibcSyscalls().events!;
  const stats = { inFlight: 0, maxInFlight: 0, polls: 0 };
  const events: EventSyscalls = {
    ...real,
    pollIn: async (fds, timeout) => {
      stats.polls++;
      stats.inFlight++;
      stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
      try {
        return await real.pollIn(fds, timeout);
      } finally {
        stats.inFlight--;
      }
    },
  };
  return { events, stats, real };
}

function eventfdsOpen(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[eventfd]') n++;
    } catch {
      // the directory's own fd
    }
  }
  return n;
}

interface Options {
  irqInfo?: (index: number) => { flags: number; count: number } | ErrnoName;
  setIrqs?: ErrnoName;
  events?: boolean;
}

async function setup(o: Options = {}) {
  const sysfs = new FakeSysfs([
    { bdf: EDU, vendor: 0x1234, device: 0x11e8, group: 1, driver: 'vfio-pci' },
    { bdf: NIC, vendor: 0x8086, device: 0x10d3, group: 2, driver: 'vfio-pci' },
  ]);
  const fake = new FakeKernel(devRoot);
  fake.nodes.add(`${devRoot}/vfio/devices/vfio0`).add(`${devRoot}/vfio/devices/vfio1`);
  const counting = countingEvents();
  if (o.events !== false) fake.events = counting.events;
  /** eventfd passed to SET_IRQS, by device fd. */
  const triggers = new Map<number, number>();
  fake.on('VFIO_DEVICE_BIND_IOMMUFD', (arg) => writeFields(arg!, VFIO_DEVICE_BIND_IOMMUFD_STRUCT, { out_devid: 1 }));
  fake.on('VFIO_DEVICE_GET_IRQ_INFO', (arg) => {
    const { index } = VFIO_IRQ_INFO_STRUCT.decode(arg!);
    const info = o.irqInfo ? o.irqInfo(index) : index <= 4 ? { flags: 1, count: 1 } : 'EINVAL';
    if (typeof info === 'string') return info;
    writeFields(arg!, VFIO_IRQ_INFO_STRUCT, info);
    return 0;
  });
  fake.on('VFIO_DEVICE_SET_IRQS', (arg, fd) => {
    if (o.setIrqs) return o.setIrqs;
    triggers.set(fd, arg!.readInt32LE(20));
    return 0;
  });
  const lines: Record<string, unknown>[] = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        cb();
      },
    }),
  );
  const kernel = createLinuxKernel({ sys: fake, devRoot, sysfsRoot: sysfs.root, log });
  await kernel.probe();
  const requests: string[] = [];
  const waiters: (() => void)[] = [];
  kernel.onDeviceRequest((bdf) => {
    requests.push(bdf);
    waiters.splice(0).forEach((w) => w());
  });
  const nextRequest = () => new Promise<void>((r) => waiters.push(r));
  const iommufd = await kernel.openIommufd();
  const bind = async (cdev: string) => {
    const d = await kernel.openDevice(cdev);
    await kernel.bindIommufd(d, iommufd);
    return d;
  };
  cleanup = async () => {
    await kernel.shutdown();
    sysfs.cleanup();
  };
  return { fake, kernel, sysfs, triggers, requests, nextRequest, bind, stats: counting.stats, real: counting.real, lines };
}

let cleanup: (() => Promise<void>) | undefined;
afterEach(async () => {
  await cleanup?.();
  cleanup = undefined;
});

describe('device request (vfio-pci request IRQ) on the linux backend', () => {
  it('arms VFIO_PCI_REQ_IRQ_INDEX with an eventfd after bind; a signal reaches onDeviceRequest with the BDF', async () => {
    const baseline = eventfdsOpen();
    const { fake, kernel, triggers, requests, nextRequest, bind, real } = await setup();
    const d = await bind('vfio0');
    expect(kernel.deviceRequestArmed(d)).toBe(true);
    const names = fake.ioctls.map((c) => c.name);
    expect(names.slice(names.indexOf('VFIO_DEVICE_BIND_IOMMUFD'))).toEqual(['VFIO_DEVICE_BIND_IOMMUFD', 'VFIO_DEVICE_GET_IRQ_INFO', 'VFIO_DEVICE_SET_IRQS']);
    const [info, set] = [fake.calls('VFIO_DEVICE_GET_IRQ_INFO')[0]!, fake.calls('VFIO_DEVICE_SET_IRQS')[0]!];
    expect(VFIO_IRQ_INFO_STRUCT.decode(info.sent!)).toMatchObject({ argsz: 16, index: 4 });
    expect(set.sent!.length).toBe(24);
    expect(VFIO_IRQ_SET_STRUCT.decode(set.sent!)).toMatchObject({ argsz: 24, flags: 0x24, index: 4, start: 0, count: 1 });
    expect([info.fd, set.fd, info.async, set.async]).toEqual([d.fdNumber, d.fdNumber, false, false]);
    const eventfd = triggers.get(d.fdNumber)!;
    expect(readlinkSync(`/proc/self/fd/${eventfd}`)).toBe('anon_inode:[eventfd]');
    expect(eventfdsOpen()).toBe(baseline + 2); // the device's and the loop's wake-up eventfd

    // The kernel re-sends every 10 s while the unbind waits: each signal is one call.
    const first = nextRequest();
    real.signal(eventfd);
    await first;
    const second = nextRequest();
    real.signal(eventfd);
    await second;
    expect(requests).toEqual([EDU, EDU]);

    await kernel.closeDevice(d);
    expect(kernel.deviceRequestArmed(d)).toBe(false);
    await kernel.shutdown();
    expect(eventfdsOpen()).toBe(baseline);
  });

  it('one poll covers every armed device and is rebuilt when the set changes; none is left once all are closed', async () => {
    const { kernel, triggers, requests, nextRequest, bind, stats, real } = await setup();
    const a = await bind('vfio0');
    const b = await bind('vfio1');
    const got = nextRequest();
    real.signal(triggers.get(b.fdNumber)!);
    await got;
    expect(requests).toEqual([NIC]);
    await kernel.closeDevice(b);
    // b's eventfd is closed only after the poll that watched it returned; a still fires.
    const again = nextRequest();
    real.signal(triggers.get(a.fdNumber)!);
    await again;
    expect(requests).toEqual([NIC, EDU]);
    expect(stats.maxInFlight).toBe(1);
    await kernel.closeDevice(a);
    await new Promise((r) => setTimeout(r, 50));
    expect(stats.inFlight).toBe(0); // no worker held while nothing is armed
    // Arming again starts a new loop.
    const c = await bind('vfio0');
    const third = nextRequest();
    real.signal(triggers.get(c.fdNumber)!);
    await third;
    expect(requests).toEqual([NIC, EDU, EDU]);
  });

  it('is a warning, not a failure, when the device has no request IRQ or SET_IRQS fails', async () => {
    const baseline = eventfdsOpen();
    const noReq = await setup({ irqInfo: () => 'EINVAL' });
    const d = await noReq.bind('vfio0');
    expect(noReq.kernel.deviceRequestArmed(d)).toBe(false);
    expect(noReq.fake.calls('VFIO_DEVICE_SET_IRQS')).toEqual([]);
    expect(noReq.lines.some((l) => l['level'] === 40 && String(l['msg']).includes('VFIO_DEVICE_GET_IRQ_INFO failed'))).toBe(true);
    await cleanup!();

    const zero = await setup({ irqInfo: () => ({ flags: 1, count: 0 }) });
    expect(zero.kernel.deviceRequestArmed(await zero.bind('vfio0'))).toBe(false);
    await cleanup!();

    const refused = await setup({ setIrqs: 'EINVAL' });
    expect(refused.kernel.deviceRequestArmed(await refused.bind('vfio0'))).toBe(false);
    expect(refused.lines.some((l) => String(l['msg']).includes('VFIO_DEVICE_SET_IRQS failed'))).toBe(true);
    expect(eventfdsOpen()).toBe(baseline + 1); // the eventfd made for it was closed; the loop's wake-up one waits for shutdown
    await cleanup!();
    expect(eventfdsOpen()).toBe(baseline);
  });

  it('stays off without eventfd/poll in the syscall layer (scripted kernels): bind issues no IRQ ioctl', async () => {
    const { fake, kernel, bind } = await setup({ events: false });
    const d = await bind('vfio0');
    expect(kernel.deviceRequestArmed(d)).toBe(false);
    expect(fake.calls('VFIO_DEVICE_GET_IRQ_INFO')).toEqual([]);
  });

  it('a device closed while sysfs is read is not armed (its fd number may already be reused)', async () => {
    const { fake, kernel } = await setup();
    const iommufd = await kernel.openIommufd();
    const d = await kernel.openDevice('vfio0');
    const bound = kernel.bindIommufd(d, iommufd);
    await Promise.resolve();
    await Promise.resolve();
    await kernel.closeDevice(d);
    await bound;
    expect(kernel.deviceRequestArmed(d)).toBe(false);
    expect(fake.calls('VFIO_DEVICE_SET_IRQS')).toEqual([]);
  });
});

describe('EventSyscalls (libc)', () => {
  it('eventfd counts signals, drain resets it, poll sees POLLIN only while it is non-zero', async () => {
    const ev = createLibcSyscalls().events!;
    const a = ev.eventfd({ op: 'bind_iommufd', what: 'eventfd' });
    const b = ev.eventfd({ op: 'bind_iommufd', what: 'eventfd' });
    try {
      expect(ev.drain(a)).toBe(0n);
      expect(await ev.pollIn([a, b], 0)).toEqual([0, 0]);
      ev.signal(b);
      ev.signal(b, 2n);
      expect(await ev.pollIn([a, b], 0)).toEqual([0, POLLIN]);
      expect(ev.drain(b)).toBe(3n);
      expect(await ev.pollIn([a, b], 0)).toEqual([0, 0]);
      // A blocking poll on a worker returns when another signal arrives.
      const waiting = ev.pollIn([a, b], 5000);
      setTimeout(() => ev.signal(a), 20);
      expect(await waiting).toEqual([POLLIN, 0]);
    } finally {
      ev.closeNow(a);
      ev.closeNow(b);
    }
  });
});
