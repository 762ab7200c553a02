/**
 * One-time tokens for the fd socket (src/rpc/handoff-server.ts): a lease of
 * a bound device's fd (LeaseDeviceFd), or a slot for uploading a memfd
 * (PrepareMemoryUpload) that MapMemory then maps.
 *
 * A token is 256 random bits, bound to the context and to the peer
 * credentials of the process that asked for it: the fd socket accepts it
 * once, only from that uid and pid, before it expires. Used and expired
 * tokens are remembered for a while so a second attempt is reported as what
 * it is (replayed, expired) rather than unknown. Nothing here touches a
 * socket; the rpc layer does.
 */
import { randomBytes } from 'node:crypto';
import { closeSync } from 'node:fs';
import type { KernelBackend } from '../kernel/types.js';
import type { Caller } from './broker.js';
import type { Context } from './context.js';
import { BrokerError } from './errors.js';
import type { ContextId, Handle, TenantId } from './ids.js';

export interface PeerCreds {
  uid: number;
  gid: number;
  pid: number;
}

/** What happened to one attempt on the fd socket; the label of vfio_broker_fd_handoffs_total. */
export type HandoffResult = 'sent' | 'received' | 'expired' | 'replayed' | 'foreign' | 'unknown' | 'malformed' | 'gone' | 'failed';
export const HANDOFF_RESULTS: readonly HandoffResult[] = ['sent', 'received', 'expired', 'replayed', 'foreign', 'unknown', 'malformed', 'gone', 'failed'];

interface LeaseBase {
  readonly token: string;
  readonly contextId: ContextId;
  readonly tenant: TenantId;
  /** The caller of LeaseDeviceFd / PrepareMemoryUpload. */
  readonly owner: PeerCreds;
  /** Milliseconds since the epoch. */
  readonly expiresAt: number;
  /** Redeemed on the fd socket (a second attempt is a replay). */
  spent: boolean;
}

export interface DeviceLease extends LeaseBase {
  readonly kind: 'device_fd';
  readonly device: Handle;
}

export interface UploadLease extends LeaseBase {
  readonly kind: 'memory_upload';
  /** The uploaded memfd, owned here until MapMemory consumes it or the lease expires. */
  fd: number | undefined;
  timer: NodeJS.Timeout | undefined;
}

export type Lease = DeviceLease | UploadLease;

export interface HandoffOutcome {
  result: HandoffResult;
  /** For the peer's error line and the audit log. */
  message: string;
  lease?: Lease | undefined;
}

/** Unredeemed, unexpired tokens one context may hold: each upload can pin an fd in the daemon. */
export const MAX_OPEN_LEASES_PER_CONTEXT = 32;
/** How long a used or expired token is still recognised. */
const RETAIN_MS = 5 * 60_000;

export interface HandoffOptions {
  /** The fd socket, told to clients (they never choose a path). */
  socketPath: string;
  leaseMs: number;
  kernel: Pick<KernelBackend, 'name' | 'osFd'>;
  /** The broker's open contexts. */
  contextOf(id: ContextId): Context | undefined;
  closeFd?(fd: number): void;
  now?(): number;
}

/** fds travel over the local fd socket only, to the process that asked: a Unix-socket caller. */
export function localCaller(caller: Caller, rpc: string): PeerCreds {
  if (caller.uid === undefined || caller.gid === undefined || caller.pid === undefined) {
    throw new BrokerError('PERMISSION_DENIED', `${rpc} hands an fd to a local process: call it on the Unix socket, not over mTLS`);
  }
  return { uid: caller.uid, gid: caller.gid, pid: caller.pid };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Already closed: nothing left to release.
  }
}

export class Handoffs {
  readonly socketPath: string;
  readonly leaseMs: number;
  private readonly leases = new Map<string, Lease>();
  private readonly closeFd: (fd: number) => void;
  private readonly now: () => number;

  constructor(private readonly options: HandoffOptions) {
    this.socketPath = options.socketPath;
    this.leaseMs = options.leaseMs;
    this.closeFd = options.closeFd ?? closeQuietly;
    this.now = options.now ?? (() => Date.now());
  }

  issue(ctx: Context, owner: PeerCreds, spec: { kind: 'device_fd'; device: Handle } | { kind: 'memory_upload' }): Lease {
    this.sweep();
    const t = this.now();
    let open = 0;
    for (const l of this.leases.values()) if (l.contextId === ctx.id && !l.spent && l.expiresAt > t) open++;
    if (open >= MAX_OPEN_LEASES_PER_CONTEXT) {
      throw new BrokerError('QUOTA_EXCEEDED', `context ${ctx.id} already has ${open} unredeemed fd tokens; redeem them or let them expire`, {
        quota: 'fd_tokens',
        quotaLimit: MAX_OPEN_LEASES_PER_CONTEXT,
        contextId: ctx.id,
      });
    }
    const base = { token: randomBytes(32).toString('hex'), contextId: ctx.id, tenant: ctx.tenant, owner: { ...owner }, expiresAt: t + this.leaseMs, spent: false };
    const lease: Lease = spec.kind === 'device_fd' ? { ...base, kind: 'device_fd', device: spec.device } : { ...base, kind: 'memory_upload', fd: undefined, timer: undefined };
    this.leases.set(lease.token, lease);
    return lease;
  }

  /**
   * The fd socket's check, in one synchronous step so two connections
   * racing with the same token cannot both pass: on success the token is
   * spent. A foreign peer does not spend it: whoever learnt a token must not
   * be able to deny its owner the fd. A wrong-kind attempt (a device token
   * with an fd attached, an upload without exactly one) spends nothing.
   */
  private redeem(token: string, peer: PeerCreds, fdsAttached: number): Lease | HandoffOutcome {
    const lease = this.leases.get(token);
    if (!lease) return { result: 'unknown', message: 'no such token' };
    if (peer.uid !== lease.owner.uid || peer.pid !== lease.owner.pid) {
      return { result: 'foreign', message: 'this token was issued to another process', lease };
    }
    if (lease.spent) return { result: 'replayed', message: 'this token was already used', lease };
    if (this.now() >= lease.expiresAt) return { result: 'expired', message: 'this token expired; ask for a new one', lease };
    if (lease.kind === 'device_fd' && fdsAttached !== 0) return { result: 'malformed', message: 'a device-fd token is sent without fds', lease };
    if (lease.kind === 'memory_upload' && fdsAttached !== 1) {
      return { result: 'malformed', message: `an upload carries exactly one fd (SCM_RIGHTS); got ${fdsAttached}`, lease };
    }
    lease.spent = true;
    return lease;
  }

  /**
   * A device-fd redemption by `peer`. `send` gets the OS fd inside the
   * context's FIFO, so it is the live, bound device file: no unbind can
   * close it between the check and the send.
   */
  redeemDeviceFd(token: string, peer: PeerCreds, fdsAttached: number, send: (fd: number, lease: Lease) => Promise<void>): Promise<HandoffOutcome> {
    const lease = this.redeem(token, peer, fdsAttached);
    if ('result' in lease) return Promise.resolve(lease);
    if (lease.kind !== 'device_fd') return Promise.resolve({ result: 'malformed', message: 'this token is for a memory upload: send the memfd with it', lease });
    const ctx = this.options.contextOf(lease.contextId);
    const gone = (what: string): HandoffOutcome => ({ result: 'gone', message: `${what}; nothing to hand over`, lease });
    if (!ctx || ctx.state !== 'open') return Promise.resolve(gone(`context ${lease.contextId} was closed`));
    return ctx.executor.run(async () => {
      const obj = ctx.registry.get(lease.device);
      if (ctx.state !== 'open') return gone(`context ${lease.contextId} was closed`);
      if (obj?.kind !== 'DEVICE' || obj.state !== 'live') return gone(`DEVICE ${lease.device} was unbound`);
      const fd = this.options.kernel.osFd?.(obj.file);
      if (fd === undefined) return { result: 'failed', message: `DEVICE ${lease.device} (${obj.deviceId}) has no fd the ${this.options.kernel.name} backend can hand out`, lease };
      await send(fd, lease);
      return { result: 'sent', message: `DEVICE ${lease.device} (${obj.deviceId})`, lease };
    });
  }

  /** An upload on the fd socket: on success the broker owns `fds[0]` until MapMemory or expiry. */
  acceptUpload(token: string, peer: PeerCreds, fds: readonly number[]): HandoffOutcome {
    const lease = this.redeem(token, peer, fds.length);
    if ('result' in lease) return lease;
    if (lease.kind !== 'memory_upload') return { result: 'malformed', message: 'this token is for a device fd, not an upload', lease };
    const ctx = this.options.contextOf(lease.contextId);
    if (!ctx || ctx.state !== 'open') return { result: 'gone', message: `context ${lease.contextId} was closed`, lease };
    this.attachUpload(lease, fds[0]!);
    return { result: 'received', message: 'memfd received', lease };
  }

  /** Keeps an uploaded memfd until MapMemory takes it; closed when the lease expires first. */
  private attachUpload(lease: UploadLease, fd: number): void {
    lease.fd = fd;
    lease.timer = setTimeout(() => this.releaseUpload(lease), Math.max(0, lease.expiresAt - this.now()));
    lease.timer.unref();
  }

  /**
   * Takes the uploaded memfd MapMemory names out of the table for one map
   * attempt, so no expiry or context drop can close it while the kernel uses
   * it (a closed fd number could name another file by then). `settle(true)`
   * closes it after a map (the kernel holds the file); `settle(false)` puts
   * it back for a retry, or closes it if the upload expired meanwhile.
   */
  takeUpload(ctx: Context, token: string): { fd: number; settle(mapped: boolean): void } {
    const lease = this.leases.get(token);
    // Another context's token is as unknown as a made-up one.
    if (!lease || lease.kind !== 'memory_upload' || lease.contextId !== ctx.id) {
      throw new BrokerError('MEMORY_NOT_UPLOADED', 'upload_token: no memory upload with this token in this context (PrepareMemoryUpload first)', { field: 'upload_token' });
    }
    const fd = lease.fd;
    if (fd === undefined) {
      const why = lease.spent || this.now() >= lease.expiresAt ? 'its memfd expired, was mapped already, or another MapMemory is using it' : 'no memfd was sent with it on the fd socket yet';
      throw new BrokerError('MEMORY_NOT_UPLOADED', `upload_token: ${why}`, { field: 'upload_token' });
    }
    if (lease.timer) clearTimeout(lease.timer);
    lease.fd = undefined;
    lease.timer = undefined;
    return {
      fd,
      settle: (mapped) => {
        const ctxOpen = this.options.contextOf(lease.contextId)?.state === 'open';
        if (mapped || !ctxOpen || this.now() >= lease.expiresAt || !this.leases.has(token)) this.closeFd(fd);
        else this.attachUpload(lease, fd);
      },
    };
  }

  /** A closed context's uploads are closed; its tokens stay known (redeeming them is `gone`). */
  dropContext(id: ContextId): void {
    for (const lease of this.leases.values()) if (lease.contextId === id && lease.kind === 'memory_upload') this.releaseUpload(lease);
  }

  /** Closes every uploaded fd (daemon shutdown). */
  close(): void {
    for (const lease of this.leases.values()) if (lease.kind === 'memory_upload') this.releaseUpload(lease);
    this.leases.clear();
  }

  /** Uploaded memfds the broker holds (for tests and diagnostics). */
  get heldUploads(): number {
    let n = 0;
    for (const lease of this.leases.values()) if (lease.kind === 'memory_upload' && lease.fd !== undefined) n++;
    return n;
  }

  private releaseUpload(lease: UploadLease): void {
    if (lease.timer) clearTimeout(lease.timer);
    lease.timer = undefined;
    const fd = lease.fd;
    lease.fd = undefined;
    if (fd !== undefined) this.closeFd(fd);
  }

  private sweep(): void {
    const horizon = this.now() - RETAIN_MS;
    for (const [token, lease] of this.leases) {
      if (lease.expiresAt < horizon) {
        if (lease.kind === 'memory_upload') this.releaseUpload(lease);
        this.leases.delete(token);
      }
    }
  }
}
