/**
 * The client side of the fd socket, for VMMs written in Node, the CLI and
 * the tests. The protocol (see handoff-server.ts): connect, send one line
 * with the token (an upload attaches its memfd to it with SCM_RIGHTS), read
 * until the daemon closes. A device fd arrives with one byte of payload; a
 * refusal is one line `ERR <result>: <why>`; an accepted upload is `OK`.
 *
 * Blocking calls run on libuv workers (koffi async), so a daemon in the same
 * process keeps serving while the client waits.
 */
import { closeFd, connectUnix, receive, sendWithFds } from './scm-rights.js';

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_REPLY = 4096;

/** The daemon refused the token; `result` is the reason word (expired, replayed, foreign, unknown, ...). */
export class HandoffRefused extends Error {
  override readonly name = 'HandoffRefused';
  readonly result: string;
  constructor(readonly reply: string) {
    super(reply === '' ? 'the daemon closed the connection without an answer' : reply);
    this.result = /^ERR ([a-z_]+):/.exec(reply)?.[1] ?? 'unknown';
  }
}

/** One request on the fd socket: what came back (text and fds) before the daemon closed it. */
export async function handoffExchange(
  socketPath: string,
  line: string,
  fds: readonly number[] = [],
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<{ text: string; fds: number[] }> {
  const fd = await connectUnix(socketPath, timeoutMs);
  const received: number[] = [];
  let text = '';
  try {
    sendWithFds(fd, Buffer.from(`${line}\n`), fds);
    for (;;) {
      const r = await receive(fd, 512, 4);
      received.push(...r.fds);
      if (r.data.length === 0) break; // the daemon closed the connection
      text += r.data.toString('utf8');
      if (text.length > MAX_REPLY) break;
    }
  } finally {
    closeFd(fd);
  }
  // The fd's one-byte payload is not text.
  return { text: text.replace(/\0/g, '').trim(), fds: received };
}

/** Redeems a LeaseDeviceFd token; resolves with the bound device fd (the caller owns it). */
export async function redeemDeviceFd(socketPath: string, token: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<number> {
  const { text, fds } = await handoffExchange(socketPath, token, [], timeoutMs);
  const [fd, ...extra] = fds;
  for (const f of extra) closeFd(f);
  if (fd === undefined) throw new HandoffRefused(text);
  return fd;
}

/** Sends a memfd for a PrepareMemoryUpload token; resolves once the daemon holds it. */
export async function uploadMemfd(socketPath: string, token: string, memfd: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<void> {
  const { text, fds } = await handoffExchange(socketPath, token, [memfd], timeoutMs);
  for (const f of fds) closeFd(f);
  if (text !== 'OK') throw new HandoffRefused(text);
}
