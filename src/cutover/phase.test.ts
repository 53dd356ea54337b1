import { describe, expect, it } from 'vitest';
import type { CheckpointState, CopyState } from '../copy/copy.js';
import type { VerifyLastState } from '../verify/verify.js';
import { checkVerify, cutOverMappingChanges, derivePhase, nextStep, ownerAt, ownerOf, withOwnershipChange, withTransition, withWritesPaused, type OwnersDoc, type RulePhaseDoc } from './phase.js';

const now = Date.parse('2026-01-01T12:00:00Z');
const iso = (msAgo: number) => new Date(now - msAgo).toISOString();
const copy: CopyState = { schemaVersion: 1, revision: 10, started: iso(3_600_000), completed: iso(3_500_000), rules: { app: { done: true } } };
const running: CheckpointState = { schemaVersion: 1, revision: 20, updated: iso(1000), by: 'dualrun' };
const stopped: CheckpointState = { schemaVersion: 1, revision: 20, updated: iso(600_000), by: 'dualrun' };
function verify(status: 'parity' | 'drift' | 'within-budget', msAgo = 60_000): VerifyLastState {
  return {
    schemaVersion: 1, at: iso(msAgo), revision: 20, cut: 'checkpoint', checkpoint: 20, clean: status !== 'drift', rounds: 1, toolVersion: 't',
    rules: { app: { status, differences: status === 'parity' ? 0 : 2, compared: 5, settled: 0, budget: status === 'within-budget' ? 2 : null, byKind: { missing: 0, extra: 0, value: 0, session: 0, 'not-servable': 0 } } },
  };
}

describe('derivePhase', () => {
  it('walks planned → copied → mirroring → verified from the other stages\' state', () => {
    const base = { doc: undefined, copy: undefined, checkpoint: undefined, verify: undefined, nowMs: now };
    expect(derivePhase('app', base)).toBe('planned');
    expect(derivePhase('app', { ...base, copy })).toBe('copied');
    expect(derivePhase('app', { ...base, copy, checkpoint: stopped })).toBe('copied');
    expect(derivePhase('app', { ...base, copy, checkpoint: running })).toBe('mirroring');
    expect(derivePhase('app', { ...base, copy, checkpoint: running, verify: verify('drift') })).toBe('mirroring');
    expect(derivePhase('app', { ...base, copy, checkpoint: running, verify: verify('parity') })).toBe('verified');
    // Passed only within its --allow budget: not verified, a cutover needs parity.
    expect(derivePhase('app', { ...base, copy, checkpoint: running, verify: verify('within-budget') })).toBe('mirroring');
  });

  it('a verify within its --allow budget fails cutover\'s verify check, and status says to resolve what it tolerated', () => {
    expect(checkVerify(verify('within-budget'), 'app', now, 15 * 60_000)).toMatchObject({ ok: false, detail: expect.stringContaining('found 2 difference(s) in rule app, within its --allow budget: a cutover needs parity') });
    expect(checkVerify(verify('parity'), 'app', now, 15 * 60_000)).toMatchObject({ ok: true });
    for (const phase of ['mirroring', 'rolledback'] as const) {
      expect(nextStep('app', phase, { running: true, verifyClean: false, verifyAgeMs: 1000, maxVerifyAgeMs: 900_000, trips: 0, tolerated: 2 })).toBe('resolve the 2 difference(s) the last verify tolerated (--allow): a cutover needs parity; then migrate verify');
    }
  });

  it('a rule added to migration.yaml after the copy completed is planned, not copied', () => {
    const base = { doc: undefined, copy, checkpoint: running, verify: undefined, nowMs: now };
    expect(derivePhase('added', base)).toBe('planned');
    expect(derivePhase('app', base)).toBe('mirroring');
    // Copied since (by a copy, or a dual-run's re-baseline): its own mark says so.
    expect(derivePhase('added', { ...base, copy: { ...copy, rules: { ...copy.rules, added: { done: true } } } })).toBe('mirroring');
  });

  it('a written phase wins over the derivation', () => {
    const doc = withTransition(undefined, 'app', 'verified', 'cutover', { at: iso(0), by: 'me@host' });
    expect(derivePhase('app', { doc, copy: undefined, checkpoint: undefined, verify: undefined, nowMs: now })).toBe('cutover');
  });
});

describe('phase documents', () => {
  it('records history from the derived phase; owner is consul only for cutover and finalized', () => {
    const doc = withTransition(undefined, 'app', 'verified', 'cutover', { at: iso(0), by: 'me@host', evidence: { checkpoint: 20 } });
    expect(doc).toMatchObject({ schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'consul' });
    expect(doc.history.map((h) => h.phase)).toEqual(['verified', 'cutover']);
    const back = withTransition(doc, 'app', 'cutover', 'rolledback', { at: iso(0), by: 'you@host' });
    expect(back).toMatchObject({ phase: 'rolledback', owner: 'etcd' });
    expect(back.history.map((h) => h.phase)).toEqual(['verified', 'cutover', 'rolledback']);
    expect(['planned', 'copied', 'mirroring', 'verified', 'rolledback'].map((p) => ownerOf(p as never))).toEqual(['etcd', 'etcd', 'etcd', 'etcd', 'etcd']);
    expect(ownerOf('finalized')).toBe('consul');
  });

  it('ownerAt: events after a change belong to its owner, replays included', () => {
    let owners: OwnersDoc | undefined;
    owners = withOwnershipChange(owners, 'app', 'cutover', 100, iso(0));
    owners = withOwnershipChange(owners, 'app', 'rolledback', 200, iso(0));
    expect(ownerAt(owners, 'app', 100).owner).toBe('etcd');
    expect(ownerAt(owners, 'app', 101)).toEqual({ owner: 'consul', phase: 'cutover' });
    expect(ownerAt(owners, 'app', 200).owner).toBe('consul');
    expect(ownerAt(owners, 'app', 201)).toEqual({ owner: 'etcd', phase: 'rolledback' });
    expect(ownerAt(owners, 'other', 500).owner).toBe('etcd');
    expect(ownerAt(undefined, 'app', 500).owner).toBe('etcd');
  });
});

describe('preconditions and next steps', () => {
  it('checkVerify passes a clean verify that left keys out by the mapping, and says applications will not find them in Consul', () => {
    const clean = verify('parity');
    expect(checkVerify(clean, 'app', now, 900_000).detail).not.toContain('not in Consul');
    clean.rules.app!.unmappable = { 'value-too-large': 18, 'key-charset': 2 };
    expect(checkVerify(clean, 'app', now, 900_000)).toEqual({ name: 'verify', ok: true, detail: 'clean verify 60s ago at etcd revision 20 (parity); 20 etcd key(s) of the rule are not in Consul, by the mapping (value-too-large 18, key-charset 2): applications reading Consul will not find them (`migrate audit` lists them)' });
  });

  it('checkVerify wants a clean verify of the rule no older than the bound', () => {
    expect(checkVerify(undefined, 'app', now, 900_000)).toMatchObject({ ok: false });
    expect(checkVerify(verify('drift'), 'app', now, 900_000)).toMatchObject({ ok: false });
    expect(checkVerify(verify('parity', 3_600_000), 'app', now, 900_000)).toMatchObject({ ok: false });
    expect(checkVerify(verify('parity', 3_600_000), 'app', now, 900_000).detail).toContain('--verify-now');
    expect(checkVerify(verify('parity'), 'app', now, 900_000)).toMatchObject({ ok: true });
  });

  it('says what to run next', () => {
    const facts = { running: true, verifyClean: true, verifyAgeMs: 1000, maxVerifyAgeMs: 900_000, trips: 0 };
    expect(nextStep('app', 'planned', facts)).toBe('migrate copy');
    expect(nextStep('app', 'planned', { ...facts, copyInterrupted: true })).toBe('migrate copy --resume (a copy started and has not finished)');
    // Not stopped but running (it holds the copy lock): --resume would be refused (copy_locked).
    expect(nextStep('app', 'planned', { ...facts, copyInterrupted: true, copyRunning: 'host-a:4242' })).toBe('wait for the copy running on host-a:4242 to finish, then migrate dualrun (keep it running)');
    // The dual-run's own copy (a re-baseline): running while it holds the leader lock; stopped part way, the next start makes it again.
    expect(nextStep('app', 'planned', { ...facts, copyInterrupted: true, rebaselining: 'host-b:7', dualRunCheckpoint: true })).toBe('wait for the dual-run host-b:7 to finish copying the rules again (re-baselining; its log says when), then migrate verify');
    expect(nextStep('app', 'planned', { ...facts, copyInterrupted: true, dualRunCheckpoint: true })).toBe('start migrate dualrun (a re-baseline stopped part way: it copies the rules again, then replicates)');
    expect(nextStep('app', 'verified', facts)).toBe('migrate cutover --rule app');
    expect(nextStep('app', 'verified', { ...facts, verifyAgeMs: 1e9 })).toContain('--verify-now');
    expect(nextStep('app', 'cutover', facts)).toContain('migrate finalize --rule app');
    expect(nextStep('app', 'cutover', { ...facts, trips: 2 })).toContain('--acknowledge-trips');
    // Late writes after a finalize are acknowledged the same way (status said done for good).
    expect(nextStep('app', 'finalized', { ...facts, trips: 1 })).toBe('investigate 1 late write(s) to etcd in the dual-run log (an application still writing etcd), then migrate cutover --rule app --acknowledge-trips (the rule stays finalized)');
    expect(nextStep('app', 'cutover', { ...facts, trips: 2 })).not.toContain('--allow-mass-delete');
    // A guard trip: acknowledging alone would leave the held-back deletes out of etcd.
    expect(nextStep('app', 'cutover', { ...facts, trips: 1, guardTrips: 1 })).toMatch(/restart the dual-run with --allow-mass-delete first \(its first pass mirrors them to etcd\), then migrate cutover --rule app --acknowledge-trips/);
    expect(nextStep('app', 'finalized', facts)).toBe('done');
  });
});

describe('write pause', () => {
  const pause = { since: '2025-01-01T00:00:00.000Z', by: 'me@host', for: 'cutover' as const };

  it('a first document keeps the derived phase, its history and etcd as owner, with writes paused', () => {
    const doc = withWritesPaused(undefined, 'app', 'verified', pause);
    expect(doc).toMatchObject({ schemaVersion: 1, rule: 'app', phase: 'verified', owner: 'etcd', writesPaused: pause });
    expect(doc.history.map((h) => h.phase)).toEqual(['verified']);
  });

  it('resuming removes only the pause; the flip writes a document without it', () => {
    const paused = withWritesPaused(withTransition(undefined, 'app', 'verified', 'cutover', { at: pause.since, by: 'me@host' }), 'app', 'cutover', { ...pause, for: 'rollback' });
    const resumed = withWritesPaused(paused, 'app', 'cutover', undefined);
    expect(resumed).not.toHaveProperty('writesPaused');
    const { writesPaused: _removed, ...unpaused } = paused;
    expect(resumed).toEqual(unpaused);
    const flipped = withTransition(paused, 'app', 'cutover', 'rolledback', { at: pause.since, by: 'me@host' });
    expect(flipped).not.toHaveProperty('writesPaused');
    expect(flipped.owner).toBe('etcd');
  });
});

describe('cutOverMappingChanges: what --accept-mapping-change may not change of what Consul owns', () => {
  const doc = (rule: string, phase: 'cutover' | 'finalized' | 'copied', routing?: { from: string; to: string; keys?: string; leases?: string }): RulePhaseDoc => ({
    schemaVersion: 1, rule, phase, owner: phase === 'copied' ? 'etcd' : 'consul', updated: '2026-01-01T00:00:00Z',
    history: [{ phase: 'cutover', at: '2026-01-01T00:00:00Z', by: 'me@host', ...(routing ? { evidence: { mapping: routing } } : {}) }],
  });
  const rule = (name: string, from: string, to: string, keys = 'reject', leases = 'session', action = 'copy') => ({ name, action, from, to, keys, leases });
  const billing = { from: '/billing/', to: 'billing/', keys: 'reject', leases: 'session' };

  it('a cut-over rule unchanged, or a rule etcd owns changed: nothing', () => {
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [rule('billing', '/billing/', 'billing/')])).toEqual([]);
    expect(cutOverMappingChanges([doc('search', 'copied', { from: '/search/', to: 'search/' })], [rule('search', '/search/', 'search2/')])).toEqual([]);
  });

  it('a cut-over rule moved, dropped, or with other keys: or leases: policies', () => {
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [rule('billing', '/billing/', 'billing/', 'escape', 'skip')])).toEqual([
      'rule billing (cut over as /billing/ → billing/, keys: reject, now escape, leases: session, now skip)',
    ]);
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [])).toEqual(['rule billing (cut over as /billing/ → billing/, no longer copied here)']);
  });

  it('a finalized rule may be dropped, not changed; no other rule (a renamed one) may cover its data', () => {
    expect(cutOverMappingChanges([doc('legacy', 'finalized', { from: '/legacy/', to: 'legacy/' })], [])).toEqual([]);
    expect(cutOverMappingChanges([doc('legacy', 'finalized', { from: '/legacy/', to: 'legacy/' })], [rule('legacy-v2', '/legacy/', 'legacy/'), rule('other', '/other/', 'other/')])).toEqual([
      'rule legacy-v2 (its to: legacy/ overlaps legacy/, where Consul owns the data of rule legacy, finalized)',
    ]);
    // Under it, or over it.
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [rule('billing', '/billing/', 'billing/'), rule('sub', '/billing2/', 'billing/sub/'), rule('all', '/x/', '')])).toHaveLength(2);
  });

  it('a rule of any kind nested in a cut-over rule\'s from: it would take those keys from the reverse mirror; a finalized rule\'s from is free', () => {
    const nested = [rule('billing', '/billing/', 'billing/'), rule('kept', '/billing/0000', '', 'reject', 'session', 'keep'), rule('moved', '/billing/01', 'elsewhere/')];
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], nested)).toEqual([
      'rule kept (its from: /billing/0000 lies in /billing/, which rule billing is cut over with: it would take those keys from its reverse mirror)',
      'rule moved (its from: /billing/01 lies in /billing/, which rule billing is cut over with: it would take those keys from its reverse mirror)',
    ]);
    expect(cutOverMappingChanges([doc('billing', 'finalized', billing)], nested)).toEqual([]);
    // Nested already in the recorded mapping (as when the rule was cut over): not a change.
    const recorded = [{ name: 'billing', from: '/billing/' }, { name: 'kept', from: '/billing/0000' }, { name: 'moved', from: '/billing/01' }];
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], nested, recorded)).toEqual([]);
    // Removed: its keys would fall to the reverse mirror, which finds them missing in Consul and deletes them from etcd.
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], nested.filter((r) => r.name !== 'kept'), recorded)).toEqual([
      'rule kept (its from: /billing/0000 lay in /billing/, which rule billing is cut over with, and is gone: those keys would fall to its reverse mirror, which finds them missing in Consul and deletes them from etcd)',
    ]);
    // The recorded rules not known (meta of an earlier release): neither can be ruled out, for a rule cut over, not a finalized one.
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [rule('billing', '/billing/', 'billing/')], null)).toEqual([
      'rule billing (cut over with /billing/: the migration\'s state, recorded by an earlier release of migrate, does not list its rules, so whether this change adds or removes a rule nested in /billing/ cannot be checked; put migration.yaml back as the migration recorded it and run `migrate dualrun` once: it records the rules; then change it again)',
    ]);
    expect(cutOverMappingChanges([doc('billing', 'finalized', billing)], [rule('billing', '/billing/', 'billing/')], null)).toEqual([]);
    // Added in a nested rule of its own (not cut over): those keys were never the cut-over rule's.
    const deeper = [...nested, rule('deep', '/billing/01/x', 'deep/')];
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], deeper, recorded)).toEqual([]);
    // A history without the routing (a document rebuilt from the owners document after it was deleted by hand): the
    // recorded rule stands for it, so a move, a rename over its data and a nested rule are refused all the same.
    const rebuilt = (phase: 'cutover' | 'finalized') => doc('billing', phase);
    const recordedTo = [{ name: 'billing', action: 'copy', from: '/billing/', to: 'billing/' }];
    expect(cutOverMappingChanges([rebuilt('cutover')], [rule('billing', '/billing/', 'billing2/')], recordedTo)).toEqual(['rule billing (cut over as /billing/ → billing/, now /billing/ → billing2/)']);
    expect(cutOverMappingChanges([rebuilt('finalized')], [rule('billing-v2', '/billing/', 'billing/')], recordedTo)).toEqual(['rule billing-v2 (its to: billing/ overlaps billing/, where Consul owns the data of rule billing, finalized)']);
    expect(cutOverMappingChanges([rebuilt('cutover')], [rule('billing', '/billing/', 'billing/'), rule('kept', '/billing/0000', '', 'reject', 'session', 'keep')], recordedTo)).toEqual([
      'rule kept (its from: /billing/0000 lies in /billing/, which rule billing is cut over with: it would take those keys from its reverse mirror)',
    ]);
    expect(cutOverMappingChanges([rebuilt('cutover')], [rule('billing', '/billing/', 'billing/')], recordedTo)).toEqual([]);
    // Made a keep rule: no longer copied here.
    expect(cutOverMappingChanges([doc('billing', 'cutover', billing)], [rule('billing', '/billing/', '', 'reject', 'session', 'keep')])).toEqual(['rule billing (cut over as /billing/ → billing/, no longer copied here)']);
  });
});
