/**
 * 200 conflicting requests on one context at once. The per-context FIFO must
 * make the outcome equal to a serial order: the watch stream gives that order,
 * and replaying it must explain every reply and the final state exactly.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { WatchContextResponse } from '../../src/gen/vfio_broker/v1/broker_pb.js';
import { errorInfoOf } from '../../src/rpc/status.js';
import { registryMatchesKernel, startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { assignDevices, meta } from '../helpers/lifecycle.js';

type Outcome = { op: string; target?: bigint; ok: boolean; handle?: bigint; reason?: string };

describe('200 concurrent conflicting RPCs on one context', () => {
  let td: TestDaemon;
  beforeEach(async () => {
    td = await startTestDaemon();
  });
  afterEach(async () => {
    await td.stop();
  });

  it('ends in a state some serial order produces, with no lost or doubled objects', async () => {
    const [deviceId] = await assignDevices(td, 1);
    const { contextId } = await td.broker.openContext({}, meta);
    const device = (await td.broker.bindDevice({ contextId, deviceId: deviceId! }, meta)).device!.handle;
    const seed: bigint[] = [];
    for (let i = 0; i < 4; i++) seed.push((await td.broker.allocIoas({ contextId }, meta)).ioas!.handle);

    const events: WatchContextResponse[] = [];
    const watch = td.broker.watchContext({ contextId }, meta);
    watch.on('data', (e: WatchContextResponse) => events.push(e));
    watch.on('error', () => undefined);
    await new Promise((r) => watch.once('data', r));

    // Handles the concurrent AllocIoas calls will get are unknown up front: guess a range around them.
    const guess = (i: number) => BigInt(2 + (i % 60));
    const calls: Promise<Outcome>[] = [];
    for (let i = 0; i < 200; i++) {
      const op = ['alloc', 'destroy', 'attach', 'detach'][i % 4]!;
      const target = op === 'attach' ? seed[i % seed.length]! : guess(i);
      const run = async (): Promise<Outcome> => {
        try {
          switch (op) {
            case 'alloc':
              return { op, ok: true, handle: (await td.broker.allocIoas({ contextId }, meta)).ioas!.handle };
            case 'destroy':
              await td.broker.destroyObject({ contextId, handle: target }, meta);
              return { op, target, ok: true };
            case 'attach':
              return { op, target, ok: true, handle: (await td.broker.attachDevice({ contextId, device, target }, meta)).hwpt!.handle };
            default:
              await td.broker.detachDevice({ contextId, device }, meta);
              return { op, ok: true };
          }
        } catch (err) {
          const e = err as grpc.ServiceError;
          return { op, target, ok: false, reason: errorInfoOf(e)?.reason ?? `code ${e.code}` };
        }
      };
      calls.push(run());
    }
    const outcomes = await Promise.all(calls);

    // No lost or doubled objects: every AllocIoas got its own handle.
    const allocated = outcomes.filter((o) => o.op === 'alloc').map((o) => o.handle!);
    expect(allocated).toHaveLength(50);
    expect(new Set(allocated).size).toBe(50);
    // Failures are only the ones a serial order explains.
    for (const o of outcomes.filter((x) => !x.ok)) {
      expect(['OBJECT_NOT_FOUND', 'OBJECT_IN_USE', 'WRONG_OBJECT_TYPE'], `${o.op} ${o.target}: ${o.reason}`).toContain(o.reason);
    }

    const { objects } = await td.broker.listObjects({ contextId }, meta);
    const expected = objects.map((o) => o.handle).sort();

    // Replay the event order: start from the snapshot, apply created/destroyed in sequence.
    const replay = (): bigint[] => {
      const ready = events[0]!;
      expect(ready.event.case).toBe('ready');
      const live = new Set(ready.event.case === 'ready' ? ready.event.value.objects.map((o) => o.handle) : []);
      const seqs = events.slice(1).map((e) => Number(e.sequence));
      seqs.forEach((s, i) => i > 0 && expect(s).toBe(seqs[i - 1]! + 1));
      for (const e of events.slice(1)) {
        if (e.event.case === 'created') {
          expect(live.has(e.event.value.object!.handle)).toBe(false);
          live.add(e.event.value.object!.handle);
        } else if (e.event.case === 'destroyed') {
          expect(live.has(e.event.value.handle)).toBe(true);
          live.delete(e.event.value.handle);
        }
      }
      return [...live].sort();
    };
    // The stream may still be delivering the last events (a loaded machine): wait for them, not a fixed time.
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && JSON.stringify(replay().map(String)) !== JSON.stringify(expected.map(String)); ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    watch.cancel();
    expect(replay()).toEqual(expected);
    const destroyedOk = new Set(outcomes.filter((o) => o.op === 'destroy' && o.ok).map((o) => o.target!));
    // Each successful DestroyObject is one destroyed event of an IOAS in that order.
    const destroyedIoas = events.filter((e) => e.event.case === 'destroyed' && e.event.value.type === 2).map((e) => (e.event.value as { handle: bigint }).handle);
    expect(new Set(destroyedIoas)).toEqual(destroyedOk);
    const m = registryMatchesKernel(td, contextId);
    expect(m.registry).toEqual(m.kernel);
  });
});
