/**
 * The restart journal file: JSON lines (journal-records.ts), appended by one
 * daemon at a time, compacted into a single snapshot line at every start.
 *
 * Two kinds of write:
 * - `writeNow` (intents): a synchronous write(2) before the operation's
 *   first kernel call. An intent only has to outlive the daemon process, not
 *   the host: the kernel objects it speaks of die with the host, so once the
 *   line is in the page cache it has done its job.
 * - `append` (everything else): group-committed like the audit log. Lines
 *   arriving while a write is in flight join the next batch; with `sync:
 *   'fdatasync'` the batch is flushed before any of its callers resumes, so
 *   a client never hears of a change a crash could lose.
 *
 * Per context, records stay in order because a context's next operation
 * starts only after its previous `done` was appended.
 */
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, write, fdatasync, writeSync } from 'node:fs';
import path from 'node:path';
import { isRecord, JournalState, type JRecord } from './journal-records.js';

export type JournalSync = 'fdatasync' | 'none';

export interface JournalReplay {
  state: JournalState;
  /** Records applied (the snapshot counts as one). */
  records: number;
  /** 1-based line numbers that were not records; the last line of a crash is often cut short. */
  damaged: number[];
}

/** The id of this boot: kernel objects (and the fd store) never outlive it. */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** Replays the journal at `file`; a missing file is an empty journal. */
export function replayJournal(file: string): JournalReplay {
  const state = new JournalState();
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state, records: 0, damaged: [] };
    throw err;
  }
  const lines = text.split('\n');
  // A file that does not end in a newline ends in a line cut short by a crash.
  if (lines[lines.length - 1] === '') lines.pop();
  let records = 0;
  const damaged: number[] = [];
  lines.forEach((line, i) => {
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch {
      damaged.push(i + 1);
      return;
    }
    if (!isRecord(rec)) {
      damaged.push(i + 1);
      return;
    }
    state.apply(rec);
    records++;
  });
  return { state, records, damaged };
}

interface Waiter {
  line: string;
  durable: boolean;
  done: () => void;
  failed: (err: unknown) => void;
}

export class Journal {
  private pending: Waiter[] = [];
  private flushing: Promise<void> | undefined;
  private frozen = false;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly fd: number,
    private readonly sync: JournalSync,
  ) {}

  /**
   * Replaces the journal with `snapshot` (write a new file, flush it, rename
   * it over the old one, flush the directory) and opens it for appending.
   */
  static openCompacted(file: string, snapshot: JRecord, sync: JournalSync): Journal {
    const dir = path.dirname(file);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.new`;
    const out = openSync(tmp, 'w', 0o600);
    try {
      writeAll(out, `${JSON.stringify(snapshot)}\n`);
      fsyncSync(out);
    } finally {
      closeSync(out);
    }
    renameSync(tmp, file);
    const d = openSync(dir, 'r');
    try {
      fsyncSync(d);
    } finally {
      closeSync(d);
    }
    return new Journal(file, openSync(file, 'a', 0o600), sync);
  }

  /** Written before returning; throws if the line could not be written. */
  writeNow(rec: JRecord): void {
    if (this.frozen) return;
    this.check();
    writeAll(this.fd, `${JSON.stringify(rec)}\n`);
  }

  /** Resolves once the record is written (and, with fdatasync, flushed). */
  append(rec: JRecord): Promise<void> {
    // A frozen journal belongs to a daemon that is gone: nothing it asks for happens.
    if (this.frozen) return new Promise(() => undefined);
    this.check();
    return new Promise((done, failed) => {
      this.pending.push({ line: `${JSON.stringify(rec)}\n`, durable: this.sync === 'fdatasync', done, failed });
      this.flushing ??= this.flush();
    });
  }

  private check(): void {
    if (this.closed) throw new Error(`journal ${this.file} is closed`);
  }

  private async flush(): Promise<void> {
    // Let every operation that finishes in this turn join the batch.
    await new Promise((r) => setImmediate(r));
    while (this.pending.length > 0 && !this.frozen) {
      const batch = this.pending.splice(0);
      try {
        await writeAllAsync(this.fd, batch.map((b) => b.line).join(''));
        if (batch.some((b) => b.durable)) await new Promise<void>((ok, ko) => fdatasync(this.fd, (err) => (err ? ko(err) : ok())));
        for (const b of batch) b.done();
      } catch (err) {
        for (const b of batch) b.failed(err);
      }
    }
    this.flushing = undefined;
  }

  /** Flushes what is pending and closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flushing;
    this.closed = true;
    if (!this.frozen) fdatasyncSync(this.fd);
    closeSync(this.fd);
  }

  /**
   * Tests: the daemon "dies" here. Nothing more is written, and appends
   * never resolve, as if the process had been killed.
   */
  freeze(): void {
    this.frozen = true;
  }
}

function writeAll(fd: number, text: string): void {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off);
}

async function writeAllAsync(fd: number, text: string): Promise<void> {
  const buf = Buffer.from(text);
  for (let off = 0; off < buf.length; ) {
    off += await new Promise<number>((ok, ko) => write(fd, buf, off, buf.length - off, null, (err, n) => (err ? ko(err) : ok(n))));
  }
}
