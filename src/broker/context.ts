/** One iommufd context: its registry, its FIFO, its watchers and its lifetime. */
import type { IommufdFile } from '../kernel/types.js';
import type { ContextEvent, SequencedEvent } from './events.js';
import { FifoExecutor, type QueueWaitObserver } from './executor.js';
import type { ContextId, TenantId } from './ids.js';
import { Registry } from './registry.js';

export type ContextState = 'open' | 'closing' | 'closed';
export type EventListener = (event: SequencedEvent) => void;

export class Context {
  readonly registry: Registry;
  readonly executor: FifoExecutor;
  readonly openedAt = new Date();
  state: ContextState = 'open';
  /** Bytes of guest memory mapped in this context, counted against the tenant's pinned_bytes quota. */
  pinnedBytes = 0n;
  private sequence = 0;
  private readonly listeners = new Set<EventListener>();
  /** Set while the context would be torn down unless a client shows up. */
  private abandonTimer: NodeJS.Timeout | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: ContextId,
    readonly tenant: TenantId,
    readonly label: string,
    readonly leaseSeconds: number,
    readonly iommufd: IommufdFile,
    onQueueWait?: QueueWaitObserver,
  ) {
    this.registry = new Registry(id);
    this.executor = new FifoExecutor(onQueueWait);
  }

  get watcherCount(): number {
    return this.listeners.size;
  }

  emit(event: ContextEvent): void {
    const sequence = ++this.sequence;
    // Most contexts have no watcher: the numbering still advances, nothing else is built.
    if (this.listeners.size === 0) return;
    const sequenced = { sequence, time: new Date(), event };
    for (const listener of this.listeners) listener(sequenced);
  }

  /** Adds a watcher; returns the function that removes it. */
  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    this.cancelAbandonTimer();
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Starts (or restarts) the countdown after which an unwatched context counts as abandoned. */
  armAbandonTimer(delayMs: number, onExpire: () => void): void {
    this.cancelAbandonTimer();
    this.abandonTimer = setTimeout(onExpire, delayMs);
    this.abandonTimer.unref();
  }

  cancelAbandonTimer(): void {
    if (this.abandonTimer) clearTimeout(this.abandonTimer);
    this.abandonTimer = undefined;
  }

  /** Every request naming the context renews its lease. */
  renewLease(onExpire: () => void): void {
    if (this.leaseSeconds === 0 || this.state !== 'open') return;
    if (this.leaseTimer) {
      this.leaseTimer.refresh();
      return;
    }
    this.leaseTimer = setTimeout(onExpire, this.leaseSeconds * 1000);
    this.leaseTimer.unref();
  }

  stopTimers(): void {
    this.cancelAbandonTimer();
    if (this.leaseTimer) clearTimeout(this.leaseTimer);
    this.leaseTimer = undefined;
  }
}
