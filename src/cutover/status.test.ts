import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { ServerError } from '../errors.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { runStatus } from './status.js';
import { renderStatus } from './render.js';
import { mappingHash, recordedRules } from '../state/state.js';

describe('status', () => {
  it('counts each rule\'s own etcd keys: those of a nested rule are the nested rule\'s', async () => {
    const { config, mapping } = parseConfig(`version: 1
id: demo
rules:
  - { name: root, from: /, action: keep }
  - { name: services, from: /services/, to: services/ }
  - { name: web, from: /services/web/, to: web/ }
`, 'migration.yaml');
    const source = new MemorySource();
    source.put('/other', 'o');
    for (let i = 0; i < 3; i++) source.put(`/services/api-${i}`, 'a');
    for (let i = 0; i < 5; i++) source.put(`/services/web/w${i}`, 'w');
    const result = await runStatus({ source, target: new MemoryTarget(), config, mapping }, { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 });
    expect(result.rules.map((r) => [r.name, r.keys.etcd])).toEqual([['root', 1], ['services', 3], ['web', 5]]);
  });

  it('shows a keep rule whose range the etcd role may not read (the role migrate acl prints grants none) as not readable, rather than fail', async () => {
    const { config, mapping } = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: other, from: /other/, action: keep }\n', 'migration.yaml');
    const source = new MemorySource();
    source.put('/app/a', 'a');
    source.put('/other/o', 'o');
    const count = source.count.bind(source);
    source.count = async (range, revision) => {
      if (!range.start.toString().startsWith('/app/')) throw new ServerError('etcd_permission_denied', 'etcd denied count: the user\'s role lacks the permission.');
      return count(range, revision);
    };
    const result = await runStatus({ source, target: new MemoryTarget(), config, mapping }, { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 });
    expect(result.rules.map((r) => [r.name, r.keys.etcd])).toEqual([['app', 1], ['other', null]]);
    expect(renderStatus(result, 'text')).toMatch(/other\s+keep\s+etcd\s+not readable/);
  });

  it('a service rule whose last verify found drift says so as its next step, while the dual-run runs (it said none)', async () => {
    const { config, mapping } = parseConfig('version: 1\nid: demo\nrules:\n  - { name: web, from: /services/, action: service }\n', 'migration.yaml');
    const source = new MemorySource();
    source.put('/services/web/i1', '10.0.0.1:80');
    const target = new MemoryTarget();
    const now = new Date('2026-01-01T00:00:10Z');
    const put = (key: string, doc: unknown) => target.entries.set(key, { key, value: Buffer.from(JSON.stringify(doc)), flags: 0, modifyIndex: 1 });
    put('_migrate/demo/checkpoint', { schemaVersion: 1, revision: 1, updated: '2026-01-01T00:00:08Z', by: 'dualrun' });
    const verify = (status: string, differences: number) => put('_migrate/demo/verify/last', { schemaVersion: 1, at: '2026-01-01T00:00:05Z', revision: 1, cut: 'dualrun', checkpoint: 1, clean: differences === 0, rounds: 3, toolVersion: 't', rules: { web: { status, differences, compared: 1, settled: 0, budget: null, byKind: { instance: differences } } } });
    verify('drift', 1);
    const options = { now: () => now, maxVerifyAgeMs: 3_600_000 };
    expect((await runStatus({ source, target, config, mapping }, options)).rules[0]!.next).toBe('the last verify found 1 difference(s) in the catalog: `migrate verify` lists them; a difference that stays is mended by `migrate copy` (or a restart of the dual-run)');
    verify('parity', 0);
    expect((await runStatus({ source, target, config, mapping }, options)).rules[0]!.next).toMatch(/^none: the dual-run keeps the catalog in step/);
  });

  it('does not take etcd to have gone back when its revision was read just before a running dual-run moved the checkpoint past it; does when it stays behind', async () => {
    const { config, mapping } = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');
    const source = new MemorySource();
    for (let i = 0; i < 10; i++) source.put(`/app/k${i}`, 'v');
    const head = (await source.status()).revision;
    const target = new MemoryTarget();
    target.entries.set('_migrate/demo/checkpoint', { key: '_migrate/demo/checkpoint', value: Buffer.from(JSON.stringify({ schemaVersion: 1, revision: head, updated: '2026-01-01T00:00:08Z', by: 'dualrun' })), flags: 0, modifyIndex: 1 });
    const status = source.status.bind(source);
    // The first read of etcd answers the revision before (read as the dual-run wrote its checkpoint at the head).
    let reads = 0;
    source.status = async () => ({ ...(await status()), ...(reads++ === 0 ? { revision: head - 1 } : {}) });
    const options = { now: () => new Date('2026-01-01T00:00:10Z'), maxVerifyAgeMs: 3_600_000 };
    const raced = await runStatus({ source, target, config, mapping }, options);
    expect(raced.dualRun).toMatchObject({ etcdWentBack: null, lagRevisions: 0, checkpoint: head });
    expect(raced.etcdRevision).toBe(head);
    expect(renderStatus(raced, 'text')).not.toContain('WENT BACK');
    // Still behind when read again: restored from a backup.
    source.status = async () => ({ ...(await status()), revision: head - 1 });
    const behind = await runStatus({ source, target, config, mapping }, options);
    expect(behind.dualRun.etcdWentBack).toEqual({ etcdRevision: head - 1, found: null });
    expect(renderStatus(behind, 'text')).toContain(`ETCD WENT BACK IN TIME: etcd's revision ${head - 1} is below the checkpoint ${head}`);
    // The rule's next step says the same (it said to start the dual-run, which refuses).
    expect(behind.rules[0]!.next).toBe('decide which store holds the data to keep (etcd went back in time): migrate copy --delete-extraneous makes Consul match etcd, then start migrate dualrun');
    expect(raced.rules[0]!.next).not.toContain('went back');
  });

  it('says when migration.yaml is not the mapping the migration recorded (another file, an edited one): the dual-run and copy refuse it', async () => {
    const recorded = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/, to: app/ }\n', 'migration.yaml');
    const edited = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/k1, to: app/k1 }\n', 'narrow.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    target.entries.set('_migrate/demo/meta', { key: '_migrate/demo/meta', value: Buffer.from(JSON.stringify({ schemaVersion: 1, id: 'demo', etcdClusterId: source.clusterId, datacenters: ['dc1'], mappingHash: mappingHash(recorded.config), created: '2026-01-01T00:00:00Z', toolVersion: 'test' })), flags: 0, modifyIndex: 1 });
    const options = { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 };
    const same = await runStatus({ source, target, ...recorded }, options);
    expect(same.mappingChanged).toBe(false);
    expect(renderStatus(same, 'text')).not.toContain('MAPPING CHANGED');
    const other = await runStatus({ source, target, ...edited }, options);
    expect(other.mappingChanged).toBe(true);
    expect(renderStatus(other, 'text')).toContain('MAPPING CHANGED: migration.yaml is not the mapping this migration recorded');
    // Named as the operator gave it (`-c conf/narrow.yaml`), not as the default file.
    expect(renderStatus(other, 'text', 'conf/narrow.yaml')).toContain('MAPPING CHANGED: conf/narrow.yaml is not the mapping this migration recorded');
    expect(other.cutOverNotInFile).toEqual([]);
    // Never copied under the changed mapping: copy refuses it without the flag, so the step names it.
    expect(other.rules[0]!.next).toBe('review the change with migrate plan, then migrate copy --accept-mapping-change (or start migrate dualrun --accept-mapping-change: it copies the rule)');
    expect(same.rules[0]!.next).toBe('migrate copy');
  });

  it('names a cut-over rule that migration.yaml no longer names (renamed or removed): it showed only the mapping change', async () => {
    const renamed = parseConfig('version: 1\nid: demo\nrules:\n  - { name: shop, from: /shop/, to: shop/ }\n', 'migration.yaml');
    const target = new MemoryTarget();
    const doc = (rule: string, phase: string, owner: string) => target.entries.set(`_migrate/demo/rules/${rule}`, { key: `_migrate/demo/rules/${rule}`, value: Buffer.from(JSON.stringify({ schemaVersion: 1, rule, phase, owner, updated: '2026-01-01T00:00:00Z', history: [{ phase, at: '2026-01-01T00:00:00Z', by: 'me@host' }] })), flags: 0, modifyIndex: 1 });
    doc('shop-app', 'cutover', 'consul');
    // A finalized rule may leave the file; a rolled-back one is etcd's.
    doc('old', 'finalized', 'consul');
    doc('back', 'rolledback', 'etcd');
    const result = await runStatus({ source: new MemorySource(), target, ...renamed }, { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 });
    expect(result.cutOverNotInFile).toEqual(['shop-app']);
    expect(renderStatus(result, 'text')).toContain('CUT OVER, NOT IN migration.yaml: rule shop-app. Applications write its data to Consul');
    expect(JSON.parse(renderStatus(result, 'json'))).toMatchObject({ cutOverNotInFile: ['shop-app'] });
  });

  it('with no state for the migration, names another migration under the state prefix that copies the same etcd prefixes (an id edited since the copy)', async () => {
    const edited = parseConfig('version: 1\nid: renamed\nrules:\n  - { name: shop, from: /shop/, to: shop/ }\n', 'migration.yaml');
    const original = parseConfig('version: 1\nid: shop-migration\nrules:\n  - { name: shop, from: /shop/, to: shop/ }\n', 'migration.yaml');
    const unrelated = parseConfig('version: 1\nid: billing\nrules:\n  - { name: billing, from: /billing/, to: billing/ }\n', 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    for (const { config } of [original, unrelated]) {
      const meta = { schemaVersion: 1, id: config.id, etcdClusterId: source.clusterId, datacenters: ['dc1'], mappingHash: mappingHash(config), rules: recordedRules(config), created: '2026-01-01T00:00:00Z', toolVersion: 'test' };
      target.entries.set(`_migrate/${config.id}/meta`, { key: `_migrate/${config.id}/meta`, value: Buffer.from(JSON.stringify(meta)), flags: 0, modifyIndex: 1 });
    }
    const options = { now: () => new Date('2026-01-01T00:00:00Z'), maxVerifyAgeMs: 3_600_000 };
    const result = await runStatus({ source, target, ...edited }, options);
    expect(result).toMatchObject({ started: false, sameDataIn: ['shop-migration'] });
    expect(result.rules[0]!.next).toBe('put migration.yaml\'s id back to "shop-migration", whose state this is (copy refuses the prefixes another migration copies)');
    expect(renderStatus(result, 'text')).toContain('NO STATE for migration renamed, but migration "shop-migration" under the same state prefix copies the same etcd prefixes: if migration.yaml\'s id was changed since the copy, put it back.');
    // The migration's own state: nothing to name.
    expect((await runStatus({ source, target, ...original }, options)).sameDataIn).toEqual([]);
  });
});
