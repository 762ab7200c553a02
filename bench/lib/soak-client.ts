/**
 * One soak client: VM lifecycles over its own gRPC connection, as one tenant,
 * on its own two devices. Every failure is classified: an error carrying an
 * injected errno is expected; so is the specific refusal a step asks for
 * (e.g. VDEVICE_DESTROYED_ON_UNBIND after an unbind). Anything else is
 * unexpected. Some lifecycles abandon their context without CloseContext
 * (the watch stream is cancelled and the connection closed, or a leased
 * context simply stops being used); the daemon must reclaim those.
 */
import * as grpc from '@grpc/grpc-js';
import { BrokerService, type WatchContextResponse } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { HwptKind, TeardownAction, ViommuType } from '../../src/gen/vfio_broker/v1/objects_pb.js';
import { connect, createClient } from '../../src/rpc/client.js';
import { TENANT_HEADER } from '../../src/rpc/identity.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import type { BrokerClient } from './topology.js';
import { SELFTEST_HWPT_DATA, SELFTEST_HWPT_DATA_TYPE } from './topology.js';

export interface Unexpected {
  client: number;
  step: string;
  code: string;
  reason: string;
  message: string;
}

export interface SoakShared {
  address: string;
  injectedErrnos: ReadonlySet<string>;
  abandonRate: number;
  leaseRate: number;
  leaseSeconds: number;
  thinkMs: number;
  stopping: () => boolean;
  random: () => number;
  /** A context was abandoned on purpose; the harness checks it gets reclaimed. */
  onAbandoned(contextId: string, mode: 'watch' | 'lease'): void;
  /** Resolves once the broker no longer has the context (or rejects after a deadline). */
  waitReclaimed(contextId: string): Promise<void>;
  /** Checks run right after CloseContext answered (context gone from the broker). */
  afterClose(contextId: string): Promise<string | undefined>;
  stats: SoakStats;
  unexpected: Unexpected[];
}

export interface SoakStats {
  rpcsOk: number;
  lifecycles: number;
  closed: number;
  abandonedWatch: number;
  abandonedLease: number;
  expectedInjected: number;
  expectedRefusals: number;
  unbinds: number;
  watchEvents: number;
  /**
   * Lease contexts the daemon reclaimed while their client was still using
   * them, because more than the lease passed between two of its requests
   * (a stalled machine). Checked per case: more than leaseSeconds between
   * the previous request's start and the refusal, so the daemon's view of
   * the gap was longer still; a shorter gap is an unexpected error instead.
   */
  leaseLapsed: number;
}

class Bail extends Error {}

/** The lease ran out between requests that were more than the lease apart: the daemon did its job. */
class Lapsed extends Bail {}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function runClient(id: number, tenant: string, devices: readonly string[], shared: SoakShared): Promise<void> {
  let channel = connect(shared.address);
  let client = createClient(BrokerService, channel);
  const s = shared.stats;
  const meta = () => {
    const md = new grpc.Metadata();
    md.set(TENANT_HEADER, tenant);
    return { metadata: md };
  };
  const unexpected = (step: string, err: unknown, note?: string) => {
    const e = err as Partial<grpc.ServiceError>;
    const info = err instanceof Error && 'code' in err ? errorInfoOf(err) : undefined;
    shared.unexpected.push({
      client: id,
      step,
      code: e.code !== undefined ? grpc.status[e.code] ?? String(e.code) : 'none',
      reason: info?.reason ?? '(no ErrorInfo)',
      message: note ?? (e.details || e.message || String(err)).slice(0, 300),
    });
  };
  // When the current lifecycle's previous request started, and whether its context has a lease.
  let lastStart = 0;
  let leased = false;
  /** A lease context gone after a gap longer than the lease (see SoakStats.leaseLapsed). */
  const lapsed = (info: ReturnType<typeof errorInfoOf>, previousStart: number) =>
    leased && info?.reason === 'CONTEXT_NOT_FOUND' && performance.now() - previousStart > shared.leaseSeconds * 1000;
  /** One RPC; an injected failure bails out of the lifecycle, anything else is recorded too. */
  async function rpc<T>(step: string, call: (c: BrokerClient) => Promise<T>): Promise<T> {
    const previousStart = lastStart;
    lastStart = performance.now();
    try {
      const value = await call(client);
      s.rpcsOk++;
      return value;
    } catch (err) {
      const info = errorInfoOf(err);
      if (info?.domain === 'vfio-broker' && shared.injectedErrnos.has(info.metadata['errno'] ?? '')) s.expectedInjected++;
      else if (lapsed(info, previousStart)) {
        s.leaseLapsed++;
        throw new Lapsed(step);
      } else unexpected(step, err);
      throw new Bail(step);
    }
  }
  /** An RPC that must be refused with `reason` (an injected errno is accepted too). */
  async function refused(step: string, reason: string, call: (c: BrokerClient) => Promise<unknown>): Promise<void> {
    const previousStart = lastStart;
    lastStart = performance.now();
    try {
      await call(client);
      unexpected(step, new Error(`expected ${reason}, the call succeeded`));
    } catch (err) {
      const info = errorInfoOf(err);
      if (info?.reason === reason) s.expectedRefusals++;
      else if (info?.domain === 'vfio-broker' && shared.injectedErrnos.has(info.metadata['errno'] ?? '')) s.expectedInjected++;
      else if (lapsed(info, previousStart)) {
        s.leaseLapsed++;
        throw new Lapsed(step);
      } else unexpected(step, err);
    }
  }
  const think = () => (shared.thinkMs > 0 ? sleep(shared.random() * 2 * shared.thinkMs) : Promise.resolve());

  while (!shared.stopping()) {
    s.lifecycles++;
    const lease = shared.random() < shared.leaseRate;
    leased = lease;
    lastStart = 0;
    const abandonAt = shared.random() < shared.abandonRate ? 1 + Math.floor(shared.random() * 8) : -1;
    let contextId = '';
    let watch: grpc.ClientReadableStream<WatchContextResponse> | undefined;
    let watchEnded: Promise<string> | undefined;
    let cancelled = false;
    let step = 0;
    /** After each milestone: maybe walk away from the context (the client vanishes). */
    const checkpoint = async () => {
      await think();
      if (++step !== abandonAt) return;
      if (watch) {
        cancelled = true;
        watch.cancel();
      }
      channel.close();
      channel = connect(shared.address);
      client = createClient(BrokerService, channel);
      if (lease) s.abandonedLease++;
      else s.abandonedWatch++;
      shared.onAbandoned(contextId, lease ? 'lease' : 'watch');
      throw new Bail('abandoned');
    };
    let abandoned = false;
    let gone = false;
    try {
      contextId = (await rpc('OpenContext', (c) => c.openContext({ label: `soak-${id}`, leaseSeconds: lease ? shared.leaseSeconds : 0 }, meta()))).contextId;
      if (!lease) {
        const stream = client.watchContext({ contextId }, meta());
        watch = stream;
        const first = new Promise<void>((resolve, reject) => {
          stream.once('data', () => resolve());
          stream.once('error', reject);
        });
        watchEnded = new Promise<string>((resolve) => {
          let sawClosed = false;
          stream.on('data', (e: WatchContextResponse) => {
            s.watchEvents++;
            if (e.event.case === 'closed') sawClosed = true;
          });
          stream.on('error', (err: grpc.ServiceError) => resolve(cancelled && err.code === grpc.status.CANCELLED ? 'cancelled' : `error ${grpc.status[err.code]}: ${err.details}`));
          stream.on('end', () => resolve(sawClosed ? 'closed' : 'ended without a closed event'));
        });
        try {
          await first;
        } catch (err) {
          unexpected('WatchContext', err);
          throw new Bail('watch');
        }
      }
      await checkpoint();
      const nDev = shared.random() < 0.5 ? 2 : 1;
      const dev: bigint[] = [];
      for (let i = 0; i < nDev; i++) dev.push((await rpc('BindDevice', (c) => c.bindDevice({ contextId, deviceId: devices[i]! }, meta()))).device!.handle);
      await checkpoint();
      const ioas = (await rpc('AllocIoas', (c) => c.allocIoas({ contextId }, meta()))).ioas!.handle;
      for (const d of dev) await rpc('AttachDevice(IOAS)', (c) => c.attachDevice({ contextId, device: d, target: ioas }, meta()));
      await checkpoint();
      const np = (await rpc('AllocHwpt(NEST_PARENT)', (c) => c.allocHwpt({ contextId, device: dev[0]!, kind: HwptKind.NEST_PARENT, parent: ioas }, meta()))).hwpt!.handle;
      const viommu = (await rpc('AllocViommu', (c) => c.allocViommu({ contextId, device: dev[0]!, nestParent: np, type: ViommuType.SELFTEST }, meta()))).viommu!.handle;
      await checkpoint();
      const vdev: bigint[] = [];
      for (const [i, d] of dev.entries()) vdev.push((await rpc('AllocVdevice', (c) => c.allocVdevice({ contextId, viommu, device: d, virtId: BigInt(i + 1) }, meta()))).vdevice!.handle);
      await checkpoint();
      const nested: bigint[] = [];
      for (const d of dev) {
        const req = { contextId, device: d, kind: HwptKind.NESTED, parent: viommu, dataType: SELFTEST_HWPT_DATA_TYPE, data: SELFTEST_HWPT_DATA };
        const h = (await rpc('AllocHwpt(NESTED)', (c) => c.allocHwpt(req, meta()))).hwpt!.handle;
        nested.push(h);
        await rpc('AttachDevice(NESTED)', (c) => c.attachDevice({ contextId, device: d, target: h }, meta()));
      }
      await checkpoint();
      const { objects } = await rpc('ListObjects', (c) => c.listObjects({ contextId }, meta()));
      // Devices, IOAS, nest parent, vIOMMU, vDEVICEs, nested HWPTs; the automatic HWPT was freed.
      if (objects.length !== 3 * nDev + 3) unexpected('ListObjects', new Error(`invariant: ${objects.length} objects, expected ${3 * nDev + 3}`));
      if (shared.random() < 0.3) await rpc('GetHwInfo', (c) => c.getHwInfo({ contextId, device: dev[0]! }, meta()));
      if (shared.random() < 0.3) await refused('DestroyObject(attached nested HWPT)', 'OBJECT_IN_USE', (c) => c.destroyObject({ contextId, handle: nested[0]! }, meta()));
      await checkpoint();
      if (shared.random() < 0.5) {
        const last = dev.length - 1;
        const { teardown } = await rpc('UnbindDevice', (c) => c.unbindDevice({ contextId, device: dev[last]! }, meta()));
        s.unbinds++;
        if (!teardown?.steps.some((x) => x.action === TeardownAction.CLOSE_DEVICE)) unexpected('UnbindDevice', new Error('invariant: unbind report has no close_device step'));
        await refused('DestroyObject(vDEVICE after unbind)', 'VDEVICE_DESTROYED_ON_UNBIND', (c) => c.destroyObject({ contextId, handle: vdev[last]! }, meta()));
      }
      await checkpoint();
    } catch (err) {
      if (!(err instanceof Bail)) unexpected('client', err);
      abandoned = err instanceof Bail && err.message === 'abandoned';
      // The daemon already tore a lapsed context down: nothing to close.
      gone = err instanceof Lapsed;
    }
    if (abandoned) {
      // The devices come back once the daemon reclaims the context.
      try {
        await shared.waitReclaimed(contextId);
      } catch (err) {
        unexpected('reclaim', err);
      }
      continue;
    }
    if (contextId !== '' && !gone) {
      try {
        const { teardown } = await client.closeContext({ contextId }, meta());
        s.rpcsOk++;
        s.closed++;
        if (teardown?.steps.at(-1)?.action !== TeardownAction.CLOSE_IOMMUFD) unexpected('CloseContext', new Error('invariant: teardown did not end with close_iommufd'));
        const broken = await shared.afterClose(contextId);
        if (broken) unexpected('CloseContext', new Error(broken));
      } catch (err) {
        unexpected('CloseContext', err);
      }
      if (watchEnded) {
        const how = await Promise.race([watchEnded, sleep(5000).then(() => 'still open 5 s after CloseContext')]);
        if (how !== 'closed') unexpected('WatchContext', new Error(`watch stream: ${how}`));
      }
    }
  }
  channel.close();
}
