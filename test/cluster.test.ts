import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsulCluster, startEtcdCluster, type ClusterMember } from '../scripts/local-servers.js';
import { parseConfig } from '../src/config/load.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { checkParity } from './support/parity.js';
import { configDir, repoRoot, runCli, servers } from './support/harness.js';
import { startDualRun, waitCaughtUp } from './support/dualrun.js';

/**
 * A three-member etcd cluster and a three-server Consul cluster (not dev mode)
 * started by the test scripts (issue 8, faults): members die and come back
 * while a copy or a dual-run works; the work continues after re-election and
 * parity holds at the end.
 */
describe('clusters: an etcd member and the Consul leader die mid-work (real servers)', () => {
  let etcdCluster: Awaited<ReturnType<typeof startEtcdCluster>>;
  let consulCluster: Awaited<ReturnType<typeof startConsulCluster>>;
  /** The Consul server the tool talks to (a follower at the start, so killing the leader leaves it up). */
  let agent: ClusterMember;
  let target: ConsulTarget;

  beforeAll(async () => {
    const started = Date.now();
    [etcdCluster, consulCluster] = await Promise.all([startEtcdCluster(3), startConsulCluster({ version: servers().consulVersion })]);
    await consulCluster.healthy();
    await pickAgent();
    process.stderr.write(`cluster: etcd ×3 and Consul ${consulCluster.version} ×3 up in ${Date.now() - started} ms\n`);
  }, 120_000);
  afterAll(async () => {
    target?.close();
    await Promise.all([etcdCluster?.stop(), consulCluster?.stop()]);
  });

  /** Talks to a follower from here on (leadership moves as servers die and come back). */
  async function pickAgent(): Promise<void> {
    const leader = await consulCluster.leader();
    agent = consulCluster.members.find((m) => m !== leader && m.running)!;
    target?.close();
    target = new ConsulTarget({ address: agent.address });
  }

  function env(): Record<string, string> {
    return { ETCDCTL_ENDPOINTS: etcdCluster.endpoints.join(','), CONSUL_HTTP_ADDR: agent.address };
  }

  /** A raw client on the members that are up, for data and parity. */
  function liveEtcd(): Etcd3 {
    return new Etcd3({ hosts: etcdCluster.members.filter((m) => m.running).map((m) => m.address) });
  }

  function scenario(label: string) {
    const id = `${label}-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n`;
    return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
  }

  async function seed(etcd: Etcd3, root: string, keys: number): Promise<void> {
    for (let i = 0; i < keys; i += 500) {
      const puts = Array.from({ length: Math.min(500, keys - i) }, (_, j) => etcd.put(`${root}/app/${String(i + j).padStart(5, '0')}`).value(randomBytes(24).toString('base64')));
      await etcd.if(`${root}/app/00000`, 'Mod', '>', -1).then(...puts).commit();
    }
  }

  function copy(dir: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...env() }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      child.on('exit', (code) => resolve({ code, stderr }));
    });
  }

  /** Runs the copy, then `--resume` while it stops with exit 3; returns every exit code and stop message. */
  async function copyToCompletion(dir: string, during: () => Promise<void>): Promise<{ codes: (number | null)[]; stops: string[] }> {
    const codes: (number | null)[] = [];
    const stops: string[] = [];
    const first = copy(dir, ['--rate', '2000']);
    await during();
    let run = await first;
    for (let attempt = 0; ; attempt++) {
      codes.push(run.code);
      if (run.code === 0 || attempt >= 4) break;
      stops.push(run.stderr.trim().split('\n').find((l) => l.startsWith('error')) ?? run.stderr.slice(0, 300));
      expect(run.code, run.stderr).toBe(3);
      run = await copy(dir, ['--resume']);
    }
    return { codes, stops };
  }

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('copy: an etcd member and then the Consul leader are SIGKILLed mid-copy; the copy completes with parity', async () => {
    const s = scenario('cl-copy');
    await pickAgent();
    const etcd = liveEtcd();
    try {
      await seed(etcd, s.root, 8000);
      const killed: string[] = [];
      const result = await copyToCompletion(s.dir, async () => {
        await sleep(1200);
        const member = etcdCluster.members[randomInt(3)]!;
        await member.kill();
        killed.push(`etcd ${member.name}`);
        await sleep(1000);
        const leader = (await consulCluster.leader())!;
        expect(leader).not.toBe(agent);
        await leader.kill();
        killed.push(`consul leader ${leader.name}`);
      });
      process.stderr.write(`cluster (copy): killed ${killed.join(', ')}; copy exit codes ${JSON.stringify(result.codes)}; stops ${JSON.stringify(result.stops)}\n`);
      expect(result.codes.at(-1)).toBe(0);
      const parity = await checkParity(etcd, target, s.mapping, s.id);
      expect(parity.checked).toBe(8000);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
    } finally {
      etcd.close();
      await Promise.all([...etcdCluster.members, ...consulCluster.members].map((m) => m.restart()));
      await consulCluster.healthy();
    }
  }, 120_000);

  it('dual-run: an etcd member and then the Consul leader die under a writer; replication continues after re-election, parity at the end', async () => {
    const s = scenario('cl-dualrun');
    await pickAgent();
    // The writer uses members this test does not kill, so every write it makes is acknowledged.
    const victim = etcdCluster.members[randomInt(3)]!;
    const writerEtcd = new Etcd3({ hosts: etcdCluster.members.filter((m) => m !== victim).map((m) => m.address) });
    try {
      for (let i = 0; i < 50; i++) await writerEtcd.put(`${s.root}/app/k${i}`).value('0');
      expect((await runCli(['copy'], { cwd: s.dir, env: env() })).code).toBe(0);
      const dualrun = await startDualRun(s.dir, [], env());
      let writes = 0;
      const writer = (async () => {
        const until = Date.now() + 6000;
        while (Date.now() < until) {
          const i = randomInt(100);
          if (randomInt(10) === 0) await writerEtcd.delete().key(`${s.root}/app/k${i}`);
          else await writerEtcd.put(`${s.root}/app/k${i}`).value(`w${writes}`);
          writes++;
          await sleep(5);
        }
      })();
      let leader: ClusterMember | undefined;
      try {
        await sleep(1500);
        await victim.kill();
        await sleep(1500);
        leader = (await consulCluster.leader())!;
        expect(leader).not.toBe(agent);
        await leader.kill();
      } finally {
        await writer;
      }
      const healed = Date.now();
      try {
        await waitCaughtUp(writerEtcd, target, s.id, 30_000);
      } catch (err) {
        process.stderr.write(`cluster (dual-run) stderr:\n${dualrun.stderr().slice(-5000)}\n`);
        throw err;
      }
      process.stderr.write(`cluster (dual-run): killed etcd ${victim.name} and consul leader ${leader!.name} during ${writes} writes; caught up ${Date.now() - healed} ms after the writer stopped\n`);
      const parity = await checkParity(writerEtcd, target, s.mapping, s.id);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
      expect(await dualrun.stop()).toBe(0);
    } finally {
      writerEtcd.close();
      await Promise.all([...etcdCluster.members, ...consulCluster.members].map((m) => m.restart()));
      await consulCluster.healthy();
    }
  }, 120_000);

  it('the Consul server the tool talks to restarts mid-copy: the copy retries and completes, or stops clearly and --resume completes it', async () => {
    const s = scenario('cl-restart');
    await pickAgent();
    const etcd = liveEtcd();
    try {
      await seed(etcd, s.root, 6000);
      const result = await copyToCompletion(s.dir, async () => {
        await sleep(1200);
        await agent.kill();
        await sleep(1500);
        await agent.restart();
      });
      await consulCluster.healthy();
      process.stderr.write(`cluster (restart): Consul ${agent.name} restarted mid-copy; copy exit codes ${JSON.stringify(result.codes)}; stops ${JSON.stringify(result.stops)}\n`);
      expect(result.codes.at(-1)).toBe(0);
      for (const stop of result.stops) expect(stop).toMatch(/Consul at http:\/\/127\.0\.0\.1:\d+ is unreachable|no leader|Consul answered/);
      const parity = await checkParity(etcd, target, s.mapping, s.id);
      expect(parity.checked).toBe(6000);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
    } finally {
      etcd.close();
    }
  }, 120_000);
});
