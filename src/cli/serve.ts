/**
 * `vfio-broker serve`: config file (or the demo config), flag overrides,
 * startDaemon, and a signal-driven shutdown. Stdout carries only pino logs.
 */
import type { Logger } from 'pino';
import { ConfigError, DEFAULT_METRICS_ADDRESS, defaultConfig, loadConfigFile, metricsAddress, type BackendName, type Config, type LogLevel } from '../config/config.js';
import { startDaemon, StartupError, type Daemon } from '../daemon.js';
import { KERNEL_PROFILES, type KernelProfile } from '../kernel/types.js';
import { createLogger } from '../obs/log.js';
import { UsageError, parseChoice, stringValue, type OptionSpecs, type ParsedArgs } from './args.js';
import type { CliIo } from './io.js';

const BACKENDS: Record<string, BackendName> = { sim: 'sim', linux: 'linux' };
const LOG_LEVELS: Record<string, LogLevel> = { fatal: 'fatal', error: 'error', warn: 'warn', info: 'info', debug: 'debug', trace: 'trace', silent: 'silent' };
const PROFILES: Record<string, KernelProfile> = Object.fromEntries(KERNEL_PROFILES.map((p) => [p, p]));

export const SERVE_OPTIONS: OptionSpecs = {
  config: { type: 'string', value: 'FILE', help: 'JSON config file (default: the demo inventory on the simulated kernel)' },
  backend: { type: 'string', value: 'sim|linux', help: 'kernel backend (overrides the config)' },
  socket: { type: 'string', value: 'PATH', help: 'socket to serve on (overrides the config)' },
  profile: { type: 'string', value: KERNEL_PROFILES.join('|'), help: 'simulated kernel behaviour (overrides sim.profile)' },
  'log-level': { type: 'string', value: 'LEVEL', help: `${Object.keys(LOG_LEVELS).join('|')} (default: the config's log.level)` },
  'metrics-address': { type: 'string', value: 'HOST:PORT', help: `Prometheus /metrics listener, "" to disable (default: ${DEFAULT_METRICS_ADDRESS})` },
  'audit-log': { type: 'string', value: 'FILE', help: 'audit log file, "" to disable (default: /var/log/vfio-broker/audit.log as root)' },
};

export const SERVE_DESCRIPTION = `
Runs the broker daemon in the foreground, serving gRPC on a Unix socket.
Logs are JSON lines (pino) on stdout. SIGTERM or SIGINT drains calls, tears
every context down and exits 0; a second signal exits 1 at once.

Without --config, the simulated kernel with its demo inventory is used and no
device is assigned: assign devices with \`vfio-broker assign DEVICE TENANT\`.
Startup failures (bad config, socket in use) print one line and exit 2.`;

function overrides(p: ParsedArgs) {
  const backend = stringValue(p, 'backend');
  const profile = stringValue(p, 'profile');
  const level = stringValue(p, 'log-level');
  const socket = stringValue(p, 'socket');
  if (socket === '') throw new UsageError('--socket must not be empty');
  const metrics = stringValue(p, 'metrics-address');
  if (metrics !== undefined) {
    try {
      metricsAddress(metrics, '--metrics-address');
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  return {
    metrics,
    audit: stringValue(p, 'audit-log'),
    backend: backend === undefined ? undefined : parseChoice(backend, '--backend', BACKENDS),
    profile: profile === undefined ? undefined : parseChoice(profile, '--profile', PROFILES),
    level: level === undefined ? undefined : parseChoice(level, '--log-level', LOG_LEVELS),
    socket,
  };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One line: what failed, and the socket when the message does not name it. */
function startupMessage(err: unknown, config: Config): string {
  const message = errorMessage(err);
  if (err instanceof ConfigError) return `config: ${message}`;
  if (err instanceof StartupError || message.includes(config.socket.path)) return `cannot start: ${message}`;
  return `cannot start on ${config.socket.path}: ${message}`;
}

function flush(log: Logger): Promise<void> {
  return new Promise((resolve) => log.flush(() => resolve()));
}

/** Resolves with the exit status once the daemon has stopped (or failed to start). */
export async function serve(p: ParsedArgs, io: CliIo): Promise<number> {
  const o = overrides(p);
  const file = stringValue(p, 'config');
  let config: Config;
  try {
    config = file === undefined ? defaultConfig() : loadConfigFile(file);
  } catch (err) {
    io.stderr(`vfio-broker serve: ${err instanceof ConfigError ? err.message : String(err)}\n`);
    return 2;
  }
  if (o.backend) config.backend = o.backend;
  if (o.profile) config.sim.profile = o.profile;
  if (o.socket) config.socket.path = o.socket;
  if (o.level) config.log.level = o.level;
  if (o.metrics !== undefined) config.metrics.address = o.metrics;
  if (o.audit !== undefined) config.audit.path = o.audit;

  const log = createLogger(config.log.level, io.logDestination);
  if (file === undefined) log.info({ backend: config.backend, profile: config.sim.profile }, 'no --config: using the built-in demo configuration');
  if (Object.keys(config.assignments).length === 0) {
    log.info('no devices are assigned to tenants; assign them with `vfio-broker assign DEVICE TENANT`');
  }

  // Subscribed before starting, so a signal during startup stops the daemon once it is up.
  let signals = 0;
  let daemon: Daemon | undefined;
  let finish: (code: number) => void = () => undefined;
  const done = new Promise<number>((resolve) => (finish = resolve));
  const stop = (d: Daemon) =>
    d.stop().then(
      async () => {
        unsubscribe();
        await flush(log);
        finish(0);
      },
      async (err: unknown) => {
        unsubscribe();
        log.error({ error: errorMessage(err) }, 'shutdown failed');
        await flush(log);
        io.stderr(`vfio-broker serve: shutdown failed: ${errorMessage(err)}\n`);
        finish(1);
      },
    );
  const unsubscribe = io.onSignal((signal) => {
    signals += 1;
    if (signals > 1) {
      io.stderr(`vfio-broker serve: ${signal} again; exiting before shutdown finished\n`);
      unsubscribe();
      io.exit(1);
      finish(1);
      return;
    }
    log.info({ signal }, 'shutting down');
    if (daemon) void stop(daemon);
  });

  try {
    daemon = await startDaemon({ config, log });
  } catch (err) {
    unsubscribe();
    log.error({ error: errorMessage(err) }, 'startup failed');
    await flush(log);
    io.stderr(`vfio-broker serve: ${startupMessage(err, config)}\n`);
    return 2;
  }
  if (signals > 0) void stop(daemon);
  return done;
}
