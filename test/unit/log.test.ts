import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/obs/log.js';

describe('structured logs', () => {
  it('redacts secrets wherever they sit in a record', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const log = createLogger('info', sink).child({ requestId: 'r1', tenant: 't', method: 'BrokerService/OpenContext' });
    log.info({ token: 'tok-123', tls: { key: 'PRIVATE', password: 'pw' }, metadata: { authorization: 'Bearer abc' } }, 'hello');
    await new Promise((r) => setImmediate(r));
    const record = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(record).toMatchObject({ requestId: 'r1', tenant: 't', method: 'BrokerService/OpenContext', token: '[redacted]', msg: 'hello' });
    expect(lines[0]).not.toMatch(/tok-123|PRIVATE|pw"|Bearer abc/);
  });
});
