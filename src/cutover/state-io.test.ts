import { describe, expect, it } from 'vitest';
import { statePaths } from '../state/state.js';
import { MemoryTarget } from '../stores/memory.js';
import { withOwnershipChange, withTransition, type OwnersDoc, type RulePhaseDoc } from './phase.js';
import { readOwnership, readRuleDocs } from './state-io.js';

const paths = statePaths('_migrate/', 'demo');

/** Rule `app` cut over at etcd revision 40 and `web` cut over then rolled back, as the commands write them; `owners` as given. */
function world(owners: OwnersDoc | undefined) {
  const target = new MemoryTarget();
  const put = (key: string, doc: unknown) => target.entries.set(key, { key, value: Buffer.from(JSON.stringify(doc)), flags: 0, modifyIndex: 9 });
  const by = 'ops@host';
  const app: RulePhaseDoc = withTransition(undefined, 'app', 'verified', 'cutover', { at: '2026-12-01T10:00:00Z', by, evidence: { etcdRevision: 40 } });
  let web: RulePhaseDoc = withTransition(undefined, 'web', 'verified', 'cutover', { at: '2026-12-01T11:00:00Z', by, evidence: { etcdRevision: 50 } });
  // Trips acknowledged where the rule stood: an entry of the same phase, no move.
  web = { ...web, history: [...web.history, { phase: 'cutover', at: '2026-12-01T11:30:00Z', by, evidence: { acknowledgedTrips: 1 } }] };
  web = withTransition(web, 'web', 'cutover', 'rolledback', { at: '2026-12-01T12:00:00Z', by, evidence: { etcdRevision: 60 } });
  put(paths.rule('app'), app);
  put(paths.rule('web'), web);
  if (owners) put('_migrate/demo/owners', owners);
  return target;
}

/** The owners document the same transitions wrote. */
function written(): OwnersDoc {
  let owners = withOwnershipChange(undefined, 'app', 'cutover', 40, '2026-12-01T10:00:00Z');
  owners = withOwnershipChange(owners, 'web', 'cutover', 50, '2026-12-01T11:00:00Z');
  return withOwnershipChange(owners, 'web', 'rolledback', 60, '2026-12-01T12:00:00Z');
}

describe('the owners document and the rule documents, read together', () => {
  it('are taken as they are when they agree', async () => {
    const read = await readOwnership(world(written()), paths);
    expect(read).toMatchObject({ rebuilt: false, owners: { doc: written(), index: 9 } });
    expect([...read.docs.keys()]).toEqual(['app', 'web']);
  });

  it('an owners document deleted by hand is rebuilt from the rule documents\' moves (index 0: the next write creates it)', async () => {
    const read = await readOwnership(world(undefined), paths);
    expect(read.rebuilt).toBe(true);
    expect(read.owners.index).toBe(0);
    expect(read.owners.doc?.rules).toEqual(written().rules);
  });

  it('a rule document deleted by hand is rebuilt from the owners document when Consul owns the rule (index 0: the next write creates it); not when etcd does', async () => {
    const target = world(written());
    target.entries.delete(paths.rule('app'));
    target.entries.delete(paths.rule('web'));
    const read = await readOwnership(target, paths);
    expect(read.rebuiltRules).toEqual(['app']);
    expect(read.docs.get('app')).toEqual({
      index: 0,
      doc: { schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'consul', updated: '2026-12-01T10:00:00Z', history: [{ phase: 'cutover', at: '2026-12-01T10:00:00Z', by: 'migrate', evidence: { etcdRevision: 40, note: 'rebuilt from the owners document: the rule document was missing' } }] },
    });
    // Rolled back: etcd owns it, as it does with no document.
    expect(read.docs.has('web')).toBe(false);
    // The commands that read the rule documents alone take it too (copy leaves a rule Consul owns alone).
    expect((await readRuleDocs(target, paths)).get('app')?.doc.owner).toBe('consul');
  });

  it('one that says etcd owns a rule its rule document gives to Consul is refused (exit 4): the dual-run would replicate etcd over the applications\' writes', async () => {
    const edited = written();
    delete edited.rules.app;
    await expect(readOwnership(world(edited), paths)).rejects.toMatchObject({
      code: 'state_inconsistent', exitCode: 4,
      message: expect.stringContaining('rule app: _migrate/demo/rules/app says cutover (owner consul), _migrate/demo/owners says nothing (owner etcd)'),
      hint: expect.stringContaining('delete _migrate/demo/owners: it is rebuilt from them'),
    });
  });
});

describe('two transitions of different rules at the same moment', () => {
  it('the second is refused naming the owners document, which both rewrite, not its own rule, whose phase did not change', async () => {
    const { readCutoverState, writeTransitions } = await import('./state-io.js');
    const target = world(written());
    // Two operators read the state at once: one cuts over rule api, the other rule jobs.
    const [first, second] = [await readCutoverState(target, paths), await readCutoverState(target, paths)];
    const move = (rule: string) => ({ rule, from: 'verified' as const, to: 'cutover' as const, entry: { at: '2026-12-02T10:00:00Z', by: 'ops', evidence: { etcdRevision: 70 } }, etcdRevision: 70 });
    await writeTransitions(target, paths, first, [move('api')]);
    await expect(writeTransitions(target, paths, second, [move('jobs')])).rejects.toMatchObject({
      code: 'phase_contended',
      message: 'The owners document (which store owns each rule) changed while this command checked it: another cutover, rollback or finalize, of this rule or another, ran at the same moment; nothing was written.',
    });
    // Its own rule changing is said as such.
    const third = await readCutoverState(target, paths);
    await writeTransitions(target, paths, await readCutoverState(target, paths), [{ ...move('jobs'), from: 'verified', to: 'cutover' }]);
    await expect(writeTransitions(target, paths, third, [move('jobs')])).rejects.toMatchObject({ code: 'phase_contended', message: expect.stringMatching(/^The phase of rule jobs changed while this command checked it/) });
  });
});
