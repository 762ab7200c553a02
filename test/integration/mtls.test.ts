/** The optional TCP listener: mTLS only, identity from the client certificate. */
import * as grpc from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { createClient } from '../../src/rpc/client.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { makePki, type Pki } from '../helpers/pki.js';

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;

describe.runIf(haveOpenssl || process.env['CI'])('mTLS TCP listener', () => {
  let dir: string;
  let pki: Pki;
  let td: TestDaemon;
  const channels: grpc.Client[] = [];
  const tlsChannel = (client?: { cert: string; key: string }) => {
    const creds = grpc.credentials.createSsl(readFileSync(pki.ca), client ? readFileSync(client.key) : null, client ? readFileSync(client.cert) : null);
    const ch = new grpc.Client(`127.0.0.1:${td.daemon.server.tcpPort}`, creds, { 'grpc.ssl_target_name_override': 'localhost' });
    channels.push(ch);
    return ch;
  };

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-tls-'));
    pki = makePki(dir);
    td = await startTestDaemon('linux-6.17', (c) => {
      c.tcp = { address: '127.0.0.1:0', caFile: pki.ca, certFile: pki.serverCert, keyFile: pki.serverKey };
      c.identity.rules = [
        { uri: 'spiffe://example.test/vmm/acme', tenant: 'acme' },
        { dns: 'orchestrator.example.test', admin: true },
        { cn: 'legacy-agent', admin: true },
      ];
    });
  }, 60_000);
  afterAll(async () => {
    for (const ch of channels) ch.close();
    await td?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('maps a SPIFFE URI SAN to its tenant, which may not call the admin API', async () => {
    const ch = tlsChannel(pki.client('acme-vmm', 'URI:spiffe://example.test/vmm/acme'));
    const { contextId } = await createClient(BrokerService, ch).openContext({ label: 'remote' });
    expect(td.daemon.broker.listContexts().find((c) => c.id === contextId)?.tenant).toBe('acme');
    const denied = await createClient(AdminService, ch).getStatus({}).catch((e: grpc.ServiceError) => e);
    expect((denied as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('refuses fd handoffs to mTLS callers: an fd only reaches a local process', async () => {
    const broker = createClient(BrokerService, tlsChannel(pki.client('acme-vmm2', 'URI:spiffe://example.test/vmm/acme')));
    const { contextId } = await broker.openContext({});
    for (const call of [broker.leaseDeviceFd({ contextId, device: 1n }), broker.prepareMemoryUpload({ contextId })]) {
      const err = (await call.catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(err.details).toMatch(/call it on the Unix socket, not over mTLS/);
    }
  });

  it('maps a DNS SAN, and a CN only for certificates without SANs, to the admin role', async () => {
    const dns = tlsChannel(pki.client('orch', 'DNS:orchestrator.example.test'));
    expect((await createClient(AdminService, dns).getStatus({})).backend).toBe('sim');
    const cn = tlsChannel(pki.client('legacy-agent', undefined));
    expect((await createClient(AdminService, cn).getStatus({})).backend).toBe('sim');
    // CN is ignored when the certificate carries SANs.
    const spoof = tlsChannel(pki.client('legacy-agent', 'DNS:elsewhere.example.test'));
    const err = (await createClient(AdminService, spoof).getStatus({}).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(errorInfoOf(err)?.reason).toBe('PERMISSION_DENIED');
  });

  it('refuses clients without a certificate and plaintext clients', async () => {
    const noCert = tlsChannel();
    const err = (await createClient(AdminService, noCert).getStatus({}, { deadlineMs: 3000 }).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    const plain = new grpc.Client(`127.0.0.1:${td.daemon.server.tcpPort}`, grpc.credentials.createInsecure());
    channels.push(plain);
    const perr = (await createClient(AdminService, plain).getStatus({}, { deadlineMs: 3000 }).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect(perr.code).toBe(grpc.status.UNAVAILABLE);
  });
});
