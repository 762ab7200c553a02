/**
 * Property test: random RPC sequences from several tenants, with random and
 * garbage field values, against the sim backend over a real grpc-js server.
 * After every step: nothing crashed, every error is a status with ErrorInfo,
 * the registry equals the simulated kernel, and no tenant changed another's
 * objects. After every sequence all contexts close and nothing is left.
 *
 * Tenants are separate mTLS identities (client certificates), so the broker
 * sees real non-admin callers. CI runs a bounded number of sequences; for a
 * long run: FUZZ_RUNS=2000 FUZZ_SEED=123 npm run fuzz
 */
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../src/gen/vfio_broker/v1/admin_pb.js';
import { BrokerService } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { createClient, type TypedClient } from '../../src/rpc/client.js';
import type { MethodsOf } from '../../src/rpc/handlers.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { makePki } from '../helpers/pki.js';

const RUNS = Number(process.env['FUZZ_RUNS'] ?? 150);
const SEED = process.env['FUZZ_SEED'] === undefined ? undefined : Number(process.env['FUZZ_SEED']);
const TENANTS = ['t0', 't1', 't2'] as const;
type Tenant = (typeof TENANTS)[number];

type Broker = TypedClient<MethodsOf<typeof BrokerService>>;

interface World {
  contexts: { id: string; owner: Tenant }[];
}

// Mostly plausible values, so sequences get deep into the object graph; some garbage throughout.
const handle = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 1, max: 10 }).map(BigInt) },
  { weight: 1, arbitrary: fc.constant(0n) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) },
);
const ctxRef = fc.oneof(
  { weight: 7, arbitrary: fc.nat({ max: 3 }).map((i) => ({ own: i })) },
  { weight: 2, arbitrary: fc.nat({ max: 7 }).map((i) => ({ any: i })) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((garbage) => ({ garbage })) },
);
const tenant = fc.constantFrom(...TENANTS);
const deviceId = fc.oneof(
  { weight: 9, arbitrary: fc.constantFrom('0000:01:00.0', '0000:02:00.0', '0000:03:01.0', '0000:03:01.1', '0000:41:00.0', '0000:41:00.1', '0000:42:00.0', '0000:03:00.0') },
  { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
);

const op = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('open' as const), tenant, lease: fc.oneof(fc.constant(0), fc.nat({ max: 200_000 })) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const), tenant, ctx: ctxRef }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('bind' as const), tenant, ctx: ctxRef, device: deviceId }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unbind' as const), tenant, ctx: ctxRef, h: handle }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('ioas' as const), tenant, ctx: ctxRef }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('attach' as const), tenant, ctx: ctxRef, h: handle, target: handle }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('detach' as const), tenant, ctx: ctxRef, h: handle }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('hwpt' as const),
      tenant,
      ctx: ctxRef,
      h: handle,
      parent: handle,
      hwptKind: fc.integer({ min: 0, max: 5 }),
      dataType: fc.oneof(fc.constant(0), fc.constant(0xdead), fc.nat()),
      data: fc.oneof(fc.constant(new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0])), fc.uint8Array({ maxLength: 16 })),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('viommu' as const), tenant, ctx: ctxRef, h: handle, parent: handle, type: fc.integer({ min: 0, max: 6 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('vdevice' as const), tenant, ctx: ctxRef, viommu: handle, h: handle, virtId: fc.bigInt({ min: 0n, max: 300n }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('destroy' as const), tenant, ctx: ctxRef, h: handle }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('hwinfo' as const), tenant, ctx: ctxRef, h: handle }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('list' as const), tenant, ctx: ctxRef }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('admin' as const), tenant }) },
);
type Op = typeof op extends fc.Arbitrary<infer T> ? T : never;

describe('multi-tenant fuzz', () => {
  let td: TestDaemon;
  let dir: string;
  const clients = new Map<Tenant, { broker: Broker; admin: TypedClient<MethodsOf<typeof AdminService>> }>();
  const channels: grpc.Client[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-fuzz-'));
    const pki = makePki(dir);
    td = await startTestDaemon('linux-6.17', (c) => {
      c.tcp = { address: '127.0.0.1:0', caFile: pki.ca, certFile: pki.serverCert, keyFile: pki.serverKey };
      c.identity.rules = TENANTS.map((t) => ({ uri: `spiffe://fuzz.test/${t}`, tenant: t }));
      c.quotas.default = { ...c.quotas.default, contexts: 4, objects: 24, requestsPerSecond: 1e6, burst: 1e6 };
      c.teardown.clientGoneGraceSeconds = 3600;
    });
    for (const t of TENANTS) {
      const cert = pki.client(t, `URI:spiffe://fuzz.test/${t}`);
      const ch = new grpc.Client(
        `127.0.0.1:${td.daemon.server.tcpPort}`,
        grpc.credentials.createSsl(readFileSync(pki.ca), readFileSync(cert.key), readFileSync(cert.cert)),
        { 'grpc.ssl_target_name_override': 'localhost' },
      );
      channels.push(ch);
      clients.set(t, { broker: createClient(BrokerService, ch), admin: createClient(AdminService, ch) });
    }
    // Each tenant owns two devices; one stays free.
    const { devices } = await td.admin.listDevices({});
    const vfio = devices.filter((d) => d.cdev !== '');
    for (const [i, d] of vfio.slice(0, 6).entries()) await td.admin.assignDevice({ deviceId: d.id, tenant: TENANTS[i % 3]! });
  }, 60_000);

  afterAll(async () => {
    for (const ch of channels) ch.close();
    await td?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function contextId(world: World, actor: Tenant, ref: { own: number } | { any: number } | { garbage: string }): string {
    if ('garbage' in ref) return ref.garbage;
    const pool = 'own' in ref ? world.contexts.filter((c) => c.owner === actor) : world.contexts;
    const i = 'own' in ref ? ref.own : ref.any;
    return pool[i % Math.max(1, pool.length)]?.id ?? '';
  }

  /** Everything every tenant has, as the kernel sees it. */
  function snapshot(world: World): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const c of world.contexts) {
      const ctx = td.daemon.broker.inspectContext(c.id);
      if (ctx) out.set(c.id, registryMatchesKernel(td, c.id).kernel);
    }
    return out;
  }

  async function step(world: World, o: Op): Promise<void> {
    const b = clients.get(o.tenant)!.broker;
    const id = 'ctx' in o ? contextId(world, o.tenant, o.ctx) : '';
    switch (o.kind) {
      case 'open': {
        const r = await b.openContext({ label: 'fuzz', leaseSeconds: o.lease });
        world.contexts.push({ id: r.contextId, owner: o.tenant });
        return;
      }
      case 'close':
        await b.closeContext({ contextId: id });
        world.contexts = world.contexts.filter((c) => c.id !== id);
        return;
      case 'bind':
        await b.bindDevice({ contextId: id, deviceId: o.device });
        return;
      case 'unbind':
        await b.unbindDevice({ contextId: id, device: o.h });
        return;
      case 'ioas':
        await b.allocIoas({ contextId: id });
        return;
      case 'attach':
        await b.attachDevice({ contextId: id, device: o.h, target: o.target });
        return;
      case 'detach':
        await b.detachDevice({ contextId: id, device: o.h });
        return;
      case 'hwpt':
        await b.allocHwpt({ contextId: id, device: o.h, kind: o.hwptKind, parent: o.parent, dataType: o.dataType, data: o.data });
        return;
      case 'viommu':
        await b.allocViommu({ contextId: id, device: o.h, nestParent: o.parent, type: o.type });
        return;
      case 'vdevice':
        await b.allocVdevice({ contextId: id, viommu: o.viommu, device: o.h, virtId: o.virtId });
        return;
      case 'destroy':
        await b.destroyObject({ contextId: id, handle: o.h });
        return;
      case 'hwinfo':
        await b.getHwInfo({ contextId: id, device: o.h });
        return;
      case 'list':
        await b.listObjects({ contextId: id });
        return;
      case 'admin':
        await clients.get(o.tenant)!.admin.listDevices({});
        return;
    }
  }

  it('keeps every invariant over random sequences', async () => {
    let sequences = 0;
    let operations = 0;
    let failures = 0;
    const refusedBy = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (random) => {
        sequences++;
        const world: World = { contexts: [] };
        // Every tenant starts with a context, so the random part has something to work on.
        const ops: Op[] = [...TENANTS.map((t) => ({ kind: 'open' as const, tenant: t, lease: 0 })), ...random];
        for (const o of ops) {
          operations++;
          const before = snapshot(world);
          const ownerOf = new Map(world.contexts.map((c) => [c.id, c.owner]));
          try {
            await step(world, o);
          } catch (err) {
            failures++;
            const e = err as grpc.ServiceError;
            const reason = errorInfoOf(e)?.reason ?? 'none';
            refusedBy.set(reason, (refusedBy.get(reason) ?? 0) + 1);
            expect(typeof e.code, `not a gRPC status: ${String(err)}`).toBe('number');
            expect(errorInfoOf(e), `${grpc.status[e.code]} without ErrorInfo: ${e.details}`).toBeDefined();
            expect(e.code).not.toBe(grpc.status.INTERNAL);
            expect(e.code).not.toBe(grpc.status.UNKNOWN);
          }
          const after = snapshot(world);
          for (const [ctxId, objects] of before) {
            // Only the actor's own contexts may change.
            if (ownerOf.get(ctxId) !== o.tenant) expect(after.get(ctxId), `tenant ${o.tenant} changed ${ctxId}`).toEqual(objects);
          }
          for (const c of world.contexts) {
            if (!td.daemon.broker.inspectContext(c.id)) continue;
            const m = registryMatchesKernel(td, c.id);
            expect(m.registry).toEqual(m.kernel);
          }
        }
        for (const c of world.contexts) await clients.get(c.owner)!.broker.closeContext({ contextId: c.id }).catch(() => undefined);
        expect(td.daemon.broker.contextCount).toBe(0);
        expect(td.daemon.sim!.liveObjectCount()).toBe(0);
        expect(td.daemon.sim!.openFileCount()).toBe(0);
      }),
      { numRuns: RUNS, ...(SEED === undefined ? {} : { seed: SEED }), endOnFailure: true },
    );
    // The summary a person reads in the test output.
    const reasons = [...refusedBy].sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${n}`).join(', ');
    process.stdout.write(`fuzz: ${sequences} sequences, ${operations} operations (${operations - failures} succeeded, ${failures} refused: ${reasons}), 0 invariant violations\n`);
    expect(operations).toBeGreaterThan(RUNS);
  }, 600_000);

  it('answers garbage request bodies with INVALID_ARGUMENT and ErrorInfo, and keeps serving', async () => {
    const paths = [...BrokerService.methods, ...AdminService.methods].filter((m) => m.methodKind === 'unary').map((m) => `/${m.parent.typeName}/${m.name}`);
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...paths), fc.uint8Array({ minLength: 1, maxLength: 256 }), async (methodPath, body) => {
        sent++;
        const err = await new Promise<grpc.ServiceError | null>((resolve) => {
          td.channel.makeUnaryRequest(methodPath, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(body), new grpc.Metadata(), {}, (e) => resolve(e));
        });
        // Some byte strings are valid messages; those get an ordinary answer.
        if (err) {
          expect(err.code).not.toBe(grpc.status.INTERNAL);
          expect(errorInfoOf(err)).toBeDefined();
        }
      }),
      { numRuns: Math.max(50, RUNS * 5), ...(SEED === undefined ? {} : { seed: SEED }) },
    );
    expect((await td.admin.getStatus({})).backend).toBe('sim');
    process.stdout.write(`fuzz: ${sent} garbage bodies sent; the daemon kept serving\n`);
  }, 600_000);
});
