/**
 * Domain errors. The broker speaks in reasons; src/rpc maps each reason to a
 * gRPC status code (exhaustively), so the domain never imports gRPC.
 */
import type { ErrnoName } from '../kernel/errno.js';
import { KernelError, type KernelOp } from '../kernel/types.js';
import type { Handle } from './ids.js';

export type ErrorReason =
  // Bad input.
  | 'MALFORMED_REQUEST'
  | 'MISSING_FIELD'
  | 'INVALID_FIELD'
  | 'WRONG_OBJECT_TYPE'
  // Unknown names.
  | 'CONTEXT_NOT_FOUND'
  | 'OBJECT_NOT_FOUND'
  | 'DEVICE_NOT_FOUND'
  | 'DEVICE_NOT_ASSIGNED'
  // State.
  | 'VDEVICE_DESTROYED_ON_UNBIND'
  | 'OBJECT_IN_USE'
  | 'DEVICE_BUSY'
  | 'DEVICE_NOT_VFIO'
  | 'DEVICE_QUARANTINED'
  | 'CONTEXT_CLOSING'
  | 'NOT_DESTROYABLE'
  | 'MEMORY_NOT_UPLOADED'
  // Kernel answers that are not a broker-level state problem.
  | 'ALREADY_EXISTS'
  | 'KERNEL_UNSUPPORTED'
  | 'KERNEL_REJECTED'
  | 'KERNEL_NO_RESOURCES'
  | 'KERNEL_PERMISSION'
  | 'KERNEL_ERROR'
  // Callers.
  | 'QUOTA_EXCEEDED'
  | 'PERMISSION_DENIED'
  | 'SHUTTING_DOWN'
  | 'INTERNAL';

export interface BrokerErrorInit {
  errno?: ErrnoName | `ERRNO_${number}` | undefined;
  kernelOp?: KernelOp | undefined;
  objects?: readonly Handle[] | undefined;
  field?: string | undefined;
  contextId?: string | undefined;
  deviceId?: string | undefined;
  quota?: string | undefined;
  quotaLimit?: number | undefined;
}

export class BrokerError extends Error {
  override readonly name = 'BrokerError';
  readonly errno: BrokerErrorInit['errno'];
  readonly kernelOp: KernelOp | undefined;
  readonly objects: readonly Handle[];
  readonly field: string | undefined;
  readonly contextId: string | undefined;
  readonly deviceId: string | undefined;
  readonly quota: string | undefined;
  readonly quotaLimit: number | undefined;

  constructor(
    readonly reason: ErrorReason,
    message: string,
    init: BrokerErrorInit = {},
  ) {
    super(message);
    this.errno = init.errno;
    this.kernelOp = init.kernelOp;
    this.objects = init.objects ?? [];
    this.field = init.field;
    this.contextId = init.contextId;
    this.deviceId = init.deviceId;
    this.quota = init.quota;
    this.quotaLimit = init.quotaLimit;
  }
}

/** What the kernel's errno means when the broker has no more specific reading. */
export function reasonForErrno(errno: string): ErrorReason {
  switch (errno) {
    case 'EBUSY':
      return 'OBJECT_IN_USE';
    case 'EEXIST':
      return 'ALREADY_EXISTS';
    case 'EOPNOTSUPP':
    case 'ENOTTY':
      return 'KERNEL_UNSUPPORTED';
    case 'EINVAL':
    case 'E2BIG':
    case 'EOVERFLOW':
    case 'ERANGE':
    case 'EMSGSIZE':
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
    case 'EADDRINUSE':
      return 'KERNEL_REJECTED';
    case 'ENOMEM':
    case 'ENOSPC':
      return 'KERNEL_NO_RESOURCES';
    case 'EPERM':
      return 'KERNEL_PERMISSION';
    default:
      return 'KERNEL_ERROR';
  }
}

/**
 * Wraps a kernel failure for the caller: the errno, the operation, and the
 * objects involved. `explain` adds what the broker knows (for example who
 * holds an object that gave EBUSY).
 */
export function kernelFailure(
  err: unknown,
  what: string,
  objects: readonly Handle[],
  reason?: ErrorReason,
): BrokerError {
  if (err instanceof BrokerError) return err;
  if (!(err instanceof KernelError)) {
    return new BrokerError('INTERNAL', `${what}: ${err instanceof Error ? err.message : String(err)}`, { objects });
  }
  return new BrokerError(reason ?? reasonForErrno(err.errno), `${what}: the kernel answered ${err.errno}`, {
    errno: err.errno,
    kernelOp: err.op,
    objects,
  });
}
