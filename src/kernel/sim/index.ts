/**
 * Simulated kernel backend: a model of Linux iommufd + VFIO-cdev semantics
 * (kernel-uapi.md) with the selftest mock IOMMU as its IOMMU driver.
 */
export { createSimKernel, SimKernel, type SimKernelOptions, type SimMappingInfo, type SimMockDevice, type SimObjectInfo } from './sim-kernel.js';
export { MOCK_IOMMU_INSTANCE } from './selftest.js';
export { MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID } from './objects.js';
export { DEMO_PCI_FUNCTIONS, validateInventory, type SimPciFunction } from './inventory.js';
export { SimFaults, UNFAILABLE_OPS, type FaultFilter } from './faults.js';
export { PROFILE_TRAITS, ioctlsFor, type ProfileTraits } from './profiles.js';
export { IdAllocator, OBJECT_ID_MAX, OBJECT_ID_MIN } from './ids.js';
export type { SimObjectType } from './objects.js';
