import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { TargetEntry } from '../stores/types.js';
import type { SourceWriteOp } from '../stores/etcd-writer.js';
import { REVERSE_TXN_BYTES, ReverseMirror, reverseBatches, reverseDeleteGuardTrips, type ReverseMirrorDeps } from './reverse-mirror.js';
import { OwnWrites } from './own-writes.js';

describe('reverse mirror helpers', () => {
  it('the delete guard trips above 10 keys and 10% of the rule', () => {
    expect(reverseDeleteGuardTrips(10, 20)).toBe(false);
    expect(reverseDeleteGuardTrips(11, 1000)).toBe(false);
    expect(reverseDeleteGuardTrips(11, 100)).toBe(true);
    expect(reverseDeleteGuardTrips(500, 500)).toBe(true);
  });

  it('own writes: a revision still in flight is awaited before the answer', async () => {
    const own = new OwnWrites();
    let land!: (revision: number) => void;
    const write = own.track('app', [], () => new Promise<number>((resolve) => (land = resolve)));
    const answer = own.isOwn(42);
    land(42);
    await write;
    expect(await answer).toBe(true);
    expect(await own.isOwn(43)).toBe(false);
    own.prune(100);
    expect(await own.isOwn(42)).toBe(false);
  });

  it('batches ops by count and by bytes; an op larger than a batch goes alone, and the order is kept', () => {
    const put = (key: string, bytes: number) => ({ verb: 'put' as const, key: Buffer.from(key), value: Buffer.alloc(bytes) });
    const shape = (ops: Parameters<typeof reverseBatches>[0]) => reverseBatches(ops).map((b) => b.map((op) => op.key.toString()).join(','));
    expect(shape(Array.from({ length: 250 }, (_, i) => put(`k${i}`, 10))).map((b) => b.split(',').length)).toEqual([100, 100, 50]);
    // Six values of 400 KB: two per txn (a third would pass 1 MiB), not all six in one.
    expect(shape(Array.from({ length: 6 }, (_, i) => put(`b${i}`, 400_000)))).toEqual(['b0,b1', 'b2,b3', 'b4,b5']);
    expect(shape([put('s0', 10), put('huge', REVERSE_TXN_BYTES * 2), put('s1', 10)])).toEqual(['s0', 'huge', 's1']);
    expect(reverseBatches([])).toEqual([]);
  });
});

/** A mirror of rule `app` (/app/ → app/) over `source` and `target`, whose Consul answers are `readPrefix`'s. */
function mirrorOf(source: MemorySource, target: MemoryTarget, readPrefix: ReverseMirrorDeps['blocking']['readPrefix'], deps: Partial<ReverseMirrorDeps> = {}) {
  const { mapping } = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');
  const logs: string[] = [];
  const writer = {
    applyTxn: async (ops: readonly SourceWriteOp[]) => source.write(ops.map((op) => (op.verb === 'put' ? { key: op.key, value: op.value } : { key: op.key, delete: true }))),
  };
  const mirror = new ReverseMirror({
    rule: mapping.copyRules[0]!, mapping, source, writer, blocking: { readKey: async () => ({ entry: undefined, index: 0 }), readPrefix }, own: new OwnWrites(), target, leaseSessions: new Set(), restored: new Map(),
    log: (_level, message) => logs.push(message), checkpoint: () => 0, onChangedSince: async () => undefined, onApplied: () => undefined, onError: () => undefined, onPass: () => undefined, onGuardTrip: () => undefined, onLeaseSessionGone: () => undefined, allowMassDelete: false,
    ...deps,
  });
  return { mirror, logs };
}

/** A blocking reader that serves `answers` in turn, then waits until the mirror stops; `served` settles once all were read. */
function answersOf(answers: TargetEntry[][], before: (index: number) => Promise<void> = async () => undefined) {
  let index = 0;
  let servedAll!: () => void;
  const served = new Promise<void>((done) => (servedAll = done));
  const readPrefix = async (_prefix: string, _index: number, signal: AbortSignal) => {
    await before(index);
    if (index < answers.length) return { entries: answers[index]!, index: ++index * 10 };
    servedAll();
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    return { entries: [], index: index * 10 };
  };
  return { readPrefix, served };
}

describe('ReverseMirror and etcd\'s request limit', () => {
  it('writes large values in txns etcd takes, splits one it refuses, and leaves out only a value etcd refuses alone (said, counted)', async () => {
    const source = new MemorySource();
    source.put('/app/small', 'old');
    source.put('/app/huge', 'old');
    const target = new MemoryTarget();
    const entry = (key: string, value: Buffer, index: number): TargetEntry => ({ key, value, flags: 0, modifyIndex: index });
    const big = (i: number) => Buffer.alloc(400_000, i);
    // etcd started with --max-request-bytes 900000: two of the values pass together, three do not, the huge one never.
    const limit = 900_000;
    const txns: number[] = [];
    const writer = {
      applyTxn: async (ops: readonly SourceWriteOp[]) => {
        const bytes = ops.reduce((n, op) => n + op.key.length + (op.verb === 'put' ? op.value.length : 0), 0);
        if (bytes > limit) throw new Error('etcd failed write (txn): 3 INVALID_ARGUMENT: etcdserver: request is too large');
        txns.push(ops.length);
        return source.write(ops.map((op) => (op.verb === 'put' ? { key: op.key, value: op.value } : { key: op.key, delete: true })));
      },
    };
    const first = [entry('app/huge', Buffer.alloc(950_000, 9), 1), entry('app/small', Buffer.from('new'), 2)];
    const later = [...first, ...[0, 1, 2, 3, 4, 5].map((i) => entry(`app/b${i}`, big(i), 10 + i))];
    const { readPrefix, served } = answersOf([first, later]);
    const errors: string[] = [];
    const { mirror, logs } = mirrorOf(source, target, readPrefix, { writer, onError: (kind) => errors.push(kind) });
    mirror.start(new AbortController().signal);
    await served;
    await mirror.stop();
    const etcd = new Map<string, Buffer>();
    for await (const page of source.readPages({ start: Buffer.from('/app/'), end: Buffer.from('/app0') })) for (const e of page.entries) etcd.set(e.key.toString(), e.value);
    expect(etcd.get('/app/small')?.toString()).toBe('new');
    for (let i = 0; i < 6; i++) expect(etcd.get(`/app/b${i}`)?.equals(big(i)), `b${i}`).toBe(true);
    // etcd keeps its value of the key it refused, and the mirror says so once and what to do; nothing else failed.
    expect(etcd.get('/app/huge')?.toString()).toBe('old');
    expect(errors).toEqual(['etcd_request_too_large']);
    expect(logs.filter((l) => l.includes('request too large'))).toHaveLength(1);
    expect(logs.join('\n')).toMatch(/etcd refuses the write of \/app\/huge \(\d+ bytes\) as a request too large;[^\n]*Raise etcd's --max-request-bytes above \d+, then restart the dual-run/);
    expect(logs.join('\n')).not.toContain('retrying');
    expect(Math.max(...txns)).toBeLessThanOrEqual(2);
  });
});

describe('ReverseMirror and lease sessions', () => {
  it('a key an application wrote in Consul, whose lease session went before the key was released from it: Consul dropped it, and it is written back from etcd, not deleted there', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    const lease = source.grantLease(60);
    source.put('/app/k', 'v1', lease);
    target.sessions.set('S', { id: 'S', name: 'migrate demo etcd lease x', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
    const at = (value: string, index: number): TargetEntry => ({ key: 'app/k', value: Buffer.from(value), flags: 0, modifyIndex: index, session: 'S' });
    target.entries.set('app/k', at('v1', 1));
    // Consul's answers, one at a time: as copied; the application's plain PUT (the session still holds the key);
    // then nothing, the session lost before this mirror released the key from it (Consul deleted it).
    const { readPrefix, served } = answersOf([[at('v1', 1)], [at('v2', 2)], []], async (index) => {
      if (index !== 1) return;
      // The session goes right after the put, before the mirror's release reaches Consul.
      target.entries.set('app/k', at('v2', 2));
      await target.destroySession('S');
    });
    const { mirror, logs } = mirrorOf(source, target, readPrefix, { leaseSessions: new Set(['S']) });
    mirror.start(new AbortController().signal);
    await served;
    await mirror.stop();
    const etcd: [string, string][] = [];
    for await (const page of source.readPages({ start: Buffer.from('/app/k'), end: Buffer.from('/app/k\0') })) for (const e of page.entries) etcd.push([e.value.toString(), e.lease]);
    expect(etcd).toEqual([['v2', '0']]);
    expect(target.entries.get('app/k')).toMatchObject({ value: Buffer.from('v2') });
    expect(target.entries.get('app/k')?.session).toBeUndefined();
    expect(logs.join('\n')).toContain('app/k went with a lost lease session after an application wrote it; written back to Consul from etcd');
  });
  it('first pass (a restart): a Consul key held by the session of an etcd lease that etcd no longer has (the lease ended meanwhile) is not written back to etcd, where it would live for good without a lease', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    const lease = source.grantLease(60);
    source.put('/app/live', 'up', lease);
    target.sessions.set('S', { id: 'S', name: 'migrate demo etcd lease x', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
    target.sessions.set('D', { id: 'D', name: 'migrate demo etcd lease y', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
    const entry = (key: string, value: string, index: number, session?: string): TargetEntry => ({ key, value: Buffer.from(value), flags: 0, modifyIndex: index, ...(session ? { session } : {}) });
    // Consul, as the restarted mirror finds it: the live lease's key, the ended lease's keys (session D not reaped yet),
    // and a key an application wrote in Consul while no mirror ran.
    const answer = [entry('app/live', 'up', 1, 'S'), entry('app/dead-1', 'gone', 2, 'D'), entry('app/dead-2', 'gone', 3, 'D'), entry('app/written', 'new', 4)];
    const { readPrefix, served } = answersOf([answer]);
    const { mirror, logs } = mirrorOf(source, target, readPrefix, { leaseSessions: new Set(['S', 'D']) });
    mirror.start(new AbortController().signal);
    await served;
    await mirror.stop();
    const etcd: [string, string, string][] = [];
    for await (const page of source.readPages({ start: Buffer.from('/app/'), end: Buffer.from('/app0') })) for (const e of page.entries) etcd.push([e.key.toString(), e.value.toString(), e.lease === '0' ? 'no lease' : 'leased']);
    expect(etcd).toEqual([['/app/live', 'up', 'leased'], ['/app/written', 'new', 'no lease']]);
    expect(logs.join('\n')).toContain('first pass left 2 Consul key(s) out of etcd: held by sessions of etcd leases, and etcd no longer has them');
  });
});
