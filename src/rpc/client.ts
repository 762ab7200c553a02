/**
 * A typed promise client for any generated service, used by the CLI and the
 * integration tests.
 */
import { create, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import * as grpc from '@grpc/grpc-js';
import { methodDefinition } from './codec.js';

export interface CallOptions {
  metadata?: grpc.Metadata;
  deadlineMs?: number;
}

type UnaryMethod<I extends DescMessage, O extends DescMessage> = (
  request: MessageInitShape<I>,
  options?: CallOptions,
) => Promise<MessageShape<O>>;

type StreamMethod<I extends DescMessage, O extends DescMessage> = (
  request: MessageInitShape<I>,
  options?: CallOptions,
) => grpc.ClientReadableStream<MessageShape<O>>;

export type TypedClient<S extends GenServiceMethods> = {
  [K in keyof S]: S[K]['methodKind'] extends 'unary'
    ? UnaryMethod<S[K]['input'], S[K]['output']>
    : StreamMethod<S[K]['input'], S[K]['output']>;
};

/** `unix:/run/vfio-broker/broker.sock` or `host:port`. */
export function createClient<S extends GenServiceMethods>(
  service: GenService<S>,
  channel: grpc.Client,
): TypedClient<S> {
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    const def = methodDefinition(method);
    const callOptions = (o?: CallOptions): grpc.CallOptions =>
      o?.deadlineMs === undefined ? {} : { deadline: Date.now() + o.deadlineMs };
    if (method.methodKind === 'unary') {
      client[method.localName] = (request: MessageInitShape<DescMessage>, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          channel.makeUnaryRequest(
            def.path,
            def.requestSerialize,
            def.responseDeserialize,
            create(method.input, request),
            options?.metadata ?? new grpc.Metadata(),
            callOptions(options),
            (err, value) => (err ? reject(err) : resolve(value)),
          );
        });
    } else if (method.methodKind === 'server_streaming') {
      client[method.localName] = (request: MessageInitShape<DescMessage>, options?: CallOptions) =>
        channel.makeServerStreamRequest(
          def.path,
          def.requestSerialize,
          def.responseDeserialize,
          create(method.input, request),
          options?.metadata ?? new grpc.Metadata(),
          callOptions(options),
        );
    }
  }
  return client as TypedClient<S>;
}

export function connect(address: string, options: grpc.ChannelOptions = {}): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure(), options);
}
