/**
 * Startup detection of the running kernel (kernel-uapi.md §5.2): open
 * /dev/iommu, read the release, and learn which iommufd ioctls exist by
 * calling each with a zeroed, correctly sized struct chosen to fail
 * harmlessly. ENOTTY means absent, any other errno means present.
 *
 * The probes run on a private iommufd that is closed at the end, so even a
 * probe that unexpectedly succeeded cannot leave an object behind (§4.4).
 */
import { isKernelError, type KernelProfile } from '../types.js';
import { IOCTL, IOCTL_DEFS, IOCTL_NAMES, type IoctlName } from './ioctl-numbers.js';
import type { StructCodec, Layout, StructInput } from './struct-codec.js';
import {
  IOMMU_DESTROY_STRUCT,
  IOMMU_FAULT_ALLOC_STRUCT,
  IOMMU_HW_INFO_STRUCT,
  IOMMU_HW_QUEUE_ALLOC_STRUCT,
  IOMMU_HWPT_ALLOC_STRUCT,
  IOMMU_HWPT_INVALIDATE_STRUCT,
  IOMMU_IOAS_ALLOC_STRUCT,
  IOMMU_IOAS_MAP_FILE_STRUCT,
  IOMMU_TEST_CMD_STRUCT,
  IOMMU_VDEVICE_ALLOC_STRUCT,
  IOMMU_VEVENTQ_ALLOC_STRUCT,
  IOMMU_VIOMMU_ALLOC_STRUCT,
} from './structs.js';
import { OPEN_RDWR_CLOEXEC, type Syscalls } from './syscalls.js';
import { formatVersion, MIN_KERNEL, parseRelease, profileFor, versionAtLeast, type KernelVersion } from './version.js';

/** A problem that stops the linux backend from starting; the message says what to do. */
export class LinuxBackendError extends Error {
  override readonly name = 'LinuxBackendError';
}

export interface ProbeResult {
  release: string;
  version: KernelVersion;
  profile: KernelProfile;
  /** Sorted ioctl names present: probed where §5.2 has a harmless probe, dated by release otherwise. */
  ioctls: IoctlName[];
  /** IOMMU_TEST_CMD answered (CONFIG_IOMMUFD_TEST). */
  selftest: boolean;
}

interface Probe {
  name: IoctlName;
  encode(): Buffer;
}

function probe<L extends Layout>(name: IoctlName, codec: StructCodec<L>, values: StructInput<L> = {}): Probe {
  // Full 7.2 size with a zero tail: every kernel that has the ioctl accepts it (§2 step 5).
  return { name, encode: () => codec.encode(values) };
}

/**
 * The harmless probes of §5.2, each with the errno 7.2 gives. IOAS_ALLOC and
 * FAULT_QUEUE_ALLOC use flags = 1 because flags = 0 would really allocate;
 * IOAS_CHANGE_PROCESS has no harmless form and is dated by release.
 */
export const PROBES: readonly Probe[] = [
  probe('IOMMU_DESTROY', IOMMU_DESTROY_STRUCT), // ENOENT (id 0)
  probe('IOMMU_IOAS_ALLOC', IOMMU_IOAS_ALLOC_STRUCT, { flags: 1 }), // EOPNOTSUPP
  probe('IOMMU_HWPT_ALLOC', IOMMU_HWPT_ALLOC_STRUCT), // ENOENT (dev 0)
  probe('IOMMU_GET_HW_INFO', IOMMU_HW_INFO_STRUCT), // ENOENT
  probe('IOMMU_HWPT_INVALIDATE', IOMMU_HWPT_INVALIDATE_STRUCT), // ENOENT
  probe('IOMMU_FAULT_QUEUE_ALLOC', IOMMU_FAULT_ALLOC_STRUCT, { flags: 1 }), // EOPNOTSUPP
  probe('IOMMU_IOAS_MAP_FILE', IOMMU_IOAS_MAP_FILE_STRUCT), // EINVAL (no R/W flag)
  probe('IOMMU_VIOMMU_ALLOC', IOMMU_VIOMMU_ALLOC_STRUCT), // EOPNOTSUPP (type 0)
  probe('IOMMU_VDEVICE_ALLOC', IOMMU_VDEVICE_ALLOC_STRUCT), // ENOENT
  probe('IOMMU_VEVENTQ_ALLOC', IOMMU_VEVENTQ_ALLOC_STRUCT), // EOPNOTSUPP
  probe('IOMMU_HW_QUEUE_ALLOC', IOMMU_HW_QUEUE_ALLOC_STRUCT), // EOPNOTSUPP
  probe('IOMMU_TEST_CMD', IOMMU_TEST_CMD_STRUCT, { op: 0 }), // EOPNOTSUPP when built in
];

const PROBED = new Set<IoctlName>(PROBES.map((p) => p.name));

export interface ProbeOptions {
  sys: Syscalls;
  /** Directory holding `iommu` (normally /dev). */
  devRoot: string;
  /** Use this instead of uname's release (tests; distro kernels with backported uAPI). */
  release?: string | undefined;
}

export async function probeKernel(options: ProbeOptions): Promise<ProbeResult> {
  const { sys, devRoot } = options;
  const path = `${devRoot}/iommu`;
  const fd = openIommuForProbe(sys, path);
  try {
    const release = options.release ?? sys.uname().release;
    const version = parseRelease(release);
    if (version === undefined) throw new LinuxBackendError(`cannot parse kernel release "${release}" (expected e.g. 6.17.0)`);
    if (!versionAtLeast(version, MIN_KERNEL)) {
      throw new LinuxBackendError(
        `kernel ${release} is older than ${formatVersion(MIN_KERNEL)}: the linux backend needs IOMMU_VIOMMU_ALLOC and ` +
          `IOMMU_VDEVICE_ALLOC (6.13+, kernel-uapi.md §5.1). Upgrade the kernel or run with --backend sim`,
      );
    }
    const present = new Set<IoctlName>();
    for (const p of PROBES) if (probeOne(sys, fd, p)) present.add(p.name);
    if (!present.has('IOMMU_DESTROY')) {
      throw new LinuxBackendError(
        `${path} does not answer iommufd ioctls (IOMMU_DESTROY gave ENOTTY): it is not an iommufd device node`,
      );
    }
    for (const needed of ['IOMMU_VIOMMU_ALLOC', 'IOMMU_VDEVICE_ALLOC'] as const) {
      if (!present.has(needed)) {
        throw new LinuxBackendError(`kernel ${release} has no ${needed} (ENOTTY), which the broker needs; run with --backend sim`);
      }
    }
    // The rest are dated by release: core iommufd ioctls (vouched for by DESTROY answering above),
    // IOAS_CHANGE_PROCESS (no harmless probe), and VFIO device ioctls (unprobeable before a bind, §5.2).
    for (const name of IOCTL_NAMES) {
      if (!PROBED.has(name) && versionAtLeast(version, IOCTL_DEFS[name].since)) present.add(name);
    }
    return {
      release,
      version,
      profile: profileFor(version, present.has('IOMMU_HW_QUEUE_ALLOC')),
      ioctls: IOCTL_NAMES.filter((n) => present.has(n)),
      selftest: present.has('IOMMU_TEST_CMD'),
    };
  } finally {
    await sys.close(fd);
  }
}

function openIommuForProbe(sys: Syscalls, path: string): number {
  try {
    return sys.open(path, OPEN_RDWR_CLOEXEC, { op: 'open_iommufd', what: 'open' });
  } catch (err) {
    if (isKernelError(err, 'ENOENT') || isKernelError(err, 'ENODEV') || isKernelError(err, 'ENXIO')) {
      throw new LinuxBackendError(
        `${path} is missing (${err.errno}): this kernel has no iommufd. The linux backend needs a kernel built with ` +
          `CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV (and the iommufd module loaded if modular). ` +
          `It never falls back to the simulator: run with --backend sim to use the simulated kernel instead`,
      );
    }
    // EACCES (13 on every Linux architecture) is not among errno.ts's names.
    if (isKernelError(err, 'EPERM') || (isKernelError(err) && err.errno === 'ERRNO_13')) {
      throw new LinuxBackendError(`cannot open ${path}: permission denied; the broker must run as root (or own ${path})`);
    }
    const detail = isKernelError(err) ? err.errno : String(err);
    throw new LinuxBackendError(`cannot open ${path}: ${detail}`);
  }
}

/** One probe: true unless the kernel says ENOTTY. A success is also "present" (and harmless, see above). */
function probeOne(sys: Syscalls, fd: number, p: Probe): boolean {
  try {
    sys.ioctl(fd, IOCTL[p.name], p.encode(), { op: 'open_iommufd', what: `probe ${p.name}` });
    return true;
  } catch (err) {
    if (isKernelError(err, 'ENOTTY')) return false;
    if (isKernelError(err)) return true;
    throw err;
  }
}
