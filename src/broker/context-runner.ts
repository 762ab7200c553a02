/**
 * How a request reaches its context: admitted (rate limit, ownership, lease),
 * then run in the context's FIFO, with the restart journal around the kernel
 * calls of one that changes state.
 */
import type { Caller } from './broker-types.js';
import type { Context } from './context.js';
import { BrokerError } from './errors.js';
import type { Handle } from './ids.js';
import type { OpIntent, RestartRecorder } from './journal-recorder.js';
import type { OpEnv } from './operations.js';

/** An operation on one context, given the broker's environment (operations.ts, topology.ts, mappings). */
export type ContextOp<A extends unknown[], T> = (env: OpEnv, ctx: Context, ...args: A) => Promise<T>;

interface Mutation<A extends unknown[], T> {
  ctx: Context;
  intent: OpIntent;
  op: ContextOp<A, T>;
  args: A;
  also: readonly Handle[];
}

export class ContextRunner {
  constructor(
    private readonly env: OpEnv,
    private readonly restart: RestartRecorder | undefined,
    /** What every request passes before it queues; throws the refusal. */
    private readonly admit: (caller: Caller, id: string) => Context,
  ) {}

  /**
   * A request that changes kernel state: `op(env, ctx, ...args)` in the
   * context's FIFO, journaled around its kernel calls when restart is
   * configured. The work travels as data to one long-lived task, so a request
   * makes no closures (V8 drops a per-call closure's optimized code at every
   * full GC, and each full GC then recompiled them all).
   */
  mutate<A extends unknown[], T>(caller: Caller, id: string, intent: OpIntent, op: ContextOp<A, T>, args: A, also: readonly Handle[] = []): Promise<T> {
    let ctx: Context;
    try {
      ctx = this.admit(caller, id);
    } catch (err) {
      return Promise.reject(err);
    }
    const mutation: Mutation<A, T> = { ctx, intent, op, args, also };
    return ctx.executor.runWith(this.runMutation, mutation);
  }

  /** A request that changes nothing in the kernel, in the context's FIFO so it sees every earlier request's effect. */
  inContext<T>(caller: Caller, id: string, task: (ctx: Context) => Promise<T>): Promise<T> {
    let ctx: Context;
    try {
      ctx = this.admit(caller, id);
    } catch (err) {
      return Promise.reject(err);
    }
    return ctx.executor.run(() => {
      if (ctx.state !== 'open') throw contextClosed(ctx);
      return task(ctx);
    });
  }

  /** `task`, journaled when restart is configured; for work already inside the context's FIFO. */
  journaled<T>(ctx: Context, intent: OpIntent, task: () => Promise<T>, also: readonly Handle[] = []): Promise<T> {
    // Without a journal the task's own promise goes back as it is: an async wrapper would add a promise and two turns.
    if (!this.restart) return task();
    return this.journal(this.restart, ctx, intent, task, also);
  }

  private readonly runMutation = <A extends unknown[], T>(m: Mutation<A, T>): Promise<T> => {
    if (m.ctx.state !== 'open') throw contextClosed(m.ctx);
    if (!this.restart) return m.op(this.env, m.ctx, ...m.args);
    return this.journal(this.restart, m.ctx, m.intent, () => m.op(this.env, m.ctx, ...m.args), m.also);
  };

  private async journal<T>(restart: RestartRecorder, ctx: Context, intent: OpIntent, task: () => Promise<T>, also: readonly Handle[]): Promise<T> {
    restart.before(ctx, intent);
    try {
      return await task();
    } finally {
      await restart.after(ctx, also);
    }
  }
}

/** A request queued behind CloseContext finds the context gone. */
export function contextClosed(ctx: Context): BrokerError {
  return new BrokerError('CONTEXT_NOT_FOUND', `context_id: context ${ctx.id} was closed`, { field: 'context_id', contextId: ctx.id });
}
