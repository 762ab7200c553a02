/**
 * Runs a bench script in a child Node process and talks to it over IPC.
 * Servers run in their own process so the client's work does not share their
 * event loop, and in-process measurements start from a fresh heap.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import path from 'node:path';

export const BENCH_DIST = path.resolve(import.meta.dirname, '..');
export const ROOT = path.resolve(BENCH_DIST, '..', '..', '..');
export const CACHE = path.join(ROOT, '.cache', 'bench');

export interface Request {
  id: number;
  cmd: string;
  args?: unknown;
}

export interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

/** A request the child makes of its parent (the other direction). */
export interface ChildRequest {
  fromChild: true;
  id: number;
  cmd: string;
  args?: unknown;
}

type Handlers = Record<string, (args: unknown) => unknown>;

async function answer(h: Handlers, msg: { id: number; cmd: string; args?: unknown }, send: (m: unknown) => void, extra: object = {}): Promise<void> {
  const fn = h[msg.cmd];
  try {
    if (!fn) throw new Error(`unknown command ${msg.cmd}`);
    send({ ...extra, id: msg.id, ok: true, result: await fn(msg.args) });
  } catch (err) {
    send({ ...extra, id: msg.id, ok: false, error: (err as Error).stack ?? String(err) });
  }
}

export class Child {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private exited: Promise<number | null>;

  /** Handlers for requests the child sends (see `askParent`). */
  readonly handlers: Handlers = {};

  private constructor(readonly proc: ChildProcess, readonly name: string) {
    this.exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.on('message', (msg: Reply | ChildRequest) => {
      if ('fromChild' in msg) {
        void answer(this.handlers, msg, (m) => proc.connected && proc.send(m as object), { toChild: true });
        return;
      }
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`${name}: ${msg.error}`));
    });
    void this.exited.then((code) => {
      for (const p of this.pending.values()) p.reject(new Error(`${name} exited (${code}) before answering`));
      this.pending.clear();
    });
  }

  /**
   * Forks `bench/<script>.js` with `args`; resolves when it sends `{ready}`.
   * Its stdout and stderr go to `.cache/bench/<name>.log`.
   */
  static async start(script: string, args: string[], name: string, execArgv: string[] = [], distDir = BENCH_DIST): Promise<Child> {
    mkdirSync(CACHE, { recursive: true });
    const log = openSync(path.join(CACHE, `${name}.log`), 'w');
    const proc = fork(path.join(distDir, `${script}.js`), args, {
      execArgv: ['--expose-gc', ...execArgv],
      stdio: ['ignore', log, log, 'ipc'],
    });
    const child = new Child(proc, name);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (msg: { ready?: boolean; error?: string }) => {
        if (msg.ready) {
          proc.off('message', onMessage);
          resolve();
        } else if (msg.error) reject(new Error(`${name} failed to start: ${msg.error}`));
      };
      proc.on('message', onMessage);
      proc.once('exit', (code) => reject(new Error(`${name} exited (${code}) during start; see ${path.join(CACHE, `${name}.log`)}`)));
    });
    return child;
  }

  request<T>(cmd: string, args?: unknown): Promise<T> {
    const id = ++this.nextId;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.proc.send({ id, cmd, args } satisfies Request);
    });
  }

  /** Asks the child to stop, then waits for it to exit (SIGKILL after 10 s). */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    await this.request('stop').catch(() => undefined);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
  }
}

let askId = 0;
const asked = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

/** The child side: answers requests with `handlers` and reports readiness. */
export function serveParent(handlers: Handlers): void {
  process.on('message', (msg: Request | (Reply & { toChild: true })) => {
    if ('toChild' in msg) {
      const p = asked.get(msg.id);
      asked.delete(msg.id);
      if (msg.ok) p?.resolve(msg.result);
      else p?.reject(new Error(msg.error));
      return;
    }
    void answer(handlers, msg, (m) => process.send?.(m)).then(() => {
      if (msg.cmd === 'stop') process.disconnect?.();
    });
  });
  process.send?.({ ready: true });
}

/** The child asks its parent (which answers with `Child.handlers`). */
export function askParent<T>(cmd: string, args?: unknown): Promise<T> {
  const id = ++askId;
  return new Promise<T>((resolve, reject) => {
    asked.set(id, { resolve: resolve as (v: unknown) => void, reject });
    process.send?.({ fromChild: true, id, cmd, args } satisfies ChildRequest);
  });
}
