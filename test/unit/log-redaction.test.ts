/**
 * createLogger redacts part of REDACT_PATHS with its own formatters (for
 * speed, see src/obs/log.ts): its lines must equal those of pino configured
 * with every path, for records, child bindings, errors and interpolated
 * objects alike.
 */
import pino from 'pino';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, REDACT_PATHS } from '../../src/obs/log.js';

function sink(lines: string[]): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
}

/** pino as createLogger used to configure it: every path through pino's own redactor. */
function reference(lines: string[]) {
  return pino({ level: 'debug', base: { service: 'vfio-broker' }, redact: { paths: REDACT_PATHS, censor: '[redacted]' }, timestamp: pino.stdTimeFunctions.isoTime }, sink(lines));
}

class Secretive extends Error {
  token = 'tok-err';
  code = 'EX';
}

const RECORDS: [Record<string, unknown> | string, ...unknown[]][] = [
  [{ token: 'a', tls: { key: 'K', password: 'P', ok: 1 }, metadata: { authorization: 'Bearer x', token: 't', other: 2 } }, 'm1'],
  [{ lease: { token: 'abc', expiresAt: 5 }, list: [{ token: 'in-array' }], n: 3, s: 'token' }, 'm2'],
  [{ err: new Secretive('boom') }, 'failed'],
  [{ nested: { deeper: { token: 'two levels down stays' } }, privateKey: 'pk' }, 'm3'],
  ['interpolated %j and %o', { key: 'k1', a: { password: 'p' } }, { metadata: { authorization: 'z' } }],
  [{ x: null, y: undefined, z: [1, 2] }, 'plain %s', 'arg'],
];

async function linesOf(make: (lines: string[]) => pino.Logger): Promise<string[]> {
  const lines: string[] = [];
  const log = make(lines).child({ requestId: 'r1', creds: { password: 'child-secret', user: 'u' } }).child({ grand: { key: 'grandchild-key' } });
  for (const [first, ...rest] of RECORDS) (log.info as (...a: unknown[]) => void)(first, ...rest);
  await new Promise((r) => setImmediate(r));
  return lines.map((l) => l.replace(/"time":"[^"]+"/, '"time":"T"'));
}

describe('log redaction', () => {
  it('writes the same lines as pino with every path', async () => {
    const ours = await linesOf((lines) => createLogger('debug', sink(lines)));
    const theirs = await linesOf(reference);
    expect(ours).toEqual(theirs);
    expect(ours.join('\n')).not.toMatch(/tok-err|child-secret|grandchild-key|Bearer|"K"|"P"|"abc"|"pk"|"k1"/);
  });

  it('stamps ISO times as pino.stdTimeFunctions.isoTime does', async () => {
    const lines: string[] = [];
    const before = Date.now();
    createLogger('info', sink(lines)).info('t');
    await new Promise((r) => setImmediate(r));
    const time = (JSON.parse(lines[0]!) as { time: string }).time;
    expect(time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(Date.parse(time)).toBeGreaterThanOrEqual(before);
    expect(Date.parse(time)).toBeLessThanOrEqual(Date.now());
  });
});
