/**
 * Managed devices (libvirt's managed hostdevs): PrepareDevice hands a
 * function to vfio-pci, ReleaseDevice gives it back to the driver it had.
 * Refused while the device is bound in a context.
 */
import type { Logger } from 'pino';
import type { KernelBackend } from '../kernel/types.js';
import { BrokerError } from './errors.js';
import type { DeviceView, Inventory } from './inventory.js';

export async function changeDriver(kernel: KernelBackend, inventory: Inventory, log: Logger, deviceId: string, how: 'prepare' | 'release'): Promise<DeviceView> {
  const device = inventory.resolve(deviceId, 'device_id');
  const call = how === 'prepare' ? kernel.prepareDevice : kernel.releaseDevice;
  if (!call) throw new BrokerError('KERNEL_UNSUPPORTED', `the ${kernel.name} backend cannot change device drivers`, { deviceId: device.id });
  if (device.boundTo) {
    throw new BrokerError('DEVICE_BUSY', `device ${device.id} is bound in context ${device.boundTo}; unbind it first`, { deviceId: device.id });
  }
  let pci;
  try {
    pci = await call.call(kernel, device.id);
  } catch (err) {
    throw new BrokerError('DEVICE_BUSY', `${how === 'prepare' ? 'preparing' : 'releasing'} ${device.id}: ${(err as Error).message}`, { deviceId: device.id });
  }
  device.pci = pci ?? (await kernel.listPciFunctions()).find((f) => f.bdf === device.id) ?? device.pci;
  log.info({ deviceId: device.id, driver: device.pci.driver, cdev: device.pci.cdev }, how === 'prepare' ? 'device prepared for VFIO' : 'device released to its driver');
  return inventory.view(device);
}
