import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource } from '../stores/memory.js';
import { runPlan } from './plan.js';
import { renderPlan } from './render.js';
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

  it('caps the list of unmappable keys but keeps the total exact; unmapped keys are not blockers under skip', async () => {
    const s = new MemorySource();
    for (let i = 0; i < 20; i++) s.put(`/app/./k${i}`, 'x');
    const loaded = parseConfig(yaml('skip'), 'migration.yaml');
    const plan = await runPlan({ source: s, config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, listCap: 5 });
    expect(plan.unmappable.total).toBe(20);
    expect(plan.unmappable.keys).toHaveLength(5);
    expect(renderPlan(plan, 'text')).toContain('first 5 listed');
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

  it('writes check durations as migration.yaml does', () => {
    expect([0.5, 30, 90, 1800, 7200].map(durationText)).toEqual(['500ms', '30s', '90s', '30m', '2h']);
  });
});
