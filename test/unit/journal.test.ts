/** The restart journal file, its records and replay, and the names and env it relies on. */
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { deviceName, iommufdName, MemoryFdStore, parseFdName } from '../../src/broker/fd-store.js';
import type { Handle } from '../../src/broker/ids.js';
import { fromJObject, JournalState, toJObject, type JRecord } from '../../src/broker/journal-records.js';
import { Journal, replayJournal } from '../../src/broker/journal.js';
import type { BrokerObject } from '../../src/broker/objects.js';
import { ConfigError, defaultJournalPath, parseConfig } from '../../src/config/config.js';
import { kernelId, type DeviceFile } from '../../src/kernel/types.js';
import { listenFds } from '../../src/obs/sd-notify.js';

const CTX = 'ctx-0123456789abcdef01234567';

describe('journal file', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vfio-broker-journal-'));
    file = path.join(dir, 'state', 'journal');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const snap = (): JRecord => ({ t: 'snap', boot: 'b1', ctx: [], assign: {}, q: [], nextQ: 1 });

  it('compacts to one snapshot line, then appends in order; concurrent appends share batches', async () => {
    writeFileSync(path.join(dir, 'junk'), '');
    const j = Journal.openCompacted(file, snap(), 'fdatasync');
    j.writeNow({ t: 'open', c: CTX, tenant: 't', label: '', lease: 0 });
    await Promise.all(Array.from({ length: 50 }, (_, i) => j.append({ t: 'intent', c: CTX, op: `op${i}`, unsure: [], creates: 0 })));
    await j.close();
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as JRecord);
    expect(lines[0]).toEqual(snap());
    expect(lines[1]!.t).toBe('open');
    expect(lines.slice(2).map((r) => (r.t === 'intent' ? r.op : '?'))).toEqual(Array.from({ length: 50 }, (_, i) => `op${i}`));
  });

  it('replays records, skips a line cut short by a crash and reports damaged lines', () => {
    const j = Journal.openCompacted(file, snap(), 'none');
    void j;
    appendFileSync(file, `${JSON.stringify({ t: 'open', c: CTX, tenant: 'acme', label: 'vm', lease: 5 })}\nnot json\n{"t":"nonsense"}\n`);
    appendFileSync(file, `${JSON.stringify({ t: 'intent', c: CTX, op: 'alloc_ioas', unsure: [], creates: 1 })}\n{"t":"done","c":"${CTX}","ob`);
    const r = replayJournal(file);
    expect(r.records).toBe(3);
    expect(r.damaged).toEqual([3, 4, 6]);
    const ctx = r.state.contexts.get(CTX)!;
    expect(ctx).toMatchObject({ tenant: 'acme', label: 'vm', lease: 5, intent: { op: 'alloc_ioas', creates: 1 } });
    expect(r.state.boot).toBe('b1');
  });

  it('a missing journal is an empty one', () => {
    expect(replayJournal(path.join(dir, 'none')).records).toBe(0);
  });

  it('a frozen journal writes nothing more (the daemon is dead)', async () => {
    const j = Journal.openCompacted(file, snap(), 'none');
    j.freeze();
    j.writeNow({ t: 'close', c: CTX });
    void j.append({ t: 'close', c: CTX });
    await new Promise((r) => setTimeout(r, 20));
    expect(readFileSync(file, 'utf8').trimEnd().split('\n')).toHaveLength(1);
  });
});

describe('journal records', () => {
  const file: DeviceFile = { kind: 'device', fdNumber: 9, cdev: 'vfio3' };
  const h = (n: number) => n as Handle;
  const objects: BrokerObject[] = [
    { kind: 'DEVICE', handle: h(1), kernelId: kernelId(1), state: 'live', deviceId: '0000:01:00.0' as never, file, attached: h(3) },
    { kind: 'IOAS', handle: h(2), kernelId: kernelId(2), state: 'live', mappings: new Map([[1n << 24n, { iova: 1n << 24n, length: 1n << 21n }]]) },
    { kind: 'HWPT_PAGING', handle: h(3), kernelId: kernelId(3), state: 'live', ioas: h(2), automatic: true, nestParent: false },
    { kind: 'HWPT_PAGING', handle: h(4), kernelId: kernelId(4), state: 'live', ioas: h(2), automatic: false, nestParent: true },
    { kind: 'VIOMMU', handle: h(5), kernelId: kernelId(5), state: 'live', nestParent: h(4) },
    { kind: 'VDEVICE', handle: h(6), kernelId: kernelId(6), state: 'tombstoned', viommu: h(5), device: h(1), virtId: 0xffff_ffff_ffff_fff1n },
    { kind: 'HWPT_NESTED', handle: h(7), kernelId: kernelId(7), state: 'live', parent: h(5), allocatedFor: h(1) },
  ];

  it('every kind survives a round trip through JSON', () => {
    for (const obj of objects) {
      const back = fromJObject(JSON.parse(JSON.stringify(toJObject(obj))), obj.kind === 'DEVICE' ? file : undefined);
      expect(back).toEqual(obj);
    }
  });

  it('replay: done applies changes and settles the intent, close forgets the context, snapshots carry everything', () => {
    const s = new JournalState();
    s.apply({ t: 'open', c: CTX, tenant: 't', label: 'l', lease: 0 });
    s.apply({ t: 'intent', c: CTX, op: 'bind', unsure: [], creates: 1 });
    s.apply({ t: 'done', c: CTX, objs: objects.map(toJObject), gone: [], last: 9 });
    s.apply({ t: 'intent', c: CTX, op: 'destroy', unsure: [], creates: 0 });
    s.apply({ t: 'done', c: CTX, objs: [], gone: [7], last: 9 });
    s.apply({ t: 'assign', dev: '0000:01:00.0', tenant: 't' });
    s.apply({ t: 'quarantine', e: { q: 4, reason: 'gone', detail: 'x' } });
    const c = s.contexts.get(CTX)!;
    expect([...c.objects.keys()]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(c.intent).toBeUndefined();
    expect(c.last).toBe(9);
    const again = new JournalState();
    again.apply(JSON.parse(JSON.stringify(s.snapshot('b'))) as JRecord);
    expect(again.contexts.get(CTX)!.objects).toEqual(c.objects);
    expect(again.nextQ).toBe(5);
    expect(again.assignments.get('0000:01:00.0')).toBe('t');
    again.apply({ t: 'unquarantine', q: [4] });
    again.apply({ t: 'close', c: CTX });
    expect(again.contexts.size).toBe(0);
    expect(again.quarantine.size).toBe(0);
  });
});

describe('fd store names and LISTEN_FDS', () => {
  it('names say whose file it is, and nothing else parses', () => {
    expect(parseFdName(iommufdName(CTX))).toEqual({ kind: 'iommufd', contextId: CTX });
    expect(parseFdName(deviceName(CTX, 42))).toEqual({ kind: 'device', contextId: CTX, handle: 42 });
    for (const bad of ['unknown', 'i.ctx-1', `d.${CTX}.0`, `d.${CTX}.x`, `i.${CTX}:x`]) expect(parseFdName(bad)).toBeUndefined();
    expect(iommufdName(CTX)).not.toContain(':');
  });

  it('LISTEN_FDS counts from 3 with LISTEN_FDNAMES, only for this pid, and is removed from the environment', () => {
    const env: NodeJS.ProcessEnv = { LISTEN_PID: '42', LISTEN_FDS: '4', LISTEN_FDNAMES: 'a:b::a' };
    expect([...listenFds(env, 42)]).toEqual([
      ['a', 3],
      ['b', 4],
      ['unknown', 5],
      ['a#2', 6],
    ]);
    expect(env).toEqual({});
    expect(listenFds({ LISTEN_PID: '41', LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b' }, 42).size).toBe(0);
    expect(listenFds({}, 42).size).toBe(0);
  });

  it('the in-process store hands back what it held when the daemon died', () => {
    const store = new MemoryFdStore();
    store.put('a', 5);
    store.put('b', 6);
    store.remove('a');
    store.freeze();
    store.put('c', 7);
    const next = store.handBack();
    next.remove('b');
    expect([...next.restored]).toEqual([]);
    expect([...store.handBack().restored]).toEqual([['b', 6]]);
  });
});

describe('restart config', () => {
  it('defaults to systemd StateDirectory= and validates', () => {
    expect(defaultJournalPath({ STATE_DIRECTORY: '/var/lib/vfio-broker:/var/lib/other' })).toBe('/var/lib/vfio-broker/journal');
    expect(defaultJournalPath({})).toBe('');
    const c = parseConfig({ restart: { journalPath: '/var/lib/x/journal', sync: 'none' } }, 'cfg');
    expect(c.restart).toEqual({ journalPath: '/var/lib/x/journal', sync: 'none' });
    expect(parseConfig({ restart: { journalPath: '' } }, 'cfg').restart.journalPath).toBe('');
    for (const bad of [{ journalPath: 'relative/journal' }, { journalPath: '/dir/' }, { journalPath: 3 }, { sync: 'always' }, { other: 1 }]) {
      expect(() => parseConfig({ restart: bad }, 'cfg')).toThrow(ConfigError);
    }
  });
});
