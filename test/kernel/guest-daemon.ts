/**
 * What the guest test files share: the in-process daemon on the linux
 * backend (socket, metrics and audit log in a temp dir, since the guest's
 * root filesystem is read-only), the process's kernel fds, a failed call's
 * error, and the summary each file writes to $VFIO_BROKER_RESULTS_DIR.
 */
import type * as grpc from '@grpc/grpc-js';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig, type Config } from '../../src/config/config.js';
import { startDaemon, type Daemon } from '../../src/daemon.js';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import type { LinuxKernel } from '../../src/kernel/linux/index.js';
import type { SimFaults } from '../../src/kernel/sim/index.js';
import { createLogger } from '../../src/obs/log.js';
import { connect, createClient } from '../../src/rpc/client.js';
import type { AdminClient, BrokerClient } from '../helpers/daemon.js';

export interface GuestDaemon {
  dir: string;
  daemon: Daemon;
  kernel: LinuxKernel;
  channel: grpc.Client;
  broker: BrokerClient;
  admin: AdminClient;
}

/** The daemon in this process on the real kernel; `name` names its temp dir. */
export async function startGuestDaemon(name: string, options: { tweak?: (config: Config) => void; kernelFaults?: SimFaults } = {}): Promise<GuestDaemon> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `vfio-broker-${name}-`));
  const config = defaultConfig();
  config.backend = 'linux';
  config.socket.path = path.join(dir, 'broker.sock');
  config.metrics.address = '127.0.0.1:0';
  config.audit.path = path.join(dir, 'audit.log');
  config.shutdown.drainSeconds = 5;
  options.tweak?.(config);
  const log = createLogger(process.env['VFIO_BROKER_TEST_LOG'] ?? 'silent');
  const daemon = await startDaemon({ config, log, ...(options.kernelFaults ? { kernelFaults: options.kernelFaults } : {}) });
  const channel = connect(`unix:${config.socket.path}`);
  return {
    dir,
    daemon,
    kernel: daemon.kernel as LinuxKernel,
    channel,
    broker: createClient(BrokerService, channel),
    admin: createClient(AdminService, channel),
  };
}

/** Closes the client and stops the daemon (which closes every kernel fd); removes the temp dir. */
export async function stopGuestDaemon(g: Partial<GuestDaemon>): Promise<void> {
  g.channel?.close();
  await g.daemon?.stop();
  if (g.dir) rmSync(g.dir, { recursive: true, force: true });
}

/** fds of this process on /dev/iommu or a VFIO device (the daemon runs in-process). */
export function kernelFds(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target === '/dev/iommu' || target.startsWith('/dev/vfio')) out.push(`${fd} -> ${target}`);
    } catch {
      // the directory's own fd, closed while listing
    }
  }
  return out;
}

/** The error a call failed with; a call that succeeds fails the test. */
export async function rpcError(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}

/** Whether [start, start+length) lies inside one of the inclusive ranges (IOAS_IOVA_RANGES). */
export function inRanges(ranges: readonly { start: bigint; last: bigint }[], start: bigint, length: bigint): boolean {
  return ranges.some((r) => r.start <= start && start + length - 1n <= r.last);
}

/** Writes `summary` as $VFIO_BROKER_RESULTS_DIR/`file` (when set); returns the JSON. */
export function writeSummary(file: string, summary: Record<string, unknown>, bigint: (v: bigint) => unknown = (v) => `0x${v.toString(16)}`): string {
  const json = JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'bigint' ? bigint(v) : v), 2);
  const out = process.env['VFIO_BROKER_RESULTS_DIR'];
  if (out) writeFileSync(path.join(out, file), `${json}\n`);
  return json;
}
