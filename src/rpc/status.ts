/**
 * google.rpc.Status with ErrorInfo in the `grpc-status-details-bin` trailer,
 * the standard rich-error channel that grpc-go, grpc-java and buf curl read.
 */
import { anyPack, anyUnpack } from '@bufbuild/protobuf/wkt';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { ErrorInfoSchema, type ErrorInfo } from '../gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../gen/google/rpc/status_pb.js';

export const ERROR_DOMAIN = 'vfio-broker';
const DETAILS_KEY = 'grpc-status-details-bin';

export function statusError(code: grpc.status, message: string, reason: string, metadata: Record<string, string>): grpc.ServiceError {
  const info = create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata });
  const status = create(StatusSchema, { code, message, details: [anyPack(ErrorInfoSchema, info)] });
  const trailers = new grpc.Metadata();
  trailers.set(DETAILS_KEY, Buffer.from(toBinary(StatusSchema, status)));
  const err = new Error(message) as grpc.ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = trailers;
  return err;
}

/** The ErrorInfo a failed call carried, if any. */
export function errorInfoOf(err: unknown): ErrorInfo | undefined {
  const metadata = (err as Partial<grpc.ServiceError> | undefined)?.metadata;
  if (!(metadata instanceof grpc.Metadata)) return undefined;
  const raw = metadata.get(DETAILS_KEY)[0];
  if (!(raw instanceof Buffer)) return undefined;
  const status = fromBinary(StatusSchema, raw);
  for (const any of status.details) {
    const info = anyUnpack(any, ErrorInfoSchema);
    if (info) return info;
  }
  return undefined;
}
