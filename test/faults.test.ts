import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { checkParity } from './support/parity.js';
import { FaultProxy, startChaos, type ChaosLog } from './support/fault-proxy.js';
import { configDir, consulTarget, rawEtcd, repoRoot, runCli, serverEnv, servers } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';
import { prng } from '../fixtures/demo/keyspace.js';

const etcd = rawEtcd();
const target = consulTarget();
let etcdProxy: { proxy: FaultProxy; url: string };
let consulProxy: { proxy: FaultProxy; url: string };

// Faults are drawn from a seeded generator, so a failing run can be replayed with FAULT_SEED.
const seed = process.env.FAULT_SEED ? Number(process.env.FAULT_SEED) : randomInt(2 ** 31);

beforeAll(async () => {
  etcdProxy = await FaultProxy.forUrl(servers().etcdEndpoint);
  consulProxy = await FaultProxy.forUrl(servers().consulAddress);
});
afterAll(async () => {
  etcd.close();
  target.close();
  await Promise.all([etcdProxy?.proxy.close(), consulProxy?.proxy.close()]);
});

/** The tool's environment with both servers behind the fault proxies. */
function proxiedEnv(): Record<string, string> {
  return { ETCDCTL_ENDPOINTS: etcdProxy.url, CONSUL_HTTP_ADDR: consulProxy.url };
}

function scenario(label: string) {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }\n`;
  return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
}

function report(what: string, log: ChaosLog, extra: string): void {
  process.stderr.write(`faults (${what}, FAULT_SEED=${seed}): ${log.injected} faults injected ${JSON.stringify(log.byKind)}; ${extra}\n`);
}

/** `migrate copy` through the proxies, as a child, returning its exit code and stderr. */
function copyThroughProxies(dir: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...proxiedEnv() }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

describe('faults between the tool and the servers (TCP fault proxy on loopback)', () => {
  it('a dual-run held by a frozen Consul reports what etcd made meanwhile as lag (revisions and seconds), though it takes none of it', async () => {
    const s = scenario('fault-frozen');
    for (let i = 0; i < 10; i++) await etcd.put(`${s.root}/app/k${i}`).value('seed');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dualrun = await startDualRun(s.dir, [], { CONSUL_HTTP_ADDR: consulProxy.url });
    const health = async () => (await fetch(`http://127.0.0.1:${dualrun.metricsPort}/healthz`)).json() as Promise<{ status?: string; role?: string; lagRevisions?: number; lagSeconds?: number; etcdRevision?: number; checkpoint?: number }>;
    try {
      // Ready: its watch is open (a leader still setting up, its checkpoint read, has heard nothing of etcd yet).
      await eventually('leads and catches up', async () => {
        const h = await health();
        return h.status === 'ready' && h.lagRevisions === 0;
      });
      // Consul stops answering (a frozen process holds its connections open: no error), while etcd changes.
      consulProxy.proxy.blackhole();
      for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i % 10}`).value(`frozen-${i}`);
      const made = Number((await etcd.get(`${s.root}/app/k0`).exec()).header.revision);
      await new Promise((r) => setTimeout(r, 3_000));
      const h = await health();
      expect(h.etcdRevision, JSON.stringify(h)).toBeGreaterThanOrEqual(made);
      expect(h.lagRevisions, JSON.stringify(h)).toBeGreaterThanOrEqual(20);
      expect(h.lagSeconds, JSON.stringify(h)).toBeGreaterThanOrEqual(2);
      expect(await dualrun.metrics()).toMatch(/^migrate_dualrun_lag_revisions ([2-9]\d|\d{3,})$/m);
      // No error comes from a frozen server: past twice the heartbeat without a checkpoint, the log says so, once, and counts it.
      await eventually('the stall is logged', async () => /no checkpoint written for \d+ s: etcd or Consul does not answer/.test(dualrun.stderr()), 30_000);
      expect(dualrun.stderr().match(/no checkpoint written for/g)).toHaveLength(1);
      // The progress line (every 10 s) counts the lag as /metrics does.
      const progress = [...dualrun.stderr().matchAll(/ progress (\{.*\})$/gm)].map((m) => JSON.parse(m[1]!) as { lagRevisions: number });
      expect(progress.at(-1)?.lagRevisions, dualrun.stderr()).toBeGreaterThanOrEqual(20);
      expect(await dualrun.metrics()).toMatch(/^migrate_dualrun_errors_total\{kind="stalled"\} 1$/m);
    } finally {
      consulProxy.proxy.heal();
    }
    await waitCaughtUp(etcd, target, s.id, 60_000);
    expect(await checkParity(etcd, target, s.mapping, s.id)).toMatchObject({ missing: [], extra: [], wrongValue: [] });
    expect(await dualrun.stop()).toBe(0);
  }, 120_000);

  it('a copy of 3,000 keys under resets, delays and blackholes completes with parity: nothing lost or duplicated', async () => {
    const s = scenario('fault-copy');
    const KEYS = 3000;
    for (let i = 0; i < KEYS; i += 500) {
      const puts = Array.from({ length: 500 }, (_, j) => etcd.put(`${s.root}/app/${String(i + j).padStart(5, '0')}`).value(randomBytes(32).toString('base64')));
      await etcd.if(`${s.root}/app/00000`, 'Mod', '>', -1).then(...puts).commit();
    }
    const lease = etcd.lease(120);
    const leaseId = await lease.grant();
    for (let i = 0; i < 10; i++) await etcd.put(`${s.root}/services/s${i}`).value(`svc-${i}`).lease(leaseId);

    const chaos = startChaos({ etcd: etcdProxy.proxy, consul: consulProxy.proxy }, { everyMs: 250, blackholeMs: 600, delayMs: 150, random: prng(seed) });
    const runs: (number | null)[] = [];
    const failures: string[] = [];
    try {
      // The copy retries what it can; a stop with a clear message is resumed (issue 8 allows both).
      for (let attempt = 0; attempt < 8; attempt++) {
        const run = await copyThroughProxies(s.dir, ['--rate', '600', ...(attempt === 0 ? [] : ['--resume'])]);
        runs.push(run.code);
        if (run.code === 0) break;
        failures.push(run.stderr.trim().split('\n').find((l) => l.startsWith('error')) ?? run.stderr.trim().slice(0, 200));
        expect(run.code, run.stderr).toBe(3);
      }
    } finally {
      const log = await chaos.stop();
      report('copy', log, `copy runs ${JSON.stringify(runs)}; stops: ${JSON.stringify(failures)}`);
      expect(log.injected).toBeGreaterThanOrEqual(5);
    }
    expect(runs.at(-1)).toBe(0);
    try {
      const parity = await checkParity(etcd, target, s.mapping, s.id);
      expect(parity.checked).toBe(KEYS + 10);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
      const verify = await runCli(['verify', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
      expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    } finally {
      lease.release();
    }
  }, 180_000);

  it('a copy that etcd stops answering after it began writing exits 3 naming the next steps: start etcd, then copy --resume; the resume completes it', async () => {
    const s = scenario('copy-etcd-gone');
    for (let i = 0; i < 3000; i += 500) {
      const puts = Array.from({ length: 500 }, (_, j) => etcd.put(`${s.root}/app/${String(i + j).padStart(5, '0')}`).value('v'));
      await etcd.if(`${s.root}/app/00000`, 'Mod', '>', -1).then(...puts).commit();
    }
    const own = await FaultProxy.forUrl(servers().etcdEndpoint);
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', '--rate', '150', '--page-keys', '100'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv(), ETCDCTL_ENDPOINTS: own.url }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await eventually('the copy writing', async () => (await target.listKeys(`${s.id}/app/`)).length > 0);
    // etcd goes away for good (every connection refused from now on).
    await own.proxy.close();
    expect(await exited, stderr).toBe(3);
    expect(stderr).toContain('error[etcd_unreachable]');
    expect(stderr).toMatch(/next: Start etcd or fix the endpoints.* Then run `migrate copy --resume`: it continues where this copy stopped\./);
    const resumed = await runCli(['copy', '--resume', '--progress', 'none'], { cwd: s.dir, env: serverEnv() });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect((await target.listKeys(`${s.id}/app/`)).length).toBe(3000);
  }, 120_000);

  it('a dual-run whose etcd connection goes silent for good (no reset: a partition, a dropped NAT entry) opens a new one and catches up by itself', async () => {
    const s = scenario('fault-stranded');
    for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i}`).value('seed');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dualrun = await startDualRun(s.dir, [], { ETCDCTL_ENDPOINTS: etcdProxy.url });
    try {
      // Its watch has delivered a change: the connection to strand is the one it watches on (it is ready, per /healthz,
      // as soon as the watch is asked for, before its connection is made).
      await etcd.put(`${s.root}/app/k0`).value('through the watch');
      await waitCaughtUp(etcd, target, s.id);
      expect(etcdProxy.proxy.strand()).toBeGreaterThan(0);
      for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i}`).value(`after-${i}`);
      // Keepalive pings go unanswered (about 15 s), or the watch stays silent though progress is asked every second
      // (30 s): it is opened again on a new connection.
      await waitCaughtUp(etcd, target, s.id, 90_000);
      expect(dualrun.stderr()).toMatch(/etcd at .* is unreachable|etcd's watch answered nothing for \d+ s/);
    } catch (err) {
      process.stderr.write(`proxy: etcd ${etcdProxy.proxy.describe()}\ndual-run stderr:\n${dualrun.stderr().slice(-4000)}\n`);
      throw err;
    }
    expect(await checkParity(etcd, target, s.mapping, s.id)).toMatchObject({ missing: [], extra: [], wrongValue: [] });
    expect(await dualrun.stop()).toBe(0);
  }, 120_000);

  it('--ha: a leader cut off from Consul alone stops calling itself leader before the standby takes over; healed, it stands by and parity holds', async () => {
    const s = scenario('fault-ha-cut');
    for (let i = 0; i < 10; i++) await etcd.put(`${s.root}/app/k${i}`).value('seed');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    // The first leads through a proxy of its own (the shared one carries the other tests' traffic), the standby talks to Consul directly.
    const own = await FaultProxy.forUrl(servers().consulAddress);
    const cut = await startDualRun(s.dir, ['--ha'], { CONSUL_HTTP_ADDR: own.url });
    const leaderGauge = async (dr: typeof cut) => metric(await dr.metrics(), 'migrate_dualrun_leader');
    let standby: typeof cut | undefined;
    try {
      await eventually('the first leads', async () => (await leaderGauge(cut)) === 1, 30_000);
      standby = await startDualRun(s.dir, ['--ha']);
      await waitCaughtUp(etcd, target, s.id);
      own.proxy.blackhole();
      await etcd.put(`${s.root}/app/during`).value('cut');
      // Sampled until the standby leads: never two processes saying they lead.
      const both: string[] = [];
      const standbyLeads = async () => {
        const [a, b] = [await leaderGauge(cut), await leaderGauge(standby!)];
        if (a === 1 && b === 1) both.push(new Date().toISOString());
        return b === 1;
      };
      await eventually('the standby leads', standbyLeads, 60_000);
      expect(both, cut.stderr()).toEqual([]);
      expect(await leaderGauge(cut)).toBe(0);
      expect(cut.stderr()).toMatch(/lost the leader lock \(Consul has not confirmed our session for 10 s, its TTL: it may have expired and another dual-run may lead\); stepping down/);
      await waitCaughtUp(etcd, target, s.id);
      own.proxy.heal();
      await eventually('the cut-off one stands by, ready', async () => (await fetch(`http://127.0.0.1:${cut.metricsPort}/healthz`)).status === 200, 30_000);
      expect(await leaderGauge(cut)).toBe(0);
      expect(await checkParity(etcd, target, s.mapping, s.id)).toMatchObject({ missing: [], extra: [], wrongValue: [] });
    } finally {
      own.proxy.heal();
      expect(await cut.stop()).toBe(0);
      if (standby) expect(await standby.stop()).toBe(0);
      await own.proxy.close();
    }
  }, 150_000);

  it('a dual-run under a writer keeps going through resets, delays and blackholes; its lag recovers and parity holds', async () => {
    const s = scenario('fault-dualrun');
    for (let i = 0; i < 100; i++) await etcd.put(`${s.root}/app/k${i}`).value('seed');
    const copy = await runCli(['copy'], { cwd: s.dir, env: serverEnv() });
    expect(copy.code, copy.stderr).toBe(0);
    const dualrun = await startDualRun(s.dir, [], proxiedEnv());
    const random = prng(seed + 1);
    const chaos = startChaos({ etcd: etcdProxy.proxy, consul: consulProxy.proxy }, { everyMs: 300, blackholeMs: 700, delayMs: 200, random });
    let writes = 0;
    const until = Date.now() + 8_000;
    try {
      while (Date.now() < until) {
        const i = randomInt(100);
        const dice = randomInt(20);
        if (dice === 0) await etcd.delete().key(`${s.root}/app/k${i}`);
        else if (dice === 1) await etcd.if(`${s.root}/app/k0`, 'Mod', '>', -1).then(...Array.from({ length: 5 }, (_, j) => etcd.put(`${s.root}/app/k${(i + j) % 100}`).value(`txn-${writes}`))).commit();
        else await etcd.put(`${s.root}/app/k${i}`).value(`w-${writes}-${randomBytes(4).toString('hex')}`);
        writes++;
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      const log = await chaos.stop();
      report('dual-run', log, `${writes} etcd writes`);
      expect(log.injected).toBeGreaterThanOrEqual(5);
    }
    // The faults are over: the dual-run must catch up by itself, without a restart.
    const healedAt = Date.now();
    expect(dualrun.child.exitCode, dualrun.stderr()).toBeNull();
    try {
      await waitCaughtUp(etcd, target, s.id, 60_000);
    } catch (err) {
      process.stderr.write(`proxies: etcd ${etcdProxy.proxy.describe()}; consul ${consulProxy.proxy.describe()}\ndual-run stderr:\n${dualrun.stderr().slice(-6000)}\n`);
      throw err;
    }
    process.stderr.write(`faults (dual-run): caught up ${Date.now() - healedAt} ms after the last fault\n`);
    const parity = await checkParity(etcd, target, s.mapping, s.id);
    expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
    expect(await dualrun.stop()).toBe(0);
  }, 120_000);
});
