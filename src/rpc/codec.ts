/**
 * Bridges protobuf-es service descriptors and grpc-js: one generic service
 * definition and one typed client, so no per-method glue is written by hand.
 * Messages go through the compiled codecs (wire-encode.ts, wire-decode.ts),
 * which give protobuf-es's bytes and messages at a fraction of its cost.
 */
import type { DescMethod, DescService } from '@bufbuild/protobuf';
import type * as grpc from '@grpc/grpc-js';
import { decodeMessage } from './wire-decode.js';
import { encodeMessage } from './wire-encode.js';

export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function isStreaming(kind: DescMethod['methodKind'], side: 'request' | 'response'): boolean {
  switch (kind) {
    case 'unary':
      return false;
    case 'server_streaming':
      return side === 'response';
    case 'client_streaming':
      return side === 'request';
    case 'bidi_streaming':
      return true;
  }
}

export function methodDefinition(method: DescMethod): grpc.MethodDefinition<unknown, unknown> {
  return {
    path: methodPath(method),
    originalName: method.localName,
    requestStream: isStreaming(method.methodKind, 'request'),
    responseStream: isStreaming(method.methodKind, 'response'),
    // Serializers take a message or an init shape: neither side needs create() just to send.
    requestSerialize: (msg) => encodeMessage(method.input, msg as object),
    requestDeserialize: (bytes) => decodeMessage(method.input, bytes),
    responseSerialize: (msg) => encodeMessage(method.output, msg as object),
    responseDeserialize: (bytes) => decodeMessage(method.output, bytes),
  };
}

/**
 * The server side keeps request bodies as bytes: handlers decode them, so a
 * malformed body becomes INVALID_ARGUMENT with ErrorInfo like any other bad
 * input, instead of grpc-js's bare deserialization error.
 */
export function serviceDefinition(service: DescService): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = { ...methodDefinition(method), requestDeserialize: (bytes: Buffer) => bytes };
  }
  return definition;
}
