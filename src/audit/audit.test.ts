import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { emptyConfig, parseConfig } from '../config/load.js';
import { ServerError } from '../errors.js';
import { prefixEnd } from '../stores/key-range.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { KeyRange, ReadPagesOptions, SourcePage } from '../stores/types.js';
import { runAudit, type AuditResult } from './audit.js';
import { estimateCopies, estimateCopy, referenceBasis } from './estimate.js';
import type { Finding } from './findings.js';
import { renderAudit } from './render.js';
import { identityRouter } from './router.js';
import { sampleFindings, sampleWrites } from './sample.js';
import { patternFindings } from './inventory.js';
import { draftMapping } from './suggest.js';

const SECRET = 'hunter2-super-secret-value';

/** A small platform keyspace with one of each shape the audit reports. */
function platform(): MemorySource {
  const s = new MemorySource();
  s.put('/platform/config/auth/db_url', `postgres://auth:${SECRET}@db/auth`);
  s.put('/platform/config/auth/timeout', '5s');
  s.put('/platform/config/ml/model.bin', Buffer.alloc(600_000, 1));
  s.put('/platform/config/media/descriptor.pb', Buffer.alloc(450_000, 2));
  s.put('/platform/config/dir/', 'folder value');
  s.put('/platform/shared', 'a');
  s.put('platform/shared', 'b');
  s.put('/legacy//double', 'x');
  s.put('/legacy/./dot', 'x');
  s.put(Buffer.from('2f6c65676163792f62696efffe', 'hex'), 'x');
  s.put('//lead', 'x');
  s.put('/registry/pods/default/web', Buffer.from('k8s\0\x01\x02'));
  const lock = s.grantLease(5);
  s.put('/locks/nightly', 'holder', lock);
  const svc = s.grantLease(60);
  s.put('/services/redis/redis-0', '10.0.0.5:6379', svc);
  const long = s.grantLease(108_000);
  s.put('/platform/config/archive/x', 'kept', long);
  s.write(Array.from({ length: 150 }, (_, i) => ({ key: `/platform/flags/rollout/f${String(i).padStart(3, '0')}`, value: 'on' })));
  return s;
}

function codes(result: AuditResult): Record<string, string> {
  return Object.fromEntries(result.findings.map((f) => [f.code, f.severity]));
}

function finding(result: AuditResult, code: string, severity?: string): Finding | undefined {
  return result.findings.find((f) => f.code === code && (!severity || f.severity === severity));
}

describe('runAudit without a mapping file (identity mapping)', () => {
  it('reports every key shape, size, lease, group and pattern finding, with oversize values the only blocker', async () => {
    const result = await runAudit({ source: platform(), config: emptyConfig() });
    expect(result.mode).toBe('identity');
    expect(result.totals.keys).toBe(165);
    expect(codes(result)).toEqual({
      value_too_large: 'blocker',
      atomic_group_oversize: 'warning',
      key_collision: 'warning',
      key_dot_segment: 'warning',
      key_empty_segment: 'warning',
      key_invalid_utf8: 'warning',
      key_leading_slash: 'warning',
      kubernetes_prefix: 'warning',
      lease_ttl_above_max: 'warning',
      lease_ttl_below_min: 'warning',
      lock_election_prefix: 'warning',
      folder_key_with_value: 'info',
      service_registration_prefix: 'info',
      value_single_put: 'info',
    });
    expect(result.blockers).toBe(1);
    expect(finding(result, 'key_collision')!.examples[0]).toMatchObject({ key: '/platform/shared' });
    expect(finding(result, 'key_invalid_utf8')!.examples[0]!.key).toBe('/legacy/bin\\xff\\xfe');
    expect(result.atomicGroups).toMatchObject({ multiKey: 1, overOps64: 1, overOps128: 1, splitAtTarget: 1 });
    expect(result.leases).toMatchObject({ count: 3, belowSessionMin: 1, aboveSessionMax: 1 });
    expect(result.limits.basis).toMatch(/no target/);
    expect(result.estimate.basis.kind).toBe('reference');
    expect(result.estimate.singlePutKeys).toBe(1);
  });

  it('never prints a value in any format', async () => {
    const result = await runAudit({ source: platform(), config: emptyConfig() });
    for (const format of ['text', 'json', 'yaml', 'markdown'] as const) {
      const out = renderAudit(result, format);
      expect(out).not.toContain(SECRET);
      expect(out).not.toContain('holder');
      expect(out).not.toContain('10.0.0.5');
    }
    const json = JSON.parse(renderAudit(result, 'json')) as Record<string, unknown>;
    expect(json).toMatchObject({ version: 1, command: 'audit', status: 'findings', schemaVersion: 1 });
    expect(parseYaml(renderAudit(result, 'yaml'))).toEqual(json);
    expect(renderAudit(result, 'markdown')).toMatch(/^# etcd → Consul migration audit/);
    expect(renderAudit(result, 'text')).toMatch(/identity mapping/);
  });

  it('reports the key "/" (empty once stripped), control characters and trailing spaces', async () => {
    const s = new MemorySource();
    s.put('/', 'root');
    s.put('/a\u0001b', 'x');
    s.put('/a ', 'x');
    const result = await runAudit({ source: s, config: emptyConfig() });
    expect(codes(result)).toEqual({ key_empty: 'warning', key_control_character: 'warning', key_trailing_space: 'warning' });
    expect(finding(result, 'key_control_character')!.examples[0]!.key).toBe('/a\\x01b');
  });

  it('reads only the given prefixes', async () => {
    const result = await runAudit({ source: platform(), config: emptyConfig(), prefixes: ['/legacy/', '/legacy/x'] });
    expect(result.totals.keys).toBe(3);
    expect(result.scope.ranges).toEqual(['prefix /legacy/']);
  });

  it('judges against the target: its version sets the op limit', async () => {
    const old = await runAudit({ source: platform(), config: emptyConfig(), target: new MemoryTarget({ version: '1.13.9', txnMaxOps: 64 }) });
    expect(old.limits).toMatchObject({ txnMaxOps: 64, revisionTxnOps: 61 });
    expect(old.limits.basis).toMatch(/Consul 1\.13\.9/);
  });

  it('judges keys by the agent\'s key rule: Consul 1.21.5\'s holds back most punctuation, as a blocker, before anything is written', async () => {
    const s = new MemorySource();
    s.put('/app/hosts/10.0.0.1:8080', 'up');
    s.put('/app/plain_key-1', 'x');
    const loaded = parseConfig('version: 1\nid: t\nrules:\n  - { name: app, from: /app/, to: app/, keys: escape }\n', 'm.yaml');
    const input = { source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping };
    const strict = await runAudit({ ...input, target: new MemoryTarget({ strictKeys: true }) });
    expect(codes(strict)).toMatchObject({ key_charset: 'blocker' });
    expect(finding(strict, 'key_charset')).toMatchObject({ count: 1, examples: [expect.objectContaining({ key: '/app/hosts/10.0.0.1:8080' })] });
    expect(strict.limits.basis).toMatch(/refuses keys outside Consul 1\.21\.5's character set/);
    const usual = await runAudit({ ...input, target: new MemoryTarget() });
    expect(codes(usual)).not.toHaveProperty('key_charset');
  });

  it('stops between pages when interrupted and says the report is partial', async () => {
    const controller = new AbortController();
    controller.abort();
    const result = await runAudit({ source: platform(), config: emptyConfig(), signal: controller.signal });
    expect(result.scope.interrupted).toBe(true);
    expect(result.totals.keys).toBe(0);
  });

  it('interrupted during --sample, after the whole scan: the report says interrupted (status, verdict), not ok', async () => {
    const controller = new AbortController();
    // Ctrl-C once the scan is whole, while the sample window is open.
    const result = await runAudit({ source: platform(), config: emptyConfig(), signal: controller.signal, sampleMs: 30_000, onProgress: (e) => e.phase === 'groups' && controller.abort() });
    expect(result.scope.interrupted).toBe(true);
    expect(result.totals.keys).toBeGreaterThan(0);
    expect(JSON.parse(renderAudit(result, 'json'))).toMatchObject({ status: 'interrupted', scope: { interrupted: true } });
    expect(renderAudit(result, 'text')).toMatch(/Result: INTERRUPTED, partial \(.*\): exit 130\./);
    expect(renderAudit(result, 'markdown')).toContain('**Verdict: interrupted, partial**');
    expect(renderAudit(result, 'markdown')).not.toContain('**Verdict: no blockers**');
  });

  it('etcd compacting the revision while the audit reads it: read again at the current one, with a warning; compacted every time, it fails with etcd_compacted', async () => {
    for (const times of [1, Infinity]) {
      const source = platform();
      const first = (await source.status()).revision;
      // A few pages into a pinned read, the application writes and auto-compaction runs.
      const seen = source.compactDuringReads(3, times, () => source.put(`/platform/config/added-${seen.compactions}`, 'new'));
      const warnings: string[] = [];
      const audit = runAudit({ source, config: emptyConfig(), pageKeys: 5, onProgress: (e) => e.phase === 'warning' && warnings.push(e.message) });
      if (times === Infinity) {
        await expect(audit).rejects.toMatchObject({ code: 'etcd_compacted', exitCode: 3 });
        expect(seen.compactions).toBe(3);
        continue;
      }
      const result = await audit;
      expect(seen.compactions).toBe(1);
      expect(warnings).toEqual([`etcd compacted revision ${first} while the audit read it; reading again at revision ${first + 1}`]);
      expect(result.source.revision).toBe(first + 1);
      // Every key once, as of the new revision: nothing counted twice from the abandoned read.
      expect(result.totals.keys).toBe((await runAudit({ source: platform(), config: emptyConfig() })).totals.keys + 1);
    }
  });
});

describe('runAudit with a mapping file', () => {
  const yaml = `
version: 1
id: t
target: { limits: { txnMaxOps: 200 } }
defaults: { unmapped: error }
rules:
  - { name: config, from: /platform/config/, to: platform/config/ }
  - { name: flags, from: /platform/flags, to: platform/flags }
  - { name: legacy, from: /legacy/, to: legacy/, keys: escape }
  - { name: locks, from: /locks/, to: locks/, leases: skip }
  - { name: services, from: /services/, to: services/ }
  - { name: k8s, from: /registry/, action: keep }
`;

  it('judges per rule: escaped keys are info, kept and skipped prefixes are not blockers, unmapped keys block', async () => {
    const loaded = parseConfig(yaml, 'migration.yaml');
    const result = await runAudit({ source: platform(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping });
    expect(result.mode).toBe('mapping');
    expect(codes(result)).toMatchObject({
      value_too_large: 'blocker',
      unmapped_keys: 'blocker',
      key_escaped: 'info',
      kubernetes_prefix: 'info',
      lock_election_prefix: 'info',
      rule_from_without_slash: 'warning',
      value_single_put: 'info',
    });
    // 150 keys in one revision fit 200 - 2 reserved ops.
    expect(codes(result).atomic_group_oversize).toBeUndefined();
    expect(finding(result, 'unmapped_keys')!.count).toBe(3);
    expect(result.rules.find((r) => r.rule === 'legacy')).toMatchObject({ copyKeys: 3, escapedKeys: 3 });
    expect(result.rules.find((r) => r.rule === 'locks')).toMatchObject({ copyKeys: 0, skippedKeys: 1 });
    expect(result.rules.find((r) => r.rule === 'services')).toMatchObject({ copyKeys: 1, sessions: 1 });
    expect(result.rules.find((r) => r.rule === 'k8s')).toMatchObject({ keptKeys: 1, copyKeys: 0 });
    expect(result.limits.basis).toMatch(/migration\.yaml/);
    // The 5 s lock lease is skipped, so no clamp is reported for it.
    expect(finding(result, 'lease_ttl_below_min')).toBeUndefined();
    expect(renderAudit(result, 'markdown')).toContain('## Rules');
  });

  it('estimates one session per lease, also when its keys fall in two rules', async () => {
    const s = new MemorySource();
    const shared = s.grantLease(30);
    s.put('/jobs/claim', 'c', shared);
    s.put('/svc/i1', '10.0.0.1:80', shared);
    s.put('/svc/i2', '10.0.0.2:80', s.grantLease(30));
    const loaded = parseConfig(`version: 1\nid: t\nrules:\n  - { name: jobs, from: /jobs/, to: jobs/ }\n  - { name: svc, from: /svc/, to: svc/ }\n`, 'm.yaml');
    const result = await runAudit({ source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(result.rules.map((r) => [r.rule, r.sessions])).toEqual([['jobs', 1], ['svc', 2]]);
    expect(result.estimate.sessions).toBe(2);
  });

  it('a TTL clamp names the rules where the lease becomes a session, and a key of theirs, not a skipped key of the same lease', async () => {
    const s = new MemorySource();
    const short = s.grantLease(5);
    s.put('/locks/leader', 'me', short);
    s.put('/svc/i1', '10.0.0.1:80', short);
    const loaded = parseConfig(`version: 1\nid: t\nrules:\n  - { name: locks, from: /locks/, to: locks/, leases: skip }\n  - { name: svc, from: /svc/, to: svc/ }\n`, 'm.yaml');
    const result = await runAudit({ source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    const clamp = finding(result, 'lease_ttl_below_min')!;
    expect(clamp.rules).toEqual(['svc']);
    expect(clamp.examples.map((e) => e.key)).toEqual(['/svc/i1']);
  });

  it('makes key shapes blockers under reject and a copied Kubernetes prefix a blocker', async () => {
    const loaded = parseConfig(`version: 1\nid: t\nrules:\n  - { name: all, from: /, to: all/ }\n`, 'm.yaml');
    const result = await runAudit({ source: platform(), config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(codes(result)).toMatchObject({ key_empty_segment: 'blocker', key_dot_segment: 'blocker', key_invalid_utf8: 'blocker', kubernetes_prefix: 'blocker', unmapped_keys: 'info' });
    expect(finding(result, 'lease_ttl_below_min', 'warning')).toBeDefined();
  });
});

describe('runAudit with several Consul datacenters (issue 11)', () => {
  const yaml = (target: string) => `
version: 1
id: t
target: { ${target}limits: { txnMaxOps: 200 } }
rules:
  - { name: config, from: /platform/config/, to: platform/config/, datacenters: [dc1, dc2] }
  - { name: flags, from: /platform/flags/, to: platform/flags/ }
  - { name: services, from: /services/, to: services/, datacenters: [dc2] }
  - { name: k8s, from: /registry/, action: keep }
`;
  const audit = async (text: string, primaryDatacenter?: string) => {
    const loaded = parseConfig(text, 'migration.yaml');
    return runAudit({ source: platform(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, ...(primaryDatacenter ? { primaryDatacenter } : {}) });
  };

  it('shows what each datacenter gets written, and the estimate counts one full copy per datacenter', async () => {
    const result = await audit(yaml('datacenter: dc1, '), 'dc1');
    const rule = (name: string) => result.rules.find((r) => r.rule === name)!;
    expect(result.datacenters!.map((d) => [d.datacenter, d.primary, d.rules])).toEqual([['dc1', true, ['config', 'flags']], ['dc2', false, ['config', 'services']]]);
    const [dc1, dc2] = result.datacenters!;
    expect(dc1).toMatchObject({ copyKeys: rule('config').copyKeys + rule('flags').copyKeys, copyValueBytes: rule('config').copyValueBytes + rule('flags').copyValueBytes, sessions: 1, singlePutKeys: 1 });
    expect(dc2).toMatchObject({ copyKeys: rule('config').copyKeys + rule('services').copyKeys, sessions: 2, singlePutKeys: 1 });
    // descriptor.pb (450 KB) is a single PUT in both datacenters that copy the config rule.
    expect(result.estimate).toMatchObject({ keys: dc1!.copyKeys + dc2!.copyKeys, valueBytes: dc1!.copyValueBytes + dc2!.copyValueBytes, sessions: 3, singlePutKeys: 2, datacenters: 2 });
    expect(result.estimate.seconds).toBeCloseTo(dc1!.estimateSeconds + dc2!.estimateSeconds, 1);
    // The config rule is written twice: its keys, and its single PUT, count twice.
    const once = await audit(yaml('').replace(', datacenters: [dc1, dc2]', '').replace(', datacenters: [dc2]', ''));
    expect(once.datacenters).toBeUndefined();
    expect(once.estimate.datacenters).toBeUndefined();
    expect(result.estimate.keys).toBe(once.estimate.keys + rule('config').copyKeys);
    expect(result.estimate.singlePutKeys).toBe(2 * once.estimate.singlePutKeys);

    const text = renderAudit(result, 'text');
    expect(text).toContain('Datacenters (each gets a full copy of its rules, with its own checkpoint and verify):');
    expect(text).toMatch(/\n {2}dc1 \(primary\) +config, flags: [\d,]+ keys \([^)]+\), 1 session: about 1 s\n {2}dc2 +config, services: [\d,]+ keys \([^)]+\), 2 sessions: about 1 s\n/);
    expect(text).toMatch(/Copy estimate: [\d,]+ keys \([^)]+\) written to 2 datacenters one after the other, 3 sessions, 2 single PUTs/);
    expect(JSON.parse(renderAudit(result, 'json')).datacenters).toEqual(result.datacenters);
    expect(parseYaml(renderAudit(result, 'yaml')).datacenters).toEqual(result.datacenters);
    const markdown = renderAudit(result, 'markdown');
    expect(markdown).toContain('## Datacenters');
    expect(markdown).toMatch(/\| `dc2` \| `config`, `services` \| [\d,]+ \| [^|]+ \| 2 \| about 1 s \|/);
    expect(markdown).toContain('in 2 datacenters |');
    for (const format of ['text', 'json', 'yaml', 'markdown'] as const) expect(renderAudit(result, format)).not.toContain(SECRET);
  });

  it('without target.datacenter the primary is unnamed: null with primary: true in JSON, "the target\'s datacenter" in text', async () => {
    const result = await audit(yaml(''));
    expect(result.datacenters!.map((d) => [d.datacenter, d.primary, d.rules])).toEqual([[null, true, ['flags']], ['dc1', false, ['config']], ['dc2', false, ['config', 'services']]]);
    expect(result.estimate.datacenters).toBe(3);
    const text = renderAudit(result, 'text');
    expect(text).toMatch(/\n {2}the target's datacenter +flags: /);
    expect(text).toContain('note: the target\'s datacenter is not named (set target.datacenter in migration.yaml); if it is one of dc1, dc2, that datacenter gets the rules of both rows.');
    expect(JSON.parse(renderAudit(result, 'json')).datacenters[0]).toMatchObject({ datacenter: null, primary: true });
    expect(renderAudit(result, 'markdown')).toContain('| the target\'s datacenter (primary) | `flags` |');
  });

  it('a configuration without datacenters has no datacenters field at all', async () => {
    const loaded = parseConfig(yaml('').replace(', datacenters: [dc1, dc2]', '').replace(', datacenters: [dc2]', ''), 'migration.yaml');
    const result = await runAudit({ source: platform(), config: loaded.config, configFile: 'migration.yaml', mapping: loaded.mapping, primaryDatacenter: 'dc1' });
    expect(Object.keys(JSON.parse(renderAudit(result, 'json')))).not.toContain('datacenters');
    expect(Object.keys(JSON.parse(renderAudit(result, 'json')).estimate)).not.toContain('datacenters');
    expect(renderAudit(result, 'text')).not.toContain('Datacenters');
  });
});

/** etcd with RBAC: reads outside `allowed` prefixes are refused, as the etcd adapter reports them. */
class DenyingSource extends MemorySource {
  constructor(private readonly allowed: string[]) {
    super();
  }

  override readPages(range: KeyRange, options?: ReadPagesOptions): AsyncIterable<SourcePage> {
    const inside = this.allowed.some((p) => range.start.toString().startsWith(p) && range.end.length > 0 && Buffer.compare(range.end, prefixEnd(Buffer.from(p))) <= 0);
    if (inside) return super.readPages(range, options);
    return {
      [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(new ServerError('etcd_permission_denied', 'etcd denied read: the user\'s role lacks the permission.')) }),
    };
  }

  override async count(range: KeyRange, revision?: number): Promise<number> {
    if (!this.allowed.some((p) => range.start.toString().startsWith(p))) throw new ServerError('etcd_permission_denied', 'denied');
    return super.count(range, revision);
  }
}

describe('runAudit with credentials that read only some ranges', () => {
  it('falls back to the rules\' prefixes and reports what it could not read', async () => {
    const source = new DenyingSource(['/app/']);
    source.put('/app/a', '1');
    source.put('/secret/b', SECRET);
    const loaded = parseConfig('version: 1\nid: t\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: secret, from: /secret/, to: secret/ }\n', 'm.yaml');
    const result = await runAudit({ source, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(result.scope).toMatchObject({ rulesOnly: true, unreadable: ['prefix /secret/'] });
    expect(result.totals.keys).toBe(1);
    expect(result.unmapped).toBeNull();
    const unreadable = result.findings.filter((f) => f.code === 'range_unreadable');
    expect(unreadable.map((f) => [f.severity, f.examples.map((e) => e.prefix)])).toEqual([
      ['blocker', ['prefix /secret/']],
      ['warning', ['the whole keyspace']],
    ]);
  });

  it('makes an unreadable service rule range a blocker too: the copy reads the registrations there', async () => {
    const source = new DenyingSource(['/app/']);
    source.put('/app/a', '1');
    source.put('/services/web/web-0', '10.0.0.1:80');
    const loaded = parseConfig('version: 1\nid: t\nrules:\n  - { name: app, from: /app/, to: app/ }\n  - { name: services, from: /services/, action: service }\n', 'm.yaml');
    const result = await runAudit({ source, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(finding(result, 'range_unreadable', 'blocker')!.examples).toEqual([{ prefix: 'prefix /services/', rule: 'services' }]);
  });

  it('fails with a typed error when nothing at all is readable', async () => {
    const source = new DenyingSource([]);
    source.put('/x', '1');
    await expect(runAudit({ source, config: emptyConfig() })).rejects.toMatchObject({ code: 'etcd_permission_denied', exitCode: 3 });
  });
});

describe('sample, estimate, probe and the draft mapping', () => {
  it('measures write rates per prefix from the watch stream and flags hot prefixes', async () => {
    const source = new MemorySource();
    const from = (await source.status()).revision + 1;
    for (let i = 0; i < 30; i++) source.write(Array.from({ length: 100 }, (_, j) => ({ key: `/hot/k${j}`, value: `${i}` })));
    source.put('/cold/a', '1');
    let t = 0;
    const sample = await sampleWrites({ source, ranges: [{ start: Buffer.from([0]), end: Buffer.alloc(0) }], fromRevision: from, durationMs: 1000, depth: 1, top: 5, router: identityRouter(524288), capacity: { ops: 62, bytes: 500_000 }, now: () => (t += 500) });
    expect(sample.writes).toBe(3001);
    expect(sample.revisions).toBe(31);
    expect(sample.prefixes[0]).toMatchObject({ prefix: '/hot/', writes: 3000, writesPerSecond: 3000 });
    expect(sample.groupsOverTarget).toBe(30);
    expect(sampleFindings(sample).map((f) => [f.code, f.examples.map((e) => e.prefix)])).toEqual([['write_rate_high', ['/hot/']]]);
  });

  it('sizes a write group as the dual-run\'s txn: a leased key moved to another lease is two ops (unlock, lock)', async () => {
    const source = new MemorySource();
    const [a, b] = [source.grantLease(60), source.grantLease(60)];
    source.write(Array.from({ length: 40 }, (_, j) => ({ key: `/svc/k${j}`, value: 'x', lease: a })));
    const from = (await source.status()).revision + 1;
    source.write(Array.from({ length: 40 }, (_, j) => ({ key: `/svc/k${j}`, value: 'y', lease: b })));
    source.write(Array.from({ length: 40 }, (_, j) => ({ key: `/svc/k${j}`, value: 'z', lease: b })));
    let t = 0;
    const sample = await sampleWrites({ source, ranges: [{ start: Buffer.from([0]), end: Buffer.alloc(0) }], fromRevision: from, durationMs: 1000, depth: 1, top: 5, router: identityRouter(524288), capacity: { ops: 62, bytes: 500_000 }, now: () => (t += 500) });
    expect(sample.revisions).toBe(2);
    expect(sample.groupsOverTarget).toBe(1);
  });

  it('flags the write rate of all the sampled prefixes together, each under the rate, whatever --depth splits them into (one ordered stream to replicate)', async () => {
    const source = new MemorySource();
    const from = (await source.status()).revision + 1;
    for (let i = 0; i < 15; i++) source.write(Array.from({ length: 100 }, (_, j) => ({ key: `/hot/w${i}/k${j}`, value: `${i}` })));
    let t = 0;
    const sample = await sampleWrites({ source, ranges: [{ start: Buffer.from([0]), end: Buffer.alloc(0) }], fromRevision: from, durationMs: 1000, depth: 2, top: 20, router: identityRouter(524288), capacity: { ops: 62, bytes: 500_000 }, now: () => (t += 500) });
    expect(sample.prefixes.map((p) => p.writesPerSecond)).toEqual(Array(15).fill(100));
    const [finding] = sampleFindings(sample);
    expect(finding).toMatchObject({ code: 'write_rate_high', count: 1 });
    expect(finding!.examples).toEqual([expect.objectContaining({ prefix: '(the sampled prefixes together)', count: 1500 })]);
    expect(finding!.examples[0]!.detail).toMatch(/^1500 replicated writes\/s in all over 1\.0 s/);
  });

  it('counts the writes made within the window even when the watch delivers them late, and none made after it', async () => {
    // etcd is at revision 14 when the 100 ms window ends; this process reads the watch behind:
    // revisions 11–16 arrive from 150 ms on. 11–14 count, 15–16 (written after the window) do not.
    const source = new MemorySource();
    let closed = false;
    source.status = async () => ({ version: '3.4', clusterId: '1', memberId: '1', leader: '1', revision: 14, dbSizeBytes: 0, endpoint: 'memory' });
    source.watch = async () => ({
      buffered: () => 0,
      requestProgress() {},
      latestRevision: () => 16,
      async close() {
        closed = true;
      },
      async *[Symbol.asyncIterator]() {
        await new Promise((r) => setTimeout(r, 150));
        for (let revision = 11; revision <= 16 && !closed; revision++) {
          yield { kind: 'revision' as const, revision, events: Array.from({ length: 100 }, (_, j) => ({ type: 'put' as const, entry: { key: Buffer.from(`/hot/k${j}`), value: Buffer.from('v'), createRevision: revision, modRevision: revision, version: 1, lease: '0' } })) };
        }
        while (!closed) await new Promise((r) => setTimeout(r, 10));
      },
    });
    const began = Date.now();
    const sample = await sampleWrites({ source, ranges: [{ start: Buffer.from([0]), end: Buffer.alloc(0) }], fromRevision: 11, durationMs: 100, depth: 1, top: 5, router: identityRouter(524288), capacity: { ops: 62, bytes: 500_000 } });
    expect(sample).toMatchObject({ revisions: 4, writes: 400, durationMs: 100, writesPerSecond: 4000 });
    // Done once the watch passed the end, not at the grace period's end.
    expect(Date.now() - began).toBeLessThan(2_000);
  });

  it('estimates from counts and throughput: txn keys, single PUTs and sessions', () => {
    const estimate = estimateCopy({ keys: 29_001, valueBytes: 29_000 * 100, singlePutKeys: 1, sessions: 1200 }, referenceBasis());
    expect(estimate.parts).toEqual({ txns: 1, singlePuts: 0, sessions: 1 });
    expect(estimate.seconds).toBe(2);
    // Large values: the byte rate bounds the keys rate.
    expect(estimateCopy({ keys: 1000, valueBytes: 74_240_000, singlePutKeys: 0, sessions: 0 }, referenceBasis()).seconds).toBe(10);
  });

  it('estimates several datacenters as one copy each, one after the other: the times add up', () => {
    const one = { keys: 29_000, valueBytes: 29_000 * 100, singlePutKeys: 0, sessions: 1200 };
    const big = { keys: 1000, valueBytes: 74_240_000, singlePutKeys: 0, sessions: 0 };
    // Summed per datacenter, not estimated from summed counts: one datacenter's large values do not slow the other's small ones.
    expect(estimateCopies([one, big], referenceBasis())).toMatchObject({ keys: 30_000, sessions: 1200, seconds: 12, parts: { txns: 11, sessions: 1 }, datacenters: 2 });
    expect(estimateCopies([one, one, one], referenceBasis()).seconds).toBe(3 * estimateCopy(one, referenceBasis()).seconds);
  });

  it('--probe writes scratch keys under the state prefix and deletes them again', async () => {
    const target = new MemoryTarget();
    const result = await runAudit({ source: platform(), target, config: emptyConfig(), probe: true, runId: 'test' });
    expect(result.estimate.basis.kind).toBe('probe');
    expect(result.estimate.basis.throughput.txnKeysPerSecond).toBeGreaterThan(0);
    expect(result.probe).toMatchObject({ keys: 512, singlePuts: 50 });
    expect(target.writes).toBeGreaterThan(50);
    expect(target.entries.size).toBe(0);
  });

  it('warns of a --prefix no key starts with, naming the spelling that has keys', async () => {
    const warnings: string[] = [];
    const result = await runAudit({ source: platform(), config: emptyConfig(), prefixes: ['platform/config/', '/nothing/'], onProgress: (e) => e.phase === 'warning' && warnings.push(e.message) });
    expect(result.totals.keys).toBe(0);
    expect(warnings).toEqual([
      expect.stringMatching(/^--prefix platform\/config\/: no etcd key at revision \d+ starts with it; [1-9]\d* key\(s\) start with \/platform\/config\/$/),
      expect.stringMatching(/^--prefix \/nothing\/: no etcd key at revision \d+ starts with it$/),
    ]);
  });

  it('drafts unmapped: error for the whole keyspace, and skip for a draft of some prefixes (the rest stays on etcd)', async () => {
    const whole = draftMapping(await runAudit({ source: platform(), config: emptyConfig(), depth: 3 }), { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    expect(parseConfig(whole.text, 'draft.yaml').config.defaults.unmapped).toBe('error');
    const some = draftMapping(await runAudit({ source: platform(), config: emptyConfig(), depth: 3, prefixes: ['/platform/'] }), { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    expect(parseConfig(some.text, 'draft.yaml').config.defaults.unmapped).toBe('skip');
    expect(some.text).toContain('unmapped: skip    # the draft covers /platform/ only');
  });

  it('drafts a mapping that loads: keep for Kubernetes, skip for locks, escape where keys need it, no overlapping to', async () => {
    const result = await runAudit({ source: platform(), config: emptyConfig(), depth: 3 });
    const draft = draftMapping(result, { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    const loaded = parseConfig(draft.text, 'draft.yaml');
    const rules = Object.fromEntries(loaded.config.rules.map((r) => [r.from, r]));
    expect(rules['/registry/']).toMatchObject({ action: 'keep' });
    expect(rules['/locks/']).toMatchObject({ leases: 'skip', to: 'locks/' });
    expect(rules['/legacy/']).toMatchObject({ keys: 'escape', to: 'legacy/' });
    expect(rules['/platform/']!.to).toBe('platform/');
    expect(rules['platform/']!.to).toBe('platform-2/');
    expect(rules['/services/']).toMatchObject({ action: 'service', service: { format: 'hostport', name: '{1}', id: '{1}-{-1}' } });
    expect(draft.text).toContain('# ');
    // The draft, audited, leaves only what no rule can fix (the oversize value) and the keys it could not place.
    const audited = await runAudit({ source: platform(), config: loaded.config, configFile: 'draft.yaml', mapping: loaded.mapping });
    expect(audited.findings.filter((f) => f.severity === 'blocker').map((f) => f.code).sort()).toEqual(['value_too_large']);
    expect(audited.rules.find((r) => r.rule === 'services')).toMatchObject({ instances: 1, noInstanceKeys: 0 });
  });
});

describe('draft mapping of lock folders below a prefix', () => {
  const shards = (extraLeased: boolean) => {
    const s = new MemorySource();
    for (let i = 0; i < 16; i++) {
      const n = String(i).padStart(2, '0');
      s.put(`/shards/${n}/election/${(0x1000 + i).toString(16)}`, `node-${i}`, s.grantLease(12));
      s.put(`/shards/${n}/config`, 'x');
    }
    if (extraLeased) s.put('/shards/sessions/s1', 'x', s.grantLease(60));
    return s;
  };

  it('an election per shard: one rule for the prefix that skips leased keys, not a rule per shard with a flattened "to"', async () => {
    const draft = draftMapping(await runAudit({ source: shards(false), config: emptyConfig(), depth: 4 }), { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    const loaded = parseConfig(draft.text, 'draft.yaml');
    expect(loaded.config.rules.map((r) => [r.from, r.to, r.leases])).toEqual([['/shards/', 'shards/', 'skip']]);
    expect(draft.text).toContain('its leased keys are all under lock / leader-election folders (/shards/00/election/');
  });

  it('leased keys beside the lock folders keep their sessions: the lock folders stay on etcd (keep), not copied to a Consul prefix of their own', async () => {
    const draft = draftMapping(await runAudit({ source: shards(true), config: emptyConfig(), depth: 4 }), { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    const rules = parseConfig(draft.text, 'draft.yaml').config.rules;
    expect(rules.find((r) => r.from === '/shards/')!.leases).not.toBe('skip');
    const locks = rules.filter((r) => r.from !== '/shards/');
    expect(locks).toHaveLength(16);
    for (const r of locks) expect(r).toMatchObject({ action: 'keep', from: expect.stringMatching(/^\/shards\/\d\d\/election\/$/) });
    expect(draft.text).toContain('1 key that looks like locks / leader elections: they stay on etcd; applications take their locks again in Consul (sessions) when they move');
  });

  it('a folder named like a lock whose keys hold no lease is data: copied with its prefix, no leases: skip said of leases there are none of', async () => {
    const s = new MemorySource();
    s.put('/app/leader/current', 'node-1');
    s.put('/app/config/x', '1');
    const draft = draftMapping(await runAudit({ source: s, config: emptyConfig(), depth: 3 }), { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    const rules = parseConfig(draft.text, 'draft.yaml').config.rules;
    expect(rules.map((r) => [r.from, r.to, r.action, r.leases])).toEqual([['/app/', 'app/', 'copy', 'session']]);
    expect(draft.text).not.toContain('leased keys are all under lock');
  });
});

/** Service registrations in the shapes the audit tells apart, beside ordinary keys. */
function registrations(): MemorySource {
  const s = new MemorySource();
  const lease = s.grantLease(30);
  s.put('/services/web/web-0', '10.0.0.1:8080', lease);
  s.put('/services/redis_grpc/redis-0', '10.0.0.2:6379', lease);
  s.put('/skydns/local/platform/grpc/x0', '{"host":"10.0.0.3","port":53,"priority":10}', lease);
  s.put('/skydns/local/platform/auth/x1', '{"host":"10.0.0.4","port":53}', lease);
  s.put('/app/settings/timeout', '5s');
  s.put('/app/discovery/web/i1', '10.0.0.5:80', lease);
  s.put('/cfg/host1', '10.0.0.6:80', lease);
  s.put('/cfg/other', 'x');
  s.put('/urls/web/a', 'http://10.0.0.7:80', lease);
  s.put('/svc2/api/i1', '{"Address":"10.0.0.8","Port":80}', lease);
  return s;
}

describe('service rules in the audit', () => {
  const yaml = `
version: 1
id: svc
rules:
  - { name: app, from: /app/, to: app/ }
  - name: services
    from: /services/
    action: service
    service: { id: "{1}" }
  - name: skydns
    from: /skydns/
    action: service
    service: { format: skydns, name: "{3}", id: "{1}-{2}-{3}-{4}" }
`;

  it('a key whose instance id differs only in case from another\'s makes none (Consul\'s catalog takes them as one), as in the copy', async () => {
    const s = registrations();
    s.put('/services/WEB/web-9', '10.0.0.9:8080');
    const loaded = parseConfig(yaml, 'm.yaml');
    const result = await runAudit({ source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(finding(result, 'service_key_invalid')!.examples).toEqual([
      { key: '/services/web/web-0', rule: 'services', detail: 'id-duplicate: its instance id "web" differs only in case from "WEB", the id of /services/WEB/web-9 (Consul\'s catalog takes them as one); make the id template include more of the key' },
    ]);
  });

  it('tallies the instances each rule registers and the keys that make none, and reports those keys without their value', async () => {
    const s = registrations();
    s.put('/services/web/web-1', '10.0.0.9:8080');
    s.put('/services/web/broken', 'not-an-address-secret');
    s.put('/services/api/api-0', '10.0.0.10:99999');
    const loaded = parseConfig(yaml, 'm.yaml');
    const result = await runAudit({ source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    // id "{1}" gives both web instances one id: the first registers, the second makes none, as in the copy.
    expect(result.rules.find((r) => r.rule === 'services')).toMatchObject({ keys: 5, leasedKeys: 2, instances: 2, instancesWithoutLease: 0, noInstanceKeys: 3, copyKeys: 0, sessions: 0 });
    expect(result.rules.find((r) => r.rule === 'skydns')).toMatchObject({ keys: 2, instances: 2, instancesWithoutLease: 0, noInstanceKeys: 0 });
    expect(result.rules.find((r) => r.rule === 'app')).toMatchObject({ copyKeys: 2, instances: 0, noInstanceKeys: 0 });
    const invalid = finding(result, 'service_key_invalid')!;
    expect(invalid).toMatchObject({ severity: 'warning', count: 3, unit: 'keys', rules: ['services'] });
    expect(invalid.examples).toEqual([
      { key: '/services/api/api-0', rule: 'services', detail: 'port-invalid: the port is not a number between 1 and 65535' },
      { key: '/services/web/broken', rule: 'services', detail: 'value-not-hostport: the value is not host:port or [ipv6]:port' },
      { key: '/services/web/web-1', rule: 'services', detail: 'id-duplicate: its instance id "web" is also the id of /services/web/web-0; make the id template include more of the key' },
    ]);
    for (const format of ['text', 'json', 'yaml', 'markdown'] as const) {
      const out = renderAudit(result, format);
      expect(out).not.toContain('99999');
      expect(out).not.toContain('not-an-address-secret');
      expect(out).not.toContain('10.0.0.');
    }
    const text = renderAudit(result, 'text');
    expect(text).toContain('services             2 instances to register in the catalog, 3 keys make no instance');
    expect(text).toMatch(/WARNING  service_key_invalid +3 keys: keys of `action: service` rules that make no catalog instance/);
    expect(renderAudit(result, 'markdown')).toContain('| `services` | `/services/` → (catalog) | service, keys: reject, leases: session | 0 | 0 B | 0 | 0 | 0 | 2 (3 keys make no instance) |');
    // Registrations a service rule takes need nothing more; those a copy rule mirrors get the rule to write.
    expect(finding(result, 'service_registration_prefix')!.hint).toMatch(/^Register them .* e\.g\. `- \{ name: "discovery", from: "\/app\/discovery\/", action: service, service: \{ format: hostport \} \}`/);
  });

  it('says so when every registration is already taken by a service rule', async () => {
    const s = new MemorySource();
    const lease = s.grantLease(30);
    s.put('/services/web/web-0', '10.0.0.1:8080', lease);
    const loaded = parseConfig('version: 1\nid: t\nrules:\n  - { name: services, from: /services/, action: service }\n', 'm.yaml');
    const result = await runAudit({ source: s, config: loaded.config, configFile: 'm.yaml', mapping: loaded.mapping });
    expect(finding(result, 'service_registration_prefix')!.hint).toBe("Nothing to do: rule services registers them in Consul's catalog (`action: service`); `service_key_invalid` lists keys that make no instance.");
    expect(result.rules[0]).toMatchObject({ instances: 1, instancesWithoutLease: 0, noInstanceKeys: 0 });
    expect(finding(result, 'service_key_invalid')).toBeUndefined();
  });

  it('proposes the rule to write, in the format the values have, and shows it in every format', async () => {
    const result = await runAudit({ source: registrations(), config: emptyConfig() });
    const f = finding(result, 'service_registration_prefix')!;
    expect(f.examples.map((e) => [e.prefix, e.detail!.replace(/^.*values: /, '')])).toEqual([
      ['/app/discovery/web/', 'hostport'],
      ['/cfg/', 'hostport'],
      ['/services/redis_grpc/', 'hostport'],
      ['/services/web/', 'hostport'],
      ['/skydns/local/platform/auth/', 'skydns'],
      ['/skydns/local/platform/grpc/', 'skydns'],
      ['/svc2/api/', 'json:Address/Port'],
      ['/urls/web/', 'url'],
    ]);
    const rule = /`(- \{ .* \})`/.exec(f.hint)![1]!;
    expect(rule).toBe('- { name: "discovery", from: "/app/discovery/", action: service, service: { format: hostport } }');
    // The rule in the hint is one migration.yaml takes as it is.
    expect(parseConfig(`version: 1\nid: t\nrules:\n  ${rule}\n`, 'hint.yaml').config.rules[0]).toMatchObject({ action: 'service', service: { format: 'hostport', name: '{1}', id: '{1}-{-1}' } });
    expect(renderAudit(result, 'text')).toContain(`           next: ${f.hint}`);
    expect(renderAudit(result, 'markdown')).toContain('**Next:** Register them');
    const skydns = patternFindings({ kubernetes: [], locks: [], registrations: result.patterns.registrations.filter((p) => p.prefix.startsWith('/skydns/')) }, 'identity')[0]!;
    expect(skydns.hint).toContain('`- { name: "platform", from: "/skydns/local/platform/", action: service, service: { format: skydns } }`');
    const json = patternFindings({ kubernetes: [], locks: [], registrations: result.patterns.registrations.filter((p) => p.prefix.startsWith('/svc2/')) }, 'identity')[0]!;
    expect(json.hint).toContain('`- { name: "svc2", from: "/svc2/", action: service, service: { format: json, fields: { address: "Address", port: "Port" } } }`');
    const urls = patternFindings({ kubernetes: [], locks: [], registrations: result.patterns.registrations.filter((p) => p.prefix.startsWith('/urls/')) }, 'identity')[0]!;
    expect(urls.hint).toMatch(/^Their values carry a URL scheme/);
  });

  it('proposes a rule over the registration folder itself when its parent holds other keys too (a rule over the parent would take them into the catalog)', async () => {
    const source = new MemorySource();
    const lease = source.grantLease(30);
    for (let i = 0; i < 4; i++) source.put(`/orders/workers/10.0.0.${i}:8080`, `10.0.0.${i}:8080`, lease);
    for (let i = 0; i < 6; i++) source.put(`/orders/state/${i}`, 'pending');
    const result = await runAudit({ source, config: emptyConfig() });
    const f = finding(result, 'service_registration_prefix')!;
    expect(/`(- \{ .* \})`/.exec(f.hint)![1]).toMatch(/^- \{ name: "[^"]+", from: "\/orders\/workers\/", action: service/);
    // Where the parent holds nothing else, over the parent (`{1}` names the service), as before.
    for (let i = 0; i < 6; i++) source.delete(`/orders/state/${i}`);
    const alone = finding(await runAudit({ source, config: emptyConfig() }), 'service_registration_prefix')!;
    expect(/`(- \{ .* \})`/.exec(alone.hint)![1]).toMatch(/from: "\/orders\/", action: service/);
  });

  it('drafts action: service rules with the format and templates the keys need, and the draft loads and registers every instance', async () => {
    const result = await runAudit({ source: registrations(), config: emptyConfig(), depth: 1, top: 100 });
    const draft = draftMapping(result, { id: 'draft', generatedAt: '2026-01-01T00:00:00Z' });
    const loaded = parseConfig(draft.text, 'draft.yaml');
    const rules = Object.fromEntries(loaded.config.rules.map((r) => [r.from, r]));
    expect(rules['/services/']).toMatchObject({ name: 'services', action: 'service', service: { format: 'hostport', name: '{1}', id: '{1}-{-1}' } });
    expect(rules['/skydns/']).toMatchObject({ action: 'service', service: { format: 'skydns', name: '{3}', id: '{1}-{2}-{3}-{4}', fields: { address: 'host', port: 'port' } } });
    expect(rules['/svc2/']).toMatchObject({ action: 'service', service: { format: 'json', fields: { address: 'Address', port: 'Port' }, name: '{1}' } });
    // Registrations beside ordinary keys: a nested service rule where they have a folder of their own, else session-held keys.
    expect(rules['/app/']).toMatchObject({ action: 'copy', to: 'app/' });
    expect(rules['/app/discovery/']).toMatchObject({ name: 'app-discovery', action: 'service', service: { format: 'hostport', name: '{1}', id: '{1}-{-1}' } });
    expect(rules['/cfg/']).toMatchObject({ action: 'copy', to: 'cfg/', leases: 'session' });
    expect(rules['/urls/']).toMatchObject({ action: 'copy', to: 'urls/', leases: 'session' });
    expect(loaded.mapping.warnings.filter((w) => w.code === 'to-ignored-on-service')).toEqual([]);
    expect(draft.text).toContain('# service names redis_grpc have characters other than letters, digits and dashes: Consul registers them but logs a DNS warning');
    expect(draft.text).toContain('values with a URL scheme fit no `service.format`');
    const audited = await runAudit({ source: registrations(), config: loaded.config, configFile: 'draft.yaml', mapping: loaded.mapping });
    expect(finding(audited, 'service_key_invalid')).toBeUndefined();
    const instances = Object.fromEntries(audited.rules.filter((r) => r.action === 'service').map((r) => [r.rule, r.instances]));
    expect(instances).toEqual({ 'app-discovery': 1, services: 2, skydns: 2, svc2: 1 });
  });
});
