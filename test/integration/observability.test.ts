/** Metrics, health during drain, and sd_notify, on a live daemon. */
import * as grpc from '@grpc/grpc-js';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Health, HealthCheckResponse_ServingStatus } from '../../src/gen/grpc/health/v1/health_pb.js';
import { createClient } from '../../src/rpc/client.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, buildVm, meta } from '../helpers/lifecycle.js';

const promtool = spawnSync('promtool', ['--version']).status === 0;
// CI installs promtool (scripts/setup-system-deps.sh); a developer machine without it skips.
const needPromtool = promtool || process.env['CI'] ? it : it.skip;

async function scrape(td: TestDaemon): Promise<string> {
  const res = await fetch(`http://${td.daemon.metricsAddress}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

describe('observability', () => {
  let td: TestDaemon;
  afterEach(async () => {
    await td?.stop();
  });

  needPromtool('serves /metrics that passes promtool check metrics and counts what happened', async () => {
    td = await startTestDaemon();
    const [deviceId] = await assignDevices(td, 1);
    const vm = await buildVm(td, deviceId!);
    await td.broker.destroyObject({ contextId: vm.contextId, handle: vm.viommu }, meta).catch(() => undefined);
    await td.broker.unbindDevice({ contextId: vm.contextId, device: vm.device }, meta);
    const text = await scrape(td);
    for (const line of [
      'vfio_broker_grpc_server_handled_total{method="BrokerService/BindDevice",code="OK"} 1',
      'vfio_broker_grpc_server_handled_total{method="BrokerService/DestroyObject",code="FAILED_PRECONDITION"} 1',
      'vfio_broker_kernel_call_duration_seconds_count{op="destroy",result="EBUSY"} 1',
      'vfio_broker_teardowns_total{reason="unbind"} 1',
      'vfio_broker_vdevice_teardowns_total{outcome="destroyed"} 1',
      'vfio_broker_vdevice_teardowns_total{outcome="found_tombstoned"} 0',
      'vfio_broker_objects{type="viommu"} 1',
      'vfio_broker_contexts 1',
      'vfio_broker_devices{state="assigned"} 1',
      'vfio_broker_ready 1',
      'vfio_broker_kernel_info{backend="sim",release="7.2.13-sim",profile="linux-6.17",selftest="true"} 1',
      'vfio_broker_kernel_capability_info{ioctl="IOMMU_VDEVICE_ALLOC"} 1',
    ]) {
      expect(text).toContain(line);
    }
    expect(text).toMatch(/^vfio_broker_process_resident_memory_bytes \d+/m);
    expect(text).toMatch(/^vfio_broker_context_queue_wait_seconds_count \d+/m);
    expect(text).not.toMatch(/ctx-[0-9a-f]{8}/); // no unbounded labels
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(check.stdout + check.stderr).toBe('');
    expect(check.status).toBe(0);
  });

  it('finishes in-flight calls on drain and refuses new ones with UNAVAILABLE', async () => {
    td = await startTestDaemon();
    const { contextId } = await td.broker.openContext({}, meta);
    td.daemon.sim!.faults.setLatency(400, { ops: ['ioas_alloc'] });
    const health = createClient(Health, td.channel);
    const inFlight = td.broker.allocIoas({ contextId }, meta);
    await new Promise((r) => setTimeout(r, 100));
    const stopping = td.daemon.stop();
    await new Promise((r) => setTimeout(r, 20));
    const status = await health.check({ service: 'vfio_broker.v1.BrokerService' });
    expect(status.status).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
    const refused = await td.broker.openContext({}, meta).then(
      () => undefined,
      (err: grpc.ServiceError) => err,
    );
    expect(refused?.code).toBe(grpc.status.UNAVAILABLE);
    expect(errorInfoOf(refused)?.reason).toBe('SHUTTING_DOWN');
    const done = await inFlight;
    expect(done.ioas?.kernelId).toBeGreaterThan(0);
    await stopping;
    // Drain tore the context down in order after the in-flight call.
    expect(td.daemon.sim!.liveObjectCount()).toBe(0);
  });

  it('sends READY=1, WATCHDOG=1 and STOPPING=1 to NOTIFY_SOCKET', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-notify-'));
    const notifySocket = path.join(dir, 'notify.sock');
    // systemd's side: a datagram socket printing every message it receives.
    const receiver = spawn('python3', ['-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`, notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: string[] = [];
    receiver.stdout.setEncoding('utf8').on('data', (d: string) => lines.push(...d.trim().split('\n')));
    try {
      await new Promise((r) => receiver.stdout.once('data', r));
      const saved = { n: process.env['NOTIFY_SOCKET'], w: process.env['WATCHDOG_USEC'] };
      process.env['NOTIFY_SOCKET'] = notifySocket;
      process.env['WATCHDOG_USEC'] = '100000';
      try {
        td = await startTestDaemon();
      } finally {
        delete process.env['NOTIFY_SOCKET'];
        delete process.env['WATCHDOG_USEC'];
        if (saved.n !== undefined) process.env['NOTIFY_SOCKET'] = saved.n;
        if (saved.w !== undefined) process.env['WATCHDOG_USEC'] = saved.w;
      }
      await new Promise((r) => setTimeout(r, 250));
      await td.daemon.stop();
      await new Promise((r) => setTimeout(r, 100));
      const ready = lines.findIndex((l) => l.startsWith('READY=1'));
      expect(ready).toBeGreaterThan(0);
      expect(lines[ready]).toContain(`MAINPID=${process.pid}`);
      expect(lines.filter((l) => l === 'WATCHDOG=1').length).toBeGreaterThanOrEqual(2);
      // The watchdog keeps pinging while the daemon drains; STOPPING=1 comes after READY=1.
      expect(lines.findIndex((l) => l.startsWith('STOPPING=1'))).toBeGreaterThan(ready);
    } finally {
      receiver.kill();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
