import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../src/config/load.js';
import { demoKeys, loadDemoKeyspace, type LoadedKeyspace } from '../fixtures/demo/keyspace.js';
import { consulTarget, rawEtcd, runCli, servers, uniquePrefix } from './support/harness.js';

/**
 * `migrate audit`, `init` and `plan` as a user runs them (the built CLI, real
 * etcd and Consul): configuration errors with file:line:column and exit 2,
 * one JSON document, YAML and markdown reports, the draft mapping, the probe.
 */
const raw = rawEtcd();
const root = `/${uniquePrefix('auditcli').slice(0, -1)}`;
let demo: LoadedKeyspace;

function env(): Record<string, string> {
  return { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: servers().consulAddress };
}

function dir(files: Record<string, string> = {}): string {
  const d = mkdtempSync(join(tmpdir(), 'audit-cli-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

beforeAll(async () => {
  demo = await loadDemoKeyspace(raw, demoKeys(root));
});

afterAll(async () => {
  await demo.stop();
  raw.close();
});

describe('configuration errors (exit 2, file:line:column on stderr)', () => {
  const cases: [string, string, RegExp][] = [
    ['bad YAML', 'version: 1\nid: x\nrules:\n  - name: a\n    from: "/a/\n', /bad\.yaml:\d+:\d+: not valid YAML/],
    ['an unknown field', 'version: 1\nid: x\nrules:\n  - name: a\n    from: /a/\n    to: a/\n    colour: red\n', /bad\.yaml:7:5: rules\[0\]\.colour: unknown field "colour"/],
    ['two copy rules into one Consul prefix', 'version: 1\nid: x\nrules:\n  - { name: a, from: /a/, to: app/ }\n  - { name: b, from: a/, to: app/x/ }\n', /bad\.yaml:5:\d+: rules\[1\]\.to: .*inside to "app\/"/],
    ['two rules with the same from', 'version: 1\nid: x\nrules:\n  - { name: a, from: /a/, to: a/ }\n  - { name: b, from: /a/, to: b/ }\n', /bad\.yaml:5:\d+: rules\[1\]\.from: duplicate from "\/a\/"/],
  ];
  for (const [what, text, message] of cases) {
    for (const command of ['audit', 'plan']) {
      it(`${command} refuses ${what}`, async () => {
        const run = await runCli([command, '-c', 'bad.yaml', '--progress', 'none'], { cwd: dir({ 'bad.yaml': text }), env: env() });
        expect(run.code, run.stderr).toBe(2);
        expect(run.stderr).toMatch(/error\[config_invalid\]/);
        expect(run.stderr).toMatch(message);
        expect(run.stdout).toBe('');
      });
    }
  }

  it('plan without any mapping file exits 2 naming what to do', async () => {
    const run = await runCli(['plan'], { cwd: dir(), env: env() });
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/error\[config_not_found\][\s\S]*migrate init/);
  });

  it('refuses bad flags with exit 2', async () => {
    for (const args of [['audit', '--sample', 'soon'], ['audit', '--depth', '0'], ['audit', '--format', 'junit']]) {
      const run = await runCli(args, { cwd: dir(), env: env() });
      expect(run.code, args.join(' ')).toBe(2);
    }
  });
});

describe('migrate audit on the demo keyspace', () => {
  it('--format json prints exactly one document; blockers exit 1; values never appear', async () => {
    const run = await runCli(['audit', '--prefix', `${root}/`, '--format', 'json', '--progress', 'none', '--depth', '3'], { cwd: dir(), env: env() });
    expect(run.code, run.stderr).toBe(1);
    const report = JSON.parse(run.stdout) as { status: string; mode: string; totals: { keys: number }; findings: { code: string }[] };
    expect(report).toMatchObject({ status: 'findings', mode: 'identity' });
    expect(report.totals.keys).toBe(demoKeys(root).length);
    expect(report.findings.map((f) => f.code)).toEqual(expect.arrayContaining(['value_too_large', 'kubernetes_prefix', 'lock_election_prefix', 'service_registration_prefix', 'lease_ttl_below_min', 'key_invalid_utf8']));
    expect(run.stdout).not.toMatch(/postgres:\/\/|BEGIN CERTIFICATE|holder=report-worker/);
  });

  it('--format yaml, markdown and text with NDJSON progress on stderr', async () => {
    const cwd = dir();
    const yaml = await runCli(['audit', '--prefix', `${root}/`, '--format', 'yaml', '--progress', 'json'], { cwd, env: env() });
    expect(parseYaml(yaml.stdout)).toMatchObject({ version: 1, command: 'audit', schemaVersion: 1 });
    const events = yaml.stderr.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { event: string });
    expect(events.some((e) => e.event === 'progress')).toBe(true);
    expect(events.at(-1)).toMatchObject({ event: 'end', exitCode: yaml.code });
    const markdown = await runCli(['audit', '--prefix', `${root}/`, '--format', 'markdown', '--progress', 'none'], { cwd, env: env() });
    expect(markdown.stdout).toMatch(/^# etcd → Consul migration audit\n\n\*\*Verdict: 1 blocker\*\*/);
    expect(markdown.stdout).toContain('| Severity | Code | Count | What |');
    const text = await runCli(['audit', '--prefix', `${root}/`, '--progress', 'none'], { cwd, env: env() });
    expect(text.stdout).toMatch(/Result: 1 blocker/);
    expect(text.stderr).toMatch(/identity mapping/);
  });

  it('init writes a draft that loads, audits with only unfixable blockers, and is not overwritten without --force', async () => {
    const cwd = dir();
    const init = await runCli(['init', '--prefix', `${root}/`, '--progress', 'none'], { cwd, env: env() });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stdout).toMatch(/wrote .*migration\.yaml: \d+ rule\(s\)/);
    expect(init.stdout).toContain('then run `migrate audit -c migration.yaml` and `migrate plan -c migration.yaml`');
    const text = readFileSync(join(cwd, 'migration.yaml'), 'utf8');
    expect(text).toMatch(/^# migration\.yaml: a DRAFT/);
    const loaded = loadConfig({ configFlag: 'migration.yaml', env: {}, cwd });
    const rules = loaded.config.rules;
    expect(rules.find((r) => r.from === `${root}/registry/`)).toMatchObject({ action: 'keep' });
    expect(rules.find((r) => r.from === `${root}/locks/`)).toMatchObject({ leases: 'skip' });
    expect(rules.find((r) => r.from === `${root}/election/`)).toMatchObject({ leases: 'skip' });
    expect(rules.find((r) => r.from === `${root}/legacy/`)).toMatchObject({ keys: 'escape' });

    const badId = await runCli(['init', '--prefix', `${root}/`, '--progress', 'none', '--force', '--id', 'bad id!'], { cwd, env: env() });
    expect(badId.code).toBe(2);
    expect(badId.stderr).toMatch(/error\[flag_invalid\]: --id "bad id!" is not an id of letters, digits/);
    expect(readFileSync(join(cwd, 'migration.yaml'), 'utf8')).toBe(text);

    const again = await runCli(['init', '--prefix', `${root}/`, '--progress', 'none'], { cwd, env: env() });
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/error\[file_exists\][\s\S]*--force/);
    expect(readFileSync(join(cwd, 'migration.yaml'), 'utf8')).toBe(text);
    const forced = await runCli(['init', '--prefix', `${root}/`, '--progress', 'none', '--force', '--format', 'json'], { cwd, env: env() });
    expect(forced.code, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ command: 'init', status: 'ok' });
    // Another file: the next steps name it, both of them.
    const elsewhere = await runCli(['init', '--prefix', `${root}/`, '--progress', 'none', '--output', 'draft.yaml'], { cwd, env: env() });
    expect(elsewhere.code, elsewhere.stderr).toBe(0);
    expect(elsewhere.stdout).toContain('then run `migrate audit -c draft.yaml` and `migrate plan -c draft.yaml`');
    // The servers from a file named with -c (its rules are not read), with nothing in the environment.
    writeFileSync(join(cwd, 'servers.yaml'), `version: 1\nid: servers\nsource: { endpoints: [${servers().etcdEndpoint}] }\ntarget: { address: ${servers().consulAddress} }\nrules:\n  - { name: other, from: /elsewhere/, to: elsewhere/ }\n`);
    const named = await runCli(['init', '-c', 'servers.yaml', '--prefix', `${root}/`, '--progress', 'none', '--output', 'named.yaml'], { cwd, env: {} });
    expect(named.code, named.stderr).toBe(0);
    expect(loadConfig({ configFlag: 'named.yaml', env: {}, cwd }).config.rules.map((r) => r.from)).toEqual(rules.map((r) => r.from));

    const audit = await runCli(['audit', '--prefix', `${root}/`, '--format', 'json', '--progress', 'none'], { cwd, env: env() });
    const report = JSON.parse(audit.stdout) as { mode: string; findings: { code: string; severity: string }[] };
    expect(report.mode).toBe('mapping');
    expect(report.findings.filter((f) => f.severity === 'blocker').map((f) => f.code)).toEqual(['value_too_large']);
    const plan = await runCli(['plan', '--prefix', `${root}/`, '--format', 'markdown', '--progress', 'none'], { cwd, env: env() });
    expect(plan.code, plan.stderr).toBe(1);
    expect(plan.stdout).toMatch(/^# Migration plan: etcd-to-consul/);
    expect(plan.stdout).toContain('model.bin');
  });

  it('audit --suggest-mapping writes the draft beside the report', async () => {
    const cwd = dir();
    const run = await runCli(['audit', '--prefix', `${root}/`, '--progress', 'none', '--suggest-mapping', 'draft.yaml'], { cwd, env: env() });
    expect(run.code).toBe(1);
    expect(existsSync(join(cwd, 'draft.yaml'))).toBe(true);
    expect(() => loadConfig({ configFlag: 'draft.yaml', env: {}, cwd })).not.toThrow();
    // Not overwritten: refused before the audit, with audit's own flags in the hint.
    const draft = readFileSync(join(cwd, 'draft.yaml'), 'utf8');
    const again = await runCli(['audit', '--prefix', `${root}/`, '--progress', 'none', '--suggest-mapping', 'draft.yaml'], { cwd, env: env() });
    expect(again.code).toBe(2);
    expect(again.stdout).toBe('');
    expect(again.stderr).toContain('migrate audit --suggest-mapping does not overwrite it');
    expect(again.stderr).toContain('next: Pass --force to overwrite it, or name another file with --suggest-mapping <file>.');
    expect(readFileSync(join(cwd, 'draft.yaml'), 'utf8')).toBe(draft);
  });

  it('--probe measures the target with scratch keys under the state prefix and removes them', async () => {
    const cwd = dir({ 'migration.yaml': `version: 1\nid: probe-${Date.now()}\nrules:\n  - { name: all, from: "${root}/", to: demo-probe/, keys: escape }\n` });
    const run = await runCli(['audit', '--prefix', `${root}/`, '--probe', '--format', 'json', '--progress', 'none'], { cwd, env: env() });
    const report = JSON.parse(run.stdout) as { estimate: { basis: { kind: string; throughput: { txnKeysPerSecond: number } } }; probe: { keys: number }; migrationId: string };
    expect(report.estimate.basis.kind).toBe('probe');
    expect(report.estimate.basis.throughput.txnKeysPerSecond).toBeGreaterThan(100);
    expect(report.probe.keys).toBe(512);
    const target = consulTarget();
    try {
      expect(await target.listKeys(`_migrate/${report.migrationId}/`)).toEqual([]);
    } finally {
      target.close();
    }
  });

  it('an unreachable etcd exits 3 with a hint', async () => {
    const run = await runCli(['audit', '--etcd-endpoints', 'http://127.0.0.1:9', '--progress', 'none'], { cwd: dir(), env: { CONSUL_HTTP_ADDR: servers().consulAddress } });
    expect(run.code).toBe(3);
    expect(run.stderr).toMatch(/error\[etcd_unreachable\][\s\S]*next:/);
  });

  it('swapped addresses (etcd pointed at Consul, Consul at etcd) exit 3 and say another service answered', async () => {
    const etcdAtConsul = await runCli(['audit', '--etcd-endpoints', servers().consulAddress, '--progress', 'none'], { cwd: dir(), env: { CONSUL_HTTP_ADDR: servers().consulAddress } });
    expect(etcdAtConsul.code).toBe(3);
    expect(etcdAtConsul.stderr).toContain('error[etcd_unreachable]');
    expect(etcdAtConsul.stderr).toMatch(/next: Something answered that does not speak etcd's gRPC/);
    expect(etcdAtConsul.stderr).not.toContain('Resolution note');
    const cwd = dir({ 'migration.yaml': `version: 1\nid: swapped-${Date.now()}\nrules:\n  - { name: all, from: "${root}/", to: swapped/ }\n` });
    const consulAtEtcd = await runCli(['verify', '--consul-addr', servers().etcdEndpoint, '--progress', 'none', '--rounds', '1'], { cwd, env: env() });
    expect(consulAtEtcd.code).toBe(3);
    expect(consulAtEtcd.stderr).toContain('error[consul_request_failed]');
    expect(consulAtEtcd.stderr).toContain(`${servers().etcdEndpoint} is not a Consul HTTP API`);
  });
});
