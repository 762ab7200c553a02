/**
 * Per-context FIFO: operations on one context run one at a time, in arrival
 * order; different contexts each have their own queue and run in parallel.
 *
 * The kernel itself allows concurrent ioctls on one iommufd but answers EBUSY
 * to a DESTROY racing a lookup (kernel-uapi.md §2, "Concurrency"). Serialising
 * per context removes that race and makes every result equal to a serial order.
 */
export type QueueWaitObserver = (waitSeconds: number) => void;

export class FifoExecutor {
  private tail: Promise<unknown> = Promise.resolve();
  private waiting = 0;

  constructor(private readonly onWait?: QueueWaitObserver) {}

  /** Requests queued or running. */
  get depth(): number {
    return this.waiting;
  }

  run<T>(task: () => Promise<T>): Promise<T> {
    const enqueued = this.onWait ? performance.now() : 0;
    this.waiting++;
    const result = this.tail.then(() => {
      this.onWait?.((performance.now() - enqueued) / 1000);
      return task();
    });
    // A failed task must not stall the ones behind it.
    this.tail = result.then(
      () => this.waiting--,
      () => this.waiting--,
    );
    return result;
  }
}
