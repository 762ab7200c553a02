/**
 * The vfio-broker CLI, driven in-process through `run` against a daemon on a
 * temp socket: a VM's whole lifecycle, watch, usage errors, daemon errors and
 * `serve` itself.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../src/cli/main.js';
import { memoryIo, type MemoryIo } from '../src/cli/io.js';
import { defaultConfig } from '../src/config/config.js';
import { startDaemon, type Daemon } from '../src/daemon.js';
import { createLogger } from '../src/obs/log.js';
import { redeemDeviceFd } from '../src/rpc/handoff-client.js';

let dir: string;
let socket: string;
let daemon: Daemon;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-cli-'));
  socket = path.join(dir, 'broker.sock');
  const config = defaultConfig();
  config.socket.path = socket;
  config.metrics.address = '127.0.0.1:0';
  config.audit.path = path.join(dir, 'audit.log');
  daemon = await startDaemon({ config, log: createLogger('silent') });
});

afterAll(async () => {
  await daemon?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Result {
  code: number;
  out: string;
  err: string;
}

/** Runs a client command against the test daemon. */
async function cli(...argv: string[]): Promise<Result> {
  const io = memoryIo();
  const code = await run([...argv, '--socket', socket], io);
  return { code, out: io.out, err: io.err };
}

/** Runs a command line as given (no --socket added). */
async function raw(...argv: string[]): Promise<Result> {
  const io = memoryIo();
  const code = await run(argv, io);
  return { code, out: io.out, err: io.err };
}

async function ok(...argv: string[]): Promise<string> {
  const r = await cli(...argv);
  expect(r.err, `stderr of ${argv.join(' ')}`).toBe('');
  expect(r.code, `exit status of ${argv.join(' ')}`).toBe(0);
  return r.out;
}

async function okJson(...argv: string[]): Promise<Record<string, any>> {
  return JSON.parse(await ok(...argv, '--json')) as Record<string, any>;
}

function handleOf(out: string): string {
  const m = /\bhandle (\d+)\b/.exec(out);
  expect(m, `no handle in ${JSON.stringify(out)}`).not.toBeNull();
  return m![1]!;
}

async function until(io: MemoryIo, text: string): Promise<void> {
  for (let i = 0; i < 200 && !io.out.includes(text); i++) await new Promise((r) => setTimeout(r, 10));
  expect(io.out).toContain(text);
}

describe('vfio-broker CLI', () => {
  it('drives a VM through its whole lifecycle', async () => {
    const devices = await ok('devices');
    expect(devices.split('\n')[0]).toMatch(/^ID\s+VENDOR:DEVICE\s+GROUP\s+CDEV\s+DRIVER\s+STATE\s+TENANT\s+CONTEXT$/);
    expect(devices).toMatch(/0000:01:00\.0\s+144d:a80a\s+12\s+vfio0\s+vfio-pci\s+FREE\s+-\s+-/);
    const devicesJson = await okJson('devices');
    expect(devicesJson['devices'].map((d: { id: string }) => d.id)).toContain('0000:01:00.0');

    expect(await ok('assign', '0000:01:00.0', 'acme')).toBe('assigned 0000:01:00.0 to tenant acme\n');

    const opened = await ok('open', '--tenant', 'acme', '--label', 'vm1');
    expect(opened).toMatch(/^ctx-[0-9a-f]+\n$/);
    const ctx = opened.trim();
    const t = ['--tenant', 'acme'];

    const bound = await ok('bind', ctx, '0000:01:00.0', ...t);
    expect(bound).toMatch(/^DEVICE handle \d+ \(kernel id \d+, 0000:01:00\.0, detached\)\n$/);
    const dev = handleOf(bound);

    const ioasJson = await okJson('alloc-ioas', ctx, ...t);
    expect(ioasJson['ioas']['type']).toBe('OBJECT_TYPE_IOAS');
    const ioas = String(ioasJson['ioas']['handle']);

    const attached = await ok('attach', ctx, dev, ioas, ...t);
    expect(attached).toMatch(new RegExp(`^attached device ${dev} to HWPT_PAGING handle \\d+ \\(kernel id \\d+, automatic\\)\\n$`));
    const autoHwpt = handleOf(attached);

    const np = await ok('alloc-hwpt', ctx, dev, ioas, '--kind', 'nest-parent', ...t);
    expect(np).toMatch(/^HWPT_PAGING handle \d+ \(kernel id \d+, nest parent\)\n$/);
    const nestParent = handleOf(np);

    const reattached = await ok('attach', ctx, dev, nestParent, ...t);
    expect(reattached).toContain(`HWPT_PAGING handle ${nestParent}`);
    expect(reattached).toContain(`replaced HWPT ${autoHwpt}`);

    const viommuOut = await ok('alloc-viommu', ctx, dev, nestParent, ...t);
    expect(viommuOut).toMatch(/^VIOMMU handle \d+ \(kernel id \d+\)\n$/);
    const viommu = handleOf(viommuOut);

    const vdevJson = await okJson('alloc-vdevice', ctx, viommu, dev, '0x42', ...t);
    expect(vdevJson['vdevice']).toMatchObject({ type: 'OBJECT_TYPE_VDEVICE', virtId: '66', state: 'OBJECT_STATE_LIVE' });
    const vdevice = String(vdevJson['vdevice']['handle']);

    const hwInfo = await ok('hw-info', ctx, dev, ...t);
    expect(hwInfo).toMatch(/^type:\s+0xfeedbeef \(SELFTEST\)$/m);

    const objects = await ok('objects', ctx, ...t);
    const lines = objects.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^HANDLE\s+TYPE\s+STATE\s+KERNEL-ID\s+HOLDS\s+HELD-BY\s+DETAIL$/);
    expect(objects).toMatch(new RegExp(`^${dev}\\s+DEVICE\\s+LIVE\\s+\\d+\\s+${nestParent}\\s+${vdevice}\\s+0000:01:00\\.0, attached to ${nestParent}$`, 'm'));
    expect(objects).toMatch(new RegExp(`^${vdevice}\\s+VDEVICE\\s+LIVE\\s+\\d+\\s+${viommu},${dev}\\s+-\\s+virt id 0x42$`, 'm'));
    const objectsJson = await okJson('objects', ctx, ...t);
    expect(objectsJson['objects'].map((o: { type: string }) => o.type)).toEqual([
      'OBJECT_TYPE_DEVICE',
      'OBJECT_TYPE_IOAS',
      'OBJECT_TYPE_HWPT_PAGING',
      'OBJECT_TYPE_VIOMMU',
      'OBJECT_TYPE_VDEVICE',
    ]);

    const contexts = await ok('contexts', '--for-tenant', 'acme');
    expect(contexts).toMatch(new RegExp(`^${ctx}\\s+acme\\s+vm1\\s+\\S+\\s+5\\s+0000:01:00\\.0\\s+0\\s+-\\s+0$`, 'm'));
    expect(await ok('status')).toMatch(/^contexts:\s+1$/m);

    const unbound = await ok('unbind', ctx, dev, ...t);
    expect(unbound).toMatch(/^teardown \(UNBIND\): \d+ steps/);
    expect(unbound).toMatch(new RegExp(`(DESTROY|FOUND_TOMBSTONED)\\s+VDEVICE\\s+handle ${vdevice}`));
    expect(unbound).toMatch(new RegExp(`CLOSE_DEVICE\\s+DEVICE\\s+handle ${dev}`));
    expect(await ok('devices')).toMatch(/0000:01:00\.0\s+144d:a80a\s+12\s+vfio0\s+vfio-pci\s+ASSIGNED\s+acme\s+-/);

    const closed = await okJson('close', ctx, ...t);
    expect(closed['teardown']['reason']).toBe('TEARDOWN_REASON_CLOSE');
    const actions = closed['teardown']['steps'].map((s: { action: string }) => s.action);
    expect(actions.at(-1)).toBe('TEARDOWN_ACTION_CLOSE_IOMMUFD');
    expect(await ok('contexts')).toBe('no contexts\n');

    expect(await ok('unassign', '0000:01:00.0')).toBe('unassigned 0000:01:00.0\n');
  });

  it('apply creates a topology from a file, and names a bad file as a usage error', async () => {
    await ok('assign', '0000:03:01.0', 'default');
    const ctx = (await ok('open', '--label', 'applied')).trim();
    const file = path.join(dir, 'topology.json');
    fs.writeFileSync(
      file,
      JSON.stringify([
        { name: 'ioas', allocIoas: {} },
        { name: 'dev', bind: { deviceId: '0000:03:01.0' } },
        { name: 'auto', attach: { device: 'dev', target: 'ioas' } },
      ]),
    );
    const out = await ok('apply', ctx, file);
    expect(out).toMatch(/^ioas\s+IOAS handle 1/m);
    expect(out).toMatch(/^dev\s+DEVICE handle 2/m);
    expect(out).toMatch(/^auto\s+HWPT_PAGING handle 3 .*automatic/m);
    fs.writeFileSync(file, '{"not": "a list"');
    const bad = await cli('apply', ctx, file);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/FILE: .*topology\.json is not a list of topology steps/);
    await ok('close', ctx);
    await ok('unassign', '0000:03:01.0');
  });

  it('watch prints one line per event until the context closes', async () => {
    const ctx = (await ok('open', '--label', 'watched')).trim();
    const io = memoryIo();
    const watching = run(['watch', ctx, '--socket', socket], io);
    await until(io, 'ready: 0 objects');
    const ioas = handleOf(await ok('alloc-ioas', ctx));
    await ok('destroy', ctx, ioas);
    await ok('close', ctx);
    expect(await watching).toBe(0);
    const lines = io.out.trimEnd().split('\n');
    expect(lines.map((l) => l.replace(/^\S+ #\d+ /, ''))).toEqual([
      'ready: 0 objects',
      `created IOAS handle ${ioas} (kernel id 1)`,
      `destroyed IOAS handle ${ioas}`,
      expect.stringMatching(/^teardown \(CLOSE\): 1 step, /),
      'context closed (CLOSE)',
    ]);
    expect(io.err).toBe('');
  });

  it('watch ends cleanly on Ctrl-C and --json streams one message per line', async () => {
    const ctx = (await ok('open')).trim();
    const io = memoryIo();
    const watching = run(['watch', ctx, '--json', '--socket', socket], io);
    await until(io, '"ready"');
    io.signal('SIGINT');
    expect(await watching).toBe(0);
    const first = JSON.parse(io.out.split('\n')[0]!) as Record<string, any>;
    expect(first).toMatchObject({ sequence: '0', ready: { objects: [] } });
    await ok('close', ctx);
  });

  it('refuses bad usage with exit status 2 before contacting the daemon', async () => {
    const nowhere = path.join(dir, 'no-daemon.sock');
    const cases: [string[], RegExp][] = [
      [['bind', 'ctx-1'], /^vfio-broker bind: missing DEVICE \(usage: vfio-broker bind CTX DEVICE \[options\]\)\n$/],
      [['unbind', 'ctx-1', 'abc'], /HANDLE: 'abc' is not a handle/],
      [['attach', 'ctx-1', '1', '0'], /TARGET_HANDLE: handles start at 1/],
      [['alloc-hwpt', 'ctx-1', '1', '2', '--kind', 'bogus'], /--kind: 'bogus' is not one of paging, nest-parent, nested/],
      [['alloc-hwpt', 'ctx-1', '1', '2', '--kind', 'nested'], /--kind nested needs --data-type/],
      [['alloc-hwpt', 'ctx-1', '1', '2', '--data', 'zz'], /--data-type and --data apply to --kind nested only/],
      [['alloc-viommu', 'ctx-1', '1', '2', '--type', 'x86'], /--type: 'x86' is not one of selftest, arm-smmuv3, tegra241-cmdqv/],
      [['alloc-vdevice', 'ctx-1', '1', '2', '0'], /VIRT_ID must be non-zero/],
      [['alloc-vdevice', 'ctx-1', '1', '2', '0xzz'], /VIRT_ID: '0xzz' is not a number/],
      [['open', '--lease', 'soon'], /--lease: 'soon' is not a whole number of seconds/],
      [['status', '--timeout', '-1'], /option --timeout needs a value \(for one starting with '-', write --timeout=VALUE\)/],
      [['status', '--timeout', '0'], /--timeout: must be greater than 0/],
      [['status', '--bogus'], /unknown option --bogus/],
      [['objects'], /missing CTX/],
      [['objects', 'a', 'b'], /unexpected argument 'b'/],
      [['assign', '0000:01:00.0', 'Not A Tenant'], /TENANT: 'Not A Tenant' is not a tenant name/],
      [['devices', '--tenant', 'UPPER'], /--tenant: 'UPPER' is not a tenant name/],
      [['frobnicate'], /unknown command 'frobnicate'/],
      [['serve', '--backend', 'xen'], /--backend: 'xen' is not one of sim, linux/],
      [['serve', '--profile', 'linux-5.10'], /--profile: 'linux-5.10' is not one of linux-6.13, linux-6.17/],
    ];
    for (const [argv, message] of cases) {
      const r = await raw(...argv, '--socket', nowhere);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(message);
      expect(r.err.trimEnd().split('\n'), argv.join(' ')).toHaveLength(1);
      expect(r.out, argv.join(' ')).toBe('');
    }
    const none = await raw();
    expect(none.code).toBe(2);
    expect(none.err).toMatch(/missing COMMAND/);
  });

  it('prints global and per-command help', async () => {
    const global = await raw('--help');
    expect(global.code).toBe(0);
    for (const command of ['serve', 'status', 'devices', 'assign', 'open', 'bind', 'alloc-vdevice', 'watch', 'objects']) expect(global.out).toContain(`  ${command} `);
    expect(global.out).toContain('--json');
    const bind = await raw('bind', '--help');
    expect(bind.code).toBe(0);
    expect(bind.out).toMatch(/^Usage: vfio-broker bind CTX DEVICE \[options\]/);
    expect(bind.out).toContain('--tenant NAME');
    const hwpt = await raw('help', 'alloc-hwpt');
    expect(hwpt.out).toContain('--kind KIND');
    const serve = await raw('serve', '--help');
    expect(serve.out).toContain('--profile linux-6.13|linux-6.17');
    expect((await raw('--version')).out).toMatch(/^vfio-broker \d+\.\d+\.\d+\n$/);
  });

  it('prints daemon errors with their ErrorInfo and exits 1', async () => {
    const ctx = (await ok('open')).trim();
    const notAssigned = await cli('bind', ctx, '0000:02:00.0');
    expect(notAssigned.code).toBe(1);
    expect(notAssigned.out).toBe('');
    expect(notAssigned.err).toMatch(/^error: [A-Z_]+: .+ \[reason=DEVICE_NOT_ASSIGNED( [a-z_]+=\S+)*\]\n$/);

    const ioas = handleOf(await ok('alloc-ioas', ctx));
    await ok('assign', '0000:02:00.0', 'default');
    const dev = handleOf(await ok('bind', ctx, '0000:02:00.0'));
    const hwpt = handleOf(await ok('alloc-hwpt', ctx, dev, ioas));
    const busy = await cli('destroy', ctx, ioas);
    expect(busy.code).toBe(1);
    expect(busy.err).toMatch(new RegExp(`^error: FAILED_PRECONDITION: .+ \\[reason=OBJECT_IN_USE errno=EBUSY objects=${ioas},${hwpt}\\b.*\\]\\n$`));

    const missing = await cli('objects', 'ctx-000000000000000000000000');
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/^error: NOT_FOUND: .+ \[reason=CONTEXT_NOT_FOUND/);

    await ok('close', ctx);
    await ok('unassign', '0000:02:00.0');
  });

  it('lease-fd prints a one-time token and the fd socket, which hands this process the device fd', async () => {
    await ok('assign', '0000:41:00.0', 'default');
    const ctx = (await ok('open')).trim();
    const dev = handleOf(await ok('bind', ctx, '0000:41:00.0'));
    const out = await ok('lease-fd', ctx, dev);
    const [, token, fdSocket] = /^token ([0-9a-f]{64})\nsocket (\S+)\nexpires \d{4}-\d\d-\d\dT\S+Z\n$/.exec(out) ?? [];
    expect(fdSocket).toBe(path.join(dir, 'broker-fd.sock'));
    // The CLI ran in this process, so this process may redeem it.
    const fd = await redeemDeviceFd(fdSocket!, token!);
    expect(fs.readlinkSync(`/proc/self/fd/${fd}`)).toBe('/memfd:vfio-sim:0000:41:00.0 (deleted)');
    fs.closeSync(fd);
    const json = await okJson('lease-fd', ctx, dev);
    expect(json).toMatchObject({ token: expect.stringMatching(/^[0-9a-f]{64}$/), socketPath: fdSocket });
    expect((await cli('lease-fd', ctx, '99')).err).toMatch(/reason=OBJECT_NOT_FOUND/);
    await ok('close', ctx);
    await ok('unassign', '0000:41:00.0');
  });

  it('names the socket and `vfio-broker serve` when no daemon answers', async () => {
    const nowhere = path.join(dir, 'nobody-home.sock');
    const r = await raw('status', '--socket', nowhere, '--timeout', '5');
    expect(r.code).toBe(1);
    expect(r.err).toContain(nowhere);
    expect(r.err).toContain('vfio-broker serve');
    expect(r.err.trimEnd().split('\n')).toHaveLength(1);
  });
});

describe('vfio-broker serve', () => {
  it('serves until SIGTERM, then stops and exits 0', async () => {
    const own = path.join(dir, 'serve.sock');
    const io = memoryIo();
    const serving = run(
      ['serve', '--socket', own, '--log-level', 'silent', '--profile', 'linux-6.13', '--metrics-address', '127.0.0.1:0', '--audit-log', path.join(dir, 'serve-audit.log')],
      io,
    );
    let status: Result = { code: -1, out: '', err: '' };
    for (let i = 0; i < 100; i++) {
      status = await raw('status', '--socket', own, '--json');
      if (status.code === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(status.code).toBe(0);
    expect(JSON.parse(status.out)).toMatchObject({ backend: 'sim', kernelProfile: 'linux-6.13', contexts: 0 });
    io.signal('SIGTERM');
    expect(await serving).toBe(0);
    expect(io.err).toBe('');
    expect(fs.existsSync(own)).toBe(false);
  });

  it('fails to start with one line and exit status 2', async () => {
    const missing = await raw('serve', '--config', path.join(dir, 'absent.json'));
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/^vfio-broker serve: cannot read config .*absent\.json: ENOENT\n$/);

    const bad = path.join(dir, 'bad.json');
    fs.writeFileSync(bad, JSON.stringify({ sockets: {} }));
    const typo = await raw('serve', '--config', bad);
    expect(typo.code).toBe(2);
    expect(typo.err).toMatch(/sockets: unknown setting/);

    const inUse = await raw('serve', '--socket', socket, '--log-level', 'silent', '--metrics-address', '', '--audit-log', '');
    expect(inUse.code).toBe(2);
    expect(inUse.err).toMatch(/^vfio-broker serve: cannot start: .*another process is serving on .*broker\.sock/);
    expect(inUse.err.trimEnd().split('\n')).toHaveLength(1);

    const linux = await raw('serve', '--backend', 'linux', '--socket', path.join(dir, 'linux.sock'), '--log-level', 'silent', '--metrics-address', '', '--audit-log', '');
    expect(linux.code).toBe(2);
    // This machine has no /dev/iommu: the error names the kernel options and the way out.
    expect(linux.err).toMatch(/\/dev\/iommu is missing.*CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV.*--backend sim/);
    expect(linux.err.trimEnd().split('\n')).toHaveLength(1);
  });
});
