import { describe, expect, it } from 'vitest';
import type { SourceEntry, TargetEntry } from '../stores/types.js';
import { deleteGuardTrips, planPage, writeOps, type PlannedRoute } from './plan.js';
import { RuleTracker } from './copy.js';

const entry = (key: string, value: string, lease = '0'): SourceEntry => ({ key: Buffer.from(key), value: Buffer.from(value), createRevision: 2, modRevision: 5, version: 1, lease });
const target = (key: string, value: string, modifyIndex: number, session?: string): TargetEntry => ({ key, value: Buffer.from(value), flags: 0, modifyIndex, ...(session ? { session } : {}) });
const mapped = (leases: 'session' | 'persist' | 'skip' = 'session') => (e: SourceEntry): PlannedRoute => {
  const key = e.key.toString();
  if (key.includes('//')) return { kind: 'skip', rule: 'app', reason: 'empty-segment', detail: 'empty segment' };
  if (key.startsWith('/app/nested/')) return { kind: 'other-rule', rule: 'nested' };
  return { kind: 'mapped', rule: 'app', target: key.replace('/app/', 'app/'), leases };
};

describe('copy planner', () => {
  it('creates, updates, leaves equal keys alone, and skips with reasons', () => {
    const plan = planPage({
      entries: [entry('/app/a', '1'), entry('/app/b', '2'), entry('/app/c', '3'), entry('/app//x', '4'), entry('/app/nested/z', '5')],
      route: mapped(),
      existing: new Map([['app/b', target('app/b', 'old', 11)], ['app/c', target('app/c', '3', 12)]]),
      sessionFor: () => undefined,
      ownSessions: new Set(),
    });
    expect(plan.writes.map((w) => [w.kind, w.key, w.expectIndex])).toEqual([['create', 'app/a', 0], ['update', 'app/b', 11]]);
    expect(plan.unchanged).toBe(1);
    expect(plan.skips.map((s) => [s.sourceKey.toString(), s.reason])).toEqual([['/app//x', 'empty-segment']]);
  });

  it('leased keys: locked by the lease\'s session, skipped when the lease expired or the rule says skip, plain when persist', () => {
    const leased = [entry('/app/l1', 'v', '7'), entry('/app/l2', 'v', '8')];
    const session = planPage({ entries: leased, route: mapped('session'), existing: new Map(), sessionFor: (l) => (l === '7' ? 's-7' : undefined), ownSessions: new Set(['s-7']) });
    expect(session.writes.map((w) => [w.key, w.session])).toEqual([['app/l1', 's-7']]);
    expect(session.skips.map((s) => s.reason)).toEqual(['lease-expired']);
    expect(planPage({ entries: leased, route: mapped('skip'), existing: new Map(), sessionFor: () => 's', ownSessions: new Set() }).skips.map((s) => s.reason)).toEqual(['lease-skip', 'lease-skip']);
    const persist = planPage({ entries: leased, route: mapped('persist'), existing: new Map(), sessionFor: () => 's', ownSessions: new Set() });
    expect(persist.writes.every((w) => w.session === undefined)).toBe(true);
  });

  it('a key held by the right session with the same value is unchanged; by another own session it moves; by a foreign one it is left alone', () => {
    const plan = planPage({
      entries: [entry('/app/same', 'v', '7'), entry('/app/moved', 'v', '7'), entry('/app/foreign', 'v', '7'), entry('/app/dropped', 'v')],
      route: mapped(),
      existing: new Map([
        ['app/same', target('app/same', 'v', 3, 's-7')],
        ['app/moved', target('app/moved', 'v', 4, 's-old')],
        ['app/foreign', target('app/foreign', 'v', 5, 's-foreign')],
        ['app/dropped', target('app/dropped', 'v', 6, 's-old')],
      ]),
      sessionFor: () => 's-7',
      ownSessions: new Set(['s-7', 's-old']),
    });
    expect(plan.unchanged).toBe(1);
    expect(plan.writes.map((w) => [w.key, w.session, w.releaseSession])).toEqual([['app/moved', 's-7', 's-old'], ['app/dropped', undefined, 's-old']]);
    expect(plan.skips.map((s) => [s.sourceKey.toString(), s.reason])).toEqual([['/app/foreign', 'foreign-session']]);
  });

  it('writes are compare-and-set on the index seen when planning', () => {
    expect(writeOps({ kind: 'create', rule: 'r', key: 'k', sourceKey: Buffer.from('k'), value: Buffer.from('v'), expectIndex: 0 })).toEqual([{ verb: 'cas', key: 'k', value: Buffer.from('v'), index: 0 }]);
    expect(writeOps({ kind: 'update', rule: 'r', key: 'k', sourceKey: Buffer.from('k'), value: Buffer.from('v'), expectIndex: 9, session: 's', releaseSession: 'old' }).map((o) => o.verb)).toEqual(['check-index', 'unlock', 'lock']);
    expect(writeOps({ kind: 'create', rule: 'r', key: 'k', sourceKey: Buffer.from('k'), value: Buffer.from('v'), expectIndex: 0, session: 's' }).map((o) => o.verb)).toEqual(['check-not-exists', 'lock']);
  });
});

describe('low-water tracking', () => {
  it('advances only past pages whose every write landed, whatever the landing order, and finishes last', () => {
    const marks: string[] = [];
    let finished = false;
    const t = new RuleTracker((k) => marks.push(k.toString()), () => (finished = true));
    const p0 = t.openPage(Buffer.from('a'));
    t.hold(p0);
    t.hold(p0);
    t.closePage(p0);
    const p1 = t.openPage(Buffer.from('b'));
    t.hold(p1);
    t.closePage(p1);
    const p2 = t.openPage(Buffer.from('c'));
    t.closePage(p2);
    t.finish();
    t.release(p1);
    expect(marks).toEqual([]);
    t.release(p0);
    expect(marks).toEqual([]);
    expect(finished).toBe(false);
    t.release(p0);
    expect(marks).toEqual(['c']);
    expect(finished).toBe(true);
  });
});

describe('delete guard', () => {
  it('trips above 10% and 10 keys only', () => {
    expect(deleteGuardTrips(10, 20)).toBe(false);
    expect(deleteGuardTrips(11, 200)).toBe(false);
    expect(deleteGuardTrips(11, 100)).toBe(true);
    expect(deleteGuardTrips(50, 100)).toBe(true);
  });
});
