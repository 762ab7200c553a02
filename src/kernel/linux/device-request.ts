/**
 * vfio-pci's request IRQ: how the host asks for a device back. When its
 * driver is unbound in sysfs (or the device is surprise-removed), the kernel
 * signals the eventfd set on VFIO_PCI_REQ_IRQ_INDEX, again every 10 s, and
 * blocks that unbind until the last fd of the device is closed
 * (kernel-uapi.md §4.5). The backend arms one eventfd per bound device and
 * calls the `onDeviceRequest` listeners with its BDF; the broker then tears
 * the device down and closes its fd (broker.deviceRequested).
 *
 * Waiting: one poll(2) on a libuv worker covers every armed eventfd plus a
 * wake-up eventfd that is signalled whenever the set changes. So the event
 * loop never blocks, one worker is held while any device is armed (none
 * otherwise), and an eventfd is closed only after the poll that might watch
 * it has returned (closing an fd inside another thread's poll set would let
 * its number be reused under that poll).
 *
 * Disarming only closes our eventfd; no SET_IRQS "disable" is sent. The
 * device has one request trigger, and a VMM holding a handed-off copy of the
 * fd may have installed its own, which a disable would remove; the kernel
 * drops its reference to ours when the device's last fd closes.
 */
import pino, { type Logger } from 'pino';
import { endianness } from 'node:os';
import type { DeviceFile, KernelOp } from '../types.js';
import { IOCTL } from './ioctl-numbers.js';
import type { EventSyscalls, Syscalls } from './syscalls.js';
import { POLLIN, POLLNVAL } from './syscalls.js';
import {
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_STRUCT,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_STRUCT,
  VFIO_PCI_REQ_IRQ_INDEX,
} from './structs.js';

/** Arming is part of binding a device; its errors are logged, never returned to a client. */
const OP: KernelOp = 'bind_iommufd';
/** How long the loop waits before polling again after poll(2) itself failed. */
const RETRY_MS = 1000;

export interface IrqInfo {
  flags: number;
  count: number;
}

/** VFIO_DEVICE_GET_IRQ_INFO on a bound device fd (EINVAL for an index the driver lacks). */
export function irqInfo(sys: Pick<Syscalls, 'ioctl'>, fd: number, index: number): IrqInfo {
  const buf = VFIO_IRQ_INFO_STRUCT.encode({ index });
  sys.ioctl(fd, IOCTL.VFIO_DEVICE_GET_IRQ_INFO, buf, { op: OP, what: 'VFIO_DEVICE_GET_IRQ_INFO' });
  const out = VFIO_IRQ_INFO_STRUCT.decode(buf);
  return { flags: out.flags, count: out.count };
}

/**
 * The VFIO_DEVICE_SET_IRQS buffer binding ACTION_TRIGGER of `index`,
 * subindexes start.., to `eventfds` (-1 de-assigns one): the 20-byte header,
 * then one s32 per IRQ, with argsz covering both.
 */
export function encodeIrqSetEventfds(index: number, start: number, eventfds: readonly number[]): Buffer {
  const head = VFIO_IRQ_SET_STRUCT.full;
  const header = VFIO_IRQ_SET_STRUCT.encode({
    argsz: head + 4 * eventfds.length,
    flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    index,
    start,
    count: eventfds.length,
  });
  const data = Buffer.alloc(4 * eventfds.length);
  const le = endianness() === 'LE';
  eventfds.forEach((fd, i) => (le ? data.writeInt32LE(fd, 4 * i) : data.writeInt32BE(fd, 4 * i)));
  return Buffer.concat([header, data]);
}

export interface DeviceRequestOptions {
  sys: Syscalls;
  log?: Logger | undefined;
  /** The device fd while the backend holds it open (re-checked after every await: fd numbers get reused). */
  fdOf(device: DeviceFile): number | undefined;
  /** The PCI function behind a cdev (sysfs), so listeners get a BDF. */
  functionOfCdev(cdev: string): Promise<string | undefined>;
}

interface Armed {
  readonly device: DeviceFile;
  readonly bdf: string;
  readonly eventfd: number;
}

export class DeviceRequests {
  private readonly events: EventSyscalls | undefined;
  private readonly log: Logger;
  private readonly listeners: ((bdf: string) => void)[] = [];
  private readonly armed = new Map<DeviceFile, Armed>();
  /** Eventfds disarmed while a poll may still watch them: closed when it returns. */
  private readonly closeAfterPoll: number[] = [];
  private wakeFd: number | undefined;
  private loop: Promise<void> | undefined;
  private polling = false;
  private stopping = false;

  constructor(private readonly options: DeviceRequestOptions) {
    this.events = options.sys.events;
    this.log = options.log ?? pino({ level: 'silent' });
  }

  /** False when the syscall layer has no eventfd/poll (a scripted kernel in tests). */
  get supported(): boolean {
    return this.events !== undefined;
  }

  onRequest(listener: (bdf: string) => void): void {
    this.listeners.push(listener);
  }

  isArmed(device: DeviceFile): boolean {
    return this.armed.has(device);
  }

  /**
   * Sets an eventfd as the request trigger of a bound device. Never throws:
   * a device without the request IRQ (not vfio-pci) or a failed ioctl leaves
   * it usable, only without early notice of a host unbind (logged).
   */
  async arm(device: DeviceFile): Promise<boolean> {
    const events = this.events;
    if (events === undefined || this.stopping || this.armed.has(device)) return false;
    const bdf = await this.options.functionOfCdev(device.cdev).catch(() => undefined);
    const fd = this.options.fdOf(device);
    if (fd === undefined || this.armed.has(device)) return false; // closed (or armed) while sysfs was read
    if (bdf === undefined) {
      this.log.warn({ cdev: device.cdev }, 'device request not armed: no PCI function found for the cdev in sysfs');
      return false;
    }
    try {
      const info = irqInfo(this.options.sys, fd, VFIO_PCI_REQ_IRQ_INDEX);
      if (info.count < 1 || (info.flags & VFIO_IRQ_INFO_EVENTFD) === 0) {
        this.log.warn({ bdf, cdev: device.cdev, ...info }, 'device request not armed: the driver has no eventfd request IRQ');
        return false;
      }
    } catch (err) {
      this.log.warn({ err, bdf, cdev: device.cdev }, 'device request not armed: VFIO_DEVICE_GET_IRQ_INFO failed (not a vfio-pci device?)');
      return false;
    }
    let eventfd: number;
    try {
      this.wakeFd ??= events.eventfd({ op: OP, what: 'eventfd (wake-up)' });
      eventfd = events.eventfd({ op: OP, what: 'eventfd' });
    } catch (err) {
      this.log.warn({ err, bdf }, 'device request not armed: eventfd failed');
      return false;
    }
    try {
      const req = encodeIrqSetEventfds(VFIO_PCI_REQ_IRQ_INDEX, 0, [eventfd]);
      this.options.sys.ioctl(fd, IOCTL.VFIO_DEVICE_SET_IRQS, req, { op: OP, what: 'VFIO_DEVICE_SET_IRQS' });
    } catch (err) {
      events.closeNow(eventfd);
      this.log.warn({ err, bdf, cdev: device.cdev }, 'device request not armed: VFIO_DEVICE_SET_IRQS failed');
      return false;
    }
    this.armed.set(device, { device, bdf, eventfd });
    this.log.debug({ bdf, cdev: device.cdev, eventfd }, 'device request armed');
    this.changed();
    return true;
  }

  /** Forgets the device's eventfd (call before closing the device fd). */
  disarm(device: DeviceFile): void {
    const entry = this.armed.get(device);
    if (entry === undefined) return;
    this.armed.delete(device);
    this.release(entry.eventfd);
    this.changed();
  }

  /** Disarms everything and waits for the poll loop to end; arming later starts it again. */
  async stop(): Promise<void> {
    this.stopping = true;
    try {
      for (const device of [...this.armed.keys()]) this.disarm(device);
      await this.loop;
      if (this.wakeFd !== undefined) this.events?.closeNow(this.wakeFd);
      this.wakeFd = undefined;
    } finally {
      this.stopping = false;
    }
  }

  private release(eventfd: number): void {
    if (this.polling) this.closeAfterPoll.push(eventfd);
    else this.events!.closeNow(eventfd);
  }

  /** The armed set changed: start the loop, or make the running poll return and rebuild its set. */
  private changed(): void {
    const events = this.events!;
    if (this.loop === undefined) {
      if (this.armed.size === 0 || this.wakeFd === undefined) return;
      this.loop = this.run(events).finally(() => {
        this.loop = undefined;
        // Armed again between the loop's last check and here: start over.
        if (this.armed.size > 0 && !this.stopping) this.changed();
      });
    } else if (this.polling && this.wakeFd !== undefined) {
      events.signal(this.wakeFd);
    }
  }

  private async run(events: EventSyscalls): Promise<void> {
    await Promise.resolve(); // `this.loop` is set before the first check
    while (this.armed.size > 0 && this.wakeFd !== undefined) {
      const wake = this.wakeFd;
      const entries = [...this.armed.values()];
      let revents: number[];
      this.polling = true;
      try {
        revents = await events.pollIn([wake, ...entries.map((e) => e.eventfd)], -1);
      } catch (err) {
        this.log.error({ err }, 'device request: poll failed; retrying');
        await this.flushAndWait(RETRY_MS);
        continue;
      } finally {
        this.polling = false;
      }
      if ((revents[0] ?? 0) & POLLIN) events.drain(wake);
      entries.forEach((entry, i) => {
        const r = revents[i + 1] ?? 0;
        // Disarmed while the poll ran: its eventfd is in closeAfterPoll, not ours to read.
        if (r === 0 || this.armed.get(entry.device) !== entry) return;
        if (r & POLLNVAL) {
          this.log.error({ bdf: entry.bdf, eventfd: entry.eventfd }, 'device request: eventfd closed behind the backend; disarmed');
          this.armed.delete(entry.device);
          return;
        }
        if (events.drain(entry.eventfd) > 0n) this.fire(entry);
      });
      this.flushCloses(events);
    }
    this.flushCloses(events);
  }

  private fire(entry: Armed): void {
    this.log.info({ bdf: entry.bdf, cdev: entry.device.cdev }, 'host requested the device back (vfio-pci request IRQ)');
    for (const listener of this.listeners) {
      try {
        listener(entry.bdf);
      } catch (err) {
        this.log.error({ err, bdf: entry.bdf }, 'device request listener threw');
      }
    }
  }

  private flushCloses(events: EventSyscalls): void {
    for (const fd of this.closeAfterPoll.splice(0)) events.closeNow(fd);
  }

  private async flushAndWait(ms: number): Promise<void> {
    this.flushCloses(this.events!);
    await new Promise((r) => setTimeout(r, ms));
  }
}
