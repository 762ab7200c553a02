/**
 * The fd-socket token table (src/broker/handoff.ts) on its own, with a fake
 * clock: which refusal an attempt gets, single use, per-context limits, and
 * the lifetime of an uploaded memfd the broker holds.
 */
import { describe, expect, it } from 'vitest';
import { Context } from '../../src/broker/context.js';
import { Handoffs, MAX_OPEN_LEASES_PER_CONTEXT, type HandoffOutcome } from '../../src/broker/handoff.js';
import { asContextId, asHandle, asTenant } from '../../src/broker/ids.js';
import type { IommufdFile } from '../../src/kernel/types.js';

const OWNER = { uid: 1000, gid: 1000, pid: 42 };

function setup() {
  let now = 1_000_000;
  const closed: number[] = [];
  const ctx = new Context(asContextId('ctx-000000000000000000000001'), asTenant('acme'), '', 0, { kind: 'iommufd', fdNumber: 3 } as IommufdFile);
  const h = new Handoffs({
    socketPath: '/run/x-fd.sock',
    leaseMs: 10_000,
    kernel: { name: 'sim', osFd: () => undefined },
    contextOf: (id) => (id === ctx.id ? ctx : undefined),
    closeFd: (fd) => closed.push(fd),
    now: () => now,
  });
  return { h, ctx, closed, advance: (ms: number) => (now += ms) };
}

describe('fd-socket tokens', () => {
  it('are 256 random bits, single use, and refused by kind of mistake', async () => {
    const { h, ctx, advance } = setup();
    const a = h.issue(ctx, OWNER, { kind: 'memory_upload' });
    const b = h.issue(ctx, OWNER, { kind: 'memory_upload' });
    expect(a.token).toMatch(/^[0-9a-f]{64}$/);
    expect(a.token).not.toBe(b.token);
    const result = (o: HandoffOutcome) => o.result;
    expect(result(h.acceptUpload('0'.repeat(64), OWNER, [7]))).toBe('unknown');
    expect(result(h.acceptUpload(a.token, { ...OWNER, pid: 43 }, [7]))).toBe('foreign');
    expect(result(h.acceptUpload(a.token, { ...OWNER, uid: 0 }, [7]))).toBe('foreign');
    expect(result(h.acceptUpload(a.token, OWNER, []))).toBe('malformed');
    expect(result(h.acceptUpload(a.token, OWNER, [7, 8]))).toBe('malformed');
    expect(result(await h.redeemDeviceFd(a.token, OWNER, 0, async () => undefined))).toBe('malformed');
    // None of those spent it.
    expect(result(h.acceptUpload(a.token, OWNER, [7]))).toBe('received');
    expect(result(h.acceptUpload(a.token, OWNER, [9]))).toBe('replayed');
    expect(result(h.acceptUpload(a.token, { ...OWNER, pid: 43 }, [9]))).toBe('foreign');
    advance(10_000);
    expect(result(h.acceptUpload(b.token, OWNER, [9]))).toBe('expired');
  });

  it('hand a device fd only while the device is bound in an open context', async () => {
    const { h, ctx } = setup();
    const lease = h.issue(ctx, OWNER, { kind: 'device_fd', device: asHandle(1) });
    const out = await h.redeemDeviceFd(lease.token, OWNER, 0, async () => {
      throw new Error('must not be called');
    });
    expect(out).toMatchObject({ result: 'gone', message: expect.stringMatching(/DEVICE 1 was unbound/) });
  });

  it('hold an uploaded memfd until it is mapped, it expires, or its context closes', () => {
    const { h, ctx, closed, advance } = setup();
    const [a, b, c] = [0, 1, 2].map(() => h.issue(ctx, OWNER, { kind: 'memory_upload' }));
    expect(() => h.takeUpload(ctx, a!.token)).toThrow(/no memfd was sent with it on the fd socket yet/);
    h.acceptUpload(a!.token, OWNER, [10]);
    h.acceptUpload(b!.token, OWNER, [11]);
    h.acceptUpload(c!.token, OWNER, [12]);
    // A failed map puts the memfd back for a retry; a successful one closes it.
    const first = h.takeUpload(ctx, a!.token);
    expect(first.fd).toBe(10);
    expect(() => h.takeUpload(ctx, a!.token)).toThrow(/another MapMemory is using it/);
    first.settle(false);
    expect(closed).toEqual([]);
    h.takeUpload(ctx, a!.token).settle(true);
    expect(closed).toEqual([10]);
    expect(() => h.takeUpload(ctx, a!.token)).toThrow(/was mapped already/);
    // A context drop cannot close a memfd a map is using; the map closes it when it settles.
    const inUse = h.takeUpload(ctx, b!.token);
    h.dropContext(ctx.id);
    expect(closed).toEqual([10, 12]);
    advance(10_000);
    inUse.settle(false);
    expect(closed).toEqual([10, 12, 11]);
    expect(h.heldUploads).toBe(0);
    expect(() => h.takeUpload(ctx, 'f'.repeat(64))).toThrow(/no memory upload with this token/);
  });

  it('limit the unredeemed tokens of one context', () => {
    const { h, ctx } = setup();
    for (let i = 0; i < MAX_OPEN_LEASES_PER_CONTEXT; i++) h.issue(ctx, OWNER, { kind: 'device_fd', device: asHandle(1) });
    expect(() => h.issue(ctx, OWNER, { kind: 'device_fd', device: asHandle(1) })).toThrow(/unredeemed fd tokens/);
  });
});
