/**
 * Linux errno values (x86_64/arm64 generic numbering) that the iommufd and
 * VFIO uAPI can return. Names are what crosses the kernel boundary; numbers
 * are only needed by the linux backend when it reads errno from koffi.
 */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  ESPIPE: 29,
  ERANGE: 34,
  EDEADLK: 35,
  EOVERFLOW: 75,
  EBADFD: 77,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const NAME_BY_NUMBER = new Map<number, ErrnoName>(
  (Object.entries(ERRNO) as [ErrnoName, number][]).map(([name, num]) => [num, name]),
);

export function errnoName(num: number): ErrnoName | `ERRNO_${number}` {
  return NAME_BY_NUMBER.get(num) ?? `ERRNO_${num}`;
}

export function isErrnoName(value: string): value is ErrnoName {
  return Object.prototype.hasOwnProperty.call(ERRNO, value);
}
