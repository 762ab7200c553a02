import { describe, expect, it } from 'vitest';
import { FifoExecutor } from '../../src/broker/executor.js';

/** A promise the test settles by hand. */
function gate<T = void>() {
  let open!: (value: T) => void;
  let fail!: (err: unknown) => void;
  const promise = new Promise<T>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

describe('FifoExecutor', () => {
  it('runs tasks one at a time, in the order they arrived', async () => {
    const executor = new FifoExecutor();
    const log: string[] = [];
    const first = gate();
    const a = executor.run(async () => {
      log.push('a start');
      await first.promise;
      log.push('a end');
      return 'a';
    });
    const b = executor.run(async () => {
      log.push('b start');
      return 'b';
    });
    const c = executor.run(async () => {
      log.push('c start');
      return 'c';
    });
    await Promise.resolve();
    expect(log).toEqual(['a start']);
    expect(executor.depth).toBe(3);
    first.open();
    expect(await Promise.all([a, b, c])).toEqual(['a', 'b', 'c']);
    expect(log).toEqual(['a start', 'a end', 'b start', 'c start']);
    expect(executor.depth).toBe(0);
  });

  it('starts a task on an idle queue at once and hands back its own promise', () => {
    const executor = new FifoExecutor();
    let started = false;
    const own = Promise.resolve(1);
    const result = executor.run(() => {
      started = true;
      return own;
    });
    expect(started).toBe(true);
    expect(result).toBe(own);
  });

  it('does not let a failed task stall the ones behind it', async () => {
    const executor = new FifoExecutor();
    const failing = executor.run(async () => {
      throw new Error('boom');
    });
    const after = executor.run(async () => 'ran');
    await expect(failing).rejects.toThrow('boom');
    await expect(after).resolves.toBe('ran');
    expect(executor.depth).toBe(0);
  });

  it('turns a task that throws before returning a promise into a rejection, and goes on', async () => {
    const executor = new FifoExecutor();
    const blocker = gate();
    const first = executor.run(() => blocker.promise);
    const throwing = executor.run((): Promise<void> => {
      throw new Error('sync throw');
    });
    const last = executor.run(async () => 'last');
    blocker.open();
    await first;
    await expect(throwing).rejects.toThrow('sync throw');
    await expect(last).resolves.toBe('last');
    const idleThrow = executor.run((): Promise<void> => {
      throw new Error('idle throw');
    });
    await expect(idleThrow).rejects.toThrow('idle throw');
    await expect(executor.run(async () => 'still runs')).resolves.toBe('still runs');
  });

  it('reports how long each task waited behind the others (none for one that found its queue idle)', async () => {
    const waits: number[] = [];
    const executor = new FifoExecutor((seconds) => waits.push(seconds));
    const blocker = gate();
    const first = executor.run(() => blocker.promise);
    const second = executor.run(async () => undefined);
    expect(waits).toEqual([0]); // the second has not started: its wait is not known yet
    await new Promise((resolve) => setTimeout(resolve, 20));
    blocker.open();
    await Promise.all([first, second]);
    expect(waits).toHaveLength(2);
    expect(waits[0]).toBeLessThan(0.01);
    expect(waits[1]).toBeGreaterThanOrEqual(0.015);
    expect(waits[1]).toBeLessThan(5);
  });

  it('passes runWith its argument, queued in the same order as run', async () => {
    const executor = new FifoExecutor();
    const order: string[] = [];
    const blocker = gate();
    const first = executor.run(async () => {
      await blocker.promise;
      order.push('first');
    });
    const step = async (work: { name: string }) => {
      order.push(work.name);
      return work.name.length;
    };
    const second = executor.runWith(step, { name: 'second' });
    const third = executor.run(async () => void order.push('third'));
    blocker.open();
    await first;
    expect(await second).toBe(6);
    await third;
    expect(order).toEqual(['first', 'second', 'third']);
  });
});
