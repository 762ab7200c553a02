/** pino, JSON, with secrets redacted wherever they might appear in a log record. */
import pino, { type Logger } from 'pino';

export const REDACT_PATHS = ['*.token', '*.password', '*.key', '*.privateKey', 'token', 'password', 'key', 'privateKey', 'metadata.authorization'];

const CENSOR = '[redacted]';
/** The keys `*.KEY` censors one level down, in any top-level value. */
const NESTED_SECRETS = REDACT_PATHS.filter((p) => p.startsWith('*.')).map((p) => p.slice(2));

/**
 * The `*.KEY` paths, applied as a formatter. Given a path starting with `*`,
 * pino runs its redactor on every value of every record and child binding,
 * strings included, and that redactor parses its paths again on each call: it
 * was a tenth of the daemon's CPU on Bind+Unbind (one "teardown done" line
 * each). Here a value is only looked at when it is an object, and copied
 * (prototype and all own properties, so an Error still serializes as one)
 * only when it holds a secret. Same rule as pino's: a key counts when `in`
 * finds it. The other paths stay with pino, which only runs them for their
 * own top-level keys.
 */
function censorNested<T extends Record<string, unknown>>(record: T): T {
  let out: Record<string, unknown> | undefined;
  for (const key in record) {
    const value = record[key];
    if (value === null || typeof value !== 'object' || !Object.prototype.hasOwnProperty.call(record, key)) continue;
    let hit = false;
    for (const secret of NESTED_SECRETS) if (secret in value) hit = true;
    if (!hit) continue;
    const copy = Object.create(Object.getPrototypeOf(value), Object.getOwnPropertyDescriptors(value)) as Record<string, unknown>;
    for (const secret of NESTED_SECRETS) {
      if (secret in copy) Object.defineProperty(copy, secret, { value: CENSOR, enumerable: true, writable: true, configurable: true });
    }
    (out ??= { ...record })[key] = copy;
  }
  return (out ?? record) as T;
}

/**
 * An object formatted into the message (`log.info('%j', obj)`) gets every
 * path, as pino's redactor gave it: top-level keys, one level down, and
 * metadata.authorization. The daemon does not log this way; this keeps the
 * guarantee for code that might.
 */
function censorWhole(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  const record = censorNested(value as Record<string, unknown>);
  const copy: Record<string, unknown> = record === value ? Object.create(Object.getPrototypeOf(value), Object.getOwnPropertyDescriptors(value)) : record;
  for (const path of REDACT_PATHS) {
    if (path.startsWith('*.')) continue;
    const [first, second] = path.split('.') as [string, string | undefined];
    if (second === undefined) {
      if (first in copy) copy[first] = CENSOR;
    } else {
      const inner = copy[first];
      if (inner !== null && typeof inner === 'object' && second in inner) copy[first] = { ...(inner as object), [second]: CENSOR };
    }
  }
  return copy;
}

/**
 * pino.stdTimeFunctions.isoTime, with the part up to the second built once
 * per second: toISOString() on every line was a visible cost.
 */
let second = Number.NaN;
let prefix = '';
function isoTime(): string {
  const now = Date.now();
  const s = Math.floor(now / 1000);
  if (s !== second) {
    second = s;
    prefix = `,"time":"${new Date(s * 1000).toISOString().slice(0, 20)}`;
  }
  const ms = now - s * 1000;
  return `${prefix}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z"`;
}

/**
 * stdout, shared by every logger: lines collect in a buffer written out at
 * LOG_BUFFER_BYTES or every LOG_FLUSH_MS, at once for warnings and errors, and
 * on exit (pino's own handler). One write per line sent each through libuv's
 * thread pool cost ~13 µs of CPU: with a "teardown done" line per unbind, a
 * fifth of what the daemon spends on an unbind beyond the RPC itself.
 */
const LOG_BUFFER_BYTES = 4096;
const LOG_FLUSH_MS = 100;
let stdout: ReturnType<typeof pino.destination> | undefined;
/** A line went to stdout since the last flush: sonic-boom's flush of nothing is still a write through the thread pool. */
let unflushed = false;

function flushQuietly(dest: ReturnType<typeof pino.destination>): void {
  if (!unflushed) return;
  unflushed = false;
  try {
    dest.flush();
  } catch {
    // Ending or destroyed at exit, where pino flushes synchronously itself.
  }
}

function defaultDestination(): ReturnType<typeof pino.destination> {
  if (!stdout) {
    const dest = (stdout = pino.destination({ fd: 1, sync: false, minLength: LOG_BUFFER_BYTES }));
    setInterval(() => flushQuietly(dest), LOG_FLUSH_MS).unref();
  }
  return stdout;
}

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  const buffered = destination === undefined ? defaultDestination() : undefined;
  const logger = pino(
    {
      level,
      base: { service: 'vfio-broker' },
      redact: { paths: REDACT_PATHS.filter((p) => !p.startsWith('*.')), censor: CENSOR },
      formatters: { log: censorNested, bindings: censorNested },
      hooks: {
        logMethod(args, method, levelValue) {
          const first = typeof args[0] === 'string' ? 1 : 2;
          for (let i = first; i < args.length; i++) args[i] = censorWhole(args[i]) as never;
          method.apply(this, args);
          if (!buffered) return;
          unflushed = true;
          if (levelValue >= pino.levels.values['warn']!) flushQuietly(buffered);
        },
      },
      timestamp: isoTime,
    },
    destination ?? buffered!,
  );
  // pino gives child loggers an identity bindings formatter; every descendant
  // inherits this method from the root, so their bindings are censored too.
  const child = logger.child as unknown as (this: Logger, bindings: pino.Bindings, options?: pino.ChildLoggerOptions) => Logger;
  logger.child = function (this: Logger, bindings: pino.Bindings, options?: pino.ChildLoggerOptions) {
    return child.call(this, censorNested(bindings), options);
  } as unknown as Logger['child'];
  return logger;
}
