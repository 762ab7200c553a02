/**
 * Keeps deploy/ and the Dockerfile honest: the alert rules pass promtool and
 * their unit tests, the systemd unit passes systemd-analyze, the Kubernetes
 * manifests parse and agree with each other, and the dashboard and alerts only
 * query metrics the daemon really exports (checked against the contract and
 * against BrokerMetrics' own registry).
 *
 * promtool, systemd-analyze/systemd-sysusers and python3-yaml come from
 * scripts/setup-system-deps.sh. Under CI a missing tool fails its test; locally
 * (CI unset) the test is skipped instead.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { parseConfig } from '../src/config/config.js';
import { BrokerMetrics } from '../src/obs/metrics.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEPLOY = path.join(ROOT, 'deploy');
const IN_CI = Boolean(process.env['CI']) && process.env['CI'] !== 'false';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-deploy-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(cmd: string, args: string[], cwd = ROOT) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

function which(cmd: string): string | undefined {
  const r = run('sh', ['-c', 'command -v "$1"', 'sh', cmd]);
  return r.status === 0 ? r.out.trim() : undefined;
}

/** Debian's python3 (where python3-yaml installs) first, then whatever python3 is on PATH. */
const PYTHON = ['/usr/bin/python3', 'python3'].find((py) => run(py, ['-c', 'import yaml']).status === 0);
const TOOLS = { promtool: which('promtool'), 'systemd-analyze': which('systemd-analyze'), 'systemd-sysusers': which('systemd-sysusers'), 'python3-yaml': PYTHON };
type Tool = keyof typeof TOOLS;

/** A test that needs system tools: fails under CI when one is missing, is skipped locally. */
function withTools(name: string, tools: Tool[], fn: () => void | Promise<void>) {
  const missing = tools.filter((t) => !TOOLS[t]);
  if (missing.length > 0 && !IN_CI) return test.skip(`${name} (needs ${missing.join(', ')}: scripts/setup-system-deps.sh)`, fn);
  return test(name, () => {
    if (missing.length > 0) throw new Error(`${missing.join(', ')} not installed: .ci/run must call scripts/setup-system-deps.sh before npm test`);
    return fn();
  });
}

/** YAML documents of a file, through python3-yaml (the project has no YAML parser of its own). */
function loadYaml(file: string): any[] {
  const r = run(PYTHON!, ['-c', 'import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))', file]);
  if (r.status !== 0) throw new Error(`${path.relative(ROOT, file)} is not valid YAML:\n${r.out}`);
  return (JSON.parse(r.out) as unknown[]).filter((d) => d !== null) as any[];
}

// --- Metric names ---------------------------------------------------------------

/** The metrics the daemon promises (deploy/README.md); histograms by family name. */
const CONTRACT = ['grpc_server_handled_total', 'grpc_server_handling_seconds', 'kernel_call_duration_seconds', 'teardowns_total', 'teardown_step_failures_total',
  'vdevice_teardowns_total', 'context_queue_wait_seconds', 'ready', 'audit_records_total', 'build_info', 'kernel_info', 'kernel_capability_info', 'objects', 'contexts', 'devices']
  .map((n) => `vfio_broker_${n}`);
const CONTRACT_PREFIXES = ['vfio_broker_process_', 'vfio_broker_nodejs_'];

/** Every family and series name the daemon's registry exports (histograms as _bucket/_sum/_count too). */
async function exportedNames(): Promise<Set<string>> {
  const metrics = new BrokerMetrics('0.0.0-test');
  metrics.kernelProbed({ backend: 'sim', release: 'test', profile: 'linux-6.17', ioctls: ['IOMMU_DESTROY'], selftest: false });
  const names = new Set<string>();
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
  }
  return names;
}

function inContract(name: string): boolean {
  const family = name.replace(/_(bucket|sum|count)$/, '');
  return CONTRACT.includes(name) || CONTRACT.includes(family) || CONTRACT_PREFIXES.some((p) => name.startsWith(p));
}

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'offset', 'bool', 'inf', 'nan']);

/** Metric names a PromQL expression selects: identifiers that are not functions, keywords, labels, numbers or $variables. */
function metricNames(expr: string): string[] {
  const e = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const out = new Set<string>();
  for (const m of e.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    if (m.index > 0 && /[A-Za-z0-9_.$]/.test(e[m.index - 1]!)) continue;
    if (/^\s*\(/.test(e.slice(m.index + m[0].length))) continue;
    if (!PROMQL_WORDS.has(m[0].toLowerCase())) out.add(m[0]);
  }
  return [...out];
}

test('metricNames finds selectors and nothing else', () => {
  expect(metricNames('histogram_quantile(0.99, sum by (op, le) (rate(vfio_broker_x_bucket{a="b{c}"}[$__rate_interval]))) > 1e-3')).toEqual(['vfio_broker_x_bucket']);
  expect(metricNames('(a unless a offset 15m) or increase(b[15m]) and on (instance) up == 0').sort()).toEqual(['a', 'b', 'up']);
});

// --- Prometheus ---------------------------------------------------------------

describe('Prometheus alerts', () => {
  const prom = path.join(DEPLOY, 'prometheus');

  withTools('promtool check rules deploy/prometheus/alerts.yml', ['promtool'], () => {
    const r = run('promtool', ['check', 'rules', 'alerts.yml'], prom);
    expect(r.status, r.out).toBe(0);
  });

  withTools('promtool test rules deploy/prometheus/alerts.test.yml', ['promtool'], () => {
    const r = run('promtool', ['test', 'rules', 'alerts.test.yml'], prom);
    expect(r.status, r.out).toBe(0);
  });

  withTools('alerts.test.yml and kubernetes/prometheusrule.yaml are what generate.py writes', ['python3-yaml'], () => {
    fs.mkdirSync(path.join(tmp, 'gen', 'prometheus'), { recursive: true });
    fs.mkdirSync(path.join(tmp, 'gen', 'kubernetes'), { recursive: true });
    for (const f of ['alerts.yml', 'generate.py']) fs.copyFileSync(path.join(prom, f), path.join(tmp, 'gen', 'prometheus', f));
    const r = run(PYTHON!, [path.join(tmp, 'gen', 'prometheus', 'generate.py')]);
    expect(r.status, r.out).toBe(0);
    for (const f of ['prometheus/alerts.test.yml', 'kubernetes/prometheusrule.yaml']) {
      const stale = `deploy/${f} is stale: run python3 deploy/prometheus/generate.py`;
      expect(fs.readFileSync(path.join(DEPLOY, f), 'utf8'), stale).toBe(fs.readFileSync(path.join(tmp, 'gen', f), 'utf8'));
    }
  });

  withTools('every alert has a severity, summary, description and runbook, and queries only exported metrics', ['python3-yaml'], async () => {
    const exported = await exportedNames();
    const rules = loadYaml(path.join(prom, 'alerts.yml'))[0].groups.flatMap((g: any) => g.rules);
    expect(rules.length).toBeGreaterThan(0);
    for (const rule of rules) {
      expect(['critical', 'warning'], rule.alert).toContain(rule.labels?.severity);
      for (const key of ['summary', 'description', 'runbook']) expect(rule.annotations?.[key], `${rule.alert}.${key}`).toBeTruthy();
      for (const name of metricNames(rule.expr).filter((n) => n !== 'up')) {
        expect(inContract(name) && exported.has(name), `${rule.alert} queries ${name}`).toBe(true);
      }
    }
    const tested = new Set(loadYaml(path.join(prom, 'alerts.test.yml'))[0].tests.flatMap((t: any) => t.alert_rule_test.filter((a: any) => a.exp_alerts.length > 0).map((a: any) => a.alertname)));
    for (const rule of rules) expect(tested.has(rule.alert), `alerts.test.yml has no case where ${rule.alert} fires`).toBe(true);
  });
});

// --- Grafana -----------------------------------------------------------------

describe('Grafana dashboard', () => {
  const dashboard = JSON.parse(fs.readFileSync(path.join(DEPLOY, 'grafana', 'vfio-broker.json'), 'utf8'));
  const panels: any[] = dashboard.panels.flatMap((p: any) => [p, ...(p.panels ?? [])]);
  const exprs: string[] = panels.flatMap((p) => (p.targets ?? []).map((t: any) => t.expr));
  const variableMetrics: string[] = dashboard.templating.list.flatMap((v: any) => [...String(v.definition ?? '').matchAll(/label_values\(\s*([A-Za-z_:][\w:]*)/g)].map((m) => m[1]));

  test('is an importable dashboard with a DS_PROMETHEUS input', () => {
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.uid).toBe('vfio-broker');
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      if (p.type !== 'row') expect(p.datasource?.uid, p.title).toBe('${DS_PROMETHEUS}');
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe('${DS_PROMETHEUS}');
    }
  });

  test('queries only exported metrics, and covers the main ones', async () => {
    const exported = await exportedNames();
    const used = new Set([...exprs.flatMap(metricNames), ...variableMetrics]);
    for (const name of used) expect(inContract(name) && exported.has(name), `the dashboard queries ${name}`).toBe(true);
    const families = new Set([...used].map((n) => n.replace(/_(bucket|sum|count)$/, '')));
    for (const name of CONTRACT) expect(families.has(name), `no panel shows ${name}`).toBe(true);
    expect([...used].some((n) => n.startsWith('vfio_broker_process_'))).toBe(true);
  });

  withTools('every panel query is valid PromQL (promtool check rules)', ['promtool'], () => {
    const rules = exprs.map((expr, i) => ({
      record: `dashboard:query_${i}`,
      expr: expr.replace(/\$__rate_interval|\$__interval/g, '5m').replace(/\$__range/g, '1h').replace(/\$\{?instance\}?/g, '.*'),
    }));
    const file = path.join(tmp, 'dashboard-rules.json');
    fs.writeFileSync(file, JSON.stringify({ groups: [{ name: 'dashboard', rules }] }));
    const r = run('promtool', ['check', 'rules', file]);
    expect(r.status, r.out).toBe(0);
  });
});

// --- systemd ------------------------------------------------------------------

describe('systemd unit', () => {
  const unitFile = path.join(DEPLOY, 'systemd', 'vfio-broker.service');
  const unit = fs.readFileSync(unitFile, 'utf8');
  const lines = unit.split('\n');
  const directives = lines.flatMap((l, i) => (/^[A-Za-z]+=/.test(l) ? [{ key: l.slice(0, l.indexOf('=')), value: l.slice(l.indexOf('=') + 1), i }] : []));
  const values = (key: string) => directives.filter((d) => d.key === key).map((d) => d.value);

  withTools('systemd-analyze verify accepts it (ExecStart pointed at a stub)', ['systemd-analyze'], () => {
    const dir = path.join(tmp, 'systemd');
    fs.mkdirSync(dir, { recursive: true });
    const stub = path.join(dir, 'vfio-broker');
    fs.writeFileSync(stub, '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const copy = path.join(dir, 'vfio-broker.service');
    fs.writeFileSync(copy, unit.replace(/^ExecStart=\/usr\/bin\/vfio-broker /m, `ExecStart=${stub} `));
    expect(fs.readFileSync(copy, 'utf8')).toContain(`ExecStart=${stub} serve`);
    const r = run('systemd-analyze', ['verify', copy]);
    // verify exits 0 on unknown keys and unparsable values, printing a warning: any line about the unit fails.
    const complaints = r.out.split('\n').filter((l) => l.includes('vfio-broker'));
    expect({ status: r.status, complaints }, r.out).toEqual({ status: 0, complaints: [] });
  });

  withTools('systemd-sysusers creates the socket group', ['systemd-sysusers'], () => {
    const root = path.join(tmp, 'sysusers');
    fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
    const r = run('systemd-sysusers', [`--root=${root}`, path.join(DEPLOY, 'systemd', 'vfio-broker.sysusers.conf')]);
    expect(r.status, r.out).toBe(0);
    expect(fs.readFileSync(path.join(root, 'etc', 'group'), 'utf8')).toMatch(/^vfio-broker:x:\d+:/m);
  });

  test('has the lifecycle, device and capability settings the daemon depends on', () => {
    expect(values('Type')).toEqual(['notify']);
    expect(values('NotifyAccess')).toEqual(['main']);
    expect(values('WatchdogSec')).toHaveLength(1);
    expect(values('ExecStart')).toEqual(['/usr/bin/vfio-broker serve --config /etc/vfio-broker/config.json']);
    expect(values('RuntimeDirectory')).toEqual(['vfio-broker']);
    expect(values('LogsDirectory')).toEqual(['vfio-broker']);
    expect(values('DevicePolicy')).toEqual(['closed']);
    expect(values('DeviceAllow').sort()).toEqual(['/dev/iommu rw', 'char-vfio-dev rw']);
    expect(values('CapabilityBoundingSet')).toEqual(['CAP_IPC_LOCK']);
    expect(values('ProtectSystem')).toEqual(['strict']);
    expect(values('ReadWritePaths').join(' ').split(/\s+/)).toEqual(expect.arrayContaining(['/sys/bus/pci', '/sys/devices']));
    expect(values('RestrictAddressFamilies')).toEqual(['AF_UNIX AF_INET AF_INET6']);
    // V8's JIT needs W+X memory.
    expect(values('MemoryDenyWriteExecute')).toEqual([]);
  });

  test('explains every hardening setting in a comment right above it', () => {
    const hardening = /^(Protect|Private|Restrict|Lock|SystemCall|Capability|Ambient|NoNewPrivileges|Device|ReadWritePaths|MemoryDeny|UMask|Group)/;
    for (const d of directives.filter((x) => hardening.test(x.key))) {
      expect(lines[d.i - 1]?.startsWith('#'), `${d.key}= (line ${d.i + 1}) has no comment above it`).toBe(true);
    }
  });

  test('config.example.json is accepted by the daemon and matches the unit', () => {
    const config = parseConfig(JSON.parse(fs.readFileSync(path.join(DEPLOY, 'systemd', 'config.example.json'), 'utf8')), 'config.example.json');
    expect(config.backend).toBe('linux');
    expect(path.dirname(config.socket.path)).toBe('/run/vfio-broker'); // RuntimeDirectory
    expect(path.dirname(config.audit.path)).toBe('/var/log/vfio-broker'); // LogsDirectory
    expect(config.metrics.address).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});

// --- Kubernetes --------------------------------------------------------------

describe('Kubernetes manifests', () => {
  const dir = path.join(DEPLOY, 'kubernetes');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort();

  withTools('parse, agree with each other and with the daemon', ['python3-yaml'], () => {
    const docs = Object.fromEntries(files.map((f) => [f, loadYaml(path.join(dir, f))]));
    const all = Object.values(docs).flat();
    const byKind = (kind: string) => all.filter((d) => d.kind === kind);
    const one = (kind: string) => {
      expect(byKind(kind), kind).toHaveLength(1);
      return byKind(kind)[0];
    };

    expect(one('Kustomization').resources.sort()).toEqual(files.filter((f) => f !== 'kustomization.yaml'));
    for (const d of all.filter((x) => x.kind !== 'Kustomization')) {
      expect(d.apiVersion && d.metadata?.name, `${d.kind} without apiVersion or name`).toBeTruthy();
      expect(d.kind === 'Namespace' ? d.metadata.name : d.metadata.namespace, d.kind).toBe('vfio-broker');
    }
    expect(one('Namespace').metadata.labels['pod-security.kubernetes.io/enforce']).toBe('privileged');

    const ds = one('DaemonSet');
    const pod = ds.spec.template;
    expect(ds.spec.selector.matchLabels).toEqual(expect.objectContaining({ 'app.kubernetes.io/name': 'vfio-broker' }));
    for (const [k, v] of Object.entries(ds.spec.selector.matchLabels)) expect(pod.metadata.labels[k]).toBe(v);
    const [container, ...others] = pod.spec.containers;
    expect(others).toEqual([]);
    expect(container.securityContext.privileged).toBe(true);
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      expect(container[probe].exec.command.slice(0, 3), probe).toEqual(['node', '/app/bin/vfio-broker.js', 'health']);
    }
    const hostPaths = Object.fromEntries(pod.spec.volumes.filter((v: any) => v.hostPath).map((v: any) => [v.name, v.hostPath.path]));
    expect(Object.values(hostPaths).sort()).toEqual(['/dev/iommu', '/dev/vfio', '/run/vfio-broker', '/sys', '/var/log/vfio-broker']);
    const mounts = Object.fromEntries(container.volumeMounts.map((m: any) => [m.mountPath, m.name]));
    for (const [name, p] of Object.entries(hostPaths)) expect(mounts[p as string], `${p} is mounted at the same path`).toBe(name);

    // The config the pod mounts is accepted by the daemon and uses the mounted directories.
    const cm = one('ConfigMap');
    const config = parseConfig(JSON.parse(cm.data['config.json']), 'configmap config.json');
    const configVolume = pod.spec.volumes.find((v: any) => v.configMap?.name === cm.metadata.name);
    expect(container.volumeMounts.find((m: any) => m.name === configVolume.name).mountPath).toBe('/etc/vfio-broker');
    expect(container.args).toEqual(expect.arrayContaining(['serve', '--config', '/etc/vfio-broker/config.json', '--metrics-address']));
    expect(mounts[path.dirname(config.socket.path)]).toBe('run');
    expect(mounts[path.dirname(config.audit.path)]).toBe('audit');
    expect(container.startupProbe.exec.command.slice(3)).toEqual(['--socket', config.socket.path]);

    // Metrics: container port, scrape annotations, Service and ServiceMonitor line up.
    const port = container.ports.find((p: any) => p.name === 'metrics');
    expect(container.args[container.args.indexOf('--metrics-address') + 1]).toBe(`$(POD_IP):${port.containerPort}`);
    expect(pod.metadata.annotations['prometheus.io/port']).toBe(String(port.containerPort));
    const svc = one('Service');
    for (const [k, v] of Object.entries(svc.spec.selector)) expect(pod.metadata.labels[k]).toBe(v);
    expect(svc.spec.ports.find((p: any) => p.name === 'metrics').targetPort).toBe('metrics');
    const sm = one('ServiceMonitor');
    expect(sm.metadata.name).toBe('vfio-broker'); // job label the alerts expect
    for (const [k, v] of Object.entries(sm.spec.selector.matchLabels)) expect(svc.metadata.labels[k]).toBe(v);
    expect(sm.spec.endpoints.map((e: any) => e.port)).toEqual(['metrics']);

    expect(one('PrometheusRule').spec.groups).toEqual(loadYaml(path.join(DEPLOY, 'prometheus', 'alerts.yml'))[0].groups);
  });
});

// --- Scripts -------------------------------------------------------------------

test.each(['scripts/setup-system-deps.sh', 'deploy/systemd/sandbox-smoke.sh'])('%s is valid bash and executable', (script) => {
  const r = run('bash', ['-n', script]);
  expect(r.status, r.out).toBe(0);
  expect(fs.statSync(path.join(ROOT, script)).mode & 0o111).not.toBe(0);
});

// --- Dockerfile -----------------------------------------------------------------

describe('Dockerfile', () => {
  const dockerfile = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
  const allowed = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').filter((l) => l.startsWith('!')).map((l) => l.slice(1));

  test('copies only files that exist and that .dockerignore lets through', () => {
    const sources = [...dockerfile.matchAll(/^COPY (?!--from)(.+)$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/).slice(0, -1));
    expect(sources.length).toBeGreaterThan(0);
    for (const src of sources) {
      expect(fs.existsSync(path.join(ROOT, src)), `COPY ${src}`).toBe(true);
      expect(allowed, `.dockerignore keeps ${src} out of the context`).toContain(src);
    }
  });

  test('builds on Node 22 and runs the CLI with a health check', () => {
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:22-bookworm-slim$/m);
    expect(dockerfile).toMatch(/npm ci --omit=dev --ignore-scripts/);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "\/app\/bin\/vfio-broker\.js"\]$/m);
    expect(dockerfile).toMatch(/^CMD \["serve"\]$/m);
    expect(dockerfile).toMatch(/CMD \["node", "\/app\/bin\/vfio-broker\.js", "health"\]/);
  });
});
