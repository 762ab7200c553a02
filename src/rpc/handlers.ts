/**
 * The one wrapper every RPC goes through: identity, a child logger with a
 * request ID, error mapping, and the handled-call hook for metrics. Nothing
 * thrown by a handler escapes it.
 */
import { create, fromBinary, type DescMessage, type DescMethod, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../broker/broker.js';
import { BrokerError } from '../broker/errors.js';
import { toServiceError } from './errors.js';
import { validationError } from './validation.js';
import { errorInfoOf } from './status.js';
import type { AuditRecord, AuditSink } from '../obs/audit.js';
import { auditFields, isMutating } from './audit-fields.js';
import type { IdentityResolver } from './identity.js';

export interface CallContext {
  caller: Caller;
  log: Logger;
  /** Fires once when the client goes away before the call finished. */
  signal: AbortSignal;
}

export type HandledHook = (method: string, code: grpc.status, seconds: number) => void;

export interface HandlerEnv {
  log: Logger;
  identity: IdentityResolver;
  onHandled?: HandledHook;
  /** Mutating calls are recorded here before the client hears the result. */
  audit?: AuditSink;
  onAuditResult?: (ok: boolean) => void;
}

/** Writes the audit line for a finished mutating call; never throws. */
async function audit(
  env: HandlerEnv,
  log: Logger,
  entry: Omit<AuditRecord, 'time'>,
): Promise<void> {
  if (!env.audit) return;
  try {
    await env.audit.record({ time: new Date().toISOString(), ...entry });
    env.onAuditResult?.(true);
  } catch (err) {
    // The mutation already happened: the client still gets its result, operators get an alert.
    env.onAuditResult?.(false);
    log.error({ err, operation: entry.operation }, 'audit record could not be written');
  }
}

type UnaryImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  call: CallContext,
) => Promise<MessageInitShape<O>>;

type StreamImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  call: CallContext,
  send: (message: MessageShape<O>) => void,
) => Promise<void>;

export type ServiceImpl<S extends GenServiceMethods> = {
  [K in keyof S]: S[K]['methodKind'] extends 'unary'
    ? UnaryImpl<S[K]['input'], S[K]['output']>
    : StreamImpl<S[K]['input'], S[K]['output']>;
};

/** Decodes a request body; a body that is not the message is the client's error. */
function decode(method: DescMethod, body: unknown): MessageShape<DescMessage> {
  let message: MessageShape<DescMessage>;
  try {
    message = fromBinary(method.input, body as Uint8Array);
  } catch (err) {
    throw new BrokerError('MALFORMED_REQUEST', `the request body is not a valid ${method.input.typeName}: ${(err as Error).message.slice(0, 120)}`);
  }
  // The buf.validate rules in the proto, enforced before any handler runs.
  const invalid = validationError(method.input, message);
  if (invalid) throw invalid;
  return message;
}

function elapsed(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function callContext(env: HandlerEnv, method: DescMethod, call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): CallContext {
  // grpc-js also emits 'cancelled' after a normal end. Aborting a signal builds a
  // DOMException with a stack trace, so the controller exists only once a handler
  // asks for the signal (WatchContext does; unary handlers do not).
  let controller: AbortController | undefined;
  let gone = false;
  call.on('cancelled', () => {
    gone = true;
    controller?.abort();
  });
  const caller = env.identity.resolve(call);
  // A child logger per request is built on first use: most requests never log.
  let log: Logger | undefined;
  return {
    caller,
    get log() {
      return (log ??= env.log.child({ requestId: randomUUID(), method: method.name, tenant: caller.tenant }));
    },
    get signal() {
      if (!controller) {
        controller = new AbortController();
        if (gone) controller.abort();
      }
      return controller.signal;
    },
  };
}

export function grpcHandlers<S extends GenServiceMethods>(
  service: GenService<S>,
  impl: ServiceImpl<S>,
  env: HandlerEnv,
): grpc.UntypedServiceImplementation {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const fn = (impl as Record<string, unknown>)[method.localName];
    const name = `${service.name}/${method.name}`;
    if (method.methodKind === 'unary') {
      const unary = fn as UnaryImpl<DescMessage, DescMessage>;
      handlers[method.localName] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const start = process.hrtime.bigint();
        let request: MessageShape<DescMessage> | undefined;
        const mutating = isMutating(method) && env.audit !== undefined;
        let ctx: CallContext | undefined;
        const logOf = () => ctx?.log ?? env.log;
        let who = { tenant: '', peer: call.getPeer() };
        const record = (result: 'ok' | 'error', code: grpc.status, response?: MessageShape<DescMessage>, err?: grpc.ServiceError) => {
          if (!mutating) return Promise.resolve();
          const info = err ? errorInfoOf(err) : undefined;
          const objects = { ...(request ? auditFields(method.input, request) : {}), ...(response ? auditFields(method.output, response, 'out.') : {}) };
          const contextId = objects['context_id'];
          delete objects['context_id'];
          return audit(env, logOf(), {
            ...who,
            operation: name,
            ...(contextId ? { contextId } : {}),
            objects,
            result,
            code: grpc.status[code],
            ...(info?.reason ? { reason: info.reason } : {}),
            ...(info?.metadata['errno'] ? { errno: info.metadata['errno'] } : {}),
          });
        };
        const fail = (err: unknown) => {
          const status = toServiceError(err);
          if (status.code === grpc.status.INTERNAL) logOf().error({ err }, 'request failed');
          else if (logOf().isLevelEnabled('debug')) logOf().debug({ code: grpc.status[status.code], message: status.details }, 'request refused');
          void record('error', status.code, undefined, status).then(() => {
            env.onHandled?.(name, status.code, elapsed(start));
            callback(status);
          });
        };
        try {
          ctx = callContext(env, method, call);
          who = { tenant: ctx.caller.tenant, peer: ctx.caller.peer };
          request = decode(method, call.request);
          unary(request, ctx).then((result) => {
            const response = create(method.output, result);
            void record('ok', grpc.status.OK, response).then(() => {
              env.onHandled?.(name, grpc.status.OK, elapsed(start));
              callback(null, response);
            });
          }, fail);
        } catch (err) {
          fail(err);
        }
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else if (method.methodKind === 'server_streaming') {
      const stream = fn as StreamImpl<DescMessage, DescMessage>;
      handlers[method.localName] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        const start = process.hrtime.bigint();
        let log = env.log;
        const finish = (err?: unknown) => {
          if (err === undefined) {
            env.onHandled?.(name, grpc.status.OK, elapsed(start));
            call.end();
            return;
          }
          const status = toServiceError(err);
          if (status.code === grpc.status.INTERNAL) log.error({ err }, 'stream failed');
          env.onHandled?.(name, status.code, elapsed(start));
          call.emit('error', status);
        };
        try {
          const ctx = callContext(env, method, call);
          log = ctx.log;
          stream(decode(method, call.request), ctx, (message) => call.write(message)).then(() => finish(), finish);
        } catch (err) {
          finish(err);
        }
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
    }
  }
  return handlers;
}

/** The method shapes of a generated service, for `ServiceImpl<MethodsOf<typeof X>>`. */
export type MethodsOf<T> = T extends GenService<infer S> ? S : never;
