/**
 * Per-tenant quotas: contexts, live objects, pinned bytes and a request rate
 * (token bucket). One tenant cannot starve the others of kernel objects,
 * memory or the broker's time. Admin calls are not rate-limited.
 */
import { BrokerError } from './errors.js';
import type { TenantId } from './ids.js';

export interface TenantQuota {
  contexts: number;
  objects: number;
  pinnedBytes: number;
  requestsPerSecond: number;
  burst: number;
}

export const DEFAULT_QUOTA: TenantQuota = { contexts: 64, objects: 4096, pinnedBytes: 1024 ** 4, requestsPerSecond: 2000, burst: 4000 };

export type QuotaName = 'contexts' | 'objects' | 'pinned_bytes' | 'request_rate';

interface Bucket {
  tokens: number;
  last: number;
}

export class Quotas {
  private readonly buckets = new Map<TenantId, Bucket>();
  private readonly pinned = new Map<TenantId, number>();

  constructor(
    private readonly defaults: TenantQuota,
    private readonly perTenant: Readonly<Record<string, Partial<TenantQuota>>> = {},
    private readonly now: () => number = () => performance.now(),
  ) {}

  limits(tenant: TenantId): TenantQuota {
    const own = this.perTenant[tenant];
    return own ? { ...this.defaults, ...own } : this.defaults;
  }

  private exceeded(tenant: TenantId, quota: QuotaName, limit: number, used: number, what: string): BrokerError {
    return new BrokerError('QUOTA_EXCEEDED', `tenant "${tenant}" is at its ${what} quota (${used} of ${limit})`, { quota, quotaLimit: limit });
  }

  /** Takes one request token; refuses when the tenant's bucket is empty. */
  admitRequest(tenant: TenantId): void {
    const { requestsPerSecond, burst } = this.limits(tenant);
    const t = this.now();
    let bucket = this.buckets.get(tenant);
    if (!bucket) this.buckets.set(tenant, (bucket = { tokens: burst, last: t }));
    bucket.tokens = Math.min(burst, bucket.tokens + ((t - bucket.last) / 1000) * requestsPerSecond);
    bucket.last = t;
    if (bucket.tokens < 1) {
      throw new BrokerError('QUOTA_EXCEEDED', `tenant "${tenant}" is over its request rate (${requestsPerSecond}/s, burst ${burst}); retry later`, {
        quota: 'request_rate',
        quotaLimit: requestsPerSecond,
      });
    }
    bucket.tokens -= 1;
  }

  checkContexts(tenant: TenantId, open: number): void {
    const { contexts } = this.limits(tenant);
    if (open >= contexts) throw this.exceeded(tenant, 'contexts', contexts, open, 'context');
  }

  checkObjects(tenant: TenantId, live: number, adding = 1): void {
    const { objects } = this.limits(tenant);
    if (live + adding > objects) throw this.exceeded(tenant, 'objects', objects, live, 'object');
  }

  /** Reserves pinned guest memory; the caller releases it when the mapping goes. */
  reservePinned(tenant: TenantId, bytes: number): void {
    const { pinnedBytes } = this.limits(tenant);
    const used = this.pinned.get(tenant) ?? 0;
    if (used + bytes > pinnedBytes) throw this.exceeded(tenant, 'pinned_bytes', pinnedBytes, used, 'pinned-memory');
    this.pinned.set(tenant, used + bytes);
  }

  releasePinned(tenant: TenantId, bytes: number): void {
    this.pinned.set(tenant, Math.max(0, (this.pinned.get(tenant) ?? 0) - bytes));
  }

  pinnedBytes(tenant: TenantId): number {
    return this.pinned.get(tenant) ?? 0;
  }
}
