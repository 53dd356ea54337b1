import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { TargetEntry } from '../stores/types.js';
import type { SourceWriteOp } from '../stores/etcd-writer.js';
import { OwnWrites, ReverseMirror, reverseDeleteGuardTrips } from './reverse-mirror.js';

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
    const write = own.track(new Promise<number>((resolve) => (land = resolve)));
    const answer = own.isOwn(42);
    land(42);
    await write;
    expect(await answer).toBe(true);
    expect(await own.isOwn(43)).toBe(false);
    own.prune(100);
    expect(await own.isOwn(42)).toBe(false);
  });
});

describe('ReverseMirror and lease sessions', () => {
  it('a key an application wrote in Consul, whose lease session went before the key was released from it: Consul dropped it, and it is written back from etcd, not deleted there', async () => {
    const { mapping } = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    const lease = source.grantLease(60);
    source.put('/app/k', 'v1', lease);
    target.sessions.set('S', { id: 'S', name: 'migrate demo etcd lease x', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
    const at = (value: string, index: number): TargetEntry => ({ key: 'app/k', value: Buffer.from(value), flags: 0, modifyIndex: index, session: 'S' });
    target.entries.set('app/k', at('v1', 1));
    // Consul's answers, one at a time: as copied; the application's plain PUT (the session still holds the key);
    // then nothing, the session lost before this mirror released the key from it (Consul deleted it).
    const answers = [[at('v1', 1)], [at('v2', 2)], []];
    let index = 0;
    let servedAll!: () => void;
    const served = new Promise<void>((done) => (servedAll = done));
    const blocking = {
      readKey: async () => ({ entry: undefined, index: 0 }),
      readPrefix: async (_prefix: string, _index: number, signal: AbortSignal) => {
        if (index === 1) {
          // The session goes right after the put, before the mirror's release reaches Consul.
          target.entries.set('app/k', at('v2', 2));
          await target.destroySession('S');
        }
        if (index < answers.length) return { entries: answers[index]!, index: ++index * 10 };
        servedAll();
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        return { entries: [], index: index * 10 };
      },
    };
    const writer = {
      applyTxn: async (ops: readonly SourceWriteOp[]) => source.write(ops.map((op) => (op.verb === 'put' ? { key: op.key, value: op.value } : { key: op.key, delete: true }))),
    };
    const logs: string[] = [];
    const mirror = new ReverseMirror({
      rule: mapping.copyRules[0]!, mapping, source, writer, blocking, own: new OwnWrites(), target, leaseSessions: new Set(['S']), restored: new Map(),
      log: (_level, message) => logs.push(message), checkpoint: () => 0, onChangedSince: async () => undefined, onApplied: () => undefined, onGuardTrip: () => undefined, onLeaseSessionGone: () => undefined, allowMassDelete: false,
    });
    const stop = new AbortController();
    mirror.start(stop.signal);
    await served;
    await mirror.stop();
    const etcd: [string, string][] = [];
    for await (const page of source.readPages({ start: Buffer.from('/app/k'), end: Buffer.from('/app/k\0') })) for (const e of page.entries) etcd.push([e.value.toString(), e.lease]);
    expect(etcd).toEqual([['v2', '0']]);
    expect(target.entries.get('app/k')).toMatchObject({ value: Buffer.from('v2') });
    expect(target.entries.get('app/k')?.session).toBeUndefined();
    expect(logs.join('\n')).toContain('app/k went with a lost lease session after an application wrote it; written back to Consul from etcd');
  });
});
