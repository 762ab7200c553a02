/**
 * Per-context FIFO: operations on one context run one at a time, in arrival
 * order; different contexts each have their own queue and run in parallel.
 *
 * The kernel itself allows concurrent ioctls on one iommufd but answers EBUSY
 * to a DESTROY racing a lookup (kernel-uapi.md §2, "Concurrency"). Serialising
 * per context removes that race and makes every result equal to a serial order.
 */
export type QueueWaitObserver = (waitSeconds: number) => void;

interface Queued {
  task: (arg: unknown) => Promise<unknown>;
  arg: unknown;
  enqueued: number;
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

export class FifoExecutor {
  private readonly queue: Queued[] = [];
  private running = false;
  /** Bound once: the settle handler of every task. */
  private readonly settled = () => this.next();

  constructor(private readonly onWait?: QueueWaitObserver) {}

  /** Requests queued or running. */
  get depth(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  /**
   * Runs `task` now when the queue is idle, else after everything queued
   * before it. The caller gets the task's own promise when it starts at once:
   * most requests find their context idle, and a wrapper promise would cost
   * each of them an allocation and two more turns of the microtask queue.
   */
  run<T>(task: () => Promise<T>): Promise<T> {
    return this.runWith(task, undefined);
  }

  /**
   * `run` for a task that takes its work as an argument: a long-lived
   * function and a plain object, rather than a closure made per request
   * (V8 drops a per-call closure's optimized code at every full GC).
   */
  runWith<A, T>(task: (arg: A) => Promise<T>, arg: A): Promise<T> {
    if (!this.running) {
      // It starts in this same call: it waited for nothing, and reading the clock twice would not say more.
      this.onWait?.(0);
      return this.start(task, arg);
    }
    const enqueued = this.onWait ? performance.now() : 0;
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ task: task as (arg: unknown) => Promise<unknown>, arg, enqueued, resolve: resolve as (value: unknown) => void, reject });
    });
  }

  private start<A, T>(task: (arg: A) => Promise<T>, arg: A): Promise<T> {
    this.running = true;
    let result: Promise<T>;
    try {
      result = task(arg);
    } catch (err) {
      // A task that throws before its first await fails like one that rejects.
      result = Promise.reject(err);
    }
    // A failed task must not stall the ones behind it.
    result.then(this.settled, this.settled);
    return result;
  }

  private next(): void {
    const queued = this.queue.shift();
    if (queued === undefined) {
      this.running = false;
      return;
    }
    if (this.onWait) this.onWait((performance.now() - queued.enqueued) / 1000);
    this.start(queued.task, queued.arg).then(queued.resolve, queued.reject);
  }
}
