import { status as Code } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { BrokerError, reasonForErrno, type ErrorReason } from '../../src/broker/errors.js';
import { asHandle } from '../../src/broker/ids.js';
import { ERRNO, type ErrnoName } from '../../src/kernel/errno.js';
import { KernelError } from '../../src/kernel/types.js';
import { codeForReason, toServiceError } from '../../src/rpc/errors.js';
import { errorInfoOf } from '../../src/rpc/status.js';

describe('errno and reason to gRPC status', () => {
  it.each(Object.keys(ERRNO) as ErrnoName[])('maps %s to a non-OK status carrying ErrorInfo with the errno', (errno) => {
    const err = toServiceError(new BrokerError(reasonForErrno(errno), `op: ${errno}`, { errno, kernelOp: 'destroy', objects: [asHandle(3)] }));
    expect(err.code).not.toBe(Code.OK);
    const info = errorInfoOf(err)!;
    expect(info.domain).toBe('vfio-broker');
    expect(info.metadata['errno']).toBe(errno);
    expect(info.metadata['kernel_op']).toBe('destroy');
    expect(info.metadata['objects']).toBe('3');
  });

  it('uses the codes the API promises for the common kernel answers', () => {
    const code = (errno: ErrnoName) => codeForReason(reasonForErrno(errno), errno);
    expect(code('EBUSY')).toBe(Code.FAILED_PRECONDITION);
    expect(code('EOPNOTSUPP')).toBe(Code.UNIMPLEMENTED);
    expect(code('ENOTTY')).toBe(Code.UNIMPLEMENTED);
    expect(code('EEXIST')).toBe(Code.ALREADY_EXISTS);
    expect(code('EINVAL')).toBe(Code.INVALID_ARGUMENT);
    expect(code('ENOMEM')).toBe(Code.RESOURCE_EXHAUSTED);
    expect(code('EOVERFLOW')).toBe(Code.OUT_OF_RANGE);
    expect(code('EINTR')).toBe(Code.UNAVAILABLE);
    expect(code('EIO')).toBe(Code.INTERNAL);
    expect(reasonForErrno('EBUSY')).toBe('OBJECT_IN_USE');
  });

  it('maps the dead-vDEVICE reason to FAILED_PRECONDITION, never NOT_FOUND', () => {
    const reason: ErrorReason = 'VDEVICE_DESTROYED_ON_UNBIND';
    expect(codeForReason(reason, undefined)).toBe(Code.FAILED_PRECONDITION);
  });

  it('turns a bare KernelError and an unexpected exception into statuses without leaking internals', () => {
    const kernel = toServiceError(new KernelError('EFAULT', 'ioas_alloc'));
    expect(kernel.code).toBe(Code.INTERNAL);
    expect(errorInfoOf(kernel)?.metadata['errno']).toBe('EFAULT');
    const bug = toServiceError(new TypeError('secret internal detail'));
    expect(bug.code).toBe(Code.INTERNAL);
    expect(bug.details).not.toMatch(/secret/);
    expect(errorInfoOf(bug)?.reason).toBe('INTERNAL');
  });
});
