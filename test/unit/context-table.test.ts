import { describe, expect, it } from 'vitest';
import type { Caller } from '../../src/broker/broker-types.js';
import { Context } from '../../src/broker/context.js';
import { ContextTable } from '../../src/broker/context-table.js';
import { asTenant, type ContextId } from '../../src/broker/ids.js';
import type { IommufdFile, KernelObjectId } from '../../src/kernel/types.js';
import { refusal } from '../helpers/refusal.js';

const acme = asTenant('acme');
const globex = asTenant('globex');

function context(n: number, tenant = acme): Context {
  return new Context(`ctx-${String(n).padStart(24, '0')}` as ContextId, tenant, '', 0, { fdNumber: n } as unknown as IommufdFile);
}

function caller(tenant: typeof acme, admin = false): Caller {
  return { tenant, admin, peer: 'test' };
}

describe('ContextTable', () => {
  it('keeps each tenant\'s contexts and live objects, and forgets a tenant with none left', () => {
    const table = new ContextTable();
    const [a1, a2, g1] = [context(1), context(2), context(3, globex)];
    for (const ctx of [a1, a2, g1]) table.add(ctx);
    a1.registry.add({ kind: 'IOAS', handle: a1.registry.nextHandle(), kernelId: 1 as KernelObjectId, state: 'live', mappings: new Map() });
    a2.registry.add({ kind: 'IOAS', handle: a2.registry.nextHandle(), kernelId: 1 as KernelObjectId, state: 'live', mappings: new Map() });
    expect(table.size).toBe(3);
    expect(table.contextsOf(acme)).toBe(2);
    expect(table.liveObjectsOf(acme)).toBe(2);
    expect(table.liveObjectsOf(globex)).toBe(0);
    expect(table.list(acme)).toEqual([a1, a2]);
    expect(table.list()).toEqual([a1, a2, g1]);

    table.remove(a1); // its live IOAS goes with it
    expect(table.get(a1.id)).toBeUndefined();
    expect(table.liveObjectsOf(acme)).toBe(1);
    table.remove(a2);
    expect(table.contextsOf(acme)).toBe(0);
    expect(table.list(acme)).toEqual([]);
    expect(table.size).toBe(1);
  });

  it('finds a context only for its own tenant or an admin, and names what is missing', () => {
    const table = new ContextTable();
    const a = context(1);
    table.add(a);
    expect(table.find(caller(acme), a.id)).toBe(a);
    expect(table.find(caller(globex, true), a.id)).toBe(a);
    // Another tenant's context looks exactly like one that does not exist.
    const foreign = refusal(() => table.find(caller(globex), a.id));
    const unknown = refusal(() => table.find(caller(globex), 'ctx-nope'));
    expect(foreign.reason).toBe('CONTEXT_NOT_FOUND');
    expect(foreign.message).toBe(`context_id: no open context ${a.id}`);
    expect(unknown.reason).toBe('CONTEXT_NOT_FOUND');
    expect(refusal(() => table.find(caller(acme), '')).reason).toBe('MISSING_FIELD');
  });
});
