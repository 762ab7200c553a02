/**
 * Simulated kernel backend: a model of Linux iommufd + VFIO-cdev semantics
 * (kernel-uapi.md) with the selftest mock IOMMU as its IOMMU driver.
 */
export { createSimKernel, SimKernel, type SimKernelOptions, type SimObjectInfo } from './sim-kernel.js';
export { DEMO_PCI_FUNCTIONS, validateInventory, type SimPciFunction } from './inventory.js';
export { SimFaults, UNFAILABLE_OPS, type FaultFilter } from './faults.js';
export { PROFILE_TRAITS, ioctlsFor, type ProfileTraits } from './profiles.js';
export { IdAllocator, OBJECT_ID_MAX, OBJECT_ID_MIN } from './ids.js';
export type { SimObjectType } from './objects.js';
