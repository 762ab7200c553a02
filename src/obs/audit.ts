/**
 * The audit log: one JSON line per mutating operation, in its own file.
 *
 * A record is on disk before the client hears the result: `record()` resolves
 * only after the line was written (and, with `sync: 'fdatasync'`, flushed).
 * Lines arriving while a write is in flight are grouped into the next write,
 * so durability costs one syscall pair per batch, not per request.
 */
import { promises as fs, mkdirSync, type promises } from 'node:fs';
import path from 'node:path';

export interface AuditRecord {
  time: string;
  tenant: string;
  peer: string;
  operation: string;
  contextId?: string;
  objects: Record<string, string>;
  result: 'ok' | 'error';
  code: string;
  reason?: string;
  errno?: string;
}

export type AuditSync = 'fdatasync' | 'none';

export interface AuditSink {
  record(entry: AuditRecord): Promise<void>;
  close(): Promise<void>;
}

export class FileAuditLog implements AuditSink {
  private pending: { line: string; done: () => void; failed: (err: unknown) => void }[] = [];
  private flushing: Promise<void> | undefined;

  private constructor(
    private readonly handle: promises.FileHandle,
    private readonly sync: AuditSync,
  ) {}

  static async open(file: string, sync: AuditSync): Promise<FileAuditLog> {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
    // O_APPEND: concurrent writers (e.g. a restarted daemon) never interleave within a line.
    return new FileAuditLog(await fs.open(file, 'a', 0o640), sync);
  }

  record(entry: AuditRecord): Promise<void> {
    return new Promise((done, failed) => {
      this.pending.push({ line: `${JSON.stringify(entry)}\n`, done, failed });
      this.flushing ??= this.flush();
    });
  }

  private async flush(): Promise<void> {
    // Let every request that completes in this turn join the batch.
    await new Promise((r) => setImmediate(r));
    while (this.pending.length > 0) {
      const batch = this.pending.splice(0);
      try {
        await this.handle.write(batch.map((b) => b.line).join(''));
        if (this.sync === 'fdatasync') await this.handle.datasync();
        for (const b of batch) b.done();
      } catch (err) {
        for (const b of batch) b.failed(err);
      }
    }
    this.flushing = undefined;
  }

  async close(): Promise<void> {
    await this.flushing;
    await this.handle.close();
  }
}

/** For configurations without an audit file. */
export const NO_AUDIT: AuditSink = { record: async () => undefined, close: async () => undefined };
