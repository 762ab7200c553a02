/** pino, JSON, with secrets redacted wherever they might appear in a log record. */
import pino, { type Logger } from 'pino';

export const REDACT_PATHS = ['*.token', '*.password', '*.key', '*.privateKey', 'token', 'password', 'key', 'privateKey', 'metadata.authorization'];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'vfio-broker' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
