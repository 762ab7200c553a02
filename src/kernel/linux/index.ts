/**
 * The `linux` kernel backend: real iommufd and VFIO cdev ioctls through koffi
 * (kernel-uapi.md). Struct codecs and ioctl numbers live in this directory only.
 */
export { createLinuxKernel, LinuxKernel, type LinuxKernelOptions } from './backend.js';
export { LinuxBackendError, PROBES, probeKernel, type ProbeOptions, type ProbeResult } from './probe.js';
export { PciSysfs, SysfsError, normalizeBdf, nodeSysfsIo, VFIO_PCI_DRIVER, type PciSysfsOptions, type SysfsIo } from './sysfs.js';
export { createLibcSyscalls, errnoToName, OPEN_RDWR_CLOEXEC, type CallSite, type Syscalls, type Utsname } from './syscalls.js';
export { IOCTL, IOCTL_DEFS, IOCTL_NAMES, ioctlIO, ioctlNumbers, ioNoneBits, type IoctlName } from './ioctl-numbers.js';
export { MIN_KERNEL, parseRelease, profileFor, type KernelVersion } from './version.js';
export { MOCK_FLAGS_DEVICE_NO_DIRTY, MOCK_FLAGS_DEVICE_PASID, type MockDevice } from './selftest.js';
export { EXTRA_OP, UNMAP_ALL, type IoasMapArgs, type IoasMapFileArgs, type IovaRanges, type VfioDeviceInfo } from './dataplane.js';
export * from './structs.js';
export { StructCodec, StructEncodeError, type FieldSpec, type Layout, type StructValues } from './struct-codec.js';
