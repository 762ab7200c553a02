/**
 * The transport ceiling: a bare grpc-js service with one unary method that
 * echoes its request bytes. It uses the same raw-bytes serializers as the
 * daemon's `serviceDefinition` (src/rpc/codec.ts), the same server options and
 * the daemon's own Unix-socket listener, so the only difference from the
 * broker is the work behind the method.
 */
import * as grpc from '@grpc/grpc-js';

export const ECHO_PATH = '/vfio_broker.bench.Echo/Echo';

const passthrough = (b: Buffer) => b;

export const ECHO_METHOD: grpc.MethodDefinition<Buffer, Buffer> = {
  path: ECHO_PATH,
  originalName: 'echo',
  requestStream: false,
  responseStream: false,
  requestSerialize: passthrough,
  requestDeserialize: passthrough,
  responseSerialize: passthrough,
  responseDeserialize: passthrough,
};

export const echoServiceDefinition: grpc.ServiceDefinition = { echo: ECHO_METHOD as grpc.MethodDefinition<unknown, unknown> };

export const echoImpl: grpc.UntypedServiceImplementation = {
  echo: ((call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
    callback(null, call.request);
  }) as grpc.handleUnaryCall<unknown, unknown>,
};

/** One echo call with the same call shape the typed client uses (fresh Metadata, no options). */
export function echoCall(channel: grpc.Client, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    channel.makeUnaryRequest(ECHO_PATH, passthrough, passthrough, payload, new grpc.Metadata(), {}, (err, value) =>
      err ? reject(err) : resolve(value as Buffer),
    );
  });
}
