/**
 * The host's assignable devices and who may use them. Clients name devices
 * by inventory ID (the PCI address), never by path; the broker maps that to
 * the VFIO cdev itself.
 */
import type { PciFunction } from '../kernel/types.js';
import { BrokerError } from './errors.js';
import { asDeviceId, type ContextId, type DeviceId, type TenantId } from './ids.js';

export type DeviceState = 'free' | 'assigned' | 'bound' | 'quarantined';
export const DEVICE_STATES: readonly DeviceState[] = ['free', 'assigned', 'bound', 'quarantined'];

export interface InventoryDevice {
  readonly id: DeviceId;
  /** Replaced when the device changes driver (PrepareDevice/ReleaseDevice). */
  pci: PciFunction;
  tenant: TenantId | undefined;
  boundTo: ContextId | undefined;
  quarantined: boolean;
}

export interface DeviceView {
  id: DeviceId;
  pci: PciFunction;
  state: DeviceState;
  tenant: TenantId | undefined;
  contextId: ContextId | undefined;
}

const FULL_BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const SHORT_BDF = /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** Accepts `0000:3b:00.0` or `3b:00.0`, any case. */
export function normalizeDeviceId(raw: string): DeviceId | undefined {
  const id = raw.trim().toLowerCase();
  if (FULL_BDF.test(id)) return asDeviceId(id);
  if (SHORT_BDF.test(id)) return asDeviceId(`0000:${id}`);
  return undefined;
}

export class Inventory {
  private readonly devices = new Map<DeviceId, InventoryDevice>();

  constructor(functions: readonly PciFunction[], assignments: Readonly<Record<string, TenantId>> = {}) {
    for (const pci of functions) {
      const id = asDeviceId(pci.bdf);
      this.devices.set(id, { id, pci, tenant: undefined, boundTo: undefined, quarantined: false });
    }
    for (const [raw, tenant] of Object.entries(assignments)) this.assign(this.resolve(raw, 'assignments'), tenant);
  }

  get size(): number {
    return this.devices.size;
  }

  resolve(raw: string, field: string): InventoryDevice {
    if (raw === '') throw new BrokerError('MISSING_FIELD', `${field} is required: give a PCI address such as 0000:3b:00.0`, { field });
    const id = normalizeDeviceId(raw);
    if (!id) {
      throw new BrokerError('INVALID_FIELD', `${field}: "${raw.slice(0, 64)}" is not a PCI address (expected DDDD:BB:DD.F)`, { field });
    }
    const device = this.devices.get(id);
    if (!device) throw new BrokerError('DEVICE_NOT_FOUND', `${field}: no device ${id} in this host's inventory`, { field, deviceId: id });
    return device;
  }

  stateOf(device: InventoryDevice): DeviceState {
    if (device.quarantined) return 'quarantined';
    if (device.boundTo) return 'bound';
    return device.tenant ? 'assigned' : 'free';
  }

  view(device: InventoryDevice): DeviceView {
    return { id: device.id, pci: device.pci, state: this.stateOf(device), tenant: device.tenant, contextId: device.boundTo };
  }

  list(): DeviceView[] {
    return [...this.devices.values()].map((d) => this.view(d));
  }

  countByState(): Record<DeviceState, number> {
    const counts: Record<DeviceState, number> = { free: 0, assigned: 0, bound: 0, quarantined: 0 };
    for (const d of this.devices.values()) counts[this.stateOf(d)]++;
    return counts;
  }

  assign(device: InventoryDevice, tenant: TenantId): void {
    if (tenant === '') throw new BrokerError('MISSING_FIELD', 'tenant is required', { field: 'tenant' });
    if (device.boundTo && device.tenant !== tenant) {
      throw new BrokerError('DEVICE_BUSY', `device ${device.id} is bound in context ${device.boundTo}; unbind it before reassigning`, {
        deviceId: device.id,
      });
    }
    device.tenant = tenant;
  }

  unassign(device: InventoryDevice): void {
    if (device.boundTo) {
      throw new BrokerError('DEVICE_BUSY', `device ${device.id} is bound in context ${device.boundTo}; unbind it first`, {
        deviceId: device.id,
      });
    }
    device.tenant = undefined;
  }

  /** The checks BindDevice makes before touching the kernel. */
  checkBindable(device: InventoryDevice, tenant: TenantId): string {
    if (device.tenant !== tenant) {
      throw new BrokerError('DEVICE_NOT_ASSIGNED', `device ${device.id} is not assigned to tenant "${tenant}"; an administrator assigns devices with AssignDevice`, {
        field: 'device_id',
        deviceId: device.id,
      });
    }
    if (device.quarantined) {
      throw new BrokerError('DEVICE_QUARANTINED', `device ${device.id} is quarantined after a failure; an administrator must release it`, { deviceId: device.id });
    }
    if (device.boundTo) {
      throw new BrokerError('DEVICE_BUSY', `device ${device.id} is already bound in context ${device.boundTo}`, { deviceId: device.id });
    }
    if (!device.pci.cdev) {
      throw new BrokerError('DEVICE_NOT_VFIO', `device ${device.id} has no VFIO cdev (driver: ${device.pci.driver ?? 'none'}); bind it to vfio-pci first`, {
        deviceId: device.id,
      });
    }
    return device.pci.cdev;
  }
}
