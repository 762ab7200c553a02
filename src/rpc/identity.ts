/**
 * Who is calling, and as which tenant.
 *
 * Unix-socket callers are identified by their peer credentials (SO_PEERCRED),
 * mTLS callers by their client certificate's SAN (SPIFFE URI or DNS name) or
 * CN. Config rules map those to the admin role or to one tenant; the first
 * matching rule wins. uid 0 and the daemon's own uid are always admins.
 * Anyone else without a rule is refused.
 *
 * An admin acts for the tenant named in the `x-vfio-broker-tenant` header
 * (default: identity.defaultTenant). A tenant caller may send the header only
 * with its own tenant's name.
 */
import type * as grpc from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import type { Caller } from '../broker/broker.js';
import { BrokerError } from '../broker/errors.js';
import { asTenant } from '../broker/ids.js';
import type { PeerCredentials } from './peercred.js';

export const TENANT_HEADER = 'x-vfio-broker-tenant';
const TENANT_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function validTenantName(name: string): boolean {
  return TENANT_NAME.test(name);
}

/** One rule: a principal selector and what it grants. */
export interface IdentityRule {
  uid?: number;
  gid?: number;
  /** A SAN URI, e.g. a SPIFFE ID. */
  uri?: string;
  /** A SAN DNS name. */
  dns?: string;
  /** The subject common name (only when the certificate has no SAN). */
  cn?: string;
  admin?: boolean;
  tenant?: string;
}

export interface IdentityConfig {
  defaultTenant: string;
  rules: IdentityRule[];
}

type Principal =
  | { kind: 'unix'; creds: PeerCredentials }
  | { kind: 'tls'; uris: string[]; dnsNames: string[]; cn: string | undefined };

export interface IdentityResolver {
  resolve(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): Caller;
}

function certPrincipal(cert: PeerCertificate): Principal {
  const sans = (cert.subjectaltname ?? '').split(',').map((s) => s.trim());
  const pick = (prefix: string) => sans.filter((s) => s.startsWith(prefix)).map((s) => s.slice(prefix.length));
  const cn = cert.subject?.CN;
  return { kind: 'tls', uris: pick('URI:'), dnsNames: pick('DNS:'), cn: Array.isArray(cn) ? cn[0] : cn };
}

function matches(rule: IdentityRule, p: Principal): boolean {
  if (p.kind === 'unix') {
    return (rule.uid !== undefined && rule.uid === p.creds.uid) || (rule.gid !== undefined && rule.gid === p.creds.gid);
  }
  if (rule.uri !== undefined) return p.uris.includes(rule.uri);
  if (rule.dns !== undefined) return p.dnsNames.includes(rule.dns);
  // CN only counts for certificates without SANs, as RFC 6125 asks.
  if (rule.cn !== undefined) return p.uris.length === 0 && p.dnsNames.length === 0 && p.cn === rule.cn;
  return false;
}

function describe(p: Principal): string {
  if (p.kind === 'unix') return `uid=${p.creds.uid} gid=${p.creds.gid} pid=${p.creds.pid}`;
  return `tls:${p.uris[0] ?? p.dnsNames[0] ?? `cn=${p.cn ?? '?'}`}`;
}

/** Distinct tenant headers remembered per connection (admins may name any tenant). */
const MAX_CACHED_PER_CONNECTION = 64;
const NO_HEADER = '\0';

export class PeerIdentity implements IdentityResolver {
  private readonly builtinAdmins: ReadonlySet<number>;
  /**
   * A Unix connection's credentials never change, so its callers are resolved
   * once per tenant header and kept with the connection's credentials object
   * (dropped with it). Refusals are not kept: they are rare and their errors
   * carry the caller's own words.
   */
  private readonly resolved = new WeakMap<PeerCredentials, Map<string, Caller>>();

  constructor(
    private readonly config: IdentityConfig,
    private readonly credentialsOf: (peer: string) => PeerCredentials | undefined,
    selfUid = process.getuid?.() ?? 0,
  ) {
    this.builtinAdmins = new Set([0, selfUid]);
  }

  resolve(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): Caller {
    const raw = call.metadata.get(TENANT_HEADER)[0];
    const requested = typeof raw === 'string' ? raw : undefined;
    const creds = this.credentialsOf(call.getPeer());
    if (!creds) return this.callerOf(this.principalOf(call), requested);
    let known = this.resolved.get(creds);
    const key = requested ?? NO_HEADER;
    const hit = known?.get(key);
    if (hit) return hit;
    const caller = this.callerOf({ kind: 'unix', creds }, requested);
    if (!known) this.resolved.set(creds, (known = new Map()));
    if (known.size >= MAX_CACHED_PER_CONNECTION) known.clear();
    known.set(key, caller);
    return caller;
  }

  private callerOf(principal: Principal, requested: string | undefined): Caller {
    const peer = describe(principal);
    const rule = this.config.rules.find((r) => matches(r, principal));
    const admin = rule ? rule.admin === true : principal.kind === 'unix' && this.builtinAdmins.has(principal.creds.uid);
    if (requested !== undefined && !validTenantName(requested)) {
      throw new BrokerError('INVALID_FIELD', `${TENANT_HEADER}: "${requested.slice(0, 64)}" is not a tenant name (lowercase letters, digits, . _ -; at most 63)`, {
        field: TENANT_HEADER,
      });
    }
    // A Unix caller's credentials go with it: fd handoffs are bound to this uid and pid.
    const creds = principal.kind === 'unix' ? { uid: principal.creds.uid, gid: principal.creds.gid, pid: principal.creds.pid } : {};
    if (admin) return { tenant: asTenant(requested ?? this.config.defaultTenant), admin: true, peer, ...creds };
    if (!rule?.tenant) {
      throw new BrokerError('PERMISSION_DENIED', `${peer} is not mapped to a tenant or the admin role (identity.rules)`);
    }
    if (requested !== undefined && requested !== rule.tenant) {
      throw new BrokerError('PERMISSION_DENIED', `${peer} belongs to tenant "${rule.tenant}" and cannot act for "${requested}"`);
    }
    return { tenant: asTenant(rule.tenant), admin: false, peer, ...creds };
  }

  private principalOf(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): Principal {
    const creds = this.credentialsOf(call.getPeer());
    if (creds) return { kind: 'unix', creds };
    const cert = call.getAuthContext().sslPeerCertificate;
    if (cert) return certPrincipal(cert);
    throw new BrokerError('PERMISSION_DENIED', 'the caller could not be identified (no peer credentials or client certificate)');
  }
}
