/**
 * The fd socket: a second Unix socket, next to the gRPC one, where clients
 * redeem the tokens of LeaseDeviceFd and PrepareMemoryUpload (fds cannot
 * travel over gRPC). Protocol, one exchange per connection:
 *
 *   client → daemon  "<64 hex digits>\n"  (an upload attaches its memfd to
 *                                           this message with SCM_RIGHTS)
 *   daemon → client  device fd: 1 byte of payload + the fd (SCM_RIGHTS)
 *                    upload:    "OK\n"
 *                    refusal:   "ERR <result>: <why>\n", nothing else
 *   then the daemon closes the connection.
 *
 * The peer's SO_PEERCRED must be the uid and pid the token was issued to.
 * Every attempt is audited (Handoff/RedeemDeviceFd, Handoff/UploadMemfd) and
 * counted by result.
 *
 * libuv must never read these connections (it would use read(2) and lose the
 * fds), so they are accepted paused and read with a non-blocking recvmsg,
 * polled on the event loop: Node offers no readiness wait without a read,
 * and a blocking recvmsg on a worker would let idle peers starve the pool
 * that ioctls and the audit log share.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import type { Broker } from '../broker/broker.js';
import type { HandoffOutcome, HandoffResult, Lease, PeerCreds } from '../broker/handoff.js';
import type { AuditSink } from '../obs/audit.js';
import { peerCredentials, socketFd } from './peercred.js';
import { closeFd, receiveNow, sendWithFds, SocketCallError } from './scm-rights.js';
import { prepareSocketPath } from './server.js';

export const REDEEM_OPERATION = 'Handoff/RedeemDeviceFd';
export const UPLOAD_OPERATION = 'Handoff/UploadMemfd';

const TOKEN_LINE = /^[0-9a-f]{64}$/;
/** A token line is 65 bytes; anything longer without a newline is not one. */
const MAX_LINE = 128;
const MAX_FDS = 4;
const READ_TIMEOUT_MS = 5000;
/** Connections being served at once; more are refused, so idle peers cannot pile up. */
const MAX_PENDING = 64;

export interface HandoffServerOptions {
  socketPath: string;
  socketMode: number;
  socketGid?: number | undefined;
  broker: Broker;
  log: Logger;
  audit?: AuditSink | undefined;
  onResult?: (result: HandoffResult) => void;
  onAuditResult?: (ok: boolean) => void;
}

export interface HandoffServer {
  close(): Promise<void>;
}

const CODE: Record<HandoffResult, string> = {
  sent: 'OK',
  received: 'OK',
  expired: 'FAILED_PRECONDITION',
  replayed: 'FAILED_PRECONDITION',
  gone: 'FAILED_PRECONDITION',
  foreign: 'PERMISSION_DENIED',
  unknown: 'NOT_FOUND',
  malformed: 'INVALID_ARGUMENT',
  failed: 'INTERNAL',
};

type Request = { line: string; fds: number[] } | { problem: string; fds: number[] };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads up to the newline, collecting any fds that came with it. */
async function readRequest(fd: number, socket: net.Socket): Promise<Request> {
  const fds: number[] = [];
  let buf = Buffer.alloc(0);
  const deadline = Date.now() + READ_TIMEOUT_MS;
  let delay = 1;
  for (;;) {
    if (socket.destroyed) return { problem: 'connection closed', fds };
    let r;
    try {
      r = receiveNow(fd, 256, MAX_FDS);
    } catch (err) {
      return { problem: `recvmsg failed: ${err instanceof SocketCallError ? err.errno : String(err)}`, fds };
    }
    if (r) {
      fds.push(...r.fds);
      if (r.truncated) return { problem: `more than ${MAX_FDS} fds attached`, fds };
      if (r.data.length === 0) return { problem: 'connection closed before a full line', fds };
      buf = Buffer.concat([buf, r.data]);
      const nl = buf.indexOf(10);
      if (nl >= 0) return { line: buf.subarray(0, nl).toString('latin1'), fds };
      if (buf.length > MAX_LINE) return { problem: 'expected one token line', fds };
      delay = 1;
      continue;
    }
    if (Date.now() >= deadline) return { problem: `no token line within ${READ_TIMEOUT_MS / 1000} s`, fds };
    await sleep(delay);
    delay = Math.min(delay * 2, 50);
  }
}

function describePeer(c: PeerCreds): string {
  return `uid=${c.uid} gid=${c.gid} pid=${c.pid}`;
}

export async function startHandoffServer(o: HandoffServerOptions): Promise<HandoffServer> {
  const { broker, log } = o;
  await prepareSocketPath(o.socketPath);
  const pending = new Set<net.Socket>();
  const inflight = new Set<Promise<void>>();

  const audit = async (operation: string, peer: PeerCreds, outcome: HandoffOutcome): Promise<void> => {
    if (!o.audit) return;
    const lease: Lease | undefined = outcome.lease;
    const ok = outcome.result === 'sent' || outcome.result === 'received';
    try {
      await o.audit.record({
        time: new Date().toISOString(),
        tenant: lease?.tenant ?? '',
        peer: describePeer(peer),
        operation,
        ...(lease ? { contextId: lease.contextId } : {}),
        objects: { ...(lease?.kind === 'device_fd' ? { device: String(lease.device) } : {}), result: outcome.result },
        result: ok ? 'ok' : 'error',
        code: CODE[outcome.result],
        ...(ok ? {} : { reason: `HANDOFF_${outcome.result.toUpperCase()}` }),
      });
      o.onAuditResult?.(true);
    } catch (err) {
      o.onAuditResult?.(false);
      log.error({ err, operation }, 'audit record could not be written');
    }
  };

  const serve = async (socket: net.Socket, fd: number, peer: PeerCreds): Promise<void> => {
    const req = await readRequest(fd, socket);
    const upload = req.fds.length > 0;
    let keep: number | undefined;
    let audited = false;
    let outcome: HandoffOutcome;
    if ('problem' in req) outcome = { result: 'malformed', message: req.problem };
    else if (!TOKEN_LINE.test(req.line)) outcome = { result: 'malformed', message: 'expected a line of 64 lowercase hex digits (the token)' };
    else if (upload) {
      outcome = broker.handoffs.acceptUpload(req.line, peer, req.fds);
      if (outcome.result === 'received') keep = req.fds[0];
    } else {
      try {
        outcome = await broker.handoffs.redeemDeviceFd(req.line, peer, 0, async (deviceFd, lease) => {
          // On disk before the fd leaves, like every mutation's line before its reply.
          await audit(REDEEM_OPERATION, peer, { result: 'sent', message: '', lease });
          audited = true;
          // libuv closed the fd of a destroyed socket; its number may name another file by now.
          if (socket.destroyed) throw new SocketCallError('ECONNRESET', 'sendmsg');
          sendWithFds(fd, Buffer.from([0]), [deviceFd]);
        });
      } catch (err) {
        outcome = { result: 'failed', message: `could not send the fd: ${err instanceof SocketCallError ? err.errno : 'internal error'}` };
        log.error({ err }, 'fd handoff failed');
        audited = false;
      }
    }
    for (const f of req.fds) if (f !== keep) closeFd(f);
    const operation = outcome.lease ? (outcome.lease.kind === 'device_fd' ? REDEEM_OPERATION : UPLOAD_OPERATION) : upload ? UPLOAD_OPERATION : REDEEM_OPERATION;
    if (!audited) await audit(operation, peer, outcome);
    o.onResult?.(outcome.result);
    const fields = { peer: describePeer(peer), result: outcome.result, contextId: outcome.lease?.contextId, operation };
    if (outcome.result === 'foreign') log.warn(fields, 'fd token presented by another process');
    else log.info(fields, outcome.result === 'sent' || outcome.result === 'received' ? 'fd handoff' : 'fd handoff refused');
    if (outcome.result === 'sent' || socket.destroyed) return;
    const reply = outcome.result === 'received' ? 'OK\n' : `ERR ${outcome.result}: ${outcome.message}\n`;
    try {
      sendWithFds(fd, Buffer.from(reply));
    } catch {
      // The peer left; the attempt is already recorded.
    }
  };

  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    let peer: PeerCreds;
    const fd = socketFd(socket);
    try {
      peer = peerCredentials(socket);
    } catch (err) {
      log.warn({ err }, 'fd socket: rejected a connection without peer credentials');
      socket.destroy();
      return;
    }
    if (fd === undefined || pending.size >= MAX_PENDING) {
      log.warn({ peer: describePeer(peer), pending: pending.size }, 'fd socket: too many connections; refused');
      o.onResult?.('failed');
      socket.destroy();
      return;
    }
    pending.add(socket);
    const done = serve(socket, fd, peer)
      .catch((err: unknown) => log.error({ err }, 'fd socket: request failed'))
      .finally(() => {
        pending.delete(socket);
        inflight.delete(done);
        socket.destroy();
      });
    inflight.add(done);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ err }, 'fd socket listener error'));
  // Same mode and group as the gRPC socket: who may talk to the broker may redeem.
  await fs.chmod(o.socketPath, o.socketMode);
  if (o.socketGid !== undefined) await fs.chown(o.socketPath, process.getuid?.() ?? 0, o.socketGid);
  log.info({ socket: o.socketPath }, 'serving fd handoffs');
  return {
    /** Stops accepting, cuts waiting peers off, and lets started exchanges finish (and be audited). */
    async close() {
      server.close();
      for (const socket of pending) socket.destroy();
      await Promise.allSettled([...inflight]);
      await fs.unlink(o.socketPath).catch(() => undefined);
    },
  };
}
