import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { freePort, startConsul, type ConsulServer } from '../scripts/local-servers.js';
import { consulIndex, privateConsul, runCli, servers } from './support/harness.js';

const CANARY_TOKEN = 'canary-token-3b9f2e71-doctor';

describe('migrate doctor (real servers)', () => {
  let aclConsul: ConsulServer;
  beforeAll(async () => {
    aclConsul = await startConsul({ acl: true });
  });
  afterAll(async () => {
    await aclConsul?.stop();
  });

  it('passes against running servers and prints one JSON document', async () => {
    const { etcdEndpoint, consulAddress, consulVersion } = servers();
    const run = await runCli(['doctor', '--format', 'json'], { env: { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress } });
    expect(run.code, run.stderr).toBe(0);
    const doc = JSON.parse(run.stdout);
    expect(doc).toMatchObject({ version: 1, command: 'doctor', status: 'ok', consul: { version: consulVersion, datacenter: 'dc1' }, etcd: { version: expect.stringMatching(/^3\./) } });
    const byName = Object.fromEntries(doc.checks.map((c: { name: string; status: string }) => [c.name, c.status]));
    expect(byName).toMatchObject({ 'etcd.reachable': 'ok', 'etcd.read': 'ok', 'consul.reachable': 'ok', 'consul.txn-limit': 'ok', 'consul.write-state': 'ok', 'state.meta': 'ok' });
    // The shared test agent runs without ACLs: doctor must say so loudly.
    expect(byName['consul.acl']).toBe('warn');
    expect(doc.checks.find((c: { name: string }) => c.name === 'consul.acl').message).toMatch(/ACLs are DISABLED/);
  });

  it('leaves nothing behind: the probe keys are deleted', async () => {
    const { etcdEndpoint, consulAddress } = servers();
    const run = await runCli(['doctor'], { env: { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress } });
    expect(run.code).toBe(0);
    const keys = await fetchKeys(consulAddress, '_migrate/default/scratch/');
    expect(keys).toEqual([]);
  });

  it('exits 3 against stopped servers and names the addresses it tried', async () => {
    const [etcdPort, consulPort] = [await freePort(), await freePort()];
    const run = await runCli(['doctor'], { env: { ETCDCTL_ENDPOINTS: `http://127.0.0.1:${etcdPort}`, CONSUL_HTTP_ADDR: `127.0.0.1:${consulPort}` } });
    expect(run.code).toBe(3);
    expect(run.stdout).toContain(`etcd at http://127.0.0.1:${etcdPort} is unreachable`);
    expect(run.stdout).toContain(`Consul at http://127.0.0.1:${consulPort} is unreachable`);
    expect(run.stdout).toMatch(/next: Start etcd or fix the endpoints/);
  });

  it('exits 3 when Consul refuses the token, without printing the token (text and JSON)', async () => {
    const env = { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: aclConsul.address, CONSUL_HTTP_TOKEN: CANARY_TOKEN };
    for (const format of ['text', 'json']) {
      const run = await runCli(['doctor', '--format', format], { env });
      expect(run.code).toBe(3);
      expect(run.stdout + run.stderr).toMatch(/refused the token/);
      expect(run.stdout + run.stderr).not.toContain(CANARY_TOKEN);
    }
    // The audit, which can go on without Consul, says the token was refused, not that it lacks agent:read.
    const audit = await runCli(['audit', '--prefix', '/nothing-here/', '--progress', 'none'], { env });
    expect(audit.code, audit.stderr).toBe(0);
    expect(audit.stdout).toMatch(/Consul could not be asked \(Consul at http:\/\/127\.0\.0\.1:\d+ refused the token/);
    expect(audit.stdout).not.toMatch(/lacks agent:read/);
    expect(audit.stdout + audit.stderr).not.toContain(CANARY_TOKEN);
  });

  it('with a valid token on an ACL-enforcing Consul, reports ACLs as enforced', async () => {
    const run = await runCli(['doctor', '--format', 'json'], { env: { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: aclConsul.address, CONSUL_HTTP_TOKEN: aclConsul.managementToken! } });
    expect(run.code, run.stdout + run.stderr).toBe(0);
    const doc = JSON.parse(run.stdout);
    expect(doc.consul.aclsEnforced).toBe(true);
    expect(doc.checks.find((c: { name: string }) => c.name === 'consul.acl')).toMatchObject({ status: 'ok' });
    expect(run.stdout).not.toContain(aclConsul.managementToken!);
  });

  it('a token that may not read /v1/agent/self: the Consul version is a warning (unknown, not checked), not "Consul unknown is supported"', async () => {
    const api = async (path: string, body: object) => {
      const res = await fetch(`${aclConsul.address}${path}`, { method: 'PUT', headers: { 'X-Consul-Token': aclConsul.managementToken! }, body: JSON.stringify(body) });
      expect(res.status, await res.clone().text()).toBe(200);
      return (await res.json()) as { SecretID: string };
    };
    const name = `no-agent-read-${Date.now().toString(36)}`;
    await api('/v1/acl/policy', { Name: name, Rules: 'key_prefix "" { policy = "write" }\nsession_prefix "" { policy = "write" }' });
    const { SecretID } = await api('/v1/acl/token', { Description: name, Policies: [{ Name: name }] });
    const run = await runCli(['doctor', '--format', 'json'], { env: { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: aclConsul.address, CONSUL_HTTP_TOKEN: SecretID } });
    expect(run.code, run.stdout + run.stderr).toBe(0);
    const checks = JSON.parse(run.stdout).checks as { name: string; status: string; message: string }[];
    expect(checks.find((c) => c.name === 'consul.version')).toMatchObject({ status: 'warn', message: expect.stringContaining('the Consul version is unknown') });
    // The byte limits are unread too, and said to be assumed: lowered ones would refuse a copy half way.
    expect(checks.find((c) => c.name === 'consul.txn-limit')).toMatchObject({ status: 'warn', message: expect.stringContaining("524288 bytes per txn, values up to 524288 bytes (Consul's defaults, assumed: the token may not read the agent's limits") });

    // A migration begun with such a token records no datacenter (it cannot tell it), and one that may read the agent goes on with it.
    const id = `noagent-${Date.now().toString(36)}`;
    const etcd = new Etcd3({ hosts: servers().etcdEndpoint });
    try {
      await etcd.put(`/${id}/app/k`).value('v');
    } finally {
      etcd.close();
    }
    const dir = mkdtempSync(join(tmpdir(), 'doctor-noagent-'));
    writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`);
    const env = (token: string) => ({ ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: aclConsul.address, CONSUL_HTTP_TOKEN: token });
    const copy = await runCli(['copy', '--progress', 'none'], { cwd: dir, env: env(SecretID) });
    expect(copy.code, copy.stderr).toBe(0);
    const status = await runCli(['status'], { cwd: dir, env: env(aclConsul.managementToken!) });
    expect(status.code, status.stderr).toBe(0);
    const verify = await runCli(['verify', '--progress', 'none'], { cwd: dir, env: env(aclConsul.managementToken!) });
    expect(verify.code, verify.stderr).toBe(0);
  });

  it('state of another etcd cluster fails doctor (every command refuses it); a changed mapping warns (the commands take it with --accept-mapping-change)', async () => {
    const { etcdEndpoint, consulAddress } = servers();
    const id = `doctor-identity-${Date.now().toString(36)}`;
    const dir = mkdtempSync(join(tmpdir(), 'migrate-doctor-'));
    writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/, to: ${id}/ }\n`);
    const env = { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress };
    const putMeta = async (meta: object) => {
      const res = await fetch(`${consulAddress}/v1/kv/_migrate/${id}/meta`, { method: 'PUT', body: JSON.stringify({ schemaVersion: 1, id, datacenters: ['dc1'], created: '2026-01-01T00:00:00Z', toolVersion: 'test', ...meta }) });
      expect(res.status).toBe(200);
    };
    const stateMeta = async () => {
      const run = await runCli(['doctor', '--format', 'json'], { cwd: dir, env });
      return { code: run.code, check: (JSON.parse(run.stdout).checks as { name: string; status: string; code?: string }[]).find((c) => c.name === 'state.meta') };
    };
    await putMeta({ etcdClusterId: '1234', mappingHash: 'x' });
    // With the exit code every command refuses it with.
    expect(await stateMeta()).toMatchObject({ code: 4, check: { status: 'fail', code: 'identity_cluster_mismatch', exitCode: 4 } });
    // The right cluster, another mapping.
    const copy = await runCli(['copy', '--progress', 'none'], { cwd: dir, env: { ...env } });
    expect(copy.code).toBe(4);
    const clusterId = /the configured etcd is cluster (\d+)/.exec(copy.stderr)?.[1];
    expect(clusterId).toMatch(/^\d+$/);
    await putMeta({ etcdClusterId: clusterId, mappingHash: 'another' });
    expect(await stateMeta()).toMatchObject({ code: 0, check: { status: 'warn', code: 'identity_mapping_changed' } });
    // State every command refuses fails doctor too, with the exit code those commands give.
    await putMeta({ etcdClusterId: clusterId, mappingHash: 'another', schemaVersion: 2 });
    expect(await stateMeta()).toMatchObject({ code: 2, check: { status: 'fail', code: 'state_schema_newer' } });
    expect((await fetch(`${consulAddress}/v1/kv/_migrate/${id}/meta`, { method: 'PUT', body: 'not json' })).status).toBe(200);
    expect(await stateMeta()).toMatchObject({ code: 4, check: { status: 'fail', code: 'state_corrupt' } });
    await fetch(`${consulAddress}/v1/kv/_migrate/${id}/?recurse`, { method: 'DELETE' });
  });

  it('fails on any state document the commands refuse, not only meta: a checkpoint a newer release wrote, or one that is not JSON', async () => {
    const { etcdEndpoint, consulAddress } = servers();
    const id = `doctor-docs-${Date.now().toString(36)}`;
    const dir = mkdtempSync(join(tmpdir(), 'migrate-doctor-'));
    writeFileSync(join(dir, 'migration.yaml'), `version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/, to: ${id}/ }\n`);
    const env = { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress };
    expect((await runCli(['copy', '--progress', 'none'], { cwd: dir, env })).code).toBe(0);
    const documents = async () => {
      const run = await runCli(['doctor', '--format', 'json'], { cwd: dir, env });
      return { code: run.code, check: (JSON.parse(run.stdout).checks as { name: string; status: string; code?: string }[]).find((c) => c.name === 'state.documents') };
    };
    expect(await documents()).toMatchObject({ code: 0, check: { status: 'ok' } });
    const checkpoint = `${consulAddress}/v1/kv/_migrate/${id}/checkpoint`;
    const original = await (await fetch(`${checkpoint}?raw`)).text();
    expect((await fetch(checkpoint, { method: 'PUT', body: JSON.stringify({ ...JSON.parse(original), schemaVersion: 2 }) })).status).toBe(200);
    expect(await documents()).toMatchObject({ code: 2, check: { status: 'fail', code: 'state_schema_newer' } });
    expect((await fetch(checkpoint, { method: 'PUT', body: 'xx' })).status).toBe(200);
    expect(await documents()).toMatchObject({ code: 4, check: { status: 'fail', code: 'state_corrupt' } });
    expect((await fetch(checkpoint, { method: 'PUT', body: original })).status).toBe(200);
    // A rule document that says Consul owns the rule, and no owners document saying so: every command refuses it.
    const rule = { schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'consul', updated: '2026-12-01T10:00:00Z', history: [{ phase: 'cutover', at: '2026-12-01T10:00:00Z', by: 'ops' }] };
    expect((await fetch(`${consulAddress}/v1/kv/_migrate/${id}/rules/app`, { method: 'PUT', body: JSON.stringify(rule) })).status).toBe(200);
    expect((await fetch(`${consulAddress}/v1/kv/_migrate/${id}/owners`, { method: 'PUT', body: JSON.stringify({ schemaVersion: 1, updated: '2026-12-01T10:00:00Z', rules: {} }) })).status).toBe(200);
    expect(await documents()).toMatchObject({ code: 4, check: { status: 'fail', code: 'state_inconsistent' } });
    await fetch(`${consulAddress}/v1/kv/_migrate/${id}/?recurse`, { method: 'DELETE' });
  });

  it('finds the configuration in the documented order: --config, $MIGRATE_CONFIG, ./migration.yaml', async () => {
    const { etcdEndpoint, consulAddress } = servers();
    const dir = mkdtempSync(join(tmpdir(), 'migrate-doctor-'));
    for (const id of ['local', 'env', 'flag']) writeFileSync(join(dir, `${id}.yaml`), `version: 1\nid: ${id}\n`);
    writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: local\n');
    const env = { ETCDCTL_ENDPOINTS: etcdEndpoint, CONSUL_HTTP_ADDR: consulAddress };
    const used = async (args: string[], extra: Record<string, string> = {}) => JSON.parse((await runCli(['doctor', '--format', 'json', ...args], { cwd: dir, env: { ...env, ...extra } })).stdout).configFile;
    expect(await used(['--config', 'flag.yaml'], { MIGRATE_CONFIG: join(dir, 'env.yaml') })).toBe(join(dir, 'flag.yaml'));
    expect(await used([], { MIGRATE_CONFIG: join(dir, 'env.yaml') })).toBe(join(dir, 'env.yaml'));
    expect(await used([])).toBe(join(dir, 'migration.yaml'));
  });

  it('a malformed migration.yaml exits 2 with file:line:column and contacts no server', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrate-doctor-bad-'));
    writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: bad\ntarget:\n  adress: http://x\n');
    const own = await privateConsul();
    const before = await consulIndex(own.address);
    const run = await runCli(['doctor'], { cwd: dir, env: { CONSUL_HTTP_ADDR: own.address } });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`${join(dir, 'migration.yaml')}:4:3: target.adress: unknown field "adress"`);
    expect(run.stdout).toBe('');
    expect(await consulIndex(own.address)).toBe(before);
    await own.stop();
  });
});

async function fetchKeys(address: string, prefix: string): Promise<string[]> {
  const { ConsulTarget } = await import('../src/stores/consul.js');
  const target = new ConsulTarget({ address });
  try {
    return await target.listKeys(prefix);
  } finally {
    target.close();
  }
}
