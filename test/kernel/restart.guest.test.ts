/**
 * Restart without teardown on the real kernel (runs inside the QEMU guest;
 * see README.md here): the daemon (linux backend) is a child process that
 * stores its iommufd and device fds in this test's fake service manager
 * (test/helpers/fake-systemd.ts), is SIGKILLed with a VM's graph built and
 * guest memory mapped, and is started again with those fds in LISTEN_FDS.
 *
 *   VFIO_BROKER_VM_OUT=/tmp/restart-vm bash test/kernel/run-vm.sh \
 *     'vitest run --config test/kernel/vitest.guest.config.ts restart'
 *
 * Checks: while no daemon runs, the device is still bound (another bind of it
 * fails); the restarted daemon probes every object on the real kernel and
 * quarantines nothing; same context ID, handles and kernel IDs; the mapping
 * survived (unmapping it returns its length); new operations work; the
 * context still closes in the legal order and leaves the store empty.
 * Writes $VFIO_BROKER_RESULTS_DIR/restart.json. Skipped outside the guest.
 */
import * as grpc from '@grpc/grpc-js';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService, DeviceState } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, TeardownAction } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { createLinuxKernel } from '../../src/kernel/linux/index.js';
import { createMemfd } from '../../src/kernel/memfd.js';
import { INVALIDATE_DATA_TYPES } from '../../src/kernel/object-probe.js';
import { createSimKernel } from '../../src/kernel/sim/index.js';
import { HWPT_ALLOC_NEST_PARENT, HWPT_DATA_TYPE, isKernelError, kernelId, VIOMMU_TYPE, type IommufdFile, type KernelBackend, type LookupProbe } from '../../src/kernel/types.js';
import { connect, createClient } from '../../src/rpc/client.js';
import { uploadMemfd } from '../../src/rpc/handoff-client.js';
import { buildForChildProcess } from '../helpers/built-daemon.js';
import { asTenantMetadata } from '../helpers/daemon.js';
import { FakeSystemd } from '../helpers/fake-systemd.js';
import { writeSummary } from './guest-daemon.js';

const IN_GUEST = existsSync('/dev/iommu');
const TENANT = 'guest-vm';
const meta = { metadata: asTenantMetadata(TENANT) };
const MIB = 1n << 20n;
const MAP_IOVA = 0x10_0000n;
const root = path.resolve(import.meta.dirname, '../..');

/**
 * The compiled daemon. tsc takes many minutes under TCG, so the host builds it
 * before booting the VM (`tsc -p tsconfig.build.json --outDir .cache/test-dist`);
 * only a missing build is made here. `stale` says whether src/ changed since.
 */
function daemonMain(): { main: string; stale: boolean } {
  const main = path.join(root, '.cache', 'test-dist', 'cli', 'main.js');
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((m, e) => Math.max(m, e.isDirectory() ? newest(path.join(dir, e.name)) : statSync(path.join(dir, e.name)).mtimeMs), 0);
  if (!existsSync(main)) return { main: buildForChildProcess(), stale: false };
  return { main, stale: statSync(main).mtimeMs < newest(path.join(root, 'src')) };
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));
}

describe.skipIf(!IN_GUEST)('restart without teardown on the real kernel', () => {
  let dir: string;
  let systemd: FakeSystemd;
  let configFile: string;
  let mainJs: string;
  const children: ChildProcess[] = [];
  const channels: grpc.Client[] = [];
  const summary: Record<string, unknown> = {};

  beforeAll(() => {
    const built = daemonMain();
    mainJs = built.main;
    summary['staleBuild'] = built.stale;
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-restart-'));
    systemd = new FakeSystemd(path.join(dir, 'notify.sock'));
    configFile = path.join(dir, 'config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        backend: 'linux',
        socket: { path: path.join(dir, 'broker.sock') },
        metrics: { address: '' },
        audit: { path: '' },
        log: { level: 'info' },
        shutdown: { drainSeconds: 5, teardownContexts: true },
        restart: { journalPath: path.join(dir, 'state', 'journal'), sync: 'fdatasync' },
      }),
    );
  }, 240_000);

  afterAll(() => {
    for (const ch of channels) ch.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    systemd?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
    const json = writeSummary('restart.json', summary);
    process.stdout.write(`restart: ${json}\n`);
  });

  async function start(listen?: { fds: number[]; names: string[] }): Promise<ChildProcess> {
    const readyBefore = systemd.messages.filter((m) => m.fields.get('READY') === '1').length;
    const script = `import(${JSON.stringify(mainJs)}).then((m) => m.main())`;
    const env: NodeJS.ProcessEnv = { ...process.env, NOTIFY_SOCKET: systemd.socketPath };
    if (listen) Object.assign(env, { LISTEN_FDS: String(listen.fds.length), LISTEN_FDNAMES: listen.names.join(':') });
    const child = spawn('sh', ['-c', 'LISTEN_PID=$$ exec "$0" --input-type=module -e "$1" -- vfio-broker serve --config "$2"', process.execPath, script, configFile], {
      cwd: root,
      env,
      stdio: ['ignore', 'pipe', 'pipe', ...(listen?.fds ?? [])],
    });
    children.push(child);
    let log = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (log += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (log += d));
    child.once('exit', () => (summary[`log${children.length}`] = log.split('\n').filter((l) => /restart|quarantin|error/i.test(l)).slice(-20)));
    let n = 0;
    const t0 = Date.now();
    await Promise.race([
      systemd.waitFor((m) => m.fields.get('READY') === '1' && ++n > readyBefore, 200_000),
      exited(child).then((code) => Promise.reject(new Error(`daemon exited (${code}): ${log}`))),
    ]);
    summary[`startMs${children.length}`] = Date.now() - t0;
    return child;
  }

  function clients() {
    const ch = connect(`unix:${path.join(dir, 'broker.sock')}`);
    channels.push(ch);
    return { broker: createClient(BrokerService, ch), admin: createClient(AdminService, ch) };
  }

  it('keeps the VM’s device, objects and mapping across SIGKILL and serves them again', async () => {
    const first = await start();
    let { broker, admin } = clients();
    const edu = (await admin.listDevices({})).devices.find((d) => d.cdev !== '')!;
    await admin.assignDevice({ deviceId: edu.id, tenant: TENANT });
    const { contextId } = await broker.openContext({ label: 'restart' }, meta);
    const device = (await broker.bindDevice({ contextId, deviceId: edu.id }, meta)).device!.handle;
    const ioas = (await broker.allocIoas({ contextId }, meta)).ioas!.handle;
    const auto = (await broker.attachDevice({ contextId, device, target: ioas }, meta)).hwpt!.handle;
    const paging = (await broker.allocHwpt({ contextId, device, kind: HwptKind.PAGING, parent: ioas }, meta)).hwpt!.handle;
    const memfd = createMemfd('guest-ram', Number(MIB));
    const slot = await broker.prepareMemoryUpload({ contextId }, meta);
    await uploadMemfd(slot.socketPath, slot.token, memfd);
    closeSync(memfd);
    await broker.mapMemory({ contextId, ioas, iova: MAP_IOVA, fixedIova: true, length: MIB, offset: 0n, readable: true, writeable: true, uploadToken: slot.token }, meta);
    const before = (await broker.listObjects({ contextId }, meta)).objects.map((o) => `${o.handle}:${o.type}:${o.kernelId}`);
    summary['objects'] = before;
    summary['stored'] = [...systemd.store.keys()];
    expect([...systemd.store.keys()].sort()).toEqual([`d.${contextId}.${device}`, `i.${contextId}`].sort());

    first.kill('SIGKILL');
    await exited(first);
    // No daemon: the store's copies keep the device bound, so nobody else can bind it.
    const probe = createLinuxKernel({});
    await probe.probe();
    const fd = await probe.openIommufd();
    const file = await probe.openDevice(edu.cdev);
    const bind = await probe.bindIommufd(file, fd).then(
      () => 'bound',
      (e: unknown) => (isKernelError(e) ? e.errno : String(e)),
    );
    summary['bindWhileDown'] = bind;
    expect(['EINVAL', 'EPERM', 'EBUSY']).toContain(bind);
    await probe.shutdown();

    const second = await start(systemd.listenFds());
    ({ broker, admin } = clients());
    const status = await admin.getStatus({});
    summary['quarantined'] = status.quarantined.map((q) => `${q.reason}: ${q.detail}`);
    expect(status.quarantined).toEqual([]);
    expect(status.restoredContexts).toBe(1);
    expect((await broker.listObjects({ contextId }, meta)).objects.map((o) => `${o.handle}:${o.type}:${o.kernelId}`)).toEqual(before);
    expect((await admin.listDevices({})).devices.find((d) => d.id === edu.id)).toMatchObject({ state: DeviceState.BOUND, contextId });

    // The mapping lived through it: the kernel unmaps exactly its length.
    const { unmappedBytes } = await broker.unmapMemory({ contextId, ioas, iova: MAP_IOVA, length: MIB }, meta);
    expect(unmappedBytes).toBe(MIB);
    const extra = (await broker.allocIoas({ contextId }, meta)).ioas!.handle;
    expect(extra).toBeGreaterThan(paging);
    await broker.destroyObject({ contextId, handle: extra }, meta);

    const { teardown } = await broker.closeContext({ contextId }, meta);
    summary['teardown'] = teardown!.steps.map((s) => `${TeardownAction[s.action]} ${s.handle}`);
    expect(teardown!.steps.map((s) => [s.action, s.handle])).toEqual([
      [TeardownAction.DETACH, device],
      [TeardownAction.AUTO_FREED, auto],
      [TeardownAction.DESTROY, paging],
      [TeardownAction.DESTROY, ioas],
      [TeardownAction.CLOSE_DEVICE, device],
      [TeardownAction.CLOSE_IOMMUFD, 0n],
    ]);
    await systemd.waitFor((m) => m.fields.get('FDSTOREREMOVE') === '1' && m.fields.get('FDNAME') === `i.${contextId}`);
    expect(systemd.store.size).toBe(0);
    second.kill('SIGTERM');
    expect(await exited(second)).toBe(0);
  }, 600_000);

  it('answers every restart probe on the real kernel exactly as the sim does (mock device graph, before and after unbind)', async () => {
    type Mock = KernelBackend & {
      selftestMockDomain(fd: IommufdFile, pt: ReturnType<typeof kernelId>): Promise<{ stdevId: ReturnType<typeof kernelId>; idevId: ReturnType<typeof kernelId> }>;
      selftestDestroyMockDevice(fd: IommufdFile, stdev: ReturnType<typeof kernelId>): Promise<void>;
    };
    const data = new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0]);
    async function answers(k: Mock): Promise<string[]> {
      const fd = await k.openIommufd();
      const ioas = await k.ioasAlloc(fd);
      const { stdevId, idevId } = await k.selftestMockDomain(fd, ioas);
      const parent = await k.hwptAlloc(fd, { flags: HWPT_ALLOC_NEST_PARENT, devId: idevId, ptId: ioas, dataType: 0, data: new Uint8Array() });
      const viommu = await k.viommuAlloc(fd, { type: VIOMMU_TYPE.SELFTEST, devId: idevId, hwptId: parent });
      await k.vdeviceAlloc(fd, { viommuId: viommu, devId: idevId, virtId: 0x99n });
      await k.hwptAlloc(fd, { flags: 0, devId: idevId, ptId: viommu, dataType: HWPT_DATA_TYPE.SELFTEST, data });
      const probes: Omit<LookupProbe, 'id'>[] = [
        { ioctl: 'IOMMU_IOAS_IOVA_RANGES' },
        { ioctl: 'IOMMU_GET_HW_INFO' },
        { ioctl: 'IOMMU_HWPT_GET_DIRTY_BITMAP' },
        ...INVALIDATE_DATA_TYPES.map((dataType) => ({ ioctl: 'IOMMU_HWPT_INVALIDATE' as const, dataType })),
      ];
      const table = async (tag: string) => {
        const rows: string[] = [];
        for (let id = 0; id <= 9; id++) {
          const row: string[] = [];
          for (const p of probes) row.push(await k.lookupProbe!(fd, { ...p, id: kernelId(id) }).then(() => 'ok', (e: unknown) => (isKernelError(e) ? e.errno : String(e))));
          rows.push(`${tag} ${id}: ${row.join(' ')}`);
        }
        return rows;
      };
      const before = await table('bound');
      await k.selftestDestroyMockDevice(fd, stdevId); // unbind: the vDEVICE is tombstoned (6.17+)
      const after = await table('unbound');
      await k.closeIommufd(fd);
      return [...before, ...after];
    }
    const real = createLinuxKernel({ selftestDevices: true });
    await real.probe();
    const onReal = await answers(real as unknown as Mock);
    await real.shutdown();
    const onSim = await answers(createSimKernel({ profile: 'linux-6.17' }) as unknown as Mock);
    summary['probeAnswers'] = onReal;
    expect(onSim).toEqual(onReal);
  }, 300_000);
});
