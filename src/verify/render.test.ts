import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { createValueHasher } from '../report/hash.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { renderVerify } from './render.js';
import { runVerify } from './verify.js';

const loaded = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: cfg, from: /cfg/, to: cfg/ }\n', 'migration.yaml');

describe('the verify verdict line', () => {
  it('counts the drifting rules\' differences, and the ones --allow tolerates apart: together, every difference the report lists', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    for (const key of ['a', 'b', 'c']) source.put(`/app/${key}`, 'etcd');
    source.put('/cfg/x', 'etcd');
    // app: two values differ; cfg: one, tolerated by --allow cfg=1.
    for (const [key, value] of [['app/a', 'etcd'], ['app/b', 'other'], ['app/c', 'other'], ['cfg/x', 'other']] as const) target.entries.set(key, { key, value: Buffer.from(value), flags: 0, modifyIndex: 5 });
    const result = await runVerify({ source, target, config: loaded.config, mapping: loaded.mapping }, {
      rounds: 1, roundPauseMs: 0, waitTimeoutMs: 1000, maxDiffs: 100, budgets: { cfg: 1 }, record: false, readBack: 0, pageKeys: 10,
      signal: new AbortController().signal, hasher: createValueHasher(Buffer.alloc(32, 1)), toolVersion: 'test', now: () => new Date('2025-03-01T12:00:00Z'),
    });
    expect(result.differences).toHaveLength(3);
    for (const format of ['text', 'markdown'] as const) {
      expect(renderVerify(result, format)).toContain('DRIFT: 2 persistent differences in 1 rule (app); 1 more difference within the --allow budgets of cfg (exit 1).');
    }
    // Drift in a rule etcd owns: what mends it, since the dual-run does not and copy refuses while it runs.
    expect(renderVerify(result, 'text')).toMatch(/^Next: these keys stay as they are in Consul until they next change in etcd .*with the dual-run stopped, run `migrate copy`.*start the dual-run again/m);
    expect(renderVerify(result, 'text')).not.toContain('foreign-session');
    expect(renderVerify(result, 'text')).not.toContain('session-gone');
    // A lost session among other drift: the dual-run mends those keys itself, so the copy is not for them.
    const lost = { ...result, differences: result.differences.map((d, i) => (i === 0 ? { ...d, reason: 'session-gone' } : d)) };
    expect(renderVerify(lost, 'text')).toMatch(/^Next: these keys stay as they are .* Keys whose session is gone \(session-gone\) need no copy: a running dual-run makes the session again and writes them at its next check of the lease \(within about a minute\)\.$/m);
    // A key an application locks with its own session: copy leaves it, so the next step says who acts first.
    const held = { ...result, differences: result.differences.map((d, i) => (i === 0 ? { ...d, reason: 'foreign-session' } : d)) };
    expect(renderVerify(held, 'text')).toMatch(/^Next: .* Keys held by a session this migration does not own \(foreign-session\) are left alone by copy: their holder releases them first\.$/m);
    // The dual-run stopped: etcd's changes since its checkpoint are its to apply, and starting it comes first.
    const stopped = { ...result, cut: { ...result.cut, cut: 'immediate' as const, reason: 'dualrun-stopped' as const } };
    expect(renderVerify(stopped, 'text')).toMatch(/^Next: no dual-run replicated during this verify, so etcd's changes since its checkpoint count as drift: start `migrate dualrun` \(it resumes from its checkpoint and applies them\), then verify again\. For what still differs then: with the dual-run stopped, run `migrate copy`/m);
    // One round against a running dual-run: its writes in flight are among the differences.
    const oneRound = { ...result, cut: { ...result.cut, cut: 'checkpoint' as const, reason: 'dualrun-running' as const } };
    expect(renderVerify(oneRound, 'text')).toMatch(/^Next: verify ran one round \(--rounds 1\) while a dual-run replicated: a key it was still writing counts as a difference too\. Verify again with more rounds/m);
    // Keys Consul holds but does not serve: no copy mends a name.
    const unserved = { ...result, differences: result.differences.map((d) => ({ ...d, kind: 'not-servable' as const, reason: 'read-back-failed' })) };
    expect(renderVerify(unserved, 'text')).toMatch(/^Next: Consul holds these keys but GET \/v1\/kv\/<key> does not serve them, and no copy mends a key's name: where the agent answers "invalid key name" \(Consul 1\.21\.5\), upgrade the agents/m);
    expect(renderVerify(unserved, 'text')).not.toContain('run `migrate copy`');
    // Unmappable keys, counted apart, with what held them back.
    const withUnmappable = (unmappable: Record<string, number>) => renderVerify({ ...result, rules: result.rules.map((r) => (r.name === 'app' ? { ...r, unmappable } : r)) }, 'text');
    expect(withUnmappable({ 'key-charset': 2 })).toContain('  app: 2 key-charset source key(s) the rule rejects (keys the Consul agent refuses: Consul 1.21.5\'s key rule); not copied by design, not drift');
    expect(withUnmappable({ 'empty-segment': 1, 'value-too-large': 1 })).toContain('source key(s) the rule rejects (keys: reject, or values over Consul\'s limit); not copied');
    expect(withUnmappable({ 'value-too-large': 1 })).toContain('1 value-too-large source key(s) with values over Consul\'s limit (kv_max_value_size)');
  });
});
