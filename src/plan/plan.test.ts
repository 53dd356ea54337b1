import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { runPlan } from './plan.js';
import { renderPlan } from './render.js';
import { mappingHash, recordedRules } from '../state/state.js';
import { durationText } from './runbook.js';

function source(): MemorySource {
  const s = new MemorySource();
  s.put('/app/a', 'secret-value-1');
  s.put('/app/b', 'x');
  s.put('/app//double', 'x');
  s.put('/app/big', Buffer.alloc(600_000));
  const lease = s.grantLease(30);
  s.put('/svc/i1', '10.0.0.1:80', lease);
  s.put('/svc/i2', '10.0.0.2:80', lease);
  const other = s.grantLease(30);
  s.put('/svc/i3', '10.0.0.3:80', other);
  s.put('/registry/pods/x', 'k8s');
  s.put('/elsewhere/z', 'z');
  return s;
}

const yaml = (unmapped: string) => `version: 1
id: p
defaults: { unmapped: ${unmapped} }
rules:
  - { name: app, from: /app/, to: app/ }
  - { name: svc, from: /svc/, to: svc/ }
  - { name: k8s, from: /registry/, action: keep }
`;

describe('runPlan', () => {
  it('resolves each rule against the keyspace: keys and bytes to copy, sessions, kept, unmapped and unmappable keys', async () => {
    const loaded = parseConfig(yaml('error'), 'migration.yaml');
    const plan = await runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    const rule = (name: string) => plan.rules.find((r) => r.rule === name)!;
    expect(rule('app')).toMatchObject({ keys: 4, copyKeys: 2, unmappableKeys: 2 });
    expect(rule('svc')).toMatchObject({ copyKeys: 3, sessions: 2 });
    expect(rule('k8s')).toMatchObject({ keptKeys: 1, copyKeys: 0 });
    expect(plan.totals).toMatchObject({ copyKeys: 5, sessions: 2, keptKeys: 1, unmappedKeys: 1, unmappableKeys: 2 });
    expect(plan.unmappable.byReason).toEqual({ 'empty-segment': 1, 'value-too-large': 1 });
    expect(plan.unmappable.keys.map((k) => [k.key, k.reason])).toEqual([['/app//double', 'empty-segment'], ['/app/big', 'value-too-large']]);
    expect(plan.blockers.map((b) => b.code)).toEqual(['unmappable_keys', 'unmapped_keys']);
    for (const format of ['text', 'json', 'markdown'] as const) expect(renderPlan(plan, format)).not.toContain('secret-value-1');
    expect(JSON.parse(renderPlan(plan, 'json'))).toMatchObject({ version: 1, command: 'plan', status: 'findings' });
  });

  it('warns of a rule that matches no etcd key (a from: with a typo), and of no other', async () => {
    const loaded = parseConfig(`${yaml('skip')}  - { name: typo, from: /ap/, to: ap/ }\n`, 'migration.yaml');
    const warnings: string[] = [];
    await runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual(['rule typo (from: /ap/) matches no etcd key: check its from: (a rule with a typo copies nothing, and verify passes it with nothing compared)']);
  });

  it('says what a mapping change leaves in Consul that nothing replicates any more: a removed rule, one made keep, one moved', async () => {
    const recorded = parseConfig(`${yaml('skip')}  - { name: old, from: /old/, to: old/ }\n  - { name: moved, from: /moved/, to: moved/ }\n  - { name: kept, from: /kept/, to: kept/ }\n`, 'migration.yaml');
    const now = parseConfig(`${yaml('skip')}  - { name: moved, from: /moved/, to: moved2/ }\n  - { name: kept, from: /kept/, action: keep }\n`, 'migration.yaml');
    const target = new MemoryTarget();
    const meta = { schemaVersion: 1, id: 'p', etcdClusterId: '1', datacenters: ['dc1'], mappingHash: mappingHash(recorded.config), rules: recordedRules(recorded.config), created: '2026-01-01T00:00:00Z', toolVersion: 'test' };
    target.entries.set('_migrate/p/meta', { key: '_migrate/p/meta', value: Buffer.from(JSON.stringify(meta)), flags: 0, modifyIndex: 1 });
    for (const key of ['old/a', 'old/b', 'moved/x']) target.entries.set(key, { key, value: Buffer.from('v'), flags: 0, modifyIndex: 2 });
    const plan = await runPlan({ source: source(), target, config: now.config, configFile: 'migration.yaml', mapping: now.mapping });
    expect(plan.mappingChange).toEqual({ leftBehind: [
      { rule: 'old', to: 'old/', why: 'the rule was removed', consulKeys: 2 },
      { rule: 'moved', to: 'moved/', why: 'the rule copies to moved2/ now', consulKeys: 1 },
      { rule: 'kept', to: 'kept/', why: 'the rule is now a keep rule', consulKeys: 0 },
    ], refused: [] });
    expect(renderPlan(plan, 'text')).toContain('rule old: 2 keys under old/ stay in Consul, replicated no more (the rule was removed); nothing deletes them');
    // A change that leaves no rule's keys unreplicated may still take keys out of a rule: said, with where to see them.
    const narrowed = parseConfig(`${yaml('skip')}  - { name: old, from: /old/, to: old/ }\n  - { name: moved, from: /moved/, to: moved/ }\n  - { name: kept, from: /kept/, to: kept/ }\n  - { name: nested, from: /old/a, action: keep }\n`, 'migration.yaml');
    const narrowPlan = await runPlan({ source: source(), target, config: narrowed.config, configFile: 'migration.yaml', mapping: narrowed.mapping });
    expect(narrowPlan.mappingChange?.leftBehind).toEqual([]);
    expect(renderPlan(narrowPlan, 'text')).toContain('Nothing is left behind in Consul unreplicated. Keys the change takes out of a rule (a narrower from:, a nested keep rule, leases: skip) are extraneous there: the dual-run\'s re-baseline deletes them, behind the delete guard (`migrate copy --dry-run --accept-mapping-change` lists them while no dual-run runs).');
    // The recorded mapping itself: no change to report.
    const same = await runPlan({ source: source(), target, config: recorded.config, configFile: 'migration.yaml', mapping: recorded.mapping });
    expect(same.mappingChange).toBeUndefined();
    // A rule Consul owns: its data is the applications' own, not left behind; and a change of it is what copy and dualrun refuse.
    const cutOver = { schemaVersion: 1, rule: 'moved', phase: 'cutover', owner: 'consul', updated: '2026-01-01T00:00:00Z', history: [{ phase: 'cutover', at: '2026-01-01T00:00:00Z', by: 'me@host', evidence: { mapping: { from: '/moved/', to: 'moved/' } } }] };
    target.entries.set('_migrate/p/rules/moved', { key: '_migrate/p/rules/moved', value: Buffer.from(JSON.stringify(cutOver)), flags: 0, modifyIndex: 3 });
    const owned = await runPlan({ source: source(), target, config: now.config, configFile: 'migration.yaml', mapping: now.mapping });
    expect(owned.mappingChange!.leftBehind!.map((l) => l.rule)).toEqual(['old', 'kept']);
    expect(owned.mappingChange!.refused).toEqual(['rule moved (cut over as /moved/ → moved/, now /moved/ → moved2/)']);
    expect(owned.blockers.map((b) => b.code)).toContain('mapping_change_refused');
  });

  it('a service rule removed from migration.yaml: its instances still registered on the agent are said to stay, with the command that deregisters them', async () => {
    const recorded = parseConfig(`${yaml('skip')}  - { name: catalog, from: /services/, action: service }\n`, 'migration.yaml');
    const now = parseConfig(yaml('skip'), 'migration.yaml');
    const target = new MemoryTarget();
    const meta = { schemaVersion: 1, id: 'p', etcdClusterId: '1', datacenters: ['dc1'], mappingHash: mappingHash(recorded.config), rules: recordedRules(recorded.config), created: '2026-01-01T00:00:00Z', toolVersion: 'test' };
    target.entries.set('_migrate/p/meta', { key: '_migrate/p/meta', value: Buffer.from(JSON.stringify(meta)), flags: 0, modifyIndex: 1 });
    for (const id of ['web-1', 'web-2']) await target.registerService({ id, name: 'web', address: '10.0.0.1', port: 80, tags: [], meta: { 'etcd-migrate-id': 'p', 'etcd-migrate-rule': 'catalog' } });
    const plan = await runPlan({ source: source(), target, config: now.config, configFile: 'migration.yaml', mapping: now.mapping });
    expect(plan.mappingChange).toMatchObject({ leftBehind: [], servicesLeft: [{ rule: 'catalog', instances: 2 }] });
    const text = renderPlan(plan, 'text');
    expect(text).toContain('rule catalog: 2 instances stay registered on the agent, kept in step with etcd no more (the service rule was removed): `migrate copy --delete-extraneous` deregisters them');
    expect(text).not.toContain('Nothing is left behind');
  });

  it('a rule Consul owns (cut over, finalized) is not counted as to copy: copy leaves it', async () => {
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const target = new MemoryTarget();
    const doc = { schemaVersion: 1, rule: 'svc', phase: 'finalized', owner: 'consul', updated: '2026-01-01T00:00:00Z', history: [] };
    target.entries.set('_migrate/p/rules/svc', { key: '_migrate/p/rules/svc', value: Buffer.from(JSON.stringify(doc)), flags: 0, modifyIndex: 1 });
    const all = await runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    const plan = await runPlan({ source: source(), target, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(plan.ownedByConsul).toEqual([{ rule: 'svc', phase: 'finalized' }]);
    expect(plan.totals.copyKeys).toBe(all.totals.copyKeys - 3);
    expect(plan.totals.sessions).toBe(all.totals.sessions - 2);
    expect(renderPlan(plan, 'text')).toMatch(/svc +\/svc\/ → svc\/ +finalized: Consul owns its data; copy leaves it \(3 keys in etcd\)/);
  });

  it('does not call a finalized rule whose etcd keys were retired a typo', async () => {
    const loaded = parseConfig(`${yaml('skip')}  - { name: done, from: /done/, to: done/ }
`, 'migration.yaml');
    const target = new MemoryTarget();
    const doc = { schemaVersion: 1, rule: 'done', phase: 'finalized', owner: 'consul', updated: '2026-01-01T00:00:00Z', history: [] };
    target.entries.set('_migrate/p/rules/done', { key: '_migrate/p/rules/done', value: Buffer.from(JSON.stringify(doc)), flags: 0, modifyIndex: 1 });
    const warnings: string[] = [];
    await runPlan({ source: source(), target, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual([]);
    // Not finalized: the warning stands.
    target.entries.delete('_migrate/p/rules/done');
    await runPlan({ source: source(), target, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual([expect.stringContaining('rule done (from: /done/) matches no etcd key')]);
  });

  it('warns of a --prefix no key starts with, naming the spelling that has keys', async () => {
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const warnings: string[] = [];
    await runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, prefixes: ['app/'], onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual([expect.stringMatching(/^--prefix app\/: no etcd key at revision \d+ starts with it; 4 key\(s\) start with \/app\/$/)]);
  });

  it('warns of a --prefix without a trailing "/" that takes keys of another folder too, and not of one that takes none', async () => {
    const s = source();
    s.put('/apple/pie', 'p');
    s.put('/app', 'the key named like the folder');
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const warnings: string[] = [];
    await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, prefixes: ['/app', '/svc'], onWarning: (m) => warnings.push(m) });
    expect(warnings).toEqual(['--prefix /app does not end with "/": it also takes 1 key(s) that do not start with /app/ (folders whose names start the same); end it with "/" for that folder alone']);
  });

  it('counts one session per lease, also when its keys fall in two rules (as the copy makes them)', async () => {
    const s = new MemorySource();
    const shared = s.grantLease(30);
    s.put('/jobs/claim', 'c', shared);
    s.put('/svc/i1', '10.0.0.1:80', shared);
    s.put('/svc/i2', '10.0.0.2:80', s.grantLease(30));
    const loaded = parseConfig(`version: 1\nid: p\nrules:\n  - { name: jobs, from: /jobs/, to: jobs/ }\n  - { name: svc, from: /svc/, to: svc/ }\n`, 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(plan.rules.map((r) => [r.rule, r.sessions])).toEqual([['jobs', 1], ['svc', 2]]);
    expect(plan.totals.sessions).toBe(2);
  });

  it('caps the list of unmappable keys but keeps the total exact; unmapped keys are not blockers under skip', async () => {
    const s = new MemorySource();
    for (let i = 0; i < 20; i++) s.put(`/app/./k${i}`, 'x');
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, listCap: 5 });
    expect(plan.unmappable.total).toBe(20);
    expect(plan.unmappable.keys).toHaveLength(5);
    expect(renderPlan(plan, 'text')).toContain('first 5 listed');
  });

  it('shows a key over 256 KiB by its start and length in text and markdown, whole in JSON', async () => {
    const s = new MemorySource();
    const long = `/app/${'L'.repeat(300_000)}`;
    s.put(long, 'x');
    s.put(`/elsewhere/${'U'.repeat(5_000)}`, 'x');
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(plan.unmappable.keys.map((k) => k.reason)).toEqual(['key-too-long']);
    for (const format of ['text', 'markdown'] as const) {
      const out = renderPlan(plan, format);
      expect(out.length).toBeLessThan(20_000);
      expect(out).toContain('… (300,005 characters, whole in --format json)');
    }
    // Unmapped keys are listed in text only.
    expect(renderPlan(plan, 'text')).toContain('… (5,011 characters, whole in --format json)');
    expect(renderPlan(plan, 'json')).toContain(long);
  });

  it('says what to do about unmappable keys for the reasons there are: a value over the limit is not told to set keys: escape', async () => {
    const s = new MemorySource();
    s.put('/app/big', Buffer.alloc(600_000));
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const only = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    const hint = only.blockers.find((b) => b.code === 'unmappable_keys')!.hint;
    expect(hint).toBe('Move or shrink the values over the limit, or keep them on etcd (`action: keep`). Or, if the application can do without them in Consul, go on as they are: `migrate copy` leaves them out and lists them, and verify does not count them as drift.');
    s.put('/app//double', 'x');
    const both = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(both.blockers.find((b) => b.code === 'unmappable_keys')!.hint).toMatch(/^Set `keys: escape` on the rules for the key shapes, move or shrink the values over the limit, or keep them on etcd/);
  });

  it('a copy rule over a Kubernetes control plane is a blocker, as audit says for the same mapping; kept on etcd, it is none', async () => {
    const s = new MemorySource();
    s.put('/registry/pods/default/api-1', 'k8s\0pod');
    s.put('/registry/configmaps/kube-system/x', 'k8s\0cm');
    s.put('/app/a', '1');
    const copying = parseConfig('version: 1\nid: k\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: registry, from: /registry/, to: registry/ }\n', 'migration.yaml');
    const plan = await runPlan({ source: s, config: copying.config, configFile: 'migration.yaml', mapping: copying.mapping });
    expect(plan.blockers).toEqual([expect.objectContaining({ code: 'kubernetes_prefix', count: 2, message: expect.stringContaining('rule registry: 2') })]);
    expect(renderPlan(plan, 'text')).toContain('BLOCKER kubernetes_prefix');
    const keeping = parseConfig('version: 1\nid: k\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: registry, from: /registry/, action: keep }\n', 'migration.yaml');
    expect((await runPlan({ source: s, config: keeping.config, configFile: 'migration.yaml', mapping: keeping.mapping })).blockers).toEqual([]);
  });

  it('has no blockers when everything maps', async () => {
    const s = new MemorySource();
    s.put('/app/a', '1');
    const loaded = parseConfig(yaml('error'), 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(plan.blockers).toEqual([]);
    expect(renderPlan(plan, 'text')).toContain('no blockers');
  });

  it('the markdown plan ends with a runbook: every phase with its exact commands, gates and rollback, per copy rule', async () => {
    const loaded = parseConfig(yaml('error'), 'migration.yaml');
    const plan = await runPlan({ source: source(), config: loaded.config, configFile: 'conf/my migration.yaml', mapping: loaded.mapping });
    const md = renderPlan(plan, 'markdown');
    const runbook = md.slice(md.indexOf('## Runbook'));
    expect(runbook).toContain('## Runbook: migration `p`');
    // The blockers come first, as checklist items.
    expect(runbook).toMatch(/### 0\. Resolve first\n\n- \[ \] \*\*unmappable_keys\*\* \(2\)/);
    // The phases in order, each with its command using this configuration file (quoted for the shell).
    const order = ['### 1. Preflight', "migrate doctor -c 'conf/my migration.yaml'", "migrate copy -c 'conf/my migration.yaml' --dry-run --show-ops", "migrate copy -c 'conf/my migration.yaml'\n", 'migrate verify', 'migrate dualrun', '### 5. Cut over'];
    let at = 0;
    for (const marker of order) {
      const next = runbook.indexOf(marker, at);
      expect(next, marker).toBeGreaterThan(at - 1);
      at = next;
    }
    expect(runbook.match(/- \*\*Gate:\*\*/g)!.length).toBeGreaterThanOrEqual(6);
    // One cutover section per copy rule, none for the keep rule.
    expect(runbook).toContain("migrate cutover -c 'conf/my migration.yaml' --rule app --verify-now --yes");
    expect(runbook).toContain("migrate rollback -c 'conf/my migration.yaml' --rule svc --yes");
    expect(runbook).toContain('late_writes_total{rule="svc"}');
    expect(runbook).not.toContain('--rule k8s');
    expect(runbook).toContain('(`keep`, never touched): `k8s`');
    expect(runbook).toContain('Leased keys (`svc`) become Consul sessions');
    expect(runbook).not.toContain('secret-value-1');
  });

  it('lists service rules: the instances they register, their TTL check, the keys that make none, and what keeps the checks passing', async () => {
    const s = new MemorySource();
    const lease = s.grantLease(30);
    s.put('/app/a', 'x');
    s.put('/services/web/web-0', '10.0.0.1:8080', lease);
    s.put('/services/web/web-1', '10.0.0.2:8080');
    s.put('/services/web/broken', 'secret-not-an-address');
    const loaded = parseConfig(`version: 1
id: p
rules:
  - { name: app, from: /app/, to: app/ }
  - name: services
    from: /services/
    action: service
    service: { tags: [from-etcd], check: { ttl: 45s, failuresBeforeCritical: 5, deregisterCriticalAfter: 30m } }
`, 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(plan.rules.find((r) => r.rule === 'services')).toMatchObject({ keys: 3, instances: 2, instancesWithoutLease: 1, noInstanceKeys: 1, copyKeys: 0 });
    expect(plan.totals).toMatchObject({ copyKeys: 1, instances: 2, noInstanceKeys: 1 });
    expect(plan.services).toEqual([{
      rule: 'services', from: '/services/', format: 'hostport', fields: null, name: '{1}', id: '{1}-{-1}', tags: ['from-etcd'],
      check: { ttlSeconds: 45, failuresBeforeCritical: 5, successBeforePassing: 1, deregisterCriticalAfterSeconds: 1800 },
      problems: { 'value-not-hostport': 1 },
      examples: [{ key: '/services/web/broken', problem: 'value-not-hostport', detail: 'value-not-hostport: the value is not host:port or [ipv6]:port' }],
    }]);
    // Keys that make no instance are reported, not blockers: the copy registers the others.
    expect(plan.blockers).toEqual([]);

    const text = renderPlan(plan, 'text');
    expect(text).toContain('services               /services/ → (service catalog)           2 instances to register (1 without a lease: no TTL check), 1 KEY MAKES NO INSTANCE');
    expect(text).toContain('  services: one instance per key under "/services/": service "{1}", instance id "{1}-{-1}", values hostport, tags "from-etcd"');
    expect(text).toContain("    TTL check of 45s on each leased key's instance: critical after 5 failed lease check(s) in a row, passing again after 1 good one(s); Consul deregisters an instance critical for 30m");
    expect(text).toContain('      /services/web/broken  (value-not-hostport: the value is not host:port or [ipv6]:port)');
    expect(text).toContain("Result: no blockers, but 1 key of a service rule makes no catalog instance (listed above): not registered, not copied, left on etcd only (fit the rule's service: block or its from to them, or give them a copy rule);");
    expect(text).toContain('`migrate dualrun` passes the TTL checks while the etcd leases live');
    expect(text).toContain('`migrate verify` compares the rules\' instances in the catalog with etcd.');

    const md = renderPlan(plan, 'markdown');
    expect(md).toContain('| `services` | `/services/` → (catalog) | service, keys: reject, leases: session | 0 | 0 B | 0 | 0 | 0 | 0 | 2 |');
    expect(md).toContain('| `/services/web/broken` | `services` | value-not-hostport: the value is not host:port or [ipv6]:port |');
    const runbook = md.slice(md.indexOf('## Runbook'));
    expect(runbook).toContain('- [ ] **service keys without an instance** (1): keys of `services` make no catalog instance');
    expect(runbook).toContain('and registers 2 catalog instance(s)');
    expect(runbook).toContain("parity for every copy rule, and every service rule's instances in the catalog");
    expect(runbook).toContain("- `services`: one instance per key under `/services/`: service `{1}`, instance id `{1}-{-1}`, values hostport, tags `from-etcd`. TTL check of 45s on each leased key's instance: critical after 5 failed lease check(s) in a row, passing again after 1 good one(s); Consul deregisters an instance critical for 30m. Now: 2 instance(s), 1 with a TTL check, 1 without a lease (no check: nothing expires them); 1 key(s) make no instance.");
    expect(runbook).toContain('`migrate dualrun` passes the TTL checks while the etcd leases live');
    // Service rules have no keys to cut over: the cutover steps are for copy rules only.
    expect(runbook).toContain('--rule app --verify-now');
    expect(runbook).not.toContain('--rule services');
    for (const format of ['text', 'json', 'markdown'] as const) {
      expect(renderPlan(plan, format)).not.toContain('secret-not-an-address');
      expect(renderPlan(plan, format)).not.toContain('10.0.0.');
    }
  });

  describe('several Consul datacenters (issue 11)', () => {
    const multi = (target: string) => `version: 1
id: p
target: { ${target} }
rules:
  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }
  - { name: svc, from: /svc/, to: svc/ }
  - { name: k8s, from: /registry/, action: keep }
`;
    const plan = async (target: string, primaryDatacenter?: string) => {
      const loaded = parseConfig(multi(target), 'migration.yaml');
      return runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, ...(primaryDatacenter ? { primaryDatacenter } : {}) });
    };

    it('shows what each datacenter gets written, in text, JSON and markdown, and the runbook works per datacenter', async () => {
      const result = await plan('datacenter: dc1', 'dc1');
      expect(result.datacenters).toEqual([
        { datacenter: 'dc1', primary: true, rules: ['app', 'svc'], copyKeys: 5, copyValueBytes: 48, sessions: 2, sessionsAtLeast: false, singlePutKeys: 0, instances: 0 },
        { datacenter: 'dc2', primary: false, rules: ['app'], copyKeys: 2, copyValueBytes: 15, sessions: 0, sessionsAtLeast: false, singlePutKeys: 0, instances: 0 },
      ]);
      // The per-rule totals count each key once, whatever the datacenters.
      expect(result.totals).toMatchObject({ copyKeys: 5, sessions: 2 });
      const text = renderPlan(result, 'text');
      expect(text).toContain([
        'Datacenters (each gets a full copy of its rules, with its own copy progress, checkpoint and verify):',
        '  dc1 (primary)            app, svc: 5 keys (48 B), 2 sessions',
        '  dc2                      app: 2 keys (15 B), 0 sessions',
        '  in all: 7 keys (63 B) and 2 sessions written in 2 datacenters',
      ].join('\n'));
      expect(JSON.parse(renderPlan(result, 'json')).datacenters).toEqual(result.datacenters);

      const md = renderPlan(result, 'markdown');
      expect(md).toContain('## Datacenters');
      expect(md).toContain('| `dc1` (primary) | `app`, `svc` | 5 | 48 B | 2 |');
      expect(md).toContain('| `dc2` | `app` | 2 | 15 B | 0 |');
      const runbook = md.slice(md.indexOf('## Runbook'));
      expect(runbook).toContain('the plan shows each datacenter\'s operations in turn: `dc1` creates 5 key(s) (48 B) and 2 session(s); `dc2` creates 2 key(s) (15 B) and 0 session(s).');
      expect(runbook).toContain('each keeps its own copy progress and checkpoint under the state prefix in its own KV store, and `verify` compares each datacenter on its own');
      expect(runbook).toContain('it holds its leader lock (`leader` under the state prefix) in each, and each datacenter has its own checkpoint and its own verify.');
      expect(runbook).toContain('A rule copied to several datacenters is cut over, rolled back and finalized in one datacenter at a time, named with `--datacenter <dc>`');
      // A rule in two datacenters: one at a time, with --datacenter for cutover and rollback; finalize waits for the others to go.
      expect(runbook).toContain('#### Rule `app`: `/app/` → `app/` (2 key(s); in each of `dc1`, `dc2`)');
      expect(runbook).toContain('migrate cutover -c migration.yaml --rule app --datacenter dc1 --verify-now --yes     # one datacenter at a time: dc1, dc2\n');
      expect(runbook).toContain('In dc1, dc2: one at a time, against that datacenter\'s checkpoint and verify; to move the rule to another of them, roll it back first.');
      expect(runbook).toContain('`migrate rollback -c migration.yaml --rule app --datacenter dc1 --yes`');
      expect(runbook).toContain('- **Finalize** is refused while the rule is copied to other datacenters too');
      // A rule in one datacenter needs no --datacenter: its commands are as without datacenters.
      expect(runbook).toContain('#### Rule `svc`: `/svc/` → `svc/` (3 key(s), 2 session(s); in `dc1`)');
      expect(runbook).toContain('migrate cutover -c migration.yaml --rule svc --verify-now --yes\n# switch');
      expect(runbook).toContain('`migrate rollback -c migration.yaml --rule svc --yes`');
      expect(runbook).not.toMatch(/--rule svc --datacenter/);
      for (const format of ['text', 'json', 'markdown'] as const) expect(renderPlan(result, format)).not.toContain('secret-value-1');
    });

    it('without target.datacenter the primary is unnamed: null with primary: true, "the target\'s datacenter"', async () => {
      const result = await plan('');
      expect(result.datacenters!.map((d) => [d.datacenter, d.primary, d.rules])).toEqual([[null, true, ['svc']], ['dc1', false, ['app']], ['dc2', false, ['app']]]);
      const text = renderPlan(result, 'text');
      expect(text).toContain('  the target\'s datacenter  svc: 3 keys (33 B), 2 sessions\n');
      expect(text).toContain('  note: the target\'s datacenter is not named (set target.datacenter in migration.yaml); if it is one of dc1, dc2, that datacenter gets the rules of both rows.');
      const md = renderPlan(result, 'markdown');
      expect(md).toContain('| the target\'s datacenter (primary) | `svc` | 3 | 33 B | 2 |');
      expect(md).toContain('#### Rule `svc`: `/svc/` → `svc/` (3 key(s), 2 session(s); in the target\'s datacenter)');
      expect(md).toContain('migrate cutover -c migration.yaml --rule svc --verify-now --yes\n');
    });

    it('a configuration without datacenters keeps its plan as it was: no datacenters field, no per-datacenter words', async () => {
      const loaded = parseConfig(yaml('skip'), 'migration.yaml');
      const result = await runPlan({ source: source(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, primaryDatacenter: 'dc1' });
      expect(Object.keys(JSON.parse(renderPlan(result, 'json')))).not.toContain('datacenters');
      for (const format of ['text', 'markdown'] as const) expect(renderPlan(result, format)).not.toMatch(/datacenter/i);
    });
  });

  it('writes check durations as migration.yaml does', () => {
    expect([0.5, 30, 90, 1800, 7200].map(durationText)).toEqual(['500ms', '30s', '90s', '30m', '2h']);
  });
});
