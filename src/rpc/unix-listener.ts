/**
 * The daemon's own Unix-socket listener. Each accepted connection's peer
 * credentials are read (SO_PEERCRED) before grpc-js sees it; the socket is
 * then handed over with `createConnectionInjector()`.
 *
 * grpc-js derives `call.getPeer()` from the session socket's `remoteAddress`,
 * which a Unix socket does not have. The listener sets it to a per-connection
 * token, so a handler can find the credentials of the connection its call
 * arrived on. This rests on grpc-js internals: the version is pinned and
 * test/integration/identity.test.ts covers the mechanism.
 */
import * as grpc from '@grpc/grpc-js';
import net from 'node:net';
import type { Logger } from 'pino';
import { peerCredentials, type PeerCredentials } from './peercred.js';

const PEER_PREFIX = 'uds-peer:';

export interface UnixListener {
  /** Credentials of the connection a call came in on, from `call.getPeer()`. */
  credentialsOf(peer: string): PeerCredentials | undefined;
  /** Stops accepting; open connections are closed by the gRPC server's shutdown. */
  close(): void;
}

export async function listenUnix(server: grpc.Server, socketPath: string, log: Logger): Promise<UnixListener> {
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const connections = new Map<string, PeerCredentials>();
  let next = 0;
  const listener = net.createServer({ pauseOnConnect: true }, (socket) => {
    let creds: PeerCredentials;
    try {
      creds = peerCredentials(socket);
    } catch (err) {
      // Without credentials there is no identity: refuse the connection.
      log.warn({ err }, 'rejected a connection without peer credentials');
      socket.destroy();
      return;
    }
    const token = `${PEER_PREFIX}${++next}`;
    connections.set(token, creds);
    Object.defineProperty(socket, 'remoteAddress', { value: token, configurable: true });
    socket.once('close', () => connections.delete(token));
    injector.injectConnection(socket);
    socket.resume();
  });
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(socketPath, () => {
      listener.off('error', reject);
      resolve();
    });
  });
  listener.on('error', (err) => log.error({ err }, 'unix listener error'));
  return {
    credentialsOf: (peer) => (peer.startsWith(PEER_PREFIX) ? connections.get(peer) : undefined),
    // net.Server.close() would wait for every connection; the gRPC server ends those.
    close: () => {
      listener.close();
    },
  };
}
