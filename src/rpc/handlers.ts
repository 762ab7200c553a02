/**
 * The one wrapper every RPC goes through: identity, a child logger with a
 * request ID, error mapping, and the handled-call hook for metrics. Nothing
 * thrown by a handler escapes it.
 */
import { create, type DescMessage, type DescMethod, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Caller } from '../broker/broker.js';
import { BrokerError } from '../broker/errors.js';
import { toServiceError } from './errors.js';
import { certainlyValid } from './fast-validate.js';
import { validationError } from './validation.js';
import { errorInfoOf } from './status.js';
import type { AuditRecord, AuditSink } from '../obs/audit.js';
import { auditFields, isMutating } from './audit-fields.js';
import type { IdentityResolver } from './identity.js';
import { decodeMessage } from './wire-decode.js';

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
    message = decodeMessage(method.input, body as Uint8Array);
  } catch (err) {
    throw new BrokerError('MALFORMED_REQUEST', `the request body is not a valid ${method.input.typeName}: ${(err as Error).message.slice(0, 120)}`);
  }
  // The buf.validate rules in the proto, enforced before any handler runs; protovalidate
  // decides (and words the refusal) whenever the compiled pass is not certain.
  if (!certainlyValid(method.input, message)) {
    const invalid = validationError(method.input, message);
    if (invalid) throw invalid;
  }
  return message;
}

function elapsedSeconds(start: number): number {
  return (performance.now() - start) / 1000;
}

/**
 * What a handler sees of its call. Built once per request with no closures:
 * the child logger and the abort signal are made on first use, since most
 * requests never log and only WatchContext listens for cancellation (an
 * aborted signal builds a DOMException with a stack trace).
 */
class RequestContext implements CallContext {
  private logger: Logger | undefined;
  private controller: AbortController | undefined;

  constructor(
    readonly caller: Caller,
    private readonly base: Logger,
    private readonly method: string,
    private readonly call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
  ) {}

  get log(): Logger {
    return (this.logger ??= this.base.child({ requestId: randomUUID(), method: this.method, tenant: this.caller.tenant }));
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      const controller = (this.controller = new AbortController());
      // grpc-js sets `cancelled` before it emits 'cancelled' (also after a normal end; callers ignore it once done).
      if (this.call.cancelled) controller.abort();
      else this.call.once('cancelled', () => controller.abort());
    }
    return this.controller.signal;
  }
}

function callContext(env: HandlerEnv, method: DescMethod, call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): RequestContext {
  return new RequestContext(env.identity.resolve(call), env.log, method.name, call);
}

/**
 * One unary request from decode to answer. Its steps are methods, shared by
 * every request, rather than closures made per request: V8 keeps a per-call
 * closure's optimized code only while a closure that ran it is alive, so each
 * full GC sent every such closure back to the compiler.
 */
class UnaryCall {
  private readonly start = performance.now();
  private request: MessageShape<DescMessage> | undefined;
  private ctx: RequestContext | undefined;

  constructor(
    private readonly env: HandlerEnv,
    private readonly method: DescMethod,
    private readonly name: string,
    /** Whether the call is audited: a mutating method with an audit sink. */
    private readonly mutating: boolean,
    private readonly call: grpc.ServerUnaryCall<unknown, unknown>,
    private readonly callback: grpc.sendUnaryData<unknown>,
  ) {}

  /** Runs `unary` and answers the client; never throws. */
  async handle(unary: UnaryImpl<DescMessage, DescMessage>): Promise<void> {
    let result: MessageInitShape<DescMessage>;
    try {
      this.ctx = callContext(this.env, this.method, this.call);
      this.request = decode(this.method, this.call.request);
      result = await unary(this.request, this.ctx);
    } catch (err) {
      return this.fail(err);
    }
    // The audit line needs the full message; otherwise the serializer encodes the init shape as it is.
    if (!this.mutating) return this.answer(grpc.status.OK, null, result);
    const response = create(this.method.output, result);
    await this.record('ok', grpc.status.OK, response);
    this.answer(grpc.status.OK, null, response);
  }

  private get log(): Logger {
    return this.ctx?.log ?? this.env.log;
  }

  private async fail(err: unknown): Promise<void> {
    const status = toServiceError(err);
    if (status.code === grpc.status.INTERNAL) this.log.error({ err }, 'request failed');
    else if (this.log.isLevelEnabled('debug')) this.log.debug({ code: grpc.status[status.code], message: status.details }, 'request refused');
    if (this.mutating) await this.record('error', status.code, undefined, status);
    this.answer(status.code, status);
  }

  private answer(code: grpc.status, err: grpc.ServiceError | null, value?: unknown): void {
    this.env.onHandled?.(this.name, code, elapsedSeconds(this.start));
    this.callback(err, value);
  }

  private record(result: 'ok' | 'error', code: grpc.status, response?: MessageShape<DescMessage>, err?: grpc.ServiceError): Promise<void> {
    const { ctx, request, method } = this;
    const info = err ? errorInfoOf(err) : undefined;
    const objects = { ...(request ? auditFields(method.input, request) : {}), ...(response ? auditFields(method.output, response, 'out.') : {}) };
    const contextId = objects['context_id'];
    delete objects['context_id'];
    return audit(this.env, this.log, {
      tenant: ctx ? ctx.caller.tenant : '',
      peer: ctx ? ctx.caller.peer : this.call.getPeer(),
      operation: this.name,
      ...(contextId ? { contextId } : {}),
      objects,
      result,
      code: grpc.status[code],
      ...(info?.reason ? { reason: info.reason } : {}),
      ...(info?.metadata['errno'] ? { errno: info.metadata['errno'] } : {}),
    });
  }
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
      const mutating = isMutating(method) && env.audit !== undefined;
      handlers[method.localName] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        void new UnaryCall(env, method, name, mutating, call, callback).handle(unary);
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else if (method.methodKind === 'server_streaming') {
      const stream = fn as StreamImpl<DescMessage, DescMessage>;
      handlers[method.localName] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        const start = performance.now();
        let log = env.log;
        const finish = (err?: unknown) => {
          if (err === undefined) {
            env.onHandled?.(name, grpc.status.OK, elapsedSeconds(start));
            call.end();
            return;
          }
          const status = toServiceError(err);
          if (status.code === grpc.status.INTERNAL) log.error({ err }, 'stream failed');
          env.onHandled?.(name, status.code, elapsedSeconds(start));
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
