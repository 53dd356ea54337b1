import { describe, expect, it } from 'vitest';
import { MemoryTarget } from '../stores/memory.js';
import type { SourceEvent } from '../stores/types.js';
import { OwnWrites, type OwnWritesJournal } from './own-writes.js';

const put = (key: string, value: string, modRevision: number): SourceEvent => ({ type: 'put', entry: { key: Buffer.from(key), value: Buffer.from(value), modRevision, createRevision: modRevision, version: 1, lease: '0' } });
const del = (key: string, modRevision: number): SourceEvent => ({ type: 'delete', entry: { key: Buffer.from(key), value: Buffer.alloc(0), modRevision, createRevision: 0, version: 0, lease: '0' } });

function journal(target: MemoryTarget, checkpoint: { revision: number }, session = 'leader-session'): OwnWritesJournal {
  return { target, folder: '_migrate/m/own-writes/', checkpoint: () => checkpoint.revision, fence: () => ({ verb: 'check-session', key: '_migrate/m/leader', session }) };
}

describe('OwnWrites: writes announced before they are made', () => {
  it('a next leader knows the writes a killed one made past its checkpoint, by what they do: the same key and value, or delete', async () => {
    const target = new MemoryTarget();
    const leader = await target.createSession({ name: 'leader', ttlSeconds: 10 });
    await target.applyTxn([{ verb: 'lock', key: '_migrate/m/leader', value: Buffer.from('x'), session: leader }]);
    const checkpoint = { revision: 10 };
    const first = new OwnWrites(journal(target, checkpoint, leader));
    await first.track('app', [{ verb: 'put', key: Buffer.from('/app/k'), value: Buffer.from('v1') }], async () => 11);
    await first.track('app', [{ verb: 'delete', key: Buffer.from('/app/gone') }], async () => 12);
    // Killed here: its checkpoint (10) records none of them.
    const next = new OwnWrites(journal(target, checkpoint, leader));
    await next.adoptJournal();
    next.headAtTakeover(12);
    expect(next.announcedEarlier(put('/app/k', 'v1', 11))).toBe(true);
    expect(next.announcedEarlier(del('/app/gone', 12))).toBe(true);
    // Another value, another key, a delete of the written key: someone else's (late writes).
    expect(next.announcedEarlier(put('/app/k', 'v2', 13))).toBe(false);
    expect(next.announcedEarlier(put('/app/other', 'v1', 13))).toBe(false);
    expect(next.announcedEarlier(del('/app/k', 13))).toBe(false);
    // The same write after the takeover (past etcd's head then) is someone else's: a late writer repeating an old value.
    expect(next.announcedEarlier(put('/app/k', 'v1', 13))).toBe(false);
    expect(next.announcedEarlier(del('/app/gone', 14))).toBe(false);
    // Once its checkpoint passes the revision it took over at, the earlier leader's writes are behind it.
    next.prune(13);
    expect(next.announcedEarlier(put('/app/k', 'v1', 14))).toBe(false);
  });

  it('keeps its document within a Consul value while the checkpoint stalls: the oldest announcements go first', async () => {
    const target = new MemoryTarget();
    const leader = await target.createSession({ name: 'leader', ttlSeconds: 10 });
    await target.applyTxn([{ verb: 'lock', key: '_migrate/m/leader', value: Buffer.from('x'), session: leader }]);
    const own = new OwnWrites(journal(target, { revision: 10 }, leader));
    const ops = (i: number) => Array.from({ length: 100 }, (_, j) => ({ verb: 'put' as const, key: Buffer.from(`/app/k${j}`), value: Buffer.from(`v${i}`) }));
    for (let i = 0; i < 100; i++) await own.track('app', ops(i), async () => 11 + i);
    const doc = (await target.readKey('_migrate/m/own-writes/app'))!.value;
    expect(doc.length).toBeLessThan(140 * 1024);
    const writes = (JSON.parse(doc.toString()) as { writes: { revision: number | null }[] }).writes;
    // The newest is kept (announced before etcd answered), the oldest went.
    expect(writes.at(-1)!.revision).toBeNull();
    expect(writes[0]!.revision).toBeGreaterThan(11);
  });

  it('announces a write before making it, drops what the checkpoint passed, and announces nothing without the leader lock', async () => {
    const target = new MemoryTarget();
    const leader = await target.createSession({ name: 'leader', ttlSeconds: 10 });
    await target.applyTxn([{ verb: 'lock', key: '_migrate/m/leader', value: Buffer.from('x'), session: leader }]);
    const checkpoint = { revision: 10 };
    const own = new OwnWrites(journal(target, checkpoint, leader));
    let seenBefore: string | undefined;
    await own.track('app', [{ verb: 'put', key: Buffer.from('/app/a'), value: Buffer.from('1') }], async () => {
      seenBefore = (await target.readKey('_migrate/m/own-writes/app'))?.value.toString();
      return 11;
    });
    expect(JSON.parse(seenBefore!)).toEqual({ schemaVersion: 1, writes: [{ revision: null, prints: [expect.any(String)] }] });
    checkpoint.revision = 11;
    await own.track('app', [{ verb: 'put', key: Buffer.from('/app/b'), value: Buffer.from('2') }], async () => 12);
    // The write at 11 the checkpoint passed is no longer announced; the new one is, before etcd answered.
    const doc = JSON.parse((await target.readKey('_migrate/m/own-writes/app'))!.value.toString()) as { writes: { revision: number | null }[] };
    expect(doc.writes.map((w) => w.revision)).toEqual([null]);
    // Another dual-run took the lock: nothing announced, nothing written to etcd.
    const stale = new OwnWrites(journal(target, checkpoint, 'not-the-leader'));
    let wrote = false;
    await expect(stale.track('app', [{ verb: 'put', key: Buffer.from('/app/c'), value: Buffer.from('3') }], async () => ((wrote = true), 13))).rejects.toThrow();
    expect(wrote).toBe(false);
  });
});
