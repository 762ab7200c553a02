/** Starts the real daemon (sim backend) on a temp Unix socket and connects typed clients. */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig, type Config } from '../../src/config/config.js';
import { startDaemon, type Daemon } from '../../src/daemon.js';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { createLogger } from '../../src/obs/log.js';
import { connect, createClient, type TypedClient } from '../../src/rpc/client.js';
import type { MethodsOf } from '../../src/rpc/handlers.js';
import { TENANT_HEADER } from '../../src/rpc/identity.js';
import type { KernelProfile } from '../../src/kernel/types.js';

export type BrokerClient = TypedClient<MethodsOf<typeof BrokerService>>;
export type AdminClient = TypedClient<MethodsOf<typeof AdminService>>;

export interface TestDaemon {
  daemon: Daemon;
  socketPath: string;
  auditPath: string;
  channel: grpc.Client;
  broker: BrokerClient;
  admin: AdminClient;
  /** Another connection, e.g. a client that will vanish. */
  newChannel(): grpc.Client;
  stop(): Promise<void>;
}

export async function startTestDaemon(
  profile: KernelProfile = 'linux-6.17',
  tweak: (config: Config) => void = () => undefined,
  log: Logger = createLogger(process.env['VFIO_BROKER_TEST_LOG'] ?? 'silent'),
): Promise<TestDaemon> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-test-'));
  const config = defaultConfig();
  config.socket.path = path.join(dir, 'broker.sock');
  config.sim.profile = profile;
  config.teardown.clientGoneGraceSeconds = 0.1;
  config.shutdown.drainSeconds = 2;
  config.metrics.address = '127.0.0.1:0';
  config.audit.path = path.join(dir, 'audit.log');
  tweak(config);
  const daemon = await startDaemon({ config, log });
  const clients = connectClients(config.socket.path);
  return {
    daemon,
    socketPath: config.socket.path,
    auditPath: config.audit.path,
    ...clients,
    async stop() {
      clients.closeAll();
      await daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Typed clients on one connection to the daemon's socket; `newChannel` opens more, `closeAll` closes every one. */
export function connectClients(socketPath: string): Pick<TestDaemon, 'channel' | 'broker' | 'admin' | 'newChannel'> & { closeAll(): void } {
  const channels: grpc.Client[] = [];
  const newChannel = () => {
    const ch = connect(`unix:${socketPath}`);
    channels.push(ch);
    return ch;
  };
  const channel = newChannel();
  return {
    channel,
    broker: createClient(BrokerService, channel),
    admin: createClient(AdminService, channel),
    newChannel,
    closeAll: () => {
      for (const ch of channels) ch.close();
    },
  };
}

export function asTenantMetadata(tenant: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set(TENANT_HEADER, tenant);
  return md;
}

/** `iova+length` of each mapping, in IOVA order. */
function mappingList(mappings: Iterable<{ iova: bigint; length: bigint }>): string {
  const sorted = [...mappings].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  return sorted.length === 0 ? '' : `:[${sorted.map((m) => `0x${m.iova.toString(16)}+0x${m.length.toString(16)}`).join(',')}]`;
}

/** Kernel objects the sim has for a context equal the broker's live registry entries, IOAS mappings included. */
export function registryMatchesKernel(td: TestDaemon, contextId: string): { registry: string[]; kernel: string[] } {
  const ctx = td.daemon.broker.inspectContext(contextId);
  const sim = td.daemon.sim;
  if (!ctx || !sim) throw new Error(`no context ${contextId}`);
  const registry = [...ctx.registry.all()]
    .filter((o) => o.state === 'live')
    .map((o) => `${o.kernelId}:${o.kind}${o.kind === 'HWPT_PAGING' && o.automatic ? ':auto' : ''}${o.kind === 'IOAS' ? mappingList(o.mappings.values()) : ''}`)
    .sort();
  const kernel = sim
    .objects(ctx.iommufd)
    .map((o) => `${o.id}:${o.type}${o.type === 'HWPT_PAGING' && o.auto ? ':auto' : ''}${o.type === 'IOAS' ? mappingList(sim.mappings(ctx.iommufd, o.id)) : ''}`)
    .sort();
  return { registry, kernel };
}
