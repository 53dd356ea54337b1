import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, type ConsulServer } from '../scripts/local-servers.js';
import { parseConfig } from '../src/config/load.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { configDir, consulIndex, privateConsul, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';
import { startDualRun } from './support/dualrun.js';

/**
 * Bad input for the writing commands (issue 8): each case shows the message,
 * the exit code, and that nothing was written (Consul's KV index on an agent
 * no other test writes to does not move). `audit`/`plan` cover the same
 * configuration errors in audit-cli.test.ts; state.test.ts and copy.test.ts
 * cover a meta written for another etcd cluster.
 */
const etcd = rawEtcd();
let own: ConsulServer;
let ownTarget: ConsulTarget;

beforeAll(async () => {
  own = await privateConsul();
  ownTarget = new ConsulTarget({ address: own.address });
});
afterAll(async () => {
  etcd.close();
  ownTarget?.close();
  await own?.stop();
});

function env(extra: Record<string, string> = {}): Record<string, string> {
  return serverEnv({ CONSUL_HTTP_ADDR: own.address, ...extra });
}

function scenario(label: string) {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n`;
  return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
}

describe('bad input to the writing commands: message, exit code, nothing written (real servers)', () => {
  const configCases: [string, string, RegExp][] = [
    ['malformed YAML', 'version: 1\nid: x\nrules:\n  - name: a\n    from: "/a/\n', /migration\.yaml:\d+:\d+: not valid YAML/],
    ['a wrong-typed field', 'version: 1\nid: x\nrules:\n  - { name: a, from: /a/, to: a/, leases: forever }\n', /migration\.yaml:4:\d+: rules\[0\]\.leases/],
    ['an unknown field', 'version: 1\nid: x\nrules:\n  - name: a\n    from: /a/\n    to: a/\n    colour: red\n', /migration\.yaml:7:5: rules\[0\]\.colour: unknown field "colour"/],
    ['two rules colliding in one Consul prefix', 'version: 1\nid: x\nrules:\n  - { name: a, from: /a/, to: app/ }\n  - { name: b, from: /b/, to: app/x/ }\n', /rules\[1\]\.to: .*inside to "app\/"/],
  ];
  it('copy and dualrun refuse a mapping with nothing to copy (keep rules only): exit 4, nothing written, no lock taken', async () => {
    const dir = configDir('version: 1\nid: only-keep\nrules:\n  - { name: k8s, from: /registry/, action: keep }\n');
    const before = await consulIndex(own.address);
    for (const [command, code] of [['copy', 'copy_no_rules'], ['dualrun', 'dualrun_no_rules']] as const) {
      const run = await runCli([command], { cwd: dir, env: env() });
      expect(run.code, `${command}: ${run.stderr}`).toBe(4);
      expect(run.stderr).toContain(`error[${code}]`);
      expect(run.stderr).not.toContain('leading');
    }
    expect(await consulIndex(own.address)).toBe(before);
  });

  it('copy and copy --dry-run refuse keys outside every rule under defaults.unmapped: error: exit 4, nothing written', async () => {
    const s = scenario('unmapped');
    await etcd.put(`${s.root}/app/a`).value('1');
    await etcd.put(`${s.root}/elsewhere`).value('x');
    const dir = configDir(s.yaml.replace('rules:', 'defaults: { unmapped: error }\nrules:'));
    const before = await consulIndex(own.address);
    for (const args of [['copy'], ['copy', '--dry-run']]) {
      const run = await runCli([...args, '--progress', 'none'], { cwd: dir, env: env() });
      expect(run.code, `${args.join(' ')}: ${run.stderr}`).toBe(4);
      expect(run.stderr).toMatch(/error\[copy_unmapped_keys\]: \d+ etcd key\(s\) at revision \d+ are outside every rule/);
      expect(run.stderr).toContain('defaults.unmapped: skip');
    }
    expect(await consulIndex(own.address)).toBe(before);
    // Under skip (the default) the same copy runs.
    const copied = await runCli(['copy', '--progress', 'none'], { cwd: s.dir, env: env() });
    expect(copied.code, copied.stderr).toBe(0);
  });

  for (const [what, text, message] of configCases) {
    it(`copy and dualrun refuse ${what} (exit 2)`, async () => {
      const dir = configDir(text);
      const before = await consulIndex(own.address);
      for (const command of [['copy'], ['dualrun']]) {
        const run = await runCli(command, { cwd: dir, env: env() });
        expect(run.code, `${command[0]}: ${run.stderr}`).toBe(2);
        expect(run.stderr).toMatch(/error\[config_invalid\]/);
        expect(run.stderr).toMatch(message);
      }
      expect(await consulIndex(own.address)).toBe(before);
    });
  }

  it('copy against unreachable endpoints exits 3 naming the address, and writes nothing', async () => {
    const s = scenario('unreach');
    const before = await consulIndex(own.address);
    const deadEtcd = await runCli(['copy'], { cwd: s.dir, env: env({ ETCDCTL_ENDPOINTS: `http://127.0.0.1:${await freePort()}` }) });
    expect(deadEtcd.code, deadEtcd.stderr).toBe(3);
    expect(deadEtcd.stderr).toMatch(/etcd at http:\/\/127\.0\.0\.1:\d+ is unreachable/);
    const port = await freePort();
    const deadConsul = await runCli(['copy'], { cwd: s.dir, env: env({ CONSUL_HTTP_ADDR: `127.0.0.1:${port}` }) });
    expect(deadConsul.code, deadConsul.stderr).toBe(3);
    expect(deadConsul.stderr).toContain(`Consul at http://127.0.0.1:${port} is unreachable`);
    // A password in an etcd endpoint (grpc-js quoted the whole target in its errors): refused, and never printed.
    for (const format of ['text', 'json']) {
      const withPassword = await runCli(['copy', '--format', format], { cwd: s.dir, env: env({ ETCDCTL_ENDPOINTS: `http://root:etcdPW99@127.0.0.1:${await freePort()}` }) });
      expect(withPassword.code, withPassword.stderr).toBe(2);
      expect(withPassword.stdout + withPassword.stderr).toContain('etcd_endpoint_invalid');
      expect(withPassword.stdout + withPassword.stderr).toContain('ETCDCTL_PASSWORD');
      expect(withPassword.stdout + withPassword.stderr).not.toContain('etcdPW99');
    }
    // Credentials for an etcd without auth: a configuration to fix (exit 2), said so, not "etcd failed".
    const noAuth = await runCli(['copy'], { cwd: s.dir, env: env({ ETCDCTL_USER: 'root:some-password' }) });
    expect(noAuth.code, noAuth.stderr).toBe(2);
    expect(noAuth.stderr).toMatch(/error\[etcd_auth_not_enabled\][^\n]*authentication turned off[\s\S]*next: Unset ETCDCTL_USER/);
    // A datacenter the agent does not know: a typo, refused at once (exit 2), not retried as one whose servers are down.
    const began = Date.now();
    const typo = await runCli(['copy', '--datacenter', 'dc9'], { cwd: s.dir, env: env() });
    expect(typo.code, typo.stderr).toBe(2);
    expect(typo.stderr).toMatch(/error\[datacenter_unknown\]: The Consul agent at http:\/\/127\.0\.0\.1:\d+ knows no datacenter dc9 \(it knows dc1\)/);
    expect(Date.now() - began).toBeLessThan(10_000);
    // doctor fails the same check with the same exit code.
    const doctorTypo = await runCli(['doctor', '--datacenter', 'dc9', '--format', 'json'], { cwd: s.dir, env: env() });
    expect(doctorTypo.code, doctorTypo.stdout).toBe(2);
    expect(JSON.parse(doctorTypo.stdout).checks).toContainEqual(expect.objectContaining({ status: 'fail', code: 'datacenter_unknown', exitCode: 2 }));
    expect(await consulIndex(own.address)).toBe(before);
  });

  it('a state meta for another datacenter, or with another mapping, is refused (exit 4) and nothing is written', async () => {
    const s = scenario('meta');
    await etcd.put(`${s.root}/app/k`).value('v');
    const { header } = await etcd.maintenance.status();
    const clusterId = String(header.cluster_id);
    const write = (meta: object) => ownTarget.putKey(`_migrate/${s.id}/meta`, Buffer.from(JSON.stringify({ schemaVersion: 1, id: s.id, etcdClusterId: clusterId, created: 'then', toolVersion: '0', ...meta })));

    // status reads only, but figures from another etcd cluster would compare unrelated stores: refused as verify is.
    await write({ etcdClusterId: 'another-cluster', datacenters: ['dc1'], mappingHash: 'x' });
    const otherCluster = await runCli(['status'], { cwd: s.dir, env: env() });
    expect(otherCluster.code, otherCluster.stderr).toBe(4);
    expect(otherCluster.stderr).toMatch(/error\[identity_cluster_mismatch\]: Migration "meta-[0-9a-f]+" was started from etcd cluster another-cluster/);

    await write({ datacenters: ['dc9'], mappingHash: 'x' });
    let before = await consulIndex(own.address);
    const otherDc = await runCli(['copy'], { cwd: s.dir, env: env() });
    expect(otherDc.code, otherDc.stderr).toBe(4);
    expect(otherDc.stderr).toMatch(/error\[identity_datacenter_mismatch\][\s\S]*datacenter dc9/);
    expect(await consulIndex(own.address)).toBe(before);

    await write({ datacenters: ['dc1'], mappingHash: 'not-this-mapping' });
    before = await consulIndex(own.address);
    for (const command of [['copy'], ['dualrun']]) {
      const otherMapping = await runCli(command, { cwd: s.dir, env: env() });
      expect(otherMapping.code, otherMapping.stderr).toBe(4);
      expect(otherMapping.stderr).toMatch(/error\[identity_mapping_changed\]/);
      expect(otherMapping.stderr).toMatch(/--accept-mapping-change/);
    }
    expect(await consulIndex(own.address)).toBe(before);
    expect(await ownTarget.listKeys(`${s.id}/`)).toEqual([]);
  });

  it('a second copy while one runs exits 4 naming the holder and writes nothing; the first completes', async () => {
    const s = scenario('copylock');
    for (let i = 0; i < 2000; i += 1000) {
      const puts = Array.from({ length: 1000 }, (_, j) => etcd.put(`${s.root}/app/${String(i + j).padStart(4, '0')}`).value('v'));
      await etcd.if(`${s.root}/app/0000`, 'Mod', '>', -1).then(...puts).commit();
    }
    const first = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', '--rate', '250'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...env() }, stdio: 'ignore' });
    const firstExit = new Promise<number | null>((resolve) => first.on('exit', resolve));
    try {
      const lockKey = `_migrate/${s.id}/copy-lock`;
      const deadline = Date.now() + 30_000;
      while (!(await ownTarget.readKey(lockKey))?.session && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect((await ownTarget.readKey(lockKey))?.session, 'the first copy holds the lock').toBeTruthy();
      const second = await runCli(['copy'], { cwd: s.dir, env: env() });
      expect(second.code, second.stderr).toBe(4);
      expect(second.stderr, second.stderr).toMatch(new RegExp(`error\\[copy_locked\\]: Another copy of migration "${s.id}" is running \\([^)]+:${first.pid}\\)`));
      expect(second.stderr).toMatch(/--resume/);
      // Refused before it read or wrote anything: no progress, no report.
      expect(second.stderr).not.toMatch(/copying/);
      expect(second.stdout).toBe('');
      // A dual-run started now would have the copy overwrite what it replicates with older values: it lets go of the lock.
      const dualrun = await runCli(['dualrun'], { cwd: s.dir, env: env() });
      expect(dualrun.code, dualrun.stderr).toBe(4);
      expect(dualrun.stderr).toMatch(new RegExp(`error\\[dualrun_copy_running\\]: A copy of migration "${s.id}" is running \\(it holds the copy lock: [^)]+:${first.pid}\\)`));
      expect(await ownTarget.readKey(`_migrate/${s.id}/leader`)).toBeUndefined();
      expect(JSON.parse((await ownTarget.readKey(`_migrate/${s.id}/checkpoint`))?.value.toString() ?? '{}')).not.toMatchObject({ by: 'dualrun' });
    } finally {
      expect(await firstExit).toBe(0);
    }
    expect(await ownTarget.listKeys(`${s.id}/app/`)).toHaveLength(2000);
    expect(await ownTarget.readKey(`_migrate/${s.id}/copy-lock`)).toBeUndefined();
  });

  it('a migration whose rule writes inside another migration\'s to: copy, its dry-run and dualrun exit 4 naming both, writing nothing; plan shows the blocker', async () => {
    const b = scenario('team-b');
    await etcd.put(`${b.root}/app/k`).value('b');
    expect((await runCli(['copy'], { cwd: b.dir, env: env() })).code).toBe(0);
    // Another team's migration.yaml, its rule's to under team-b's: its keys would be team-b's extraneous keys (and the reverse).
    const cId = `team-c-${randomBytes(3).toString('hex')}`;
    const c = configDir(`version: 1\nid: ${cId}\nrules:\n  - { name: extra, from: /${cId}/extra/, to: ${b.id}/app/extra/ }\n`);
    await etcd.put(`/${cId}/extra/x`).value('c');
    const before = await consulIndex(own.address);
    for (const command of [['copy'], ['copy', '--dry-run'], ['dualrun']]) {
      const refused = await runCli(command, { cwd: c, env: env() });
      expect(refused.code, refused.stderr).toBe(4);
      expect(refused.stderr).toContain(`error[migration_overlap]: Migration "${cId}" writes where another migration writes: rule extra (to: ${b.id}/app/extra/) and rule app of migration ${b.id} (to: ${b.id}/app/)`);
    }
    expect(await consulIndex(own.address)).toBe(before);
    expect(await ownTarget.readKey(`_migrate/${cId}/meta`)).toBeUndefined();
    const plan = JSON.parse((await runCli(['plan', '--format', 'json'], { cwd: c, env: env() })).stdout);
    expect(plan.blockers).toContainEqual(expect.objectContaining({ code: 'migration_overlap', count: 1 }));
  });

  it('a second dualrun, or a copy, while a dual-run holds the leader lock exits 4 naming it and writes no data', async () => {
    const s = scenario('lock');
    await etcd.put(`${s.root}/app/k`).value('v');
    expect((await runCli(['copy'], { cwd: s.dir, env: env() })).code).toBe(0);
    const first = await startDualRun(s.dir, [], env());
    try {
      const checkpoint = (await ownTarget.readKey(`_migrate/${s.id}/checkpoint`))?.modifyIndex;
      const second = await runCli(['dualrun'], { cwd: s.dir, env: env() });
      expect(second.code, second.stderr).toBe(4);
      expect(second.stderr).toMatch(/error\[dualrun_locked\]: Another dual-run holds the leader lock/);
      expect(second.stderr).toMatch(/--ha/);
      // The first one is still the only writer: data and checkpoint untouched by the second.
      expect(await ownTarget.listKeys(`${s.id}/app/`)).toEqual([`${s.id}/app/k`]);
      expect(first.child.exitCode).toBeNull();
      // A copy while the dual-run leads would pin an older revision and write older values back.
      const copyDoc = async () => (await ownTarget.readKey(`_migrate/${s.id}/copy`))?.modifyIndex;
      const copyIndex = await copyDoc();
      const copyDuring = await runCli(['copy'], { cwd: s.dir, env: env() });
      expect(copyDuring.code, copyDuring.stderr).toBe(4);
      expect(copyDuring.stderr).toMatch(/error\[copy_dualrun_running\]: A dual-run of migration "lock-[0-9a-f]+" is running/);
      expect(copyDuring.stderr).toMatch(/stop the dual-run first/);
      // Its dry-run says so too, rather than a plan the copy would not carry out.
      const dryRun = await runCli(['copy', '--dry-run'], { cwd: s.dir, env: env() });
      expect(dryRun.code, dryRun.stderr).toBe(4);
      expect(dryRun.stderr).toMatch(/error\[copy_dualrun_running\]/);
      // The copy's own state document is rewritten by every copy that starts: untouched here.
      expect(await copyDoc()).toBe(copyIndex);
      expect((await ownTarget.readKey(`_migrate/${s.id}/checkpoint`))?.modifyIndex ?? 0).toBeGreaterThanOrEqual(checkpoint ?? 0);
    } finally {
      expect(await first.stop()).toBe(0);
    }
  });
});
