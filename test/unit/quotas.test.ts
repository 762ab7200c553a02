import { describe, expect, it } from 'vitest';
import { asTenant } from '../../src/broker/ids.js';
import { DEFAULT_QUOTA, Quotas } from '../../src/broker/quotas.js';
import { BrokerError } from '../../src/broker/errors.js';
import { refusal } from '../helpers/refusal.js';

const acme = asTenant('acme');
const globex = asTenant('globex');

describe('tenant quotas', () => {
  it('limits the request rate per tenant with a token bucket, refilled over time', () => {
    let now = 0;
    const q = new Quotas({ ...DEFAULT_QUOTA, requestsPerSecond: 10, burst: 3 }, {}, () => now);
    for (let i = 0; i < 3; i++) q.admitRequest(acme);
    const err = refusal(() => q.admitRequest(acme));
    expect(err.reason).toBe('QUOTA_EXCEEDED');
    expect(err.quota).toBe('request_rate');
    q.admitRequest(globex); // another tenant's bucket is untouched
    now += 100; // 0.1 s at 10/s = one token
    q.admitRequest(acme);
    expect(() => q.admitRequest(acme)).toThrow(BrokerError);
  });

  it('applies per-tenant overrides over the defaults', () => {
    const q = new Quotas({ ...DEFAULT_QUOTA, contexts: 2 }, { acme: { contexts: 5 } });
    expect(q.limits(acme).contexts).toBe(5);
    expect(q.limits(globex).contexts).toBe(2);
    expect(() => q.checkContexts(globex, 1)).not.toThrow();
    const err = refusal(() => q.checkContexts(globex, 2));
    expect(err.quota).toBe('contexts');
    expect(err.quotaLimit).toBe(2);
  });

  it('accounts pinned bytes per tenant and refuses a reservation past the limit', () => {
    const q = new Quotas({ ...DEFAULT_QUOTA, pinnedBytes: 1000 });
    q.reservePinned(acme, 600);
    expect(refusal(() => q.reservePinned(acme, 500)).quota).toBe('pinned_bytes');
    q.releasePinned(acme, 600);
    q.reservePinned(acme, 1000);
    expect(q.pinnedBytes(acme)).toBe(1000);
  });
});
