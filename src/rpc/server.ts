/**
 * The gRPC server on a Unix socket: stale-socket handling, explicit mode,
 * the two services, health and reflection.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Broker } from '../broker/broker.js';
import { AdminService } from '../gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../gen/vfio_broker/v1/broker_pb.js';
import { adminServiceImpl } from './admin-service.js';
import { brokerServiceImpl } from './broker-service.js';
import { serviceDefinition } from './codec.js';
import { grpcHandlers, type HandledHook, type HandlerEnv } from './handlers.js';
import type { AuditSink } from '../obs/audit.js';
import { PeerIdentity, type IdentityConfig } from './identity.js';
import { listenUnix } from './unix-listener.js';
import type { PeerCredentials } from './peercred.js';
import { readFileSync } from 'node:fs';
import { addReflection } from './reflection.js';

export const MAX_MESSAGE_BYTES = 1 << 20;

/**
 * The daemon's grpc-js server options (the bench's echo server uses the same).
 * Channelz is off: nothing here serves the channelz API, and grpc-js would
 * otherwise count and timestamp every call, message and socket for it.
 */
export const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': 4 * MAX_MESSAGE_BYTES,
  'grpc.enable_channelz': 0,
};
export const SERVICE_NAMES = [BrokerService.typeName, AdminService.typeName] as const;

export interface ServerOptions {
  socketPath: string;
  /** File mode of the socket, e.g. 0o660. */
  socketMode: number;
  /** Group given the socket file, so its members may connect. */
  socketGid?: number | undefined;
  broker: Broker;
  log: Logger;
  identity: IdentityConfig;
  /** Optional TCP listener for remote agents; mTLS only, never plaintext. */
  tcp?: { address: string; caFile: string; certFile: string; keyFile: string } | undefined;
  onHandled?: HandledHook;
  audit?: AuditSink;
  onAuditResult?: (ok: boolean) => void;
}

export interface RunningServer {
  server: grpc.Server;
  health: HealthImplementation;
  address: string;
  /** The mTLS port, when a TCP listener is configured (useful with port 0). */
  tcpPort: number | undefined;
  /** Health for every service: readiness follows this. */
  setServing(serving: boolean): void;
  /** Stops accepting calls and waits up to `graceMs` for in-flight ones. */
  stop(graceMs: number): Promise<void>;
}

export class StartupError extends Error {
  override readonly name = 'StartupError';
}

async function isListening(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** A socket file left by a daemon that died is removed; a live one or a non-socket is refused. */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  await fs.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  let stat;
  try {
    stat = await fs.lstat(socketPath);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new StartupError(`${socketPath} exists and is not a socket; refusing to remove it`);
  if (await isListening(socketPath)) throw new StartupError(`another process is serving on ${socketPath}; stop it first`);
  await fs.unlink(socketPath);
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { broker, log } = options;
  await prepareSocketPath(options.socketPath);
  const server = new grpc.Server(SERVER_OPTIONS);
  // The identity needs the listener's connection table; the listener needs the server.
  let credentialsOf: (peer: string) => PeerCredentials | undefined = () => undefined;
  const env: HandlerEnv = { log, identity: new PeerIdentity(options.identity, (peer) => credentialsOf(peer)) };
  if (options.onHandled) env.onHandled = options.onHandled;
  if (options.audit) env.audit = options.audit;
  if (options.onAuditResult) env.onAuditResult = options.onAuditResult;
  server.addService(serviceDefinition(BrokerService), grpcHandlers(BrokerService, brokerServiceImpl(broker), env));
  server.addService(serviceDefinition(AdminService), grpcHandlers(AdminService, adminServiceImpl(broker), env));
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAMES[0]]: 'SERVING', [SERVICE_NAMES[1]]: 'SERVING' });
  health.addToServer(server);
  addReflection(server);

  const unix = await listenUnix(server, options.socketPath, log);
  credentialsOf = unix.credentialsOf;
  // Set explicitly: the process umask must not decide who may talk to the broker.
  await fs.chmod(options.socketPath, options.socketMode);
  if (options.socketGid !== undefined) await fs.chown(options.socketPath, process.getuid?.() ?? 0, options.socketGid);
  log.info({ socket: options.socketPath, mode: options.socketMode.toString(8), gid: options.socketGid }, 'serving');
  let tcpPort: number | undefined;
  if (options.tcp) {
    const { address, caFile, certFile, keyFile } = options.tcp;
    try {
      const creds = grpc.ServerCredentials.createSsl(readFileSync(caFile), [{ cert_chain: readFileSync(certFile), private_key: readFileSync(keyFile) }], true);
      tcpPort = await new Promise<number>((resolve, reject) => server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
    } catch (err) {
      unix.close();
      server.forceShutdown();
      // Never include key material: name the files, not their contents.
      throw new StartupError(`cannot start the mTLS listener on ${address} (ca ${caFile}, cert ${certFile}, key ${keyFile}): ${(err as Error).message.split('\n')[0]}`);
    }
    log.info({ tcp: address, port: tcpPort }, 'serving mTLS');
  }
  const address = `unix:${options.socketPath}`;

  const setServing = (serving: boolean) => {
    for (const name of ['', ...SERVICE_NAMES]) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
  };
  return {
    server,
    health,
    address,
    setServing,
    tcpPort,
    async stop(graceMs) {
      setServing(false);
      unix.close();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      await fs.unlink(options.socketPath).catch(() => undefined);
    },
  };
}
