import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { freePort, startConsulFederation, startEtcd } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { VERIFY_DATACENTERS_REPORT_SCHEMA } from '../src/verify/report-schema.js';
import { eventually, startDualRun, waitCaughtUp } from './support/dualrun.js';
import { configDir, runCli, servers } from './support/harness.js';

/**
 * Issue 11: one etcd, two Consul datacenters federated over the WAN on
 * loopback, every request through dc1's agent (`?dc=`). A rule naming
 * `datacenters: [dc1, dc2]` is copied, replicated and verified in both; a
 * rule without goes to dc1 only. dc2's server is stopped during a dual-run:
 * dc1 stays in sync, verify reports dc2 as not verified, and dc2 catches up
 * from its own checkpoint when it returns.
 */
describe('several datacenters (real etcd, two real Consul datacenters)', () => {
  let federation: Awaited<ReturnType<typeof startConsulFederation>>;
  let dc1: ConsulTarget;
  let dc2: ConsulTarget;
  // Its own etcd as well: the test compacts it, which would compact the revisions other test files are reading at.
  let ownEtcd: Awaited<ReturnType<typeof startEtcd>>;
  let etcd: Etcd3;
  const tag = randomBytes(3).toString('hex');
  const id = `mdc-${tag}`;
  const from = `/mdc-${tag}/`;
  let dir: string;
  let env: Record<string, string>;
  const validate = new Ajv({ allErrors: true, strict: true }).compile(VERIFY_DATACENTERS_REPORT_SCHEMA);

  beforeAll(async () => {
    [federation, ownEtcd] = await Promise.all([startConsulFederation({ version: servers().consulVersion }), startEtcd()]);
    etcd = new Etcd3({ hosts: ownEtcd.endpoint });
    dc1 = new ConsulTarget({ address: federation.member('dc1').address });
    dc2 = dc1.forDatacenter('dc2');
    dir = configDir([
      'version: 1',
      `id: ${id}`,
      'rules:',
      `  - { name: shared, from: "${from}shared/", to: "mdc-${tag}/shared/", datacenters: [dc1, dc2] }`,
      `  - { name: local, from: "${from}local/", to: "mdc-${tag}/local/" }`,
      '',
    ].join('\n'));
    env = { ETCDCTL_ENDPOINTS: ownEtcd.endpoint, CONSUL_HTTP_ADDR: federation.member('dc1').address };
    for (let i = 0; i < 20; i++) await etcd.put(`${from}shared/k${i}`).value(`v${i}`);
    await etcd.put(`${from}local/only-dc1`).value('here');
    const lease = etcd.lease(60);
    await lease.put(`${from}shared/leased`).value('alive');
  }, 120_000);
  afterAll(async () => {
    dc1?.close();
    dc2?.close();
    etcd?.close();
    await Promise.all([federation?.stop(), ownEtcd?.stop()]);
  });

  /** A gauge of one datacenter from Prometheus text. */
  const labelled = (text: string, name: string, datacenter: string) => Number(new RegExp(`^${name}\\{datacenter="${datacenter}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  const value = async (target: ConsulTarget, key: string) => (await target.readKey(key))?.value.toString();

  it('a datacenter the federation does not know is a configuration error (exit 2) and nothing is written', async () => {
    const bad = configDir(['version: 1', `id: ${id}-bad`, 'rules:', `  - { name: shared, from: "${from}shared/", to: "mdc-${tag}/bad/", datacenters: [dc1, dc9] }`, ''].join('\n'));
    const run = await runCli(['copy'], { cwd: bad, env });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('datacenter_unknown');
    // The file, the place and the rule that name it.
    const named = `${join(bad, 'migration.yaml')}:4:${'  - { name: shared, from: "'.length + from.length + 'shared/", to: "mdc-'.length + tag.length + '/bad/", datacenters: [dc1, '.length + 1}: names datacenter dc9 (rule shared (datacenters: dc9))`;
    expect(run.stderr).toContain(named);
    // plan and audit, which read etcd only, ask the agent too and say so at once (a warning: they plan, maybe before the WAN is joined).
    for (const command of ['plan', 'audit']) {
      const early = await runCli([command, '--progress', 'none'], { cwd: bad, env });
      expect(early.code, `${command}: ${early.stderr}`).toBe(0);
      expect(early.stderr).toContain(`warning: ${named}`);
      expect(early.stderr).toMatch(/copy and dualrun refuse it until it is joined over the WAN or the rules are fixed/);
    }
    // With no Consul to ask, they say the datacenters were not checked, and go on.
    const unasked = await runCli(['plan', '--progress', 'none'], { cwd: bad, env: { ...env, CONSUL_HTTP_ADDR: `http://127.0.0.1:${await freePort()}` } });
    expect(unasked.code, unasked.stderr).toBe(0);
    expect(unasked.stderr).toMatch(/warning: the datacenters the rules name were not checked against Consul \(Consul at http:\/\/127\.0\.0\.1:\d+ is unreachable/);
    expect(await dc1.readKey(`_migrate/${id}-bad/meta`)).toBeUndefined();
    expect(await dc1.listKeys(`mdc-${tag}/bad/`)).toEqual([]);
  });

  it('copy writes each rule to the datacenters it names, with sessions on a node of each datacenter', async () => {
    const copy = await runCli(['copy', '--format', 'json'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(copy.code, copy.stderr).toBe(0);
    const report = JSON.parse(copy.stdout) as { datacenters: { datacenter: string; rules: { name: string; created: number }[] }[] };
    expect(report.datacenters.map((d) => d.datacenter)).toEqual(['dc1', 'dc2']);
    expect(report.datacenters[0]!.rules.map((r) => [r.name, r.created])).toEqual([['shared', 21], ['local', 1]]);
    expect(report.datacenters[1]!.rules.map((r) => [r.name, r.created])).toEqual([['shared', 21]]);

    expect(await value(dc1, `mdc-${tag}/shared/k7`)).toBe('v7');
    expect(await value(dc2, `mdc-${tag}/shared/k7`)).toBe('v7');
    expect(await value(dc1, `mdc-${tag}/local/only-dc1`)).toBe('here');
    expect(await dc2.readKey(`mdc-${tag}/local/only-dc1`)).toBeUndefined();
    // Each datacenter has its own state: meta names it, the checkpoint is the copy's.
    const meta2 = JSON.parse((await value(dc2, `_migrate/${id}/meta`))!) as { datacenters: string[] };
    expect(meta2.datacenters).toEqual(['dc2']);
    // The leased key is held in dc2 by a session on dc2's server node.
    const leased = await dc2.readKey(`mdc-${tag}/shared/leased`);
    expect(leased?.session).toBeTruthy();
    const session = await dc2.readSession(leased!.session!);
    expect(session?.node).toBe(federation.member('dc2').node);
    // A second copy plans nothing in either.
    const again = await runCli(['copy', '--format', 'json'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(again.code, again.stderr).toBe(0);
    const second = JSON.parse(again.stdout) as { datacenters: { rules: { created: number; updated: number }[] }[] };
    expect(second.datacenters.flatMap((d) => d.rules.map((r) => r.created + r.updated))).toEqual([0, 0, 0]);
    // doctor checks every datacenter and the state in each against its own view of the mapping.
    const doctor = await runCli(['doctor', '--format', 'json'], { cwd: dir, env });
    expect(doctor.code, doctor.stdout).toBe(0);
    const checks = (JSON.parse(doctor.stdout) as { checks: { name: string; status: string; message: string }[] }).checks;
    expect(checks.filter((c) => c.name.startsWith('state.meta') || c.name === 'consul.datacenters').map((c) => [c.name, c.status])).toEqual([
      ['consul.datacenters', 'ok'], ['state.meta (dc1)', 'ok'], ['state.meta (dc2)', 'ok'],
    ]);
  });

  it('verify names the datacenter of every difference (JSON and JUnit) and exits 1 on drift in one of them', async () => {
    const clean = await runCli(['verify', '--format', 'json', '--rounds', '1'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(clean.code, clean.stderr).toBe(0);
    const ok = JSON.parse(clean.stdout);
    expect(validate(ok), JSON.stringify(validate.errors)).toBe(true);
    expect(ok.datacenters.map((d: { datacenter: string; status: string }) => [d.datacenter, d.status])).toEqual([['dc1', 'parity'], ['dc2', 'parity']]);

    // Drift in dc2 only: one value changed, one key gone.
    await dc2.putKey(`mdc-${tag}/shared/k3`, Buffer.from('v9'));
    await dc2.deleteKey(`mdc-${tag}/shared/k4`);
    const drift = await runCli(['verify', '--format', 'json', '--rounds', '1', '--no-record'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(drift.code, drift.stderr).toBe(1);
    const report = JSON.parse(drift.stdout);
    expect(validate(report), JSON.stringify(validate.errors)).toBe(true);
    expect(report.status).toBe('drift');
    const [first, second] = report.datacenters as { datacenter: string; status: string; report: { differences: { key: string; kind: string; datacenter: string }[] } }[];
    expect(first!.status).toBe('parity');
    expect(second!.status).toBe('drift');
    expect(second!.report.differences.map((d) => [d.datacenter, d.kind, d.key]).sort()).toEqual([
      ['dc2', 'missing', `mdc-${tag}/shared/k4`],
      ['dc2', 'value', `mdc-${tag}/shared/k3`],
    ]);

    const junit = await runCli(['verify', '--format', 'junit', '--rounds', '1', '--no-record'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(junit.code).toBe(1);
    expect(XMLValidator.validate(junit.stdout)).toBe(true);
    const xml = new XMLParser({ ignoreAttributes: false, isArray: (name) => name === 'testcase' || name === 'testsuite' }).parse(junit.stdout);
    const suites = xml.testsuites.testsuite as { '@_name': string; testcase: { '@_classname': string; '@_name': string; failure?: { '#text': string } }[] }[];
    expect(suites.map((s) => s['@_name'])).toEqual([`migrate verify ${id} (datacenter dc1)`, `migrate verify ${id} (datacenter dc2)`]);
    const failing = suites[1]!.testcase.find((t) => t['@_name'] === 'shared')!;
    expect(failing['@_classname']).toBe(`migrate.verify.${id}.dc2`);
    expect(failing.failure!['#text']).toContain(`value mdc-${tag}/shared/k3 in datacenter dc2`);
    expect(failing.failure!['#text']).toContain(`missing mdc-${tag}/shared/k4 in datacenter dc2`);
    expect(suites[0]!.testcase.every((t) => !t.failure)).toBe(true);

    // The next copy repairs dc2 and leaves dc1 alone.
    const repair = await runCli(['copy', '--format', 'json'], { cwd: dir, env, timeoutMs: 90_000 });
    expect(repair.code, repair.stderr).toBe(0);
    const repaired = JSON.parse(repair.stdout) as { datacenters: { datacenter: string; rules: { created: number; updated: number }[] }[] };
    expect(repaired.datacenters.map((d) => [d.datacenter, d.rules[0]!.created, d.rules[0]!.updated])).toEqual([['dc1', 0, 0], ['dc2', 1, 1]]);
  });

  it('the dual-run replicates into both; with dc2 down dc1 stays in sync and verify says dc2 is not verified; dc2 catches up when it returns', async () => {
    const dualrun = await startDualRun(dir, [], env);
    try {
      await etcd.put(`${from}shared/live`).value('one');
      await eventually('the put reaches both datacenters', async () => (await value(dc1, `mdc-${tag}/shared/live`)) === 'one' && (await value(dc2, `mdc-${tag}/shared/live`)) === 'one');
      // Each datacenter has its own checkpoint, and the dual-run holds a lock in each.
      await waitCaughtUp(etcd, dc1, id);
      await waitCaughtUp(etcd, dc2, id);
      expect((await dc2.readKey(`_migrate/${id}/leader`))?.session).toBeTruthy();

      await federation.member('dc2').kill();
      const killedAt = Date.now();
      await etcd.put(`${from}shared/live`).value('two');
      await etcd.delete().key(`${from}shared/k0`);
      await etcd.put(`${from}local/only-dc1`).value('still here');
      // etcd compacts past dc2's checkpoint meanwhile: dc2 re-baselines when it returns.
      await etcd.kv.compact({ revision: Number((await etcd.maintenance.status()).header.revision), physical: true });
      await eventually('dc1 keeps up while dc2 is down', async () => (await value(dc1, `mdc-${tag}/shared/live`)) === 'two' && (await dc1.readKey(`mdc-${tag}/shared/k0`)) === undefined && (await value(dc1, `mdc-${tag}/local/only-dc1`)) === 'still here');
      await eventually('the metrics show dc2 disconnected and lagging', async () => {
        const text = await dualrun.metrics();
        return labelled(text, 'migrate_dualrun_datacenter_connected', 'dc2') === 0 && labelled(text, 'migrate_dualrun_datacenter_connected', 'dc1') === 1;
      }, 30_000);
      const health = await fetch(`http://127.0.0.1:${dualrun.metricsPort}/healthz`);
      expect(health.status).toBe(503);
      expect(((await health.json()) as { datacenters: Record<string, { connected: boolean }> }).datacenters.dc2!.connected).toBe(false);

      const partial = await runCli(['verify', '--format', 'json', '--rounds', '1', '--no-record', '--wait-timeout', '20s'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(partial.code, partial.stderr).toBe(3);
      const report = JSON.parse(partial.stdout);
      expect(validate(report), JSON.stringify(validate.errors)).toBe(true);
      expect(report.status).toBe('unverified');
      expect(report.datacenters.map((d: { datacenter: string; status: string }) => [d.datacenter, d.status])).toEqual([['dc1', 'parity'], ['dc2', 'unverified']]);
      expect(report.datacenters[1].error.code).toMatch(/consul_/);

      // A copy, its dry run too, is refused while the dual-run leads (it would write older values over what it replicates).
      const during = await runCli(['copy', '--dry-run', '--format', 'json'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(during.code, during.stderr).toBe(4);
      expect(JSON.parse(during.stdout).error.code).toBe('copy_dualrun_running');
      // Another migration's (a prefix of its own): the dry run plans dc1 and reports dc2 as not copied, exit 3.
      const other = configDir(['version: 1', `id: ${id}-dry`, 'rules:', `  - { name: shared, from: "${from}shared/", to: "mdc-${tag}-dry/shared/", datacenters: [dc1, dc2] }`, ''].join('\n'));
      const dry = await runCli(['copy', '--dry-run', '--format', 'json'], { cwd: other, env, timeoutMs: 120_000 });
      expect(dry.code, dry.stderr).toBe(3);
      const planned = JSON.parse(dry.stdout) as { status: string; datacenters: { datacenter: string; dryRun?: boolean; error?: { code: string } }[] };
      expect(planned.status).toBe('error');
      expect(planned.datacenters.map((d) => [d.datacenter, d.dryRun ?? null, d.error?.code.startsWith('consul_') ?? null])).toEqual([['dc1', true, null], ['dc2', null, true]]);

      await federation.member('dc2').restart();
      await federation.federated();
      const backAt = Date.now();
      await eventually('dc2 catches up from its own checkpoint', async () => (await value(dc2, `mdc-${tag}/shared/live`).catch(() => undefined)) === 'two' && (await dc2.readKey(`mdc-${tag}/shared/k0`).catch(() => null)) === undefined, 60_000);
      process.stderr.write(`datacenters: dc2 down ${((backAt - killedAt) / 1000).toFixed(1)} s; caught up ${((Date.now() - backAt) / 1000).toFixed(1)} s after it answered again (Consul ${servers().consulVersion})\n`);
      await waitCaughtUp(etcd, dc2, id, 60_000);
      const after = await runCli(['verify', '--format', 'json', '--rounds', '2'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(after.code, after.stdout + after.stderr).toBe(0);
      expect(await dc2.readKey(`mdc-${tag}/local/only-dc1`)).toBeUndefined();

      // status: one part per datacenter, each with its own rules and checkpoint.
      const status = await runCli(['status', '--format', 'json'], { cwd: dir, env });
      expect(status.code, status.stderr).toBe(0);
      const parts = JSON.parse(status.stdout).datacenters as { datacenter: string; dualRun: { running: boolean }; rules: { name: string }[] }[];
      expect(parts.map((p) => [p.datacenter, p.dualRun.running, p.rules.map((r) => r.name)])).toEqual([['dc1', true, ['shared', 'local']], ['dc2', true, ['shared']]]);
      // The next step runs as printed: a rule copied to both names its datacenter; one copied to dc1 alone needs none.
      const next = parts.map((p) => [p.datacenter, (p.rules as { name: string; next: string }[]).map((r) => [r.name, r.next])]);
      expect(next).toEqual([['dc1', [['shared', 'migrate cutover --rule shared --datacenter dc1'], ['local', 'migrate cutover --rule local']]], ['dc2', [['shared', 'migrate cutover --rule shared --datacenter dc2']]]]);

      // A rule copied to both is cut over in one datacenter at a time, named with --datacenter.
      const ambiguous = await runCli(['cutover', '--rule', 'shared', '--yes'], { cwd: dir, env });
      expect(ambiguous.code).toBe(2);
      expect(ambiguous.stderr).toContain('datacenter_required');
      const cut = await runCli(['cutover', '--rule', 'shared', '--datacenter', 'dc1', '--verify-now', '--yes'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
      // Its next steps run as printed, in the datacenter it was cut over in.
      expect(cut.stdout).toContain('`migrate finalize --rule shared --datacenter dc1` (or `migrate rollback --rule shared --datacenter dc1`)');
      // Writes to Consul in dc1 reach etcd (reverse mirror) and, through it, dc2.
      await dc1.putKey(`mdc-${tag}/shared/from-consul`, Buffer.from('dc1 wrote this'));
      await eventually('a Consul write in dc1 reaches etcd and dc2', async () => {
        const [kv] = (await etcd.get(`${from}shared/from-consul`).exec()).kvs;
        return kv?.value.toString() === 'dc1 wrote this' && (await value(dc2, `mdc-${tag}/shared/from-consul`)) === 'dc1 wrote this';
      }, 30_000);
      const second = await runCli(['cutover', '--rule', 'shared', '--datacenter', 'dc2', '--yes', '--format', 'json'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(second.code).toBe(4);
      expect(JSON.stringify(JSON.parse(second.stdout).rules[0].checks)).toContain('Consul already owns rule shared in dc1');
      const finalize = await runCli(['finalize', '--rule', 'shared', '--datacenter', 'dc1', '--yes', '--format', 'json'], { cwd: dir, env });
      expect(finalize.code).toBe(4);
      expect(JSON.stringify(JSON.parse(finalize.stdout).rules[0].checks)).toContain('also copied to dc2');
      const back = await runCli(['rollback', '--rule', 'shared', '--datacenter', 'dc1', '--yes'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(back.code, back.stdout + back.stderr).toBe(0);
    } catch (err) {
      process.stderr.write(`dual-run log:\n${dualrun.stderr()}\n`);
      throw err;
    } finally {
      expect(await dualrun.stop()).toBe(0);
    }
    expect(dualrun.stderr()).toMatch(/dc2: .*retrying/);
  }, 240_000);

  it('HA: when the leader dies, the standby takes the lock in every datacenter and replicates into both', async () => {
    const holderIn = async (target: ConsulTarget) => (JSON.parse((await target.readKey(`_migrate/${id}/leader`))?.value.toString() ?? '{}') as { holder?: string }).holder;
    const first = await startDualRun(dir, ['--ha'], env);
    const second = await startDualRun(dir, ['--ha'], env);
    try {
      await eventually('the first leads in both datacenters', async () => (await holderIn(dc1)) === `${hostname()}:${first.child.pid}` && (await holderIn(dc2)) === `${hostname()}:${first.child.pid}`, 30_000);
      await first.kill();
      const killedAt = Date.now();
      await etcd.put(`${from}shared/after-takeover`).value('second');
      await eventually('the standby leads in both datacenters and replicates into both', async () =>
        (await holderIn(dc1)) === `${hostname()}:${second.child.pid}` && (await holderIn(dc2)) === `${hostname()}:${second.child.pid}`
        && (await value(dc1, `mdc-${tag}/shared/after-takeover`)) === 'second' && (await value(dc2, `mdc-${tag}/shared/after-takeover`)) === 'second', 40_000);
      process.stderr.write(`datacenters: the standby replicated into both datacenters ${Date.now() - killedAt} ms after the leader was killed\n`);
      await waitCaughtUp(etcd, dc2, id, 30_000);
      const verify = await runCli(['verify', '--format', 'json', '--rounds', '2'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    } catch (err) {
      process.stderr.write(`standby log:\n${second.stderr()}\n`);
      throw err;
    } finally {
      await first.kill();
      expect(await second.stop()).toBe(0);
    }
  }, 120_000);

  it('a dual-run started while dc2 is down replicates into dc1 at once and into dc2 when it answers', async () => {
    await federation.member('dc2').kill();
    const startedAt = Date.now();
    const dualrun = await startDualRun(dir, [], env);
    try {
      await etcd.put(`${from}shared/late`).value('while dc2 was down');
      await eventually('dc1 gets it with dc2 down', async () => (await value(dc1, `mdc-${tag}/shared/late`)) === 'while dc2 was down', 30_000);
      // dc2's checks before the start are not retried: dc1 is replicated into within seconds, not after dc2's retries.
      const dc1After = Date.now() - startedAt;
      process.stderr.write(`datacenters: started with dc2 down, dc1 replicated ${dc1After} ms after the start\n`);
      expect(dc1After).toBeLessThan(10_000);
      expect(dualrun.child.exitCode).toBeNull();
      await federation.member('dc2').restart();
      await federation.federated();
      await eventually('dc2 gets it once it answers', async () => (await value(dc2, `mdc-${tag}/shared/late`).catch(() => undefined)) === 'while dc2 was down', 60_000);
      await waitCaughtUp(etcd, dc2, id, 60_000);
      const after = await runCli(['verify', '--format', 'json', '--rounds', '2', '--datacenter', 'dc2'], { cwd: dir, env, timeoutMs: 120_000 });
      expect(after.code, after.stdout + after.stderr).toBe(0);
      expect((JSON.parse(after.stdout) as { datacenters: { datacenter: string }[] }).datacenters.map((d) => d.datacenter)).toEqual(['dc2']);
    } catch (err) {
      process.stderr.write(`dual-run log:\n${dualrun.stderr()}\n`);
      throw err;
    } finally {
      expect(await dualrun.stop()).toBe(0);
    }
    expect(dualrun.stderr()).toMatch(/dc2: not checked before the start/);
  }, 180_000);
});
