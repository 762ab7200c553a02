/**
 * Daemon configuration: a JSON file, every key optional, unknown keys refused
 * with the path of the key so a typo never silently falls back to a default.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KERNEL_PROFILES, type KernelProfile } from '../kernel/types.js';
import type { IdentityRule } from '../rpc/identity.js';
import { parseHostPort } from '../obs/metrics-server.js';
import { DEFAULT_QUOTA, type TenantQuota } from '../broker/quotas.js';

export type BackendName = 'sim' | 'linux';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface SimDeviceConfig {
  bdf: string;
  vendorId: number;
  deviceId: number;
  iommuGroup: number;
  cdev?: string;
  driver?: string;
  description?: string;
  iommu?: string;
}

export interface Config {
  backend: BackendName;
  /** `gid`: group given the socket, so its members can connect (with mode 0660). */
  socket: { path: string; mode: number; gid: number | undefined };
  /** `withoutIoctls`: ioctls the simulated kernel pretends to lack (e.g. IOMMU_IOAS_MAP_FILE), for testing fallbacks. */
  sim: { profile: KernelProfile; devices: SimDeviceConfig[] | undefined; withoutIoctls: string[] };
  /**
   * linux backend: `allowlist` of PCI addresses the broker may list, open and
   * rebind (absent = list all, rebind none); `selftestDevices` enables
   * IOMMUFD_TEST mock devices (testing only).
   */
  linux: { allowlist: string[] | undefined; selftestDevices: boolean };
  /** Device (PCI address) → tenant, applied at start. */
  assignments: Record<string, string>;
  identity: { defaultTenant: string; rules: IdentityRule[] };
  /** Optional TCP listener for remote agents: mTLS only. */
  tcp: { address: string; caFile: string; certFile: string; keyFile: string } | undefined;
  quotas: { default: TenantQuota; tenants: Record<string, Partial<TenantQuota>> };
  teardown: { clientGoneGraceSeconds: number };
  shutdown: { drainSeconds: number; teardownContexts: boolean };
  log: { level: LogLevel };
  /** HOST:PORT of the Prometheus listener; empty to disable. */
  metrics: { address: string };
  /** Audit log file; empty to disable. */
  audit: { path: string; sync: 'fdatasync' | 'none' };
  /**
   * The fd socket (LeaseDeviceFd, PrepareMemoryUpload): its path (default:
   * next to socket.path, see handoffSocketPath) and how long a token lives.
   */
  handoff: { socketPath: string | undefined; leaseSeconds: number };
  /**
   * Restart without teardown: the journal of contexts and objects (empty to
   * disable; default: `journal` in systemd's $STATE_DIRECTORY when set) and how
   * it is flushed. The files themselves survive in systemd's fd store.
   */
  restart: { journalPath: string; sync: 'fdatasync' | 'none' };
}

/** The fd socket's path: the configured one, else `broker.sock` → `broker-fd.sock` beside the gRPC socket. */
export function handoffSocketPath(config: Pick<Config, 'socket' | 'handoff'>): string {
  if (config.handoff.socketPath) return config.handoff.socketPath;
  const base = path.basename(config.socket.path).replace(/\.sock$/, '');
  return path.join(path.dirname(config.socket.path), `${base}-fd.sock`);
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Where the socket lives when nothing says otherwise: /run for root, the user's runtime dir otherwise. */
export function defaultSocketPath(): string {
  if (process.env['VFIO_BROKER_SOCKET']) return process.env['VFIO_BROKER_SOCKET'];
  if (process.getuid?.() === 0) return '/run/vfio-broker/broker.sock';
  const runtime = process.env['XDG_RUNTIME_DIR'] ?? path.join(os.tmpdir(), `vfio-broker-${process.getuid?.() ?? 'user'}`);
  return path.join(runtime, 'vfio-broker', 'broker.sock');
}

/** Persistent state for the audit log: /var/log for root, the user's state dir otherwise. */
export function defaultAuditPath(): string {
  if (process.getuid?.() === 0) return '/var/log/vfio-broker/audit.log';
  const state = process.env['XDG_STATE_HOME'] ?? path.join(os.homedir(), '.local', 'state');
  return path.join(state, 'vfio-broker', 'audit.log');
}

/** The journal in systemd's StateDirectory= ($STATE_DIRECTORY, first entry), else none. */
export function defaultJournalPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env['STATE_DIRECTORY']?.split(':')[0];
  return dir ? path.join(dir, 'journal') : '';
}

export const DEFAULT_METRICS_ADDRESS = '127.0.0.1:9473';

export function defaultConfig(): Config {
  return {
    backend: 'sim',
    socket: { path: defaultSocketPath(), mode: 0o660, gid: undefined },
    sim: { profile: 'linux-6.17', devices: undefined, withoutIoctls: [] },
    linux: { allowlist: undefined, selftestDevices: false },
    assignments: {},
    identity: { defaultTenant: 'default', rules: [] },
    tcp: undefined,
    quotas: { default: { ...DEFAULT_QUOTA }, tenants: {} },
    teardown: { clientGoneGraceSeconds: 10 },
    shutdown: { drainSeconds: 10, teardownContexts: true },
    log: { level: 'info' },
    metrics: { address: DEFAULT_METRICS_ADDRESS },
    audit: { path: defaultAuditPath(), sync: 'fdatasync' },
    handoff: { socketPath: undefined, leaseSeconds: 10 },
    restart: { journalPath: defaultJournalPath(), sync: 'fdatasync' },
  };
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function object(v: unknown, at: string, keys: readonly string[]): Json {
  if (!isObject(v)) throw new ConfigError(`${at}: expected an object`);
  for (const key of Object.keys(v)) {
    if (!keys.includes(key)) throw new ConfigError(`${at}.${key}: unknown setting (known: ${keys.join(', ')})`);
  }
  return v;
}

function str(v: unknown, at: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(`${at}: expected a non-empty string`);
  return v;
}

function num(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new ConfigError(`${at}: expected a number in ${min}..${max}`);
  return v;
}

function int(v: unknown, at: string, min: number, max: number): number {
  const n = num(v, at, min, max);
  if (!Number.isInteger(n)) throw new ConfigError(`${at}: expected an integer`);
  return n;
}

function oneOf<T extends string>(v: unknown, at: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw new ConfigError(`${at}: expected one of ${allowed.join(', ')}`);
  return v as T;
}

/** Accepts "0660" / "660" (octal, as chmod writes it) or a number. */
export function parseMode(v: unknown, at: string): number {
  const mode = typeof v === 'string' && /^0?[0-7]{3}$/.test(v) ? parseInt(v, 8) : typeof v === 'number' ? v : NaN;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new ConfigError(`${at}: expected an octal file mode such as "0660"`);
  if (mode & 0o002) throw new ConfigError(`${at}: a world-writable socket would let any local user drive the broker`);
  return mode;
}

function simDevice(v: unknown, at: string): SimDeviceConfig {
  const o = object(v, at, ['bdf', 'vendorId', 'deviceId', 'iommuGroup', 'cdev', 'driver', 'description', 'iommu']);
  const out: SimDeviceConfig = {
    bdf: str(o['bdf'], `${at}.bdf`),
    vendorId: int(o['vendorId'], `${at}.vendorId`, 0, 0xffff),
    deviceId: int(o['deviceId'], `${at}.deviceId`, 0, 0xffff),
    iommuGroup: int(o['iommuGroup'], `${at}.iommuGroup`, 0, 0xffff_ffff),
  };
  for (const key of ['cdev', 'driver', 'description', 'iommu'] as const) {
    if (o[key] !== undefined) out[key] = str(o[key], `${at}.${key}`);
  }
  return out;
}

export function parseConfig(raw: unknown, source: string): Config {
  const cfg = defaultConfig();
  const top = object(raw, source, ['backend', 'socket', 'sim', 'linux', 'assignments', 'identity', 'tcp', 'quotas', 'teardown', 'shutdown', 'log', 'metrics', 'audit', 'handoff', 'restart']);
  if (top['backend'] !== undefined) cfg.backend = oneOf(top['backend'], 'backend', ['sim', 'linux'] as const);
  if (top['socket'] !== undefined) {
    const s = object(top['socket'], 'socket', ['path', 'mode', 'gid']);
    if (s['path'] !== undefined) cfg.socket.path = str(s['path'], 'socket.path');
    if (s['mode'] !== undefined) cfg.socket.mode = parseMode(s['mode'], 'socket.mode');
    if (s['gid'] !== undefined) cfg.socket.gid = int(s['gid'], 'socket.gid', 0, 0xffff_fffe);
  }
  if (top['sim'] !== undefined) {
    const s = object(top['sim'], 'sim', ['profile', 'devices', 'withoutIoctls']);
    if (s['profile'] !== undefined) cfg.sim.profile = oneOf(s['profile'], 'sim.profile', KERNEL_PROFILES);
    if (s['devices'] !== undefined) {
      if (!Array.isArray(s['devices'])) throw new ConfigError('sim.devices: expected an array');
      cfg.sim.devices = s['devices'].map((d, i) => simDevice(d, `sim.devices[${i}]`));
    }
    if (s['withoutIoctls'] !== undefined) {
      if (!Array.isArray(s['withoutIoctls'])) throw new ConfigError('sim.withoutIoctls: expected an array of ioctl names');
      cfg.sim.withoutIoctls = s['withoutIoctls'].map((n, i) => str(n, `sim.withoutIoctls[${i}]`));
    }
  }
  if (top['linux'] !== undefined) {
    const l = object(top['linux'], 'linux', ['allowlist', 'selftestDevices']);
    if (l['allowlist'] !== undefined) {
      if (!Array.isArray(l['allowlist'])) throw new ConfigError('linux.allowlist: expected an array of PCI addresses');
      cfg.linux.allowlist = l['allowlist'].map((a, i) => str(a, `linux.allowlist[${i}]`));
    }
    if (l['selftestDevices'] !== undefined) {
      if (typeof l['selftestDevices'] !== 'boolean') throw new ConfigError('linux.selftestDevices: expected true or false');
      cfg.linux.selftestDevices = l['selftestDevices'];
    }
  }
  if (top['assignments'] !== undefined) {
    const a = top['assignments'];
    if (!isObject(a)) throw new ConfigError('assignments: expected an object of "PCI address": "tenant"');
    for (const [device, tenant] of Object.entries(a)) cfg.assignments[device] = str(tenant, `assignments.${device}`);
  }
  if (top['identity'] !== undefined) {
    const i = object(top['identity'], 'identity', ['defaultTenant', 'rules']);
    if (i['defaultTenant'] !== undefined) cfg.identity.defaultTenant = tenant(i['defaultTenant'], 'identity.defaultTenant');
    if (i['rules'] !== undefined) {
      if (!Array.isArray(i['rules'])) throw new ConfigError('identity.rules: expected an array');
      cfg.identity.rules = i['rules'].map((r, n) => identityRule(r, `identity.rules[${n}]`));
    }
  }
  if (top['tcp'] !== undefined) {
    const t = object(top['tcp'], 'tcp', ['address', 'caFile', 'certFile', 'keyFile']);
    const missing = ['address', 'caFile', 'certFile', 'keyFile'].filter((k) => t[k] === undefined);
    if (missing.length > 0) throw new ConfigError(`tcp: mTLS is required for TCP; missing ${missing.join(', ')}`);
    cfg.tcp = {
      address: hostPort(t['address'], 'tcp.address'),
      caFile: str(t['caFile'], 'tcp.caFile'),
      certFile: str(t['certFile'], 'tcp.certFile'),
      keyFile: str(t['keyFile'], 'tcp.keyFile'),
    };
  }
  if (top['quotas'] !== undefined) {
    const q = object(top['quotas'], 'quotas', ['default', 'tenants']);
    if (q['default'] !== undefined) cfg.quotas.default = { ...cfg.quotas.default, ...quota(q['default'], 'quotas.default') };
    if (q['tenants'] !== undefined) {
      const t = q['tenants'];
      if (!isObject(t)) throw new ConfigError('quotas.tenants: expected an object of tenant: quota');
      for (const [name, value] of Object.entries(t)) cfg.quotas.tenants[tenant(name, `quotas.tenants.${name}`)] = quota(value, `quotas.tenants.${name}`);
    }
  }
  if (top['teardown'] !== undefined) {
    const t = object(top['teardown'], 'teardown', ['clientGoneGraceSeconds']);
    if (t['clientGoneGraceSeconds'] !== undefined) cfg.teardown.clientGoneGraceSeconds = num(t['clientGoneGraceSeconds'], 'teardown.clientGoneGraceSeconds', 0, 86_400);
  }
  if (top['shutdown'] !== undefined) {
    const s = object(top['shutdown'], 'shutdown', ['drainSeconds', 'teardownContexts']);
    if (s['drainSeconds'] !== undefined) cfg.shutdown.drainSeconds = num(s['drainSeconds'], 'shutdown.drainSeconds', 0, 3600);
    if (s['teardownContexts'] !== undefined) {
      if (typeof s['teardownContexts'] !== 'boolean') throw new ConfigError('shutdown.teardownContexts: expected true or false');
      cfg.shutdown.teardownContexts = s['teardownContexts'];
    }
  }
  if (top['log'] !== undefined) {
    const l = object(top['log'], 'log', ['level']);
    if (l['level'] !== undefined) cfg.log.level = oneOf(l['level'], 'log.level', LOG_LEVELS);
  }
  if (top['metrics'] !== undefined) {
    const m = object(top['metrics'], 'metrics', ['address']);
    if (m['address'] !== undefined) cfg.metrics.address = metricsAddress(m['address'], 'metrics.address');
  }
  if (top['audit'] !== undefined) {
    const a = object(top['audit'], 'audit', ['path', 'sync']);
    if (a['path'] !== undefined) {
      if (typeof a['path'] !== 'string') throw new ConfigError('audit.path: expected a file path, or "" to disable the audit log');
      cfg.audit.path = a['path'];
    }
    if (a['sync'] !== undefined) cfg.audit.sync = oneOf(a['sync'], 'audit.sync', ['fdatasync', 'none'] as const);
  }
  if (top['handoff'] !== undefined) {
    const h = object(top['handoff'], 'handoff', ['socketPath', 'leaseSeconds']);
    if (h['socketPath'] !== undefined) cfg.handoff.socketPath = str(h['socketPath'], 'handoff.socketPath');
    if (h['leaseSeconds'] !== undefined) cfg.handoff.leaseSeconds = num(h['leaseSeconds'], 'handoff.leaseSeconds', 0.001, 3600);
  }
  if (top['restart'] !== undefined) {
    const r = object(top['restart'], 'restart', ['journalPath', 'sync']);
    if (r['journalPath'] !== undefined) {
      const p = r['journalPath'];
      if (typeof p !== 'string' || (p !== '' && (!path.isAbsolute(p) || p.endsWith('/')))) {
        throw new ConfigError('restart.journalPath: expected an absolute file path, or "" to disable restart without teardown');
      }
      cfg.restart.journalPath = p;
    }
    if (r['sync'] !== undefined) cfg.restart.sync = oneOf(r['sync'], 'restart.sync', ['fdatasync', 'none'] as const);
  }
  return cfg;
}

function tenant(v: unknown, at: string): string {
  const name = str(v, at);
  if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) throw new ConfigError(`${at}: "${name}" is not a tenant name (lowercase letters, digits, . _ -; at most 63)`);
  return name;
}

function identityRule(v: unknown, at: string): IdentityRule {
  const o = object(v, at, ['uid', 'gid', 'uri', 'dns', 'cn', 'admin', 'tenant']);
  const selectors = ['uid', 'gid', 'uri', 'dns', 'cn'].filter((k) => o[k] !== undefined);
  if (selectors.length !== 1) throw new ConfigError(`${at}: give exactly one of uid, gid, uri, dns, cn`);
  const grants = (o['admin'] === true ? 1 : 0) + (o['tenant'] !== undefined ? 1 : 0);
  if (grants !== 1 || (o['admin'] !== undefined && o['admin'] !== true)) throw new ConfigError(`${at}: give exactly one of "admin": true or "tenant": NAME`);
  const rule: IdentityRule = o['admin'] === true ? { admin: true } : { tenant: tenant(o['tenant'], `${at}.tenant`) };
  if (o['uid'] !== undefined) rule.uid = int(o['uid'], `${at}.uid`, 0, 0xffff_fffe);
  if (o['gid'] !== undefined) rule.gid = int(o['gid'], `${at}.gid`, 0, 0xffff_fffe);
  if (o['uri'] !== undefined) rule.uri = str(o['uri'], `${at}.uri`);
  if (o['dns'] !== undefined) rule.dns = str(o['dns'], `${at}.dns`);
  if (o['cn'] !== undefined) rule.cn = str(o['cn'], `${at}.cn`);
  return rule;
}

function quota(v: unknown, at: string): Partial<TenantQuota> {
  const o = object(v, at, ['contexts', 'objects', 'pinnedBytes', 'requestsPerSecond', 'burst']);
  const out: Partial<TenantQuota> = {};
  if (o['contexts'] !== undefined) out.contexts = int(o['contexts'], `${at}.contexts`, 0, 1_000_000);
  if (o['objects'] !== undefined) out.objects = int(o['objects'], `${at}.objects`, 0, 100_000_000);
  if (o['pinnedBytes'] !== undefined) out.pinnedBytes = int(o['pinnedBytes'], `${at}.pinnedBytes`, 0, Number.MAX_SAFE_INTEGER);
  if (o['requestsPerSecond'] !== undefined) out.requestsPerSecond = num(o['requestsPerSecond'], `${at}.requestsPerSecond`, 0.001, 1_000_000);
  if (o['burst'] !== undefined) out.burst = int(o['burst'], `${at}.burst`, 1, 10_000_000);
  return out;
}

/** HOST:PORT, [v6]:PORT, or "" to disable. */
export function metricsAddress(v: unknown, at: string): string {
  if (v === '') return '';
  if (typeof v !== 'string' || !parseHostPort(v)) throw new ConfigError(`${at}: expected HOST:PORT such as ${DEFAULT_METRICS_ADDRESS}, or "" to disable`);
  return v;
}

function hostPort(v: unknown, at: string): string {
  if (typeof v !== 'string' || !parseHostPort(v)) throw new ConfigError(`${at}: expected HOST:PORT`);
  return v;
}

export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(raw, file);
}
