/**
 * The client subcommands: one entry per RPC. Each command checks its
 * arguments in `prepare` (a UsageError, exit 2, before any connection) and
 * returns the calls to make; `runClientCommand` connects, runs them and maps
 * failures to one line on stderr.
 */
import { toJson, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import { defaultSocketPath } from '../config/config.js';
import { AdminService } from '../gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../gen/vfio_broker/v1/broker_pb.js';
import { connect, createClient, type CallOptions, type TypedClient } from '../rpc/client.js';
import type { MethodsOf } from '../rpc/handlers.js';
import { TENANT_HEADER } from '../rpc/identity.js';
import { ADMIN_COMMANDS } from './admin-commands.js';
import { UsageError, flag, parseSeconds, stringValue, tenantName, type OptionSpecs, type ParsedArgs } from './args.js';
import { CONTEXT_COMMANDS } from './context-commands.js';
import { connectionErrorLine, isServiceError, serviceErrorLine } from './format.js';
import type { CliIo } from './io.js';
import { Health } from '../gen/grpc/health/v1/health_pb.js';

export const DEFAULT_TIMEOUT_SECONDS = 10;

export function clientOptions(): OptionSpecs {
  return {
    socket: { type: 'string', value: 'PATH', help: `broker socket (default: $VFIO_BROKER_SOCKET, else ${defaultSocketPath()})` },
    tenant: { type: 'string', value: 'NAME', help: `act for tenant NAME (sent as ${TENANT_HEADER}; default: the daemon's default tenant)` },
    json: { type: 'boolean', help: 'print the response message as protobuf JSON: the stable machine interface' },
    timeout: { type: 'string', value: 'SECONDS', help: `deadline for the call (default ${DEFAULT_TIMEOUT_SECONDS})` },
  };
}

export interface Api {
  admin: TypedClient<MethodsOf<typeof AdminService>>;
  broker: TypedClient<MethodsOf<typeof BrokerService>>;
  health: TypedClient<MethodsOf<typeof Health>>;
  call: CallOptions;
  io: CliIo;
  json: boolean;
  /** The message as protobuf JSON with --json, else the human text. */
  print<S extends DescMessage>(schema: S, message: MessageShape<S>, human: () => string): void;
}

export interface ClientCommand {
  name: string;
  group: 'Administration' | 'Contexts' | 'Objects';
  /** Required positionals, in order. */
  args: readonly string[];
  options?: OptionSpecs;
  summary: string;
  description?: string;
  /** Without --timeout, no deadline (a stream that lasts as long as the context). */
  streaming?: boolean;
  /** Checks the arguments (throws UsageError) and returns the calls to make. */
  prepare(p: ParsedArgs): (api: Api) => Promise<void | number>;
}

/** Connects, runs the command and returns the exit status (1 on any failure). */
export async function runClientCommand(command: ClientCommand, p: ParsedArgs, io: CliIo): Promise<number> {
  const socket = stringValue(p, 'socket') ?? defaultSocketPath();
  if (socket === '') throw new UsageError('--socket must not be empty');
  const tenant = stringValue(p, 'tenant');
  if (tenant !== undefined) tenantName(tenant, '--tenant');
  const timeoutText = stringValue(p, 'timeout');
  const timeout = timeoutText !== undefined ? parseSeconds(timeoutText, '--timeout') : command.streaming ? undefined : DEFAULT_TIMEOUT_SECONDS;
  const action = command.prepare(p);
  const json = flag(p, 'json');

  const channel = connect(`unix:${path.resolve(socket)}`);
  const metadata = new grpc.Metadata();
  if (tenant !== undefined) metadata.set(TENANT_HEADER, tenant);
  const api: Api = {
    admin: createClient(AdminService, channel),
    broker: createClient(BrokerService, channel),
    health: createClient(Health, channel),
    call: timeout === undefined ? { metadata } : { metadata, deadlineMs: timeout * 1000 },
    io,
    json,
    print(schema, message, human) {
      io.stdout(json ? `${JSON.stringify(toJson(schema, message, { alwaysEmitImplicit: true }), null, 2)}\n` : human());
    },
  };
  try {
    return (await action(api)) ?? 0;
  } catch (err) {
    if (!isServiceError(err)) throw err;
    io.stderr(`${connectionErrorLine(err, socket, timeout) ?? serviceErrorLine(err)}\n`);
    return 1;
  } finally {
    channel.close();
  }
}

export const CLIENT_COMMANDS: readonly ClientCommand[] = [...ADMIN_COMMANDS, ...CONTEXT_COMMANDS];

export function findClientCommand(name: string): ClientCommand | undefined {
  return CLIENT_COMMANDS.find((c) => c.name === name);
}
