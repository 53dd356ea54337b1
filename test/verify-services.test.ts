import { randomBytes } from 'node:crypto';
import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { afterAll, describe, expect, it } from 'vitest';
import { VERIFY_REPORT_SCHEMA } from '../src/verify/report-schema.js';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv, servers } from './support/harness.js';

/**
 * `migrate verify` on service rules, against the real servers: the instances
 * that Registrator-style and SkyDNS keys make, compared with Consul's catalog.
 * Service names and instance ids carry the scenario's id: every test file
 * shares one Consul agent.
 */
const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

const validateReport = new Ajv({ allErrors: true, strict: true }).compile(VERIFY_REPORT_SCHEMA);

interface Report {
  clean: boolean;
  status: string;
  rules: { name: string; action: string; status: string; to: string | null; sourceKeys: number; compared: number; targetKeys: number; differences: number; byKind: Record<string, number>; unmappable: Record<string, number> }[];
  differences: { rule: string; key: string; kind: string; reason: string; detail: string; sourceKey: string | null }[];
  differencesTotal: number;
}

function parseReport(stdout: string): Report {
  const doc = JSON.parse(stdout);
  if (!validateReport(doc)) throw new Error(`verify JSON does not match its schema: ${JSON.stringify(validateReport.errors, null, 2)}`);
  return doc as Report;
}

function scenario(label: string) {
  const id = `vs-${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  // A long TTL: no dual-run keeps the checks passing in these scenarios, and a critical check is drift.
  const yaml = `version: 1
id: ${id}
rules:
  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - name: registrator
    from: ${root}/services/
    action: service
    service: { name: "{1}-${id}", id: "${id}-{1}-{-1}", check: { ttl: 10m } }
  - name: skydns
    from: ${root}/skydns/
    action: service
    service: { format: skydns, name: "{-2}-${id}", id: "${id}-dns-{-2}-{-1}", check: { ttl: 10m } }
`;
  return { id, root, dir: configDir(yaml) };
}

function verify(dir: string, args: string[]) {
  return runCli(['verify', '--progress', 'none', ...args], { cwd: dir, env: serverEnv() });
}

/** Removes the scenario's instances from the shared agent. */
async function deregisterAll(id: string) {
  for (const instance of await target.listServiceInstances(id, 'agent')) await target.deregisterService(instance.id);
}

describe('migrate verify of service rules (real servers)', () => {
  it('after a copy the catalog is at parity; a deregistered instance and a changed etcd key are drift (exit 1) named by instance and field', async () => {
    const s = scenario('svc');
    const lease = etcd.lease(3600, { autoKeepAlive: false });
    const leaseId = await lease.grant();
    // Registrator's etcd backend: /<prefix>/<service>/<host:container:port> = ip:port, under a TTL.
    await etcd.put(`${s.root}/services/web/w1`).value('10.0.0.5:50061').lease(leaseId);
    await etcd.put(`${s.root}/services/web/w2`).value('10.0.0.6:50061').lease(leaseId);
    await etcd.put(`${s.root}/services/api/a1`).value('10.0.0.7:8080');
    await etcd.put(`${s.root}/services/web/broken`).value('not an address');
    // SkyDNS: /skydns/<reversed domain>/<service>/<instance> = JSON.
    await etcd.put(`${s.root}/skydns/local/skydns/db/x1`).value(JSON.stringify({ host: '10.0.0.9', port: 5432, priority: 10 })).lease(leaseId);
    await etcd.put(`${s.root}/app/config`).value('c');
    try {
      const copy = await runCli(['copy', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
      expect(copy.code, copy.stderr).toBe(0);

      const clean = await verify(s.dir, ['--format', 'json', '--round-pause', '500ms']);
      expect(clean.code, clean.stderr + clean.stdout).toBe(0);
      const ok = parseReport(clean.stdout);
      expect(ok).toMatchObject({ clean: true, status: 'ok', differencesTotal: 0 });
      expect(ok.rules.map((r) => [r.name, r.action, r.status])).toEqual([['app', 'copy', 'parity'], ['registrator', 'service', 'parity'], ['skydns', 'service', 'parity']]);
      expect(ok.rules[1]).toMatchObject({ to: null, sourceKeys: 4, compared: 3, targetKeys: 3, unmappable: { 'value-not-hostport': 1 } });
      expect(ok.rules[2]).toMatchObject({ sourceKeys: 1, compared: 1, targetKeys: 1 });

      // Drift: an instance deregistered behind the tool's back, and a key etcd changed with no dual-run to follow it.
      const w1 = `${s.id}-web-w1`;
      await target.http.request({ method: 'PUT', path: `/v1/agent/service/deregister/${encodeURIComponent(w1)}` });
      await etcd.put(`${s.root}/services/web/w2`).value('10.0.0.6:50062').lease(leaseId);

      const drift = await verify(s.dir, ['--format', 'json', '--round-pause', '200ms']);
      expect(drift.code, drift.stderr).toBe(1);
      const report = parseReport(drift.stdout);
      expect(report).toMatchObject({ clean: false, status: 'drift', differencesTotal: 2 });
      expect(report.differences.map((d) => [d.rule, d.key, d.kind, d.reason, d.sourceKey])).toEqual([
        ['registrator', w1, 'missing', 'no-instance', `${s.root}/services/web/w1`],
        ['registrator', `${s.id}-web-w2`, 'instance', 'port', `${s.root}/services/web/w2`],
      ]);
      expect(report.rules.find((r) => r.name === 'registrator')).toMatchObject({ status: 'drift', differences: 2, byKind: { missing: 1, instance: 1 } });
      expect(report.rules.find((r) => r.name === 'skydns')).toMatchObject({ status: 'parity' });
      expect(drift.stdout).not.toContain('10.0.0.');
      expect(drift.stdout).not.toContain('5006');

      const recorded = JSON.parse((await target.readKey(`_migrate/${s.id}/verify/last`))!.value.toString());
      expect(recorded).toMatchObject({ clean: false, rules: { registrator: { status: 'drift', differences: 2 }, skydns: { status: 'parity' } } });

      // JUnit: one testcase per rule, the service rule's failure names its kinds.
      const junit = await verify(s.dir, ['--format', 'junit', '--no-record', '--rounds', '1']);
      expect(junit.code).toBe(1);
      expect(XMLValidator.validate(junit.stdout)).toBe(true);
      const cases = new XMLParser({ ignoreAttributes: false, isArray: (name) => name === 'testcase' }).parse(junit.stdout).testsuites.testsuite.testcase as { '@_name': string; failure?: { '@_message': string } }[];
      expect(cases.map((c) => c['@_name'])).toEqual(['app', 'registrator', 'skydns']);
      expect(cases[1]!.failure!['@_message']).toBe('2 persistent differences (missing 1, instance 1)');

      // A budget for the service rule tolerates them.
      const allowed = await verify(s.dir, ['--format', 'json', '--no-record', '--rounds', '1', '--allow', 'registrator=2']);
      expect(allowed.code, allowed.stderr).toBe(0);
      expect(parseReport(allowed.stdout).rules[1]).toMatchObject({ status: 'within-budget', differences: 2 });
    } finally {
      await lease.revoke().catch(() => undefined);
      await deregisterAll(s.id);
    }
  });
});

it('runs against the pinned Consul', () => {
  expect(servers().consulVersion).toMatch(/^\d+\.\d+\.\d+/);
});
