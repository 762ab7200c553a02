/**
 * SO_PEERCRED for Unix-socket connections. grpc-js does not expose the peer's
 * credentials, so the daemon accepts connections itself, reads them here and
 * then hands the socket to grpc-js (see unix-listener.ts).
 */
import koffi from 'koffi';
import type net from 'node:net';

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const UCRED_BYTES = 12; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }

type Getsockopt = (fd: number, level: number, name: number, value: Buffer, length: Buffer) => number;
let getsockopt: Getsockopt | undefined;

function bind(): Getsockopt {
  getsockopt ??= koffi.load('libc.so.6').func('int getsockopt(int fd, int level, int optname, void *optval, void *optlen)') as Getsockopt;
  return getsockopt;
}

/** The fd of an accepted Unix-socket connection (libuv's pipe handle). */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export function peerCredentials(socket: net.Socket): PeerCredentials {
  const fd = socketFd(socket);
  if (fd === undefined) throw new Error('connection has no file descriptor');
  const value = Buffer.alloc(UCRED_BYTES);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(UCRED_BYTES);
  if (bind()(fd, SOL_SOCKET, SO_PEERCRED, value, length) !== 0) {
    throw new Error(`getsockopt(SO_PEERCRED) failed: errno ${koffi.errno()}`);
  }
  return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) };
}
