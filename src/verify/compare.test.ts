import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import type { CheckpointState } from '../copy/copy.js';
import { createValueHasher } from '../report/hash.js';
import type { SourceEntry, TargetEntry } from '../stores/types.js';
import { alignEntries, compareKey, countByKind, expectationFor, routeForVerify, ruleStatus, splitPage, type CompareInput, type SessionView } from './compare.js';
import { DUALRUN_HEARTBEAT_MS, readCheckpointState } from './cut.js';
import { ListedKeys } from '../stores/listed-keys.js';

const { mapping } = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/ }
  - { name: nested, from: /app/nested/, to: nested/ }
  - { name: kept, from: /app/kept/, action: keep }
  - { name: services, from: /services/, to: services/, leases: session }
  - { name: locks, from: /locks/, to: locks/, leases: skip }
  - { name: flat, from: /flat/, to: flat/, leases: persist }
  - { name: legacy, from: /legacy/, to: legacy/, keys: escape }
`, 'migration.yaml');
const rule = (name: string) => mapping.copyRules.find((r) => r.name === name)!;
const hash = createValueHasher(Buffer.alloc(32, 7));

function entry(key: string | Buffer, value: string | Buffer, lease = '0'): SourceEntry {
  return { key: Buffer.isBuffer(key) ? key : Buffer.from(key), value: Buffer.isBuffer(value) ? value : Buffer.from(value), createRevision: 2, modRevision: 2, version: 1, lease };
}

function consul(key: string, value: string | Buffer, session?: string): TargetEntry {
  return { key, value: Buffer.isBuffer(value) ? value : Buffer.from(value), flags: 0, modifyIndex: 10, ...(session ? { session } : {}) };
}

const sessions = (recorded: Record<string, string>, alive: string[]): SessionView => ({
  recorded: (lease) => recorded[lease],
  alive: (id) => alive.includes(id),
  isMirror: (id) => Object.values(recorded).includes(id),
});
const noSessions = sessions({}, []);

function compare(over: Partial<CompareInput> & Pick<CompareInput, 'target'>) {
  return compareKey({ rule: 'app', expectation: undefined, consul: undefined, sessions: noSessions, hash, mapping, ...over });
}

describe('splitPage', () => {
  it('routes a page for one rule: its own keys compared, other rules and kept keys left alone, unmappable keys counted per reason', () => {
    const listed = new ListedKeys(['app/a', 'app/b', 'app/zzz-extra']);
    const page = [
      entry('/app/a', '1'),
      entry('/app/b', '2'),
      entry('/app/c', '3'),
      entry('/app//double', 'x'),
      entry(Buffer.concat([Buffer.from('/app/bin'), Buffer.from([0xff])]), 'x'),
      entry('/app/big', Buffer.alloc(mapping.maxValueBytes + 1)),
      entry('/app/kept/k', 'k8s'),
      entry('/app/nested/n', 'n'),
    ];
    const split = splitPage(mapping, rule('app'), page, listed);
    expect(split.expectations.map((e) => e.target)).toEqual(['app/a', 'app/b', 'app/c']);
    expect(split.toRead).toEqual(['app/a', 'app/b']);
    expect(split.unmappable).toEqual({ 'empty-segment': 1, 'invalid-utf8': 1, 'value-too-large': 1 });
    // What is left in the key list after the last page is what no etcd key put there.
    expect([...listed.leftovers()]).toEqual(['app/zzz-extra']);
  });

  it('looks escaped targets up by set, so the escape codec changing key order does not matter', () => {
    const listed = new ListedKeys(['legacy/a', 'legacy/~2Fslash']);
    const split = splitPage(mapping, rule('legacy'), [entry('/legacy//slash', '1'), entry('/legacy/a', '2')], listed);
    expect(split.toRead.sort()).toEqual(['legacy/a', 'legacy/~2Fslash']);
    expect(listed.remaining).toBe(0);
  });

  it('expects leased keys under leases: skip to be absent, and counts them', () => {
    const listed = new ListedKeys([]);
    const split = splitPage(mapping, rule('locks'), [entry('/locks/nightly', 'holder', '77'), entry('/locks/plain', 'p')], listed);
    expect(split.leaseSkipped).toBe(1);
    expect(split.expectations.map((e) => [e.target, e.presence])).toEqual([['locks/nightly', 'absent'], ['locks/plain', 'present']]);
  });
});

describe('expectationFor', () => {
  it('follows the rule\'s lease policy', () => {
    expect(expectationFor('s/x', entry('/s/x', 'v', '5'), 'session')).toMatchObject({ presence: 'present', sessionLease: '5' });
    expect(expectationFor('s/x', entry('/s/x', 'v', '5'), 'persist')).toMatchObject({ presence: 'present', sessionLease: undefined });
    expect(expectationFor('s/x', entry('/s/x', 'v', '5'), 'skip')).toMatchObject({ presence: 'absent' });
    expect(expectationFor('s/x', entry('/s/x', 'v'), 'session')).toMatchObject({ presence: 'present', sessionLease: undefined });
  });
});

describe('compareKey', () => {
  it('keeps a copy of the etcd key, not a view of its page, in a finding', () => {
    // etcd keys are views of the page they came in; a finding kept for the re-checks must not keep the page alive.
    const page = Buffer.alloc(64 * 1024);
    const key = page.subarray(100, 100 + Buffer.byteLength('/app/a'));
    key.write('/app/a');
    const finding = compare({ target: 'app/a', expectation: expectationFor('app/a', entry(key, 'etcd'), 'persist'), consul: consul('app/a', 'consul') });
    expect(finding?.difference.kind).toBe('value');
    expect(finding!.source!.toString()).toBe('/app/a');
    expect(finding!.source!.buffer.byteLength).toBeLessThan(page.length);
  });

  const expect1 = (key: string, value: string | Buffer, lease = '0', ruleName = 'app') => {
    const route = routeForVerify(mapping, rule(ruleName), entry(key, value, lease));
    if (route.kind !== 'expect') throw new Error(`not mapped: ${key}`);
    return route.expectation;
  };

  it('finds nothing when value and session agree', () => {
    expect(compare({ target: 'app/a', expectation: expect1('/app/a', 'v'), consul: consul('app/a', 'v') })).toBeUndefined();
    const leased = expect1('/services/r1', 'ip', '9', 'services');
    expect(compare({ rule: 'services', target: 'services/r1', expectation: leased, consul: consul('services/r1', 'ip', 'S9'), sessions: sessions({ 9: 'S9' }, ['S9']) })).toBeUndefined();
  });

  it('treats an empty value and Consul\'s null the same', () => {
    expect(compare({ target: 'app/e', expectation: expect1('/app/e', Buffer.alloc(0)), consul: consul('app/e', Buffer.alloc(0)) })).toBeUndefined();
  });

  it('reports a missing key with the etcd digest only', () => {
    const f = compare({ target: 'app/a', expectation: expect1('/app/a', 'hello') })!;
    expect(f.difference).toMatchObject({ kind: 'missing', reason: 'absent', key: 'app/a', sourceKey: '/app/a', etcd: { size: 5, hash: hash(Buffer.from('hello')) }, consul: null });
  });

  it('reports one changed byte of the same length as a value difference, with sizes and keyed hashes but never the value', () => {
    const f = compare({ target: 'app/a', expectation: expect1('/app/a', 'secret-1'), consul: consul('app/a', 'secret-2') })!;
    expect(f.difference.kind).toBe('value');
    expect(f.difference.etcd!.size).toBe(f.difference.consul!.size);
    expect(f.difference.etcd!.hash).not.toBe(f.difference.consul!.hash);
    expect(JSON.stringify(f.difference)).not.toContain('secret');
  });

  it('compares binary values byte for byte', () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const other = Buffer.from(bytes);
    other[200] = 0;
    expect(compare({ target: 'app/b', expectation: expect1('/app/b', bytes), consul: consul('app/b', Buffer.from(bytes)) })).toBeUndefined();
    expect(compare({ target: 'app/b', expectation: expect1('/app/b', bytes), consul: consul('app/b', other) })!.difference.kind).toBe('value');
  });

  it('tells extra keys owned by a missing etcd key from foreign ones', () => {
    const owned = compare({ target: 'app/gone', consul: consul('app/gone', 'x') })!;
    expect(owned.difference).toMatchObject({ kind: 'extra', reason: 'no-etcd-key', sourceKey: '/app/gone', etcd: null });
    expect(owned.source).toEqual(Buffer.from('/app/gone'));
    expect(owned.difference.detail).toBe('etcd has no key /app/gone at the cut');
    // A leased key whose etcd lease expired with no dual-run running: the session that still holds it is named.
    const held = compare({ target: 'app/gone', consul: consul('app/gone', 'x', 's-1'), sessions: sessions({ 9: 's-1' }, ['s-1']) })!;
    expect(held.difference).toMatchObject({ kind: 'extra', reason: 'no-etcd-key', sourceKey: '/app/gone' });
    expect(held.difference.detail).toBe('etcd has no key /app/gone at the cut; the Consul key is held by session s-1: a session the tool made for an etcd lease deletes it when it ends (a running dual-run deletes it at once)');
    // Held by a session the migration did not make (an application's lock): nothing of the tool's deletes it.
    const locked = compare({ target: 'app/gone', consul: consul('app/gone', 'x', 'APP'), sessions: sessions({ 9: 's-1' }, ['s-1', 'APP']) })!;
    expect(locked.difference.detail).toBe('etcd has no key /app/gone at the cut; the Consul key is held by session APP, which this migration does not own: copy --delete-extraneous leaves it; its holder releases it, or delete it in Consul');
    const foreign = compare({ rule: 'legacy', target: 'legacy/~zz', consul: consul('legacy/~zz', 'x') })!;
    expect(foreign.difference).toMatchObject({ kind: 'extra', reason: 'foreign', sourceKey: null });
    expect(foreign.source).toBeUndefined();
  });

  it('reports a listed key that GET /v1/kv cannot serve as not-servable, whatever etcd holds', () => {
    expect(compare({ target: 'app/app//x', consul: consul('app/app//x', 'x') })!.difference).toMatchObject({ kind: 'not-servable', reason: 'empty-segment' });
    expect(compare({ target: '/app/lead', consul: consul('/app/lead', 'x') })!.difference).toMatchObject({ kind: 'not-servable', reason: 'leading-slash' });
    expect(compare({ target: 'app/./x', consul: consul('app/./x', 'x') })!.difference).toMatchObject({ kind: 'not-servable', reason: 'dot-segment' });
    // Gone by the time its value was read: nothing to report.
    expect(compare({ target: 'app/app//x' })).toBeUndefined();
  });

  it('against an agent with Consul 1.21.5\'s key rule, a listed key outside its character set is not-servable, not extra', () => {
    const strict = { ...mapping, strictKeys: true };
    expect(compare({ target: 'app/café', consul: consul('app/café', 'x'), mapping: strict })!.difference).toMatchObject({ kind: 'not-servable', reason: 'key-charset' });
    expect(compare({ target: 'app/café', consul: consul('app/café', 'x') })!.difference).toMatchObject({ kind: 'extra' });
  });

  it('reports a key that failed to read back through the KV endpoint', () => {
    const f = compare({ target: 'app/a', expectation: expect1('/app/a', 'v'), consul: consul('app/a', 'v'), readBack: { ok: false, detail: 'HTTP 307' } })!;
    expect(f.difference).toMatchObject({ kind: 'not-servable', reason: 'read-back-failed' });
    expect(f.readBack).toBe(true);
  });

  it('expects keys leased under leases: skip to be absent', () => {
    const skipped = expect1('/locks/l', 'holder', '4', 'locks');
    expect(compare({ rule: 'locks', target: 'locks/l', expectation: skipped })).toBeUndefined();
    expect(compare({ rule: 'locks', target: 'locks/l', expectation: skipped, consul: consul('locks/l', 'holder') })!.difference).toMatchObject({ kind: 'extra', reason: 'lease-skip' });
  });

  describe('sessions', () => {
    const leased = () => expect1('/services/r1', 'ip', '9', 'services');
    const run = (c: TargetEntry | undefined, view: SessionView) => compare({ rule: 'services', target: 'services/r1', expectation: leased(), consul: c, sessions: view });

    it('a leased key without a session on the Consul key', () => {
      expect(run(consul('services/r1', 'ip'), sessions({ 9: 'S9' }, ['S9']))!.difference).toMatchObject({ kind: 'session', reason: 'no-session' });
    });
    it('held by a session other than the one recorded for the lease', () => {
      expect(run(consul('services/r1', 'ip', 'OTHER'), sessions({ 9: 'S9' }, ['S9', 'OTHER']))!.difference).toMatchObject({ kind: 'session', reason: 'wrong-session' });
    });
    it('the recorded session is gone from Consul (its keys went with it)', () => {
      expect(run(undefined, sessions({ 9: 'S9' }, []))!.difference).toMatchObject({ kind: 'session', reason: 'session-gone', consul: null });
      expect(run(consul('services/r1', 'ip'), sessions({ 9: 'S9' }, []))!.difference).toMatchObject({ kind: 'session', reason: 'session-gone' });
    });
    it('no session recorded for the lease', () => {
      expect(run(consul('services/r1', 'ip'), sessions({}, []))!.difference).toMatchObject({ kind: 'session', reason: 'no-recorded-session' });
    });
    it('the reverse: a Consul session on a key etcd holds without a lease, or under leases: persist', () => {
      expect(compare({ target: 'app/a', expectation: expect1('/app/a', 'v'), consul: consul('app/a', 'v', 'S1') })!.difference).toMatchObject({ kind: 'session', reason: 'unexpected-session', detail: expect.stringContaining('when that session ends, Consul deletes the key (Behavior delete) or releases it') });
      const persisted = expect1('/flat/t', 't', '3', 'flat');
      expect(compare({ rule: 'flat', target: 'flat/t', expectation: persisted, consul: consul('flat/t', 't', 'S3') })!.difference).toMatchObject({ kind: 'session', reason: 'unexpected-session' });
      expect(compare({ rule: 'flat', target: 'flat/t', expectation: persisted, consul: consul('flat/t', 't') })).toBeUndefined();
    });
    it('after the cutover (Consul owns the rule), a lock an application holds with its own session is no difference; one of the tool\'s lease sessions still is', () => {
      const plain = expect1('/app/lock', 'me');
      expect(compare({ target: 'app/lock', expectation: plain, consul: consul('app/lock', 'me', 'APP'), owner: 'consul', sessions: sessions({ 9: 'S9' }, ['S9', 'APP']) })).toBeUndefined();
      expect(compare({ target: 'app/lock', expectation: plain, consul: consul('app/lock', 'me', 'S9'), owner: 'consul', sessions: sessions({ 9: 'S9' }, ['S9', 'APP']) })!.difference).toMatchObject({ reason: 'unexpected-session' });
      expect(compare({ target: 'app/lock', expectation: plain, consul: consul('app/lock', 'me', 'APP'), owner: 'etcd', sessions: sessions({ 9: 'S9' }, ['S9', 'APP']) })!.difference).toMatchObject({ reason: 'unexpected-session' });
      // Another value under an application's lock, while etcd owns the rule: copy skips such a key, so the difference says who must act.
      expect(compare({ target: 'app/lock', expectation: plain, consul: consul('app/lock', 'you', 'APP'), owner: 'etcd', sessions: sessions({ 9: 'S9' }, ['S9', 'APP']) })!.difference).toMatchObject({
        kind: 'value', reason: 'foreign-session', detail: 'the values differ (etcd 2 B, Consul 3 B); the Consul key is held by session APP, which this migration does not own: copy leaves such a key as it is (the dual-run still writes etcd\'s next change of it); its holder releases it (or delete it in Consul), then copy',
      });
      expect(compare({ target: 'app/lock', expectation: plain, consul: consul('app/lock', 'you', 'S9'), owner: 'etcd', sessions: sessions({ 9: 'S9' }, ['S9', 'APP']) })!.difference).toMatchObject({ kind: 'value', reason: 'bytes' });
    });
    it('a value difference is reported before a session difference', () => {
      expect(run(consul('services/r1', 'other'), sessions({ 9: 'S9' }, ['S9']))!.difference.kind).toBe('value');
    });
  });
});

describe('verdicts', () => {
  it('a rule is at parity, within its budget, or drifting', () => {
    expect(ruleStatus(0, undefined)).toBe('parity');
    expect(ruleStatus(2, 2)).toBe('within-budget');
    expect(ruleStatus(3, 2)).toBe('drift');
    expect(ruleStatus(1, undefined)).toBe('drift');
  });

  it('counts by kind with every kind present', () => {
    expect(countByKind([{ kind: 'value' }, { kind: 'value' }], { missing: 4 })).toEqual({ missing: 4, extra: 0, value: 2, session: 0, 'not-servable': 0, instance: 0, check: 0, 'check-critical': 0 });
  });
});

describe('readCheckpointState (is a dual-run running?)', () => {
  const now = Date.parse('2025-01-01T00:10:00Z');
  const doc = (by: 'copy' | 'dualrun', agoMs: number, revision = 100): CheckpointState => ({ schemaVersion: 1, revision, updated: new Date(now - agoMs).toISOString(), by });

  it('no checkpoint, or one written by copy: no dual-run', () => {
    expect(readCheckpointState(undefined, undefined, now)).toMatchObject({ running: false, reason: 'no-checkpoint' });
    expect(readCheckpointState(doc('copy', 1000), undefined, now)).toMatchObject({ running: false, reason: 'copy-checkpoint' });
  });

  it('a dualrun checkpoint updated within 2× the heartbeat: running', () => {
    expect(readCheckpointState(doc('dualrun', 2 * DUALRUN_HEARTBEAT_MS), undefined, now)).toMatchObject({ running: true, reason: 'dualrun-running' });
    // A clock ahead of ours counts as fresh.
    expect(readCheckpointState(doc('dualrun', -5000), undefined, now)).toMatchObject({ running: true });
  });

  it('an older dualrun checkpoint: stopped, unless it moved since the last read', () => {
    const old = doc('dualrun', 2 * DUALRUN_HEARTBEAT_MS + 1);
    expect(readCheckpointState(old, undefined, now)).toMatchObject({ running: false, reason: 'dualrun-stopped' });
    expect(readCheckpointState(old, old, now)).toMatchObject({ running: false });
    expect(readCheckpointState(old, { ...old, revision: 99 }, now)).toMatchObject({ running: true, reason: 'dualrun-running' });
  });

  it('a checkpoint the dual-run marked stopped on a clean stop: stopped at once, fresh or moved', () => {
    const last = { ...doc('dualrun', 1000), stopped: new Date(now - 1000).toISOString() };
    expect(readCheckpointState(last, undefined, now)).toMatchObject({ running: false, reason: 'dualrun-stopped' });
    expect(readCheckpointState(last, doc('dualrun', 3000, 99), now)).toMatchObject({ running: false, reason: 'dualrun-stopped' });
  });
});

describe('alignEntries', () => {
  const expect_ = (target: string) => expectationFor(target, entry(`/app/${target}`, 'v'), 'persist');
  const targets = ['app/a', 'app/b', 'app/c', 'app/d'];

  it('pairs each target with its entry when the entries come in the same order', () => {
    const entries = targets.map((t) => consul(t, t));
    expect(alignEntries(targets.map(expect_), entries)).toEqual(entries);
  });

  it('leaves a gap for a target Consul lacks, and still finds the ones after it', () => {
    const entries = [consul('app/a', 'a'), consul('app/c', 'c')];
    expect(alignEntries(targets.map(expect_), entries).map((e) => e?.key)).toEqual(['app/a', undefined, 'app/c', undefined]);
  });

  it('finds entries that come in another order, and ignores entries no target asked for', () => {
    const entries = [consul('app/d', 'd'), consul('app/x', 'x'), consul('app/b', 'b'), consul('app/a', 'a')];
    expect(alignEntries(targets.map(expect_), entries).map((e) => e?.key)).toEqual(['app/a', 'app/b', undefined, 'app/d']);
  });
});
