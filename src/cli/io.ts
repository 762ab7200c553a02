/**
 * Everything the CLI does to the outside world goes through a CliIo, so the
 * tests run the real command code in-process and read what it printed.
 */
import type { DestinationStream } from 'pino';

export type SignalName = 'SIGINT' | 'SIGTERM';

export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Subscribes to SIGINT and SIGTERM; returns the unsubscribe function. */
  onSignal(handler: (signal: SignalName) => void): () => void;
  /** Ends the process at once (a second signal while `serve` shuts down). */
  exit(code: number): void;
  /** Where `serve` writes its pino logs; stdout when unset. */
  logDestination?: DestinationStream;
}

export function processIo(): CliIo {
  return {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    onSignal(handler) {
      const onInt = () => handler('SIGINT');
      const onTerm = () => handler('SIGTERM');
      process.on('SIGINT', onInt);
      process.on('SIGTERM', onTerm);
      return () => {
        process.off('SIGINT', onInt);
        process.off('SIGTERM', onTerm);
      };
    },
    exit: (code) => process.exit(code),
  };
}

/** A CliIo that records output and lets the caller deliver signals. */
export interface MemoryIo extends CliIo {
  readonly out: string;
  readonly err: string;
  /** Delivers a signal to the current subscribers. */
  signal(name: SignalName): void;
  /** Codes passed to exit(), in order. */
  readonly exits: number[];
}

export function memoryIo(): MemoryIo {
  let out = '';
  let err = '';
  const handlers = new Set<(signal: SignalName) => void>();
  const exits: number[] = [];
  return {
    get out() {
      return out;
    },
    get err() {
      return err;
    },
    exits,
    stdout: (text) => void (out += text),
    stderr: (text) => void (err += text),
    onSignal(handler) {
      handlers.add(handler);
      return () => void handlers.delete(handler);
    },
    signal(name) {
      for (const handler of [...handlers]) handler(name);
    },
    exit: (code) => void exits.push(code),
  };
}
