/**
 * Domain errors to gRPC statuses. Every reason maps by an exhaustive switch;
 * kernel errnos that carry no broker-level meaning map by errno.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { BrokerError, type ErrorReason } from '../broker/errors.js';
import { isKernelError } from '../kernel/types.js';
import { statusError } from './status.js';

/** The gRPC code for a kernel errno that reached a client without a more specific reason. */
export function codeForErrno(errno: string): Code {
  switch (errno) {
    case 'EINVAL':
    case 'E2BIG':
    case 'ERANGE':
    case 'EMSGSIZE':
      return Code.INVALID_ARGUMENT;
    case 'EOVERFLOW':
      return Code.OUT_OF_RANGE;
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
    case 'EBUSY':
    case 'EPERM':
    case 'EBADFD':
    case 'EADDRINUSE':
      return Code.FAILED_PRECONDITION;
    case 'EEXIST':
      return Code.ALREADY_EXISTS;
    case 'EOPNOTSUPP':
    case 'ENOTTY':
      return Code.UNIMPLEMENTED;
    case 'ENOMEM':
    case 'ENOSPC':
      return Code.RESOURCE_EXHAUSTED;
    case 'EAGAIN':
    case 'EINTR':
      return Code.UNAVAILABLE;
    case 'EDEADLK':
      return Code.ABORTED;
    default:
      return Code.INTERNAL; // EIO, EFAULT, EBADF, ESPIPE, unknown numbers
  }
}

export function codeForReason(reason: ErrorReason, errno: string | undefined): Code {
  switch (reason) {
    case 'MALFORMED_REQUEST':
    case 'MISSING_FIELD':
    case 'INVALID_FIELD':
    case 'WRONG_OBJECT_TYPE':
      return Code.INVALID_ARGUMENT;
    case 'CONTEXT_NOT_FOUND':
    case 'OBJECT_NOT_FOUND':
    case 'DEVICE_NOT_FOUND':
    case 'DEVICE_NOT_ASSIGNED':
      return Code.NOT_FOUND;
    case 'VDEVICE_DESTROYED_ON_UNBIND':
    case 'OBJECT_IN_USE':
    case 'DEVICE_BUSY':
    case 'DEVICE_NOT_VFIO':
    case 'DEVICE_QUARANTINED':
    case 'CONTEXT_CLOSING':
    case 'NOT_DESTROYABLE':
    case 'KERNEL_PERMISSION':
    case 'MEMORY_NOT_UPLOADED':
      return Code.FAILED_PRECONDITION;
    case 'ALREADY_EXISTS':
      return Code.ALREADY_EXISTS;
    case 'KERNEL_UNSUPPORTED':
      return Code.UNIMPLEMENTED;
    case 'KERNEL_NO_RESOURCES':
      return Code.RESOURCE_EXHAUSTED;
    case 'KERNEL_REJECTED':
    case 'KERNEL_ERROR':
      return codeForErrno(errno ?? 'EIO');
    case 'PERMISSION_DENIED':
      return Code.PERMISSION_DENIED;
    case 'QUOTA_EXCEEDED':
      return Code.RESOURCE_EXHAUSTED;
    case 'SHUTTING_DOWN':
      return Code.UNAVAILABLE;
    case 'INTERNAL':
      return Code.INTERNAL;
    default: {
      const unreachable: never = reason;
      return unreachable;
    }
  }
}

/** Whatever a handler threw, as a status with ErrorInfo. Never rethrows. */
export function toServiceError(err: unknown): ServiceError {
  if (err instanceof BrokerError) {
    const metadata: Record<string, string> = {};
    if (err.errno) metadata['errno'] = err.errno;
    if (err.kernelOp) metadata['kernel_op'] = err.kernelOp;
    if (err.objects.length > 0) metadata['objects'] = err.objects.join(',');
    if (err.field) metadata['field'] = err.field;
    if (err.contextId) metadata['context_id'] = err.contextId.slice(0, 80);
    if (err.deviceId) metadata['device_id'] = err.deviceId;
    if (err.quota) metadata['quota'] = err.quota;
    if (err.quotaLimit !== undefined) metadata['limit'] = String(err.quotaLimit);
    return statusError(codeForReason(err.reason, err.errno), err.message, err.reason, metadata);
  }
  if (isKernelError(err)) {
    return statusError(codeForErrno(err.errno), err.message, 'KERNEL_ERROR', { errno: err.errno, kernel_op: err.op });
  }
  return statusError(Code.INTERNAL, 'internal error; see the daemon log', 'INTERNAL', {});
}
