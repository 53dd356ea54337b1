import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource } from '../stores/memory.js';
import { runPlan } from './plan.js';
import { renderPlan } from './render.js';

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
});
