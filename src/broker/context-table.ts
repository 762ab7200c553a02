/**
 * The open contexts: by ID, and by tenant with the tenant's live-object
 * tally, which the object quota reads on every create. A context joins when
 * it is opened or restored and leaves when its close has finished.
 */
import type { Context } from './context.js';
import { BrokerError } from './errors.js';
import type { Caller } from './broker-types.js';
import type { ContextId, TenantId } from './ids.js';
import { LiveTally } from './registry.js';

/** A tenant's open contexts, and its live objects across them. */
interface TenantContexts {
  readonly contexts: Set<Context>;
  readonly tally: LiveTally;
}

export class ContextTable {
  private readonly byId = new Map<ContextId, Context>();
  private readonly byTenant = new Map<TenantId, TenantContexts>();

  get size(): number {
    return this.byId.size;
  }

  get(id: string): Context | undefined {
    return this.byId.get(id as ContextId);
  }

  values(): IterableIterator<Context> {
    return this.byId.values();
  }

  add(ctx: Context): void {
    this.byId.set(ctx.id, ctx);
    let own = this.byTenant.get(ctx.tenant);
    if (!own) this.byTenant.set(ctx.tenant, (own = { contexts: new Set(), tally: new LiveTally() }));
    own.contexts.add(ctx);
    ctx.registry.join(own.tally);
  }

  /** Whatever is still live in `ctx` comes off its tenant's tally: closing the iommufd freed it. */
  remove(ctx: Context): void {
    this.byId.delete(ctx.id);
    ctx.registry.leave();
    const own = this.byTenant.get(ctx.tenant);
    own?.contexts.delete(ctx);
    if (own?.contexts.size === 0) this.byTenant.delete(ctx.tenant);
  }

  contextsOf(tenant: TenantId): number {
    return this.byTenant.get(tenant)?.contexts.size ?? 0;
  }

  liveObjectsOf(tenant: TenantId): number {
    return this.byTenant.get(tenant)?.tally.live ?? 0;
  }

  /** The context `caller` names. Another tenant's context does not exist for the caller. */
  find(caller: Caller, id: string): Context {
    if (id === '') throw new BrokerError('MISSING_FIELD', 'context_id is required (from OpenContext)', { field: 'context_id' });
    const ctx = this.byId.get(id as ContextId);
    if (!ctx || (!caller.admin && ctx.tenant !== caller.tenant)) {
      throw new BrokerError('CONTEXT_NOT_FOUND', `context_id: no open context ${id.slice(0, 80)}`, { field: 'context_id', contextId: id });
    }
    return ctx;
  }

  /** Every open context, or one tenant's. */
  list(tenant?: TenantId): Context[] {
    if (tenant === undefined) return [...this.byId.values()];
    return [...(this.byTenant.get(tenant)?.contexts ?? [])];
  }
}
