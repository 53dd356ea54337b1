import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, Range } from 'etcd3';
import pLimit from 'p-limit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsul, startEtcd, type ConsulServer, type EtcdServer } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { runCli, servers } from './support/harness.js';
import { eventually, startDualRun } from './support/dualrun.js';

/**
 * Least privilege (issue 8): a Consul with ACLs on and default_policy deny, an
 * etcd with auth on, and every command run with only the migrator's policy
 * and role as `migrate acl` prints them. Also the canary-secret sweep: no
 * token or password ever reaches stdout or stderr, whatever the command,
 * format or outcome.
 */

const ETCD_ROOT_PASSWORD = 'root-pw-acl-test';
/** Valid credentials whose values the output must never show. */
const CANARY_TOKEN = 'c0ffee00-4a11-4b1d-9e57-ca9a2f00d001';
const CANARY_PASSWORD = 'canary-etcd-password-5e7f1d2c';
/** Credentials the servers refuse; the error messages must not show them either. */
const REFUSED_TOKEN = 'c0ffee00-dead-4bad-8bad-ca9a2f00dbad';
const REFUSED_PASSWORD = 'canary-wrong-password-0a9b8c7d';

interface AclDoc {
  version: number;
  consul: { policies: { name: string; role: string; rule?: string; rules: string; structured: Record<string, Record<string, { policy: string }>> }[] };
  etcd: { role: string; permissions: { type: 'read' | 'readwrite'; keyBase64: string; rangeEndBase64: string; when: string }[] };
}

describe('least privilege: every command with only the policies `migrate acl` prints', () => {
  let consul: ConsulServer;
  let etcd: EtcdServer;
  let root: Etcd3;
  let mgmt: ConsulTarget;
  let dir: string;
  let acl: AclDoc;
  /** A second migration: one service rule (its own etcd role and migrator token). */
  let svcDir: string;
  let svcAcl: AclDoc;
  let svcToken: string;
  const id = `acl-${Date.now().toString(36)}`;
  const p = `t-${id}/`;

  const consulApi = async (method: 'GET' | 'PUT', path: string, body?: unknown) => {
    const response = await mgmt.http.request({ method, path, body: body === undefined ? undefined : JSON.stringify(body) });
    return JSON.parse(response.body.toString('utf8'));
  };
  /** A token holding only `rules`; `secret` fixes its SecretID (Consul accepts a chosen UUID). */
  const tokenWith = async (name: string, rules: string, secret?: string): Promise<string> => {
    await consulApi('PUT', '/v1/acl/policy', { Name: name, Rules: rules });
    const token = await consulApi('PUT', '/v1/acl/token', { Description: name, Policies: [{ Name: name }], ...(secret ? { SecretID: secret } : {}) });
    return token.SecretID as string;
  };
  const keysUnder = async (prefix: string) => mgmt.listKeys(prefix);

  beforeAll(async () => {
    [consul, etcd] = await Promise.all([startConsul({ acl: true, version: servers().consulVersion }), startEtcd()]);
    mgmt = new ConsulTarget({ address: consul.address, token: consul.managementToken! });
    root = new Etcd3({ hosts: etcd.endpoint });
    // Two rules with a gap between them (`${p}other/`), a leased key, and keys outside every rule.
    for (let i = 0; i < 20; i++) await root.put(`${p}app/k${String(i).padStart(2, '0')}`).value(`v${i}`);
    for (let i = 0; i < 5; i++) await root.put(`${p}svc/s${i}`).value(`s${i}`);
    await root.put(`${p}other/secret`).value('not migrated');
    await root.put('outside/x').value('not migrated');
    const lease = root.lease(300, { autoKeepAlive: false });
    await lease.put(`${p}app/leased`).value('held');
    // A service registration in Registrator's layout, leased: the service migration makes it instance web-i1 of `web`, with a TTL check.
    await lease.put(`${p}services/web/i1`).value('10.0.0.1:8080');

    dir = mkdtempSync(join(tmpdir(), 'migrate-acl-'));
    writeFileSync(join(dir, 'migration.yaml'), [
      'version: 1',
      `id: ${id}`,
      'rules:',
      `  - { name: app, from: "${p}app/", to: "${p}app/" }`,
      `  - { name: svc, from: "${p}svc/", to: "${p}svc/" }`,
      `  - { name: k8s, from: "/registry/", action: keep }`,
      '',
    ].join('\n'));
    const printed = await runCli(['acl', '--format', 'json'], { cwd: dir });
    expect(printed.code, printed.stderr).toBe(0);
    acl = JSON.parse(printed.stdout) as AclDoc;
    svcDir = mkdtempSync(join(tmpdir(), 'migrate-acl-svc-'));
    writeFileSync(join(svcDir, 'migration.yaml'), ['version: 1', `id: ${id}-svc`, 'rules:', `  - { name: catalog, from: "${p}services/", action: service }`, ''].join('\n'));
    const printedSvc = await runCli(['acl', '--format', 'json'], { cwd: svcDir });
    expect(printedSvc.code, printedSvc.stderr).toBe(0);
    svcAcl = JSON.parse(printedSvc.stdout) as AclDoc;

    // Each migrator's etcd role, exactly the read grants `migrate acl` prints; then auth on.
    await root.user('root').create(ETCD_ROOT_PASSWORD);
    await root.role('root').create();
    await root.user('root').addRole('root');
    for (const doc of [acl, svcAcl]) {
      const role = root.role(doc.etcd.role);
      await role.create();
      // Write comes later: `migrate acl` prints it for the first cutover.
      for (const perm of doc.etcd.permissions.filter((x) => x.when === 'always')) {
        await role.grant({ permission: perm.type === 'read' ? 'Read' : 'Readwrite', range: new Range(Buffer.from(perm.keyBase64, 'base64'), Buffer.from(perm.rangeEndBase64, 'base64')) });
      }
      const user = root.user(doc.etcd.role);
      await user.create(CANARY_PASSWORD);
      await user.addRole(doc.etcd.role);
    }
    await root.auth.authEnable();
    root.close();
    root = new Etcd3({ hosts: etcd.endpoint, auth: { username: 'root', password: ETCD_ROOT_PASSWORD } });

    const migrator = acl.consul.policies.find((x) => x.role === 'migrator')!;
    await tokenWith(migrator.name, migrator.rules, CANARY_TOKEN);
    const svcMigrator = svcAcl.consul.policies.find((x) => x.role === 'migrator')!;
    svcToken = await tokenWith(svcMigrator.name, svcMigrator.rules);
  }, 60_000);

  afterAll(async () => {
    root?.close();
    mgmt?.close();
    await Promise.all([consul?.stop(), etcd?.stop()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (svcDir) rmSync(svcDir, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string> = {}) => ({
    ETCDCTL_ENDPOINTS: etcd.endpoint,
    ETCDCTL_USER: acl.etcd.role,
    ETCDCTL_PASSWORD: CANARY_PASSWORD,
    CONSUL_HTTP_ADDR: consul.address,
    CONSUL_HTTP_TOKEN: CANARY_TOKEN,
    ...extra,
  });

  it('acl: the migrator policy, one policy per copy rule for its applications, and the etcd role', () => {
    expect(acl.version).toBe(1);
    expect(acl.consul.policies.map((x) => x.name)).toEqual([`migrate-${id}-migrator`, `migrate-${id}-verifier`, `migrate-${id}-app-app`, `migrate-${id}-app-svc`]);
    const migrator = acl.consul.policies[0]!.structured;
    expect(migrator.key_prefix).toMatchObject({ [`${p}app/`]: { policy: 'write' }, [`${p}svc/`]: { policy: 'write' }, [`_migrate/${id}/`]: { policy: 'write' } });
    expect(migrator.session_prefix).toEqual({ '': { policy: 'write' } });
    const app = acl.consul.policies[2]!.structured;
    expect(app).toEqual({ key_prefix: { [`${p}app/`]: { policy: 'write' } }, key: { [`_migrate/${id}/rules/app`]: { policy: 'read' }, [`_migrate/${id}/owners`]: { policy: 'read' } } });
    // Read on both rule ranges, the dual-run's one watch across the gap between them, and write only from cutover on.
    const reads = acl.etcd.permissions.filter((x) => x.when === 'always').map((x) => [Buffer.from(x.keyBase64, 'base64').toString(), Buffer.from(x.rangeEndBase64, 'base64').toString()]);
    expect(reads).toEqual([[`${p}app/`, `${p}app0`], [`${p}svc/`, `${p}svc0`], [`${p}app/`, `${p}svc0`]]);
    expect(acl.etcd.permissions.filter((x) => x.when === 'cutover').every((x) => x.type === 'readwrite')).toBe(true);
  });

  it('datacenters: in the rules: Consul accepts the per-datacenter policies with their Datacenters, and applies each only in its datacenters', async () => {
    const dcDir = mkdtempSync(join(tmpdir(), 'migrate-acl-dc-'));
    // Outside ${p}: the other cases count the keys there.
    const to = `dc-${id}/`;
    const reader = (token: string) => new ConsulTarget({ address: consul.address, token });
    try {
      writeFileSync(join(dcDir, 'migration.yaml'), [
        'version: 1',
        `id: ${id}-dc`,
        // The test agent is the single server of datacenter dc1: the primary. dc2 does not exist here, and need not for the policies.
        'target: { datacenter: dc1 }',
        'rules:',
        `  - { name: shared, from: "${p}app/", to: "${to}shared/", datacenters: [dc1, dc2] }`,
        `  - { name: far, from: "${p}svc/", to: "${to}far/", datacenters: [dc2] }`,
        '',
      ].join('\n'));
      const printed = await runCli(['acl', '--format', 'json'], { cwd: dcDir });
      expect(printed.code, printed.stderr).toBe(0);
      const doc = JSON.parse(printed.stdout) as { consul: { policies: (AclDoc['consul']['policies'][number] & { datacenters: string[] | null })[] } };
      expect(doc.consul.policies.map((x) => [x.name, x.datacenters])).toEqual([
        [`migrate-${id}-dc-migrator-dc1`, ['dc1']], [`migrate-${id}-dc-migrator-dc2`, ['dc2']],
        [`migrate-${id}-dc-verifier-dc1`, ['dc1']], [`migrate-${id}-dc-verifier-dc2`, ['dc2']],
        [`migrate-${id}-dc-app-shared`, ['dc1', 'dc2']], [`migrate-${id}-dc-app-far`, ['dc2']],
      ]);
      for (const policy of doc.consul.policies) {
        await consulApi('PUT', '/v1/acl/policy', { Name: policy.name, Rules: policy.rules, Datacenters: policy.datacenters });
        const stored = await consulApi('GET', `/v1/acl/policy/name/${policy.name}`);
        expect(stored.Datacenters, policy.name).toEqual(policy.datacenters);
      }
      const tokenFor = async (description: string, names: string[]) => (await consulApi('PUT', '/v1/acl/token', { Description: description, Policies: names.map((Name) => ({ Name })) })).SecretID as string;
      const migratorPolicies = doc.consul.policies.filter((x) => x.role === 'migrator').map((x) => x.name);
      const putStatus = async (token: string, key: string) => {
        const client = reader(token);
        try {
          return (await client.http.request({ method: 'PUT', path: `/v1/kv/${key}`, body: 'x', accept: [403] })).status;
        } finally {
          client.close();
        }
      };
      // The migrator's token holds every per-datacenter policy: in dc1 only dc1's apply (the shared rule, not the far one).
      const migrator = await tokenFor(`migrator ${id}-dc`, migratorPolicies);
      expect(await putStatus(migrator, `${to}shared/k`)).toBe(200);
      expect(await putStatus(migrator, `${to}far/k`)).toBe(403);
      // dc2's policy alone grants nothing in dc1, though its rules name the same prefix.
      const dc2Only = await tokenFor(`dc2 ${id}-dc`, [`migrate-${id}-dc-migrator-dc2`]);
      expect(await putStatus(dc2Only, `${to}shared/k2`)).toBe(403);
      expect(await putStatus(dc2Only, `_migrate/${id}-dc/probe`)).toBe(403);
      // The same rules without Datacenters would: the restriction is the policy's, not the rules'.
      const unrestricted = await tokenWith(`dc2-unrestricted-${id}`, doc.consul.policies.find((x) => x.name === `migrate-${id}-dc-migrator-dc2`)!.rules);
      expect(await putStatus(unrestricted, `${to}far/k`)).toBe(200);
    } finally {
      await mgmt.http.request({ method: 'DELETE', path: `/v1/kv/${to}`, query: { recurse: true } });
      rmSync(dcDir, { recursive: true, force: true });
    }
  });

  it('doctor, audit, plan, copy --dry-run, copy, verify, and export succeed with only those rights', async () => {
    const doctor = await runCli(['doctor', '--format', 'json'], { cwd: dir, env: env() });
    expect(doctor.code, doctor.stdout + doctor.stderr).toBe(0);
    const checks = Object.fromEntries((JSON.parse(doctor.stdout).checks as { name: string; status: string }[]).map((c) => [c.name, c.status]));
    expect(checks).toMatchObject({ 'etcd.read': 'ok', 'etcd.write': 'warn', 'consul.acl': 'ok', 'consul.write-state': 'ok', 'consul.permissions': 'ok' });
    // Read-only is enough until a cutover, so a warning (exit 0) naming what needs it.
    expect(doctor.stdout).toContain(`the etcd user may not write prefix ${p}app/, prefix ${p}svc/`);

    const audit = await runCli(['audit', '--format', 'json'], { cwd: dir, env: env() });
    expect([0, 1], audit.stderr).toContain(audit.code);
    expect(JSON.parse(audit.stdout).scope.rulesOnly).toBe(true);
    const plan = await runCli(['plan'], { cwd: dir, env: env() });
    expect(plan.code, plan.stderr).toBe(0);

    const dry = await runCli(['copy', '--dry-run'], { cwd: dir, env: env() });
    expect(dry.code, dry.stderr).toBe(0);
    expect(await keysUnder(`${p}`)).toEqual([]);
    const copy = await runCli(['copy'], { cwd: dir, env: env() });
    expect(copy.code, copy.stdout + copy.stderr).toBe(0);
    expect((await keysUnder(`${p}app/`)).length).toBe(21);
    expect(await keysUnder(`${p}other/`)).toEqual([]);
    const verify = await runCli(['verify', '--rounds', '1'], { cwd: dir, env: env() });
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    // The CI token: verify (recording its summary) with the read-only verifier policy.
    const verifierPolicy = acl.consul.policies.find((x) => x.role === 'verifier')!;
    const verifierToken = await tokenWith(verifierPolicy.name, verifierPolicy.rules);
    const ci = await runCli(['verify', '--rounds', '1', '--format', 'junit'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: verifierToken }) });
    expect(ci.code, ci.stdout + ci.stderr).toBe(0);
    // Without read on "/<to>", Consul hides keys stranded with a leading "/" and verify would report parity over them.
    const blind = Object.fromEntries(Object.entries(verifierPolicy.structured.key_prefix!).filter(([prefix]) => !prefix.startsWith('/')));
    expect(Object.keys(blind).length).toBeLessThan(Object.keys(verifierPolicy.structured.key_prefix!).length);
    const blindToken = await tokenWith(`${verifierPolicy.name}-blind`, JSON.stringify({ ...verifierPolicy.structured, key_prefix: blind }));
    const blindRun = await runCli(['verify', '--rounds', '1'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: blindToken }) });
    expect(blindRun.code, blindRun.stdout + blindRun.stderr).toBe(3);
    expect(blindRun.stderr).toContain(`key:read on prefix /${p}app/ (rule app: keys stranded with a leading "/")`);
    const blindDoctor = await runCli(['doctor'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: blindToken }) });
    expect(blindDoctor.stdout + blindDoctor.stderr).toContain(`key:read on prefix /${p}app/`);
    // Without session read, Consul hides the leased key's session as if it were gone: a permission error, not drift.
    const { session_prefix: _sessions, ...sessionless } = verifierPolicy.structured;
    expect(_sessions).toBeDefined();
    const sessionlessRun = await runCli(['verify', '--rounds', '1', '--no-record'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: await tokenWith(`${verifierPolicy.name}-sessionless`, JSON.stringify(sessionless)) }) });
    expect(sessionlessRun.code, sessionlessRun.stdout + sessionlessRun.stderr).toBe(3);
    expect(sessionlessRun.stderr).toContain('error[consul_permission_denied]: Consul hid session');
    expect(sessionlessRun.stdout).not.toContain('session-gone');
    const copyAgain = await runCli(['copy'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: verifierToken }) });
    expect(copyAgain.code).toBe(3);
    expect(copyAgain.stderr).toContain(`key:write on prefix _migrate/${id}/ (state)`);
    const out = join(dir, 'kv.json');
    const exported = await runCli(['export', '--out', out], { cwd: dir, env: env() });
    expect(exported.code, exported.stderr).toBe(0);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toHaveLength(26);

    // Another migration's migrator token (its own printed policy) sees this one's rules: a rule writing under its to is a blocker.
    const overlapDir = mkdtempSync(join(tmpdir(), 'migrate-acl-overlap-'));
    try {
      writeFileSync(join(overlapDir, 'migration.yaml'), ['version: 1', `id: ${id}-overlap`, 'rules:', `  - { name: sub, from: "${p}app/", to: "${p}app/sub/" }`, ''].join('\n'));
      const plan = await runCli(['plan', '--format', 'json'], { cwd: overlapDir, env: env({ CONSUL_HTTP_TOKEN: svcToken }) });
      expect(JSON.parse(plan.stdout).blockers, plan.stderr).toContainEqual(expect.objectContaining({ code: 'migration_overlap' }));
      // A token that reads only its own migration's state (not the policy `migrate acl` prints): the check is blind, and says so.
      const svcPolicy = svcAcl.consul.policies.find((x) => x.role === 'migrator')!.structured;
      const ownStateOnly = Object.fromEntries(Object.entries(svcPolicy.key_prefix!).filter(([prefix]) => prefix !== '_migrate/'));
      expect(Object.keys(ownStateOnly).length).toBe(Object.keys(svcPolicy.key_prefix!).length - 1);
      const narrow = await tokenWith(`${id}-own-state-only`, JSON.stringify({ ...svcPolicy, key_prefix: ownStateOnly }));
      const blind = await runCli(['plan', '--format', 'json'], { cwd: overlapDir, env: env({ CONSUL_HTTP_TOKEN: narrow }) });
      expect(JSON.parse(blind.stdout).blockers, blind.stderr).not.toContainEqual(expect.objectContaining({ code: 'migration_overlap' }));
      expect(blind.stderr).toContain('warning: the Consul token may not read all of the state prefix _migrate/ (its ACLs hid some of it): migrations recorded there were not checked against this one');
      // The same 404 (every key there hidden) to a key listing: refused, not an empty prefix.
      const narrowTarget = new ConsulTarget({ address: consul.address, token: narrow });
      try {
        await expect(narrowTarget.listKeys('_migrate/')).rejects.toMatchObject({ code: 'consul_permission_denied' });
      } finally {
        narrowTarget.close();
      }
    } finally {
      rmSync(overlapDir, { recursive: true, force: true });
    }
  });

  it('a token without write on one rule\'s target: copy, dualrun and verify stop before any work, naming the permission and prefix (exit 3)', async () => {
    const negId = `${id}-neg`;
    const negDir = mkdtempSync(join(tmpdir(), 'migrate-acl-neg-'));
    try {
      writeFileSync(join(negDir, 'migration.yaml'), readFileSync(join(dir, 'migration.yaml'), 'utf8').replace(`id: ${id}`, `id: ${negId}`).replaceAll(`to: "${p}`, `to: "${p}neg-`));
      const printed = JSON.parse((await runCli(['acl', '--format', 'json'], { cwd: negDir })).stdout) as AclDoc;
      const full = printed.consul.policies.find((x) => x.role === 'migrator')!.structured;
      // Everything but the svc rule's target.
      const keyPrefix = Object.fromEntries(Object.entries(full.key_prefix!).filter(([prefix]) => prefix !== `${p}neg-svc/`));
      const token = await tokenWith(`neg-${negId}`, JSON.stringify({ ...full, key_prefix: keyPrefix }));
      const before = await mgmt.http.request({ method: 'GET', path: '/v1/kv/', query: { keys: true } });
      for (const args of [['copy'], ['copy', '--format', 'json'], ['verify'], ['dualrun', '--baseline']]) {
        const run = await runCli(args, { cwd: negDir, env: env({ CONSUL_HTTP_TOKEN: token }) });
        expect(run.code, `${args.join(' ')}: ${run.stdout}${run.stderr}`).toBe(3);
        expect(run.stderr).toContain('error[consul_permission_denied]');
        expect(run.stderr).toContain(`key:${args[0] === 'verify' ? 'read' : 'write'} on prefix ${p}neg-svc/ (rule svc)`);
        expect(run.stderr).not.toContain(token);
        if (args.includes('json')) expect(JSON.parse(run.stdout).error).toMatchObject({ code: 'consul_permission_denied', missing: [{ permission: 'key:write', prefix: `${p}neg-svc/`, for: 'rule svc' }] });
      }
      expect(await keysUnder(`${p}neg-`)).toEqual([]);
      expect(await keysUnder(`_migrate/${negId}/`)).toEqual([]);
      const after = await mgmt.http.request({ method: 'GET', path: '/v1/kv/', query: { keys: true } });
      expect(after.headers['x-consul-index']).toBe(before.headers['x-consul-index']);
      // Every missing permission at once, not the first only: a fix, a rerun, the next one.
      const { session_prefix: sessions, ...withoutSessions } = { ...full, key_prefix: keyPrefix } as AclDoc['consul']['policies'][number]['structured'];
      expect(sessions).toBeDefined();
      const twoMissing = await runCli(['copy'], { cwd: negDir, env: env({ CONSUL_HTTP_TOKEN: await tokenWith(`neg2-${negId}`, JSON.stringify(withoutSessions)) }) });
      expect(twoMissing.code, twoMissing.stderr).toBe(3);
      expect(twoMissing.stderr).toContain(`key:write on prefix ${p}neg-svc/ (rule svc)`);
      expect(twoMissing.stderr).toContain('session:write');
      expect(await keysUnder(`${p}neg-`)).toEqual([]);
      const doctor = await runCli(['doctor'], { cwd: negDir, env: env({ CONSUL_HTTP_TOKEN: token }) });
      expect(doctor.code).toBe(3);
      expect(doctor.stdout).toMatch(new RegExp(`FAIL  consul.permissions .*key:write on prefix ${p}neg-svc/ \\(rule svc\\)`));
    } finally {
      rmSync(negDir, { recursive: true, force: true });
    }
  });

  it('an etcd role that may not read one rule\'s range: dualrun --ha stops at once (exit 3) naming the rule, rather than wait as a standby and fail only when it leads', async () => {
    const wideId = `${id}-wide`;
    const wideDir = mkdtempSync(join(tmpdir(), 'migrate-acl-wide-'));
    try {
      // A rule over ${p}zz/, outside every range the role `migrate acl` printed for the first mapping reads.
      writeFileSync(join(wideDir, 'migration.yaml'), readFileSync(join(dir, 'migration.yaml'), 'utf8').replace(`id: ${id}`, `id: ${wideId}`).replaceAll(`to: "${p}`, `to: "${p}wide-`).replace('rules:\n', `rules:\n  - { name: other, from: "${p}zz/", to: "${p}wide-zz/" }\n`));
      const printed = JSON.parse((await runCli(['acl', '--format', 'json'], { cwd: wideDir })).stdout) as AclDoc;
      const migrator = printed.consul.policies.find((x) => x.role === 'migrator')!;
      const token = await tokenWith(`wide-${wideId}`, migrator.rules);
      const run = await runCli(['dualrun', '--ha', '--baseline'], { cwd: wideDir, env: env({ CONSUL_HTTP_TOKEN: token }), timeoutMs: 30_000 });
      expect(run.code, run.stderr).toBe(3);
      expect(run.stderr).toContain(`error[etcd_permission_denied]: dualrun: etcd does not let this user read rule other (${p}zz/); nothing was written.`);
      expect(await keysUnder(`_migrate/${wideId}/`)).toEqual([]);
      expect(await keysUnder(`${p}wide-`)).toEqual([]);
      // A role that reads each rule but not the gap between them: the one watch over both is refused, said so before the lock.
      const gapless = root.role(`gapless-${id}`);
      await gapless.create();
      for (const rule of ['app', 'svc']) await gapless.grant({ permission: 'Read', range: Range.prefix(`${p}${rule}/`) });
      await root.user(`gapless-${id}`).create(CANARY_PASSWORD);
      await root.user(`gapless-${id}`).addRole(`gapless-${id}`);
      const gap = await runCli(['dualrun', '--ha'], { cwd: dir, env: env({ ETCDCTL_USER: `gapless-${id}` }), timeoutMs: 30_000 });
      expect(gap.code, gap.stderr).toBe(3);
      expect(gap.stderr).toContain(`error[etcd_permission_denied]: dualrun: etcd does not let this user read the watch range from the first rule to the last, ${p}app/ to ${p}svc0 (the gaps between the rules included`);
    } finally {
      rmSync(wideDir, { recursive: true, force: true });
    }
  });

  it('a service rule: copy registers its instance with only the migrator\'s policy, the rule\'s applications find it in the catalog; without service:write copy and dualrun stop first', async () => {
    const [migrator, verifier, app] = ['migrator', 'verifier', 'application'].map((role) => svcAcl.consul.policies.find((x) => x.role === role)!);
    // The service names come from etcd key segments (`{1}`): nothing bounds them. Discovery reads the node too (health shows an instance only then).
    expect(migrator!.structured).toMatchObject({ service_prefix: { '': { policy: 'write' } }, node_prefix: { '': { policy: 'read' } } });
    expect(app!).toMatchObject({ rule: 'catalog', structured: { service_prefix: { '': { policy: 'read' } }, node_prefix: { '': { policy: 'read' } } } });
    expect(svcAcl.etcd.permissions.map((x) => [x.type, Buffer.from(x.keyBase64, 'base64').toString(), Buffer.from(x.rangeEndBase64, 'base64').toString(), x.when])).toEqual([['read', `${p}services/`, `${p}services0`, 'always']]);

    const svcEnv = (token: string) => env({ ETCDCTL_USER: svcAcl.etcd.role, CONSUL_HTTP_TOKEN: token });
    const doctor = await runCli(['doctor', '--format', 'json'], { cwd: svcDir, env: svcEnv(svcToken) });
    expect(Object.fromEntries((JSON.parse(doctor.stdout).checks as { name: string; status: string }[]).map((c) => [c.name, c.status]))).toMatchObject({ 'consul.acl': 'ok', 'consul.permissions': 'ok' });
    for (const args of [['copy', '--dry-run'], ['copy'], ['verify', '--rounds', '1']]) {
      const run = await runCli(args, { cwd: svcDir, env: svcEnv(svcToken) });
      expect(run.code, `${args.join(' ')}: ${run.stdout}${run.stderr}`).toBe(0);
    }
    const ci = await runCli(['verify', '--rounds', '1'], { cwd: svcDir, env: svcEnv(await tokenWith(verifier!.name, verifier!.rules)) });
    expect(ci.code, ci.stdout + ci.stderr).toBe(0);
    // A verifier scoped to the one service name (as `migrate acl` grants for a literal name template): the catalog's
    // list of services comes back filtered (Consul's own `consul` service is hidden), which is no reason to refuse.
    expect(verifier!.rules).toContain('service_prefix "" {');
    const narrow = await tokenWith(`${verifier!.name}-narrow`, verifier!.rules.replace('service_prefix "" {', 'service "web" {'));
    const scoped = await runCli(['verify', '--rounds', '1', '--format', 'json'], { cwd: svcDir, env: svcEnv(narrow) });
    expect(scoped.code, scoped.stdout + scoped.stderr).toBe(0);
    expect(JSON.parse(scoped.stdout).rules).toMatchObject([{ name: 'catalog', action: 'service', compared: 1, differences: 0 }]);

    // The agent syncs the registration to the catalog with the migrator's token; an application reads it with its rule's policy alone.
    const reader = new ConsulTarget({ address: consul.address, token: await tokenWith(app!.name, app!.rules) });
    try {
      type HealthEntry = { Service: { ID: string; Address: string; Port: number; Meta: Record<string, string> }; Checks: { CheckID: string; Status: string }[] };
      let entries: HealthEntry[] = [];
      await eventually('the instance reached the catalog', async () => {
        entries = JSON.parse((await reader.http.request({ method: 'GET', path: '/v1/health/service/web' })).body.toString('utf8')) as HealthEntry[];
        return entries.length === 1;
      });
      expect(entries[0]!.Service).toMatchObject({ ID: 'web-i1', Address: '10.0.0.1', Port: 8080, Meta: { 'etcd-migrate-id': `${id}-svc`, 'etcd-migrate-rule': 'catalog' } });
      expect(entries[0]!.Checks.find((c) => c.CheckID === 'etcd-migrate:web-i1')?.Status).toBe('passing');
    } finally {
      reader.close();
    }
    // Why the node rule: without node:read, health shows no instance at all.
    const blind = new ConsulTarget({ address: consul.address, token: await tokenWith(`blind-${id}`, 'service_prefix "" { policy = "read" }') });
    try {
      expect(JSON.parse((await blind.http.request({ method: 'GET', path: '/v1/health/service/web' })).body.toString('utf8'))).toEqual([]);
    } finally {
      blind.close();
    }

    // Everything but the service names: copy and dualrun stop before registering anything (exit 3), naming the rule of the policy to add.
    const withoutServices = Object.fromEntries(Object.entries(migrator!.structured).filter(([resource]) => resource !== 'service_prefix'));
    const denied = await tokenWith(`neg-services-${id}`, JSON.stringify(withoutServices));
    const agentBefore = await consulApi('GET', '/v1/agent/services');
    const stateBefore = await keysUnder(`_migrate/${id}-svc/`);
    for (const args of [['copy'], ['copy', '--format', 'json'], ['dualrun', '--baseline']]) {
      const run = await runCli(args, { cwd: svcDir, env: svcEnv(denied) });
      expect(run.code, `${args.join(' ')}: ${run.stdout}${run.stderr}`).toBe(3);
      expect(run.stderr).toContain('service:write on service_prefix "" (rule catalog)');
      if (args.includes('json')) expect(JSON.parse(run.stdout).error).toMatchObject({ code: 'consul_permission_denied', missing: [{ permission: 'service:write', service: { resource: 'service_prefix', name: '' }, for: 'rule catalog' }] });
    }
    expect(await consulApi('GET', '/v1/agent/services')).toEqual(agentBefore);
    expect(await keysUnder(`_migrate/${id}-svc/`)).toEqual(stateBefore);
    const deniedDoctor = await runCli(['doctor'], { cwd: svcDir, env: svcEnv(denied) });
    expect(deniedDoctor.code).toBe(3);
    expect(deniedDoctor.stdout).toMatch(/FAIL  consul\.permissions .*service:write/);
  }, 60_000);

  it('canary secrets never appear in stdout or stderr: every command and format, accepted and refused', async () => {
    const outDir = mkdtempSync(join(tmpdir(), 'migrate-acl-out-'));
    const runs: { args: string[]; env: Record<string, string> }[] = [];
    const formats: Record<string, string[][]> = {
      doctor: [['doctor']],
      audit: [['audit']],
      plan: [['plan']],
      'copy --dry-run': [['copy', '--dry-run']],
      copy: [['copy']],
      verify: [['verify', '--rounds', '1']],
      export: [['export', '--out', join(outDir, 'kv.json')]],
      acl: [['acl'], ['acl', '--out-dir', join(outDir, 'acl')]],
    };
    const allowed: Record<string, string[]> = {
      doctor: ['text', 'json'], audit: ['text', 'json', 'yaml', 'markdown'], plan: ['text', 'json', 'markdown'], 'copy --dry-run': ['text', 'json'], copy: ['text', 'json'],
      verify: ['text', 'json', 'markdown', 'junit'], export: ['text', 'json'], acl: ['text', 'hcl', 'json'],
    };
    for (const [name, variants] of Object.entries(formats)) {
      for (const args of variants) {
        for (const format of allowed[name]!) runs.push({ args: [...args, '--format', format], env: env() });
        // Refused credentials: each side alone, so each error path is exercised.
        runs.push({ args: [...args, '--format', 'json'], env: env({ CONSUL_HTTP_TOKEN: REFUSED_TOKEN }) });
        runs.push({ args: [...args, '--format', 'text'], env: env({ ETCDCTL_PASSWORD: REFUSED_PASSWORD }) });
      }
    }
    const limit = pLimit(3);
    // One copy at a time: a second copy of the migration is refused while one holds the copy lock (copy_locked).
    const oneCopy = pLimit(1);
    const isCopy = (args: string[]) => args[0] === 'copy' && !args.includes('--dry-run');
    const exec = (run: (typeof runs)[number]) => runCli(run.args, { cwd: dir, env: run.env });
    const results = await Promise.all(runs.map((run) => limit(async () => ({ run, result: isCopy(run.args) ? await oneCopy(() => exec(run)) : await exec(run) }))));
    try {
      for (const { run, result } of results) {
        const output = result.stdout + result.stderr;
        for (const secret of [CANARY_TOKEN, CANARY_PASSWORD, REFUSED_TOKEN, REFUSED_PASSWORD]) {
          expect(output.includes(secret), `${run.args.join(' ')} printed a secret`).toBe(false);
        }
        const refused = run.env.CONSUL_HTTP_TOKEN === REFUSED_TOKEN || run.env.ETCDCTL_PASSWORD === REFUSED_PASSWORD;
        const needsConsul = !['audit', 'plan', 'export', 'acl'].includes(run.args[0]!);
        const needsEtcd = run.args[0] !== 'acl';
        const expectFailure = (run.env.CONSUL_HTTP_TOKEN === REFUSED_TOKEN && needsConsul) || (run.env.ETCDCTL_PASSWORD === REFUSED_PASSWORD && needsEtcd);
        if (expectFailure) expect(result.code, `${run.args.join(' ')}: ${output}`).toBe(3);
        else if (!refused || !expectFailure) expect([0, 1], `${run.args.join(' ')}: ${output}`).toContain(result.code);
      }
      for (const file of readdirSync(join(outDir, 'acl'))) expect(readFileSync(join(outDir, 'acl', file), 'utf8')).not.toContain(CANARY_TOKEN);
      // The dual-run, briefly, with the canaries, text and JSON logs; and refused.
      for (const extra of [[], ['--log-format', 'json', '--format', 'json']]) {
        const dualrun = await startDualRun(dir, extra, env());
        await eventually('the dual-run leads', async () => dualrun.stderr().includes('leading the dual-run'));
        expect(await dualrun.stop()).toBe(0);
        expect(dualrun.stderr()).not.toContain(CANARY_TOKEN);
        expect(dualrun.stderr()).not.toContain(CANARY_PASSWORD);
        // JSON logs are JSON to the last line, the stop notice included.
        if (extra.length > 0) for (const line of dualrun.stderr().trim().split('\n')) expect(() => JSON.parse(line), line).not.toThrow();
      }
      for (const refusedEnv of [{ CONSUL_HTTP_TOKEN: REFUSED_TOKEN }, { ETCDCTL_PASSWORD: REFUSED_PASSWORD }] as Record<string, string>[]) {
        const run = await runCli(['dualrun', '--format', 'json'], { cwd: dir, env: env(refusedEnv) });
        expect(run.code, run.stderr).toBe(3);
        expect(run.stdout + run.stderr).not.toContain(Object.values(refusedEnv)[0]);
      }
    } finally {
      rmSync(outDir, { recursive: true, force: true });
    }
  }, 120_000);

  // Last: a verify within 20 s of a dual-run's checkpoint would wait for it.
  it('dualrun replicates a change with only those rights, goes on with a token rotated in place in its file (Vault agent) once the old one is deleted, and stops cleanly on SIGTERM; a token deleted and not rotated ends it (exit 3), saying what becomes of the leased keys', async () => {
    const migrator = acl.consul.policies.find((x) => x.role === 'migrator')!;
    const issue = async () => (await consulApi('PUT', '/v1/acl/token', { Description: 'rotated', Policies: [{ Name: migrator.name }] })) as { AccessorID: string; SecretID: string };
    const first = await issue();
    const tokenFile = join(dir, 'consul-token');
    writeFileSync(tokenFile, `${first.SecretID}\n`);
    // doctor's anonymous probe sends no token, and does not read one from the file when Consul refuses it.
    const doctor = await runCli(['doctor', '--format', 'json'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: '', CONSUL_HTTP_TOKEN_FILE: tokenFile }) });
    expect(JSON.parse(doctor.stdout).checks).toContainEqual(expect.objectContaining({ name: 'consul.acl', status: 'ok' }));
    const dualrun = await startDualRun(dir, [], env({ CONSUL_HTTP_TOKEN: '', CONSUL_HTTP_TOKEN_FILE: tokenFile }));
    try {
      await eventually('the dual-run leads', async () => dualrun.stderr().includes('leading the dual-run'));
      await root.put(`${p}svc/new`).value('replicated');
      await eventually('the change reached Consul', async () => (await mgmt.readKey(`${p}svc/new`))?.value.toString() === 'replicated');
      const second = await issue();
      writeFileSync(tokenFile, `${second.SecretID}\n`);
      await mgmt.http.request({ method: 'DELETE', path: `/v1/acl/token/${first.AccessorID}` });
      await root.put(`${p}svc/new`).value('after the rotation');
      await eventually('the change reached Consul with the new token', async () => (await mgmt.readKey(`${p}svc/new`))?.value.toString() === 'after the rotation');
      expect(dualrun.child.exitCode).toBeNull();
      expect(dualrun.stderr()).not.toContain(second.SecretID);
      // Deleted, the file unchanged: nothing to take instead. The run ends, and says its sessions go unrenewed, as a stop does.
      await mgmt.http.request({ method: 'DELETE', path: `/v1/acl/token/${second.AccessorID}` });
      await root.put(`${p}svc/new`).value('after the deletion');
      const code = await new Promise<number | null>((resolve) => (dualrun.child.exitCode !== null ? resolve(dualrun.child.exitCode) : dualrun.child.once('exit', resolve)));
      expect(code, dualrun.stderr()).toBe(3);
      expect(dualrun.stderr()).toMatch(/\d+ Consul session\(s\) mirror etcd leases and nothing renews them now[^\n]*\n(.*\n)*error\[consul_token_refused\]/);
    } finally {
      if (dualrun.child.exitCode === null) await dualrun.stop();
    }
    expect(dualrun.stderr()).not.toMatch(/permission denied/i);
  });

  it('cutover with the read-only etcd role is refused before anything moves (the reverse mirror could not write back); with the cutover grants `migrate acl` prints, it cuts over and mirrors back', async () => {
    const dualrun = await startDualRun(dir, [], env());
    try {
      await eventually('the dual-run leads', async () => dualrun.stderr().includes('leading the dual-run'));
      const phaseDoc = () => mgmt.readKey(`_migrate/${id}/rules/app`).then((e) => e?.modifyIndex);
      const before = await phaseDoc();
      const refused = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now'], { cwd: dir, env: env() });
      expect(refused.code, refused.stdout + refused.stderr).toBe(4);
      expect(refused.stdout).toMatch(/FAIL app: etcd write\s+the etcd user may not write .*app\/, and after the cutover the reverse mirror writes Consul's changes back there: grant its role readwrite/);
      expect(await phaseDoc()).toBe(before);
      expect(readdirSync(dir)).not.toContain('migrate-rollback');
      const role = root.role(acl.etcd.role);
      // Write on the prefix key alone (a grant without --prefix): the range under it is still read-only.
      await role.grant({ permission: 'Readwrite', range: new Range(Buffer.from(`${p}app/`), Buffer.from(`${p}app/\0`)) });
      const narrow = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now'], { cwd: dir, env: env() });
      expect(narrow.code, narrow.stdout + narrow.stderr).toBe(4);
      expect(narrow.stdout).toMatch(/FAIL app: etcd write\s+the etcd user may not write/);
      expect(await phaseDoc()).toBe(before);
      // The grants `migrate acl` prints for the cutover.
      for (const perm of acl.etcd.permissions.filter((x) => x.when === 'cutover')) {
        await role.grant({ permission: 'Readwrite', range: new Range(Buffer.from(perm.keyBase64, 'base64'), Buffer.from(perm.rangeEndBase64, 'base64')) });
      }
      const doctor = await runCli(['doctor', '--format', 'json'], { cwd: dir, env: env() });
      expect((JSON.parse(doctor.stdout).checks as { name: string; status: string }[]).find((c) => c.name === 'etcd.write')?.status).toBe('ok');
      // A token that may not write the rules' phase documents: a permission to grant (exit 3), not another operator; its rollback point goes.
      const migrator = acl.consul.policies.find((x) => x.role === 'migrator')!.structured;
      const phasesReadOnly = await tokenWith(`phases-ro-${id}`, JSON.stringify({ ...migrator, key_prefix: { ...migrator.key_prefix, [`_migrate/${id}/rules/`]: { policy: 'read' } } }));
      const denied = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: phasesReadOnly }) });
      expect(denied.code, denied.stdout + denied.stderr).toBe(3);
      expect(denied.stderr).toContain('error[consul_permission_denied]');
      expect(await phaseDoc()).toBe(before);
      expect(existsSync(join(dir, 'migrate-rollback')) ? readdirSync(join(dir, 'migrate-rollback')) : []).toEqual([]);
      // Nor the owners document, written with the flip itself.
      const ownersReadOnly = await tokenWith(`owners-ro-${id}`, JSON.stringify({ ...migrator, key: { [`_migrate/${id}/owners`]: { policy: 'read' } } }));
      const flipDenied = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now'], { cwd: dir, env: env({ CONSUL_HTTP_TOKEN: ownersReadOnly }) });
      expect(flipDenied.code, flipDenied.stdout + flipDenied.stderr).toBe(3);
      expect(flipDenied.stderr).toContain('error[consul_permission_denied]');
      expect(existsSync(join(dir, 'migrate-rollback')) ? readdirSync(join(dir, 'migrate-rollback')) : []).toEqual([]);
      const cutover = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now'], { cwd: dir, env: env() });
      expect(cutover.code, cutover.stdout + cutover.stderr).toBe(0);
      expect(cutover.stdout).toMatch(/ok\s+app: etcd write/);
      await mgmt.putKey(`${p}app/k00`, Buffer.from('written in Consul'));
      await eventually('mirrored back to etcd', async () => (await root.get(`${p}app/k00`).string()) === 'written in Consul');
    } finally {
      const code = await dualrun.stop();
      expect(code, dualrun.stderr()).toBe(0);
    }
  }, 60_000);
});
