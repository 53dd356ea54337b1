import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { parseConfig } from '../src/config/load.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { LeaderLock } from '../src/dualrun/leader.js';
import { startConsulCluster, startEtcd, startEtcdCluster } from '../scripts/local-servers.js';
import { checkParity } from './support/parity.js';
import { configDir, consulTarget, privateConsul, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

/** A migration of two copy rules, and `more` rules (YAML lines, with /REGISTRY/ standing for a folder of its own). */
function scenario(label: string, more = '') {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }\n${more.replaceAll('/REGISTRY/', `${root}/registry/`)}`;
  return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
}

/** A dual-run started on the etcd at `endpoint` replicates five new keys, and Consul has parity with etcd. */
async function replicatesWithParity(s: ReturnType<typeof scenario>, client: Etcd3, endpoint: string): Promise<void> {
  const dualrun = await startDualRun(s.dir, [], { ETCDCTL_ENDPOINTS: endpoint });
  try {
    for (let i = 0; i < 5; i++) await client.put(`${s.root}/app/new${i}`).value('written since');
    await waitCaughtUp(client, target, s.id);
    expect(await checkParity(client, target, s.mapping, s.id)).toMatchObject({ missing: [], extra: [], wrongValue: [] });
  } finally {
    expect(await dualrun.stop()).toBe(0);
  }
}

async function leaderHolder(id: string): Promise<string | undefined> {
  const entry = await target.readKey(`_migrate/${id}/leader`);
  return entry?.session ? (JSON.parse(entry.value.toString()) as { holder: string }).holder : undefined;
}

async function healthy(port: number): Promise<{ role?: string }> {
  return (await fetch(`http://127.0.0.1:${port}/healthz`)).json() as Promise<{ role?: string }>;
}

describe('dual-run faults (real servers)', () => {
  it('HA: the standby takes over within about 2× the session TTL after the leader dies, and parity holds', async () => {
    const s = scenario('ha');
    await etcd.put(`${s.root}/app/a`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const first = await startDualRun(s.dir, ['--ha']);
    await eventually('first leads', async () => (await healthy(first.metricsPort)).role === 'leader');
    const second = await startDualRun(s.dir, ['--ha']);
    await eventually('second waits as standby', async () => (await healthy(second.metricsPort)).role === 'standby');
    // It names the leader it waits for (host:pid).
    await eventually('the standby names the leader', async () => new RegExp(`standby: another dual-run leads this migration \\([^)]+:${first.child.pid}\\)`).test(second.stderr()));
    // A standby stopped before it ever led says so, not "at checkpoint 0".
    const third = await startDualRun(s.dir, ['--ha']);
    await eventually('third waits as standby', async () => (await healthy(third.metricsPort)).role === 'standby');
    expect(await third.stop()).toBe(0);
    expect(third.stderr()).toContain('stopped (signal) as a standby that never led');
    try {
      await etcd.put(`${s.root}/app/b`).value('2');
      await waitCaughtUp(etcd, target, s.id);
      const killedAt = Date.now();
      await first.kill();
      await etcd.put(`${s.root}/app/c`).value('3');
      await eventually('standby leads', async () => (await healthy(second.metricsPort)).role === 'leader', 30_000);
      const takeoverMs = Date.now() - killedAt;
      process.stderr.write(`dualrun-ha: standby led ${takeoverMs} ms after the leader was killed\n`);
      expect(takeoverMs).toBeLessThan(25_000);
      await waitCaughtUp(etcd, target, s.id);
      const parity = await checkParity(etcd, target, s.mapping, s.id);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [] });
    } finally {
      await first.kill();
      expect(await second.stop()).toBe(0);
    }
  }, 60_000);

  it('fencing: a leader paused with SIGSTOP loses the lock; resumed, it writes nothing, leaves the new leader\'s sessions alone, and steps down', async () => {
    const s = scenario('fence');
    await etcd.put(`${s.root}/app/a`).value('1');
    // A short lease kept alive throughout: its session lapses during the pause, and the new leader makes another.
    const lease = etcd.lease(10);
    lease.on('lost', () => undefined);
    await lease.put(`${s.root}/services/api/1`).value('10.0.0.1:80');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const paused = await startDualRun(s.dir, ['--ha']);
    await eventually('first leads', async () => (await healthy(paused.metricsPort)).role === 'leader');
    const standby = await startDualRun(s.dir, ['--ha']);
    try {
      const pausedHolder = await leaderHolder(s.id);
      await waitCaughtUp(etcd, target, s.id);
      const txnsBefore = metric(await paused.metrics(), 'migrate_dualrun_txns_total');
      paused.child.kill('SIGSTOP');
      // Its session is no longer renewed: Consul reaps it within 2× TTL and the standby takes the lock.
      await eventually('standby leads', async () => (await healthy(standby.metricsPort)).role === 'leader', 40_000);
      expect(await leaderHolder(s.id)).not.toBe(pausedHolder);
      paused.child.kill('SIGCONT');
      await etcd.put(`${s.root}/app/after-takeover`).value('x');
      await waitCaughtUp(etcd, target, s.id);
      await eventually('paused one steps down', async () => /stepping down|stepped down/.test(paused.stderr()), 20_000);
      const txnsAfter = metric(await paused.metrics(), 'migrate_dualrun_txns_total');
      // Whatever it tried after waking failed the leader check: nothing more was applied by it.
      expect(txnsAfter).toBe(txnsBefore);
      // Nor did it touch the sessions: the leased key is held as the new leader wrote it, and stays so.
      await eventually('the new leader holds the leased key', async () => Boolean((await target.readKey(`${s.id}/services/api/1`))?.session), 20_000);
      const held = await target.readKey(`${s.id}/services/api/1`);
      await new Promise((r) => setTimeout(r, 5000));
      expect(await target.readKey(`${s.id}/services/api/1`)).toMatchObject({ session: held!.session, modifyIndex: held!.modifyIndex });
      expect(paused.stderr()).not.toMatch(/destroyed it|re-created it/);
      const parity = await checkParity(etcd, target, s.mapping, s.id);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [] });
      // Stopped as a standby, it does not give its old checkpoint as where the migration stands.
      expect(await paused.stop()).toBe(0);
      expect(paused.stderr()).toMatch(/stopped \(signal\) as a standby \(it last led up to checkpoint \d+; the leader holds the migration's\)/);
    } finally {
      lease.release();
      paused.child.kill('SIGCONT');
      await paused.kill();
      expect(await standby.stop()).toBe(0);
    }
  }, 90_000);

  it('without --ha, a leader whose session Consul reaped (an outage, a paused process) takes the lock again and goes on; it does not exit 0', async () => {
    const s = scenario('relead');
    await etcd.put(`${s.root}/app/a`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir);
    try {
      await eventually('leads', async () => (await healthy(dr.metricsPort)).role === 'leader');
      await waitCaughtUp(etcd, target, s.id);
      dr.child.kill('SIGSTOP');
      // Not renewed, its session is reaped within 2× its TTL (10 s), and the lock is free.
      await eventually('lock freed', async () => (await leaderHolder(s.id)) === undefined, 40_000);
      dr.child.kill('SIGCONT');
      await eventually('took the lock again', async () => /taking the leader lock again/.test(dr.stderr()) && (await leaderHolder(s.id)) !== undefined, 30_000);
      await etcd.put(`${s.root}/app/after`).value('2');
      await waitCaughtUp(etcd, target, s.id);
      expect((await target.readKey(`${s.id}/app/after`))?.value.toString()).toBe('2');
      expect(dr.child.exitCode).toBeNull();
    } finally {
      dr.child.kill('SIGCONT');
      expect(await dr.stop()).toBe(0);
    }
  }, 120_000);

  it('idle rules on a busy etcd: the checkpoint follows etcd and a restart after compaction needs no re-baseline', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const env = { ETCDCTL_ENDPOINTS: own.endpoint };
    const s = scenario('idle');
    try {
      await etcd.put(`${s.root}/app/a`).value('1');
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      let dr = await startDualRun(s.dir, [], env);
      try {
        // Thousands of writes outside the watched range; the mapped prefixes stay quiet.
        for (let i = 0; i < 3000; i += 100) {
          await etcd.if(`/zz-${s.id}/busy/0`, 'Mod', '>', -1).then(...Array.from({ length: 100 }, (_, j) => etcd.put(`/zz-${s.id}/busy/${i + j}`).value('x'))).commit();
        }
        const busy = Number((await etcd.put(`/zz-${s.id}/busy/last`).value('x').exec()).header.revision);
        await waitCaughtUp(etcd, target, s.id, 15_000);
        await etcd.kv.compact({ revision: busy, physical: true });
      } finally {
        expect(await dr.stop()).toBe(0);
      }
      dr = await startDualRun(s.dir, [], env);
      try {
        await etcd.put(`${s.root}/app/b`).value('2');
        await waitCaughtUp(etcd, target, s.id);
        expect(metric(await dr.metrics(), 'migrate_dualrun_rebaselines_total')).toBe(0);
        expect((await target.readKey(`${s.id}/app/b`))?.value.toString()).toBe('2');
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      etcd.close();
      await own.stop();
    }
  });

  it('late writes to a cut-over rule while the dual-run is stopped, then an etcd compaction past its checkpoint: recorded as late writes at the restart, not silently overwritten by Consul\'s values', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const env = { ETCDCTL_ENDPOINTS: own.endpoint };
    const s = scenario('latecompact');
    const cli = (args: string[]) => runCli(args, { cwd: s.dir, env: serverEnv(env) });
    try {
      for (let i = 0; i < 5; i++) await etcd.put(`${s.root}/app/k${i}`).value(`v${i}`);
      await etcd.put(`${s.root}/services/a`).value('1');
      expect((await cli(['copy'])).code).toBe(0);
      let dr = await startDualRun(s.dir, [], env);
      try {
        await waitCaughtUp(etcd, target, s.id);
        const cutover = await cli(['cutover', '--rule', 'app', '--yes', '--verify-now']);
        expect(cutover.code, cutover.stdout + cutover.stderr).toBe(0);
        await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
      // While nothing replicates: a writer never switched to Consul changes one key and creates another, and
      // an etcd-owned rule changes too; then etcd compacts the history the dual-run would have replayed.
      await etcd.put(`${s.root}/app/k1`).value('late-change');
      await etcd.put(`${s.root}/app/fresh`).value('late-create');
      await etcd.put(`${s.root}/services/a`).value('2');
      const now = Number((await etcd.put(`/zz-${s.id}/tick`).value('x').exec()).header.revision);
      await etcd.kv.compact({ revision: now, physical: true });
      dr = await startDualRun(s.dir, [], env);
      try {
        await eventually('re-baselined', async () => metric(await dr.metrics(), 'migrate_dualrun_rebaselines_total') === 1);
        await eventually('etcd back in line with Consul, the owner', async () => (await etcd.get(`${s.root}/app/k1`).string()) === 'v1' && (await etcd.get(`${s.root}/app/fresh`).string()) === null);
        await eventually('both late writes recorded', async () => {
          const status = JSON.parse((await cli(['status', '--format', 'json'])).stdout) as { rules: { name: string; lateWrites: number }[] };
          return status.rules.find((r) => r.name === 'app')?.lateWrites === 2;
        });
        expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBe(2);
        expect(dr.stderr()).toContain(`late write: etcd put of ${s.root}/app/k1 under rule app`);
        expect(dr.stderr()).toContain(`late write: etcd put of ${s.root}/app/fresh under rule app`);
        expect(dr.stderr()).not.toContain('late-change');
        // The etcd-owned rule was re-baselined, not reported.
        expect((await target.readKey(`${s.id}/services/a`))?.value.toString()).toBe('2');
        const verify = await cli(['verify', '--progress', 'none', '--format', 'json', '--round-pause', '200ms']);
        expect(verify.code, verify.stderr).toBe(1);
        expect((JSON.parse(verify.stdout) as { rules: { name: string; lateWrites: number }[] }).rules.find((r) => r.name === 'app')).toMatchObject({ lateWrites: 2 });
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      etcd.close();
      await own.stop();
    }
  }, 120_000);

  it('etcd compacts past the checkpoint while Consul is down: the re-baseline is retried with backoff until Consul is back, the dual-run does not exit', async () => {
    // Its own etcd (compacted) and its own Consul (killed and started again on its data).
    const own = await startEtcd();
    const consul = await startConsulCluster({ size: 1 });
    const etcd = new Etcd3({ hosts: own.endpoint });
    const member = consul.members[0]!;
    const env = { ETCDCTL_ENDPOINTS: own.endpoint, CONSUL_HTTP_ADDR: member.address };
    const s = scenario('compactdown');
    let dr: Awaited<ReturnType<typeof startDualRun>> | undefined;
    const mine = new ConsulTarget({ address: member.address });
    try {
      await etcd.put(`${s.root}/app/a`).value('1');
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      dr = await startDualRun(s.dir, [], env);
      // Replicating (past its start-up checks, where an unreachable server exits 3 by design).
      await etcd.put(`${s.root}/app/a`).value('2');
      await eventually('replicating', async () => (await mine.readKey(`${s.id}/app/a`))?.value.toString() === '2');
      await member.kill();
      await etcd.put(`${s.root}/app/b`).value('written while Consul was down');
      const now = Number((await etcd.put(`/zz-${s.id}/tick`).value('x').exec()).header.revision);
      await etcd.kv.compact({ revision: now, physical: true });
      await eventually('the re-baseline tried and failed on Consul', async () => /re-baselining[\s\S]*retrying in \d+ ms/.test(dr!.stderr().slice(dr!.stderr().indexOf('compacted its history'))), 30_000);
      expect(dr.child.exitCode, dr.stderr()).toBeNull();
      await member.restart();
      await consul.healthy();
      await eventually('re-baselined once Consul is back', async () => (await mine.readKey(`${s.id}/app/b`).catch(() => undefined))?.value.toString() === 'written while Consul was down', 60_000);
      expect(dr.child.exitCode, dr.stderr()).toBeNull();
      // Once failed at 0 on 1.13.9 in CI and never since: the log and the metrics say how, should it again.
      const metrics = await dr.metrics();
      expect(metric(metrics, 'migrate_dualrun_rebaselines_total'), `${metrics.split('\n').filter((l) => l.startsWith('migrate_')).join('\n')}\n${dr.stderr().slice(-6000)}`).toBeGreaterThanOrEqual(1);
    } finally {
      expect(await dr?.stop()).toBe(0);
      mine.close();
      etcd.close();
      await Promise.all([own.stop(), consul.stop()]);
    }
  }, 150_000);

  it('Consul down while etcd changes: the retries back off (the watch\'s events do not reset the backoff)', async () => {
    const consul = await privateConsul();
    const s = scenario('consuldown');
    const env = { CONSUL_HTTP_ADDR: consul.address };
    let writing = true;
    let dr: Awaited<ReturnType<typeof startDualRun>> | undefined;
    try {
      await etcd.put(`${s.root}/app/a`).value('1');
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      dr = await startDualRun(s.dir, [], env);
      const { metricsPort, stderr } = dr;
      await eventually('leads', async () => (await healthy(metricsPort)).role === 'leader');
      // Replicating, not still setting up (an outage then is another matter): a write has reached the private Consul.
      const own = new ConsulTarget({ address: consul.address });
      try {
        await etcd.put(`${s.root}/app/b`).value('1');
        await waitCaughtUp(etcd, own, s.id);
      } finally {
        own.close();
      }
      const writer = (async () => {
        for (let i = 0; writing; i++) {
          await etcd.put(`${s.root}/app/k${i % 20}`).value(String(i));
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      await consul.stop();
      const before = stderr().length;
      // Less than the leader lock's TTL (10 s): the run keeps its lock state and only retries. Its readiness says
      // so throughout, once the first failed txn is seen: not ready again when etcd's watch reopens.
      const answers: number[] = [];
      const until = Date.now() + 8000;
      let failing = false;
      while (Date.now() < until) {
        failing ||= /retrying in \d+ ms from revision/.test(stderr().slice(before));
        if (failing) answers.push((await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).status);
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(answers.length).toBeGreaterThan(5);
      expect(answers.filter((code) => code === 200)).toEqual([]);
      writing = false;
      await writer;
      const log = stderr().slice(before);
      // The replication's retries, and the owners document's: each waits longer than the one before.
      const waits = (pattern: RegExp) => [...log.matchAll(pattern)].map((m) => Number(m[1]));
      const replication = waits(/retrying in (\d+) ms from revision/g);
      const owners = waits(/reading the owners document failed: .*; retrying in (\d+) ms/g);
      for (const series of [replication, owners]) {
        expect(series.length, log).toBeGreaterThanOrEqual(2);
        for (let i = 1; i < series.length; i++) expect(series[i], log).toBeGreaterThan(series[i - 1]!);
      }
    } finally {
      writing = false;
      await dr?.kill();
      await consul.stop();
    }
  }, 60_000);

  it('an unreachable source never turns into deletes; the dual-run waits and keeps its position', async () => {
    const own = await startEtcd();
    const client = new Etcd3({ hosts: own.endpoint });
    const s = scenario('down');
    const env = { ETCDCTL_ENDPOINTS: own.endpoint };
    try {
      for (let i = 0; i < 30; i++) await client.put(`${s.root}/app/k${i}`).value(`v${i}`);
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      const dr = await startDualRun(s.dir, [], env);
      await eventually('leads', async () => (await healthy(dr.metricsPort)).role === 'leader');
      client.close();
      await own.stop();
      await new Promise((r) => setTimeout(r, 4000));
      expect(dr.child.exitCode).toBeNull();
      expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(30);
      expect(dr.stderr()).toMatch(/unreachable|retrying/);
      const health = await fetch(`http://127.0.0.1:${dr.metricsPort}/healthz`);
      expect(health.status).toBe(503);
      expect(await dr.stop()).toBe(0);
      expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(30);
    } finally {
      client.close();
      await own.stop();
    }
  });

  // With a service rule, whose start-up sync reads etcd, the setup itself is retried; without one, the lease passes go on.
  it.each([{ services: false }, { services: true }])('etcd down longer than a session TTL, from the moment the dual-run takes the lock (service rule: $services): it leads, the sessions of its leases are still renewed, so their keys stay in Consul', async ({ services }) => {
    // One member that can be stopped and started again with its data: etcd restores its leases with a fresh TTL.
    const own = await startEtcdCluster(1);
    const client = new Etcd3({ hosts: own.endpoints });
    const s = scenario('etcddown', services ? `  - { name: registry, from: /REGISTRY/, action: service }\n` : '');
    const env = { ETCDCTL_ENDPOINTS: own.endpoints[0]! };
    const owner = client.lease(10);
    owner.on('lost', () => undefined);
    // Another holder has the lock, so the dual-run waits as a standby; etcd dies, and the lock is freed: the dual-run
    // sets up its replication (the start-up lease pass reads etcd) with etcd down. That used to end it with exit 3.
    const other = new LeaderLock(target, `_migrate/${s.id}/leader`, 'another-host:1');
    try {
      await owner.grant();
      await owner.put(`${s.root}/services/api/1`).value('10.0.0.1:80');
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      const session = (await target.readKey(`${s.id}/services/api/1`))?.session;
      expect(session).toBeTruthy();
      expect(await other.acquire({ wait: false, signal: new AbortController().signal })).toBe(true);
      const dr = await startDualRun(s.dir, ['--ha'], env);
      try {
        await eventually('waits as standby', async () => (await healthy(dr.metricsPort)).role === 'standby');
        await own.members[0]!.kill();
        await other.release();
        await eventually('leads with etcd down', async () => (await healthy(dr.metricsPort)).role === 'leader');
        // Consul reaps a 10 s session between 10 and 20 s after its last renewal: 30 s without etcd.
        const until = Date.now() + 30_000;
        while (Date.now() < until) {
          expect((await target.readKey(`${s.id}/services/api/1`))?.session, 'the leased key stays in Consul while etcd is down').toBe(session);
          await new Promise((r) => setTimeout(r, 1000));
        }
        expect(dr.child.exitCode, dr.stderr()).toBeNull();
        expect(dr.stderr()).toMatch(/checking the mirrored leases failed: etcd at \S+ is unreachable/);
        if (services) expect(dr.stderr()).toMatch(/etcd at \S+ is unreachable .*; setting up the replication again in \d+ ms/);
        await own.members[0]!.restart();
        await waitCaughtUp(client, target, s.id);
        expect(await checkParity(client, target, s.mapping, s.id)).toMatchObject({ checked: 1, missing: [], extra: [], wrongValue: [], wrongSession: [] });
        expect((await target.readKey(`${s.id}/services/api/1`))?.session).toBe(session);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      await other.release();
      owner.release();
      client.close();
      await own.stop();
    }
  }, 120_000);

  it('etcd hangs (a partition: every call waits out its deadline) with more leases than a lease pass checks at once: every session is still renewed, so no leased key leaves Consul', async () => {
    const own = await startEtcd();
    const client = new Etcd3({ hosts: own.endpoint });
    const s = scenario('etcdhang');
    const env = { ETCDCTL_ENDPOINTS: own.endpoint };
    const leases = Array.from({ length: 40 }, () => client.lease(10));
    for (const lease of leases) lease.on('lost', () => undefined);
    let stopped = false;
    try {
      for (const [i, lease] of leases.entries()) await lease.put(`${s.root}/services/api/${i}`).value(`10.0.0.${i}:80`);
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      const dr = await startDualRun(s.dir, [], env);
      try {
        await eventually('leads', async () => (await healthy(dr.metricsPort)).role === 'leader');
        await waitCaughtUp(client, target, s.id);
        process.kill(own.pid, 'SIGSTOP');
        stopped = true;
        // 40 leases, 16 checked at a time, each check waiting 10 s for etcd: renewals paired with the checks reached
        // the last sessions after Consul (2× their 10 s TTL) had reaped them.
        const until = Date.now() + 35_000;
        while (Date.now() < until) {
          const held = (await target.readEntries(await target.listKeys(`${s.id}/services/`))).filter((e) => e.session);
          expect(held, 'every leased key stays in Consul, held by its session, while etcd hangs').toHaveLength(40);
          await new Promise((r) => setTimeout(r, 1000));
        }
        expect(dr.child.exitCode, dr.stderr()).toBeNull();
      } finally {
        if (stopped) process.kill(own.pid, 'SIGCONT');
        stopped = false;
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      if (stopped) process.kill(own.pid, 'SIGCONT');
      for (const lease of leases) lease.release();
      client.close();
      await own.stop();
    }
  }, 120_000);

  it('outage: sessions reaped while the dual-run was down are re-created at restart and their keys come back', async () => {
    const s = scenario('outage');
    await etcd.put(`${s.root}/app/a`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const owner = etcd.lease(12);
    try {
      await owner.grant();
      await owner.put(`${s.root}/services/api/1`).value('10.0.0.1:80');
      let dr = await startDualRun(s.dir);
      await waitCaughtUp(etcd, target, s.id);
      const first = (await target.readKey(`${s.id}/services/api/1`))?.session;
      expect(first).toBeTruthy();
      await new Promise((r) => setTimeout(r, 26_000));
      expect((await target.readKey(`${s.id}/services/api/1`))?.session).toBe(first);
      expect(await dr.stop()).toBe(0);
      // Down for 40 s: nobody renews the session, Consul reaps it and deletes its keys.
      await eventually('Consul reaps the session', async () => (await target.readKey(`${s.id}/services/api/1`)) === undefined, 40_000);
      dr = await startDualRun(s.dir);
      try {
        await eventually('key back after restart', async () => Boolean((await target.readKey(`${s.id}/services/api/1`))?.session), 10_000);
        expect((await target.readKey(`${s.id}/services/api/1`))?.value.toString()).toBe('10.0.0.1:80');
        // Its keys were gone from Consul: counted, as a session lost while the dual-run led is.
        expect(metric(await dr.metrics(), 'migrate_dualrun_sessions_recreated_total')).toBe(1);
        owner.release();
        // The owner stops renewing: etcd expires the lease (12 s), and the key leaves Consul.
        await eventually('key gone after the owner stops', async () => (await target.readKey(`${s.id}/services/api/1`)) === undefined, 30_000);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      owner.release();
    }
  }, 150_000);
});

describe('etcd restored from an older backup (real servers)', () => {
  it('the dual-run refuses (etcd_behind_checkpoint, exit 4, no data written) rather than wait for etcd to pass the checkpoint and skip what it makes meanwhile, and goes on refusing once etcd has passed it; copy moves the checkpoint back, and the dual-run then replicates with parity', async () => {
    const data = mkdtempSync(join(tmpdir(), 'migrate-etcd-restored-'));
    const backup = `${data}-backup`;
    const s = scenario('restored');
    let own = await startEtcd({ dataDir: data });
    let client = new Etcd3({ hosts: own.endpoint });
    try {
      for (let i = 0; i < 10; i++) await client.put(`${s.root}/app/k${i}`).value('backed up');
      client.close();
      await own.stop();
      cpSync(data, backup, { recursive: true });
      own = await startEtcd({ dataDir: data });
      client = new Etcd3({ hosts: own.endpoint });
      // After the backup: 40 revisions the restore loses.
      for (let i = 0; i < 40; i++) await client.put(`${s.root}/app/after${i}`).value('lost by the restore');
      const env = () => serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
      expect((await runCli(['copy'], { cwd: s.dir, env: env() })).code).toBe(0);
      const checkpoint = await waitCaughtUp(client, target, s.id);
      client.close();
      await own.stop();
      // The backup comes back: the same cluster, at a revision below the checkpoint.
      own = await startEtcd({ dataDir: backup });
      client = new Etcd3({ hosts: own.endpoint });
      expect(Number((await client.maintenance.status()).header.revision)).toBeLessThan(checkpoint);
      const dataKeys = async () => (await target.readEntries(await target.listKeys(`${s.id}/`))).map((e) => `${e.key}@${e.modifyIndex}`);
      const before = await dataKeys();
      const refused = await runCli(['dualrun'], { cwd: s.dir, env: env(), timeoutMs: 60_000 });
      expect(refused.code, refused.stderr).toBe(4);
      expect(refused.stderr).toMatch(new RegExp(`error\\[etcd_behind_checkpoint\\]: etcd's revision \\d+ is below the migration's checkpoint ${checkpoint}`));
      expect(refused.stderr).toContain('migrate copy --delete-extraneous');
      expect(await dataKeys()).toEqual(before);
      // The finding is recorded with the checkpoint, which stays where it was.
      const recorded = JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()) as { revision: number; rewound?: { etcdRevision: number } };
      expect(recorded.revision).toBe(checkpoint);
      expect(recorded.rewound?.etcdRevision).toBeLessThan(checkpoint);
      // The applications write on: etcd passes the checkpoint with revisions that are not the ones replicated.
      for (let i = 0; i < 60; i++) await client.put(`${s.root}/app/restored${i}`).value('written after the restore');
      expect(Number((await client.maintenance.status()).header.revision)).toBeGreaterThan(checkpoint);
      const still = await runCli(['dualrun'], { cwd: s.dir, env: env(), timeoutMs: 60_000 });
      expect(still.code, still.stderr).toBe(4);
      expect(still.stderr).toMatch(new RegExp(`error\\[etcd_behind_checkpoint\\]: A dual-run found etcd's revision \\d+ below \\([^)]+\\) the migration's checkpoint ${checkpoint}`));
      expect(await dataKeys()).toEqual(before);
      const told = await runCli(['status'], { cwd: s.dir, env: env() });
      expect(told.stdout).toMatch(new RegExp(`ETCD WENT BACK IN TIME: a dual-run found etcd's revision \\d+ below the checkpoint ${checkpoint}`));
      expect(told.stdout).toContain('migrate copy --delete-extraneous');
      const copy = await runCli(['copy', '--delete-extraneous', '--allow-mass-delete', '--yes'], { cwd: s.dir, env: env() });
      expect(copy.code, copy.stderr).toBe(0);
      expect(copy.stderr).toMatch(new RegExp(`a dual-run found etcd's revision \\d+ below \\([^)]+\\) the migration's checkpoint ${checkpoint} \\(etcd restored from a backup\\?\\): the checkpoint moves back`));
      const after = JSON.parse((await runCli(['status', '--format', 'json'], { cwd: s.dir, env: env() })).stdout) as { dualRun: { etcdWentBack: unknown } };
      expect(after.dualRun.etcdWentBack).toBeNull();
      // What etcd makes now, below the old checkpoint, is replicated (it was skipped until etcd passed it).
      await replicatesWithParity(s, client, own.endpoint);
    } finally {
      client.close();
      await own.stop();
      rmSync(data, { recursive: true, force: true });
      rmSync(backup, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('etcd rebuilt as a new cluster, its data loaded again (real servers)', () => {
  it('dualrun and copy refuse the new cluster (identity_cluster_mismatch) naming the way forward; copy --accept-cluster-change --delete-extraneous records it and re-anchors the checkpoint, and the dual-run then replicates with parity', async () => {
    const s = scenario('rebuilt');
    let own = await startEtcd();
    let client = new Etcd3({ hosts: own.endpoint });
    try {
      for (let i = 0; i < 30; i++) await client.put(`${s.root}/app/k${i}`).value(`v${i}`);
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint }) })).code).toBe(0);
      const dualrun = await startDualRun(s.dir, [], { ETCDCTL_ENDPOINTS: own.endpoint });
      for (let i = 0; i < 40; i++) await client.put(`${s.root}/app/late${i}`).value('replicated');
      const checkpoint = await waitCaughtUp(client, target, s.id);
      expect(await dualrun.stop()).toBe(0);
      client.close();
      await own.stop();
      // The rebuilt cluster: a new id, revisions from 1, the data loaded again (some of it changed, some gone).
      own = await startEtcd();
      client = new Etcd3({ hosts: own.endpoint });
      for (let i = 0; i < 30; i++) await client.put(`${s.root}/app/k${i}`).value(i < 5 ? `rebuilt${i}` : `v${i}`);
      expect(Number((await client.maintenance.status()).header.revision)).toBeLessThan(checkpoint);
      const env = () => serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
      const refused = await runCli(['dualrun'], { cwd: s.dir, env: env(), timeoutMs: 60_000 });
      expect(refused.code, refused.stderr).toBe(4);
      expect(refused.stderr).toContain('error[identity_cluster_mismatch]');
      expect(refused.stderr).toContain('migrate copy --accept-cluster-change --delete-extraneous');
      const copy = await runCli(['copy', '--accept-cluster-change', '--delete-extraneous', '--allow-mass-delete', '--yes'], { cwd: s.dir, env: env() });
      expect(copy.code, copy.stderr).toBe(0);
      expect(copy.stderr).toMatch(new RegExp(`the migration moves from etcd cluster \\d+ to this one \\(--accept-cluster-change\\), whose revisions are not the ones of the migration's checkpoint ${checkpoint}: the checkpoint moves to this copy's revision \\d+`));
      await replicatesWithParity(s, client, own.endpoint);
    } finally {
      client.close();
      await own.stop();
    }
  }, 120_000);
});

describe('Consul restored from an older snapshot while the dual-run runs (real servers)', () => {
  it('the dual-run finds its checkpoint went back, replays etcd from it, and Consul gets back what the restore took: parity; a cutover the restore undid is said', async () => {
    const own = await privateConsul();
    const ownTarget = new ConsulTarget({ address: own.address });
    const s = scenario('rewound');
    const env = { CONSUL_HTTP_ADDR: own.address };
    let busy: ReturnType<typeof setInterval> | undefined;
    try {
      for (let i = 0; i < 10; i++) await etcd.put(`${s.root}/app/k${i}`).value('before the snapshot');
      expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv(env) })).code).toBe(0);
      const dualrun = await startDualRun(s.dir, [], env);
      try {
        await eventually('the dual-run leads', async () => dualrun.stderr().includes('leading the dual-run'));
        await waitCaughtUp(etcd, ownTarget, s.id);
        const snapshot = (await ownTarget.http.request({ method: 'GET', path: '/v1/snapshot' })).body;
        // After the snapshot: changes the restore takes from Consul (a put, an update, a delete).
        for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/after${i}`).value('after the snapshot');
        await etcd.put(`${s.root}/app/k0`).value('updated after the snapshot');
        await etcd.delete().key(`${s.root}/app/k1`);
        await waitCaughtUp(etcd, ownTarget, s.id);
        // etcd stays busy outside the rules: each progress makes a checkpoint txn, which must not hide the restore.
        busy = setInterval(() => void etcd.put(`${s.root}/outside`).value(String(Date.now())).catch(() => undefined), 50);
        await ownTarget.http.request({ method: 'PUT', path: '/v1/snapshot', body: snapshot });
        // (What the restore took is back within a txn or two: not asserted gone here, the dual-run may have replayed it already.)
        const withLog = (err: Error) => Promise.reject(new Error(`${err.message}; the dual-run's log:\n${dualrun.stderr()}`));
        await eventually('Consul gets back what the restore took', async () => (await ownTarget.readKey(`${s.id}/app/after19`)) !== undefined && (await ownTarget.readKey(`${s.id}/app/k1`)) === undefined, 40_000).catch(withLog);
        // Still leading, it found its checkpoint went back. (A leader whose session the restore lost leads again, from the restored checkpoint.)
        if (dualrun.stderr().match(/leading the dual-run/g)!.length === 1) {
          expect(dualrun.stderr()).toMatch(/Consul's state went back in time \(restored from a snapshot\?\): its checkpoint is at revision \d+, this dual-run had written \d+; replaying/);
        }
        await waitCaughtUp(etcd, ownTarget, s.id);
        expect(await checkParity(etcd, ownTarget, s.mapping, s.id)).toMatchObject({ missing: [], extra: [], wrongValue: [] });
        // A rule cut over after a snapshot, the snapshot restored: etcd owns it again in the restored state, and nothing
        // tells the applications that write it in Consul. The dual-run says so.
        const before = (await ownTarget.http.request({ method: 'GET', path: '/v1/snapshot' })).body;
        const cut = await runCli(['cutover', '--rule', 'app', '--yes', '--verify-now', '--drain', '200ms'], { cwd: s.dir, env: serverEnv(env) });
        expect(cut.code, cut.stdout + cut.stderr).toBe(0);
        await eventually('the dual-run follows the cutover', async () => /reverse mirror of rule app/.test(dualrun.stderr()), 20_000);
        const leads = () => dualrun.stderr().match(/leading the dual-run/g)!.length;
        const led = leads();
        await ownTarget.http.request({ method: 'PUT', path: '/v1/snapshot', body: before });
        // Said by a leader that kept its lock through the restore (one that lost it leads again from the restored state, knowing no other).
        await eventually('the dual-run says the cutover was undone', async () => leads() > led || /the owners document went back in time \(Consul restored from a snapshot\?\): rule\(s\) app, cut over before, are owned by etcd in the restored state/.test(dualrun.stderr()), 30_000).catch(withLog);
      } finally {
        expect(await dualrun.stop()).toBe(0);
      }
    } finally {
      clearInterval(busy);
      ownTarget.close();
      await own.stop();
    }
  }, 120_000);
});
