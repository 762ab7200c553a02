/**
 * A typed promise client for any generated service, used by the CLI and the
 * integration tests.
 */
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import * as grpc from '@grpc/grpc-js';
import { methodDefinition } from './codec.js';
import { encodeMessage } from './wire-encode.js';

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

const passthrough = (bytes: Buffer) => bytes;

/** `unix:/run/vfio-broker/broker.sock` or `host:port`. */
export function createClient<S extends GenServiceMethods>(
  service: GenService<S>,
  channel: grpc.Client,
): TypedClient<S> {
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    const def = methodDefinition(method);
    // The request is encoded at call time (a snapshot, as create() used to take). A request the
    // encoder refuses goes to grpc-js as it is, whose serializer then fails the call with INTERNAL.
    const body = (request: MessageInitShape<DescMessage>): [grpc.serialize<unknown>, unknown] => {
      try {
        return [passthrough as grpc.serialize<unknown>, encodeMessage(method.input, request)];
      } catch {
        return [def.requestSerialize, request];
      }
    };
    const callOptions = (o?: CallOptions): grpc.CallOptions =>
      o?.deadlineMs === undefined ? {} : { deadline: Date.now() + o.deadlineMs };
    if (method.methodKind === 'unary') {
      client[method.localName] = (request: MessageInitShape<DescMessage>, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          const [serialize, argument] = body(request);
          channel.makeUnaryRequest(
            def.path,
            serialize,
            def.responseDeserialize,
            argument,
            options?.metadata ?? new grpc.Metadata(),
            callOptions(options),
            (err, value) => (err ? reject(err) : resolve(value)),
          );
        });
    } else if (method.methodKind === 'server_streaming') {
      client[method.localName] = (request: MessageInitShape<DescMessage>, options?: CallOptions) => {
        const [serialize, argument] = body(request);
        return channel.makeServerStreamRequest(def.path, serialize, def.responseDeserialize, argument, options?.metadata ?? new grpc.Metadata(), callOptions(options));
      };
    }
  }
  return client as TypedClient<S>;
}

export function connect(address: string, options: grpc.ChannelOptions = {}): grpc.Client {
  // Channelz off, as on the daemon: no one reads a client's channelz stats.
  return new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.enable_channelz': 0, ...options });
}
