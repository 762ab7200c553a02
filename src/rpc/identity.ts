/**
 * Who is calling. Until SO_PEERCRED-based identity lands (multi-tenant issue),
 * every local caller is trusted as an administrator and names its tenant in
 * the `x-vfio-broker-tenant` header; the socket's file mode is the boundary.
 */
import type * as grpc from '@grpc/grpc-js';
import { BrokerError } from '../broker/errors.js';
import { asTenant } from '../broker/ids.js';
import type { Caller } from '../broker/broker.js';

export const TENANT_HEADER = 'x-vfio-broker-tenant';
const TENANT_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function validTenantName(name: string): boolean {
  return TENANT_NAME.test(name);
}

export interface IdentityResolver {
  resolve(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): Caller;
}

export function localTrustIdentity(defaultTenant: string): IdentityResolver {
  return {
    resolve(call) {
      const raw = call.metadata.get(TENANT_HEADER)[0];
      const tenant = typeof raw === 'string' ? raw : defaultTenant;
      if (!validTenantName(tenant)) {
        throw new BrokerError('INVALID_FIELD', `${TENANT_HEADER}: "${tenant.slice(0, 64)}" is not a tenant name (lowercase letters, digits, . _ -; at most 63)`, {
          field: TENANT_HEADER,
        });
      }
      return { tenant: asTenant(tenant), admin: true, peer: call.getPeer() };
    },
  };
}
