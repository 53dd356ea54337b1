import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv } from './support/harness.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

function scenario() {
  const id = `probe-${randomBytes(3).toString('hex')}`;
  const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n  - { name: all-state, from: /${id}/copied-scratch/, to: ${id}/copied/ }\n`);
  return { id, dir };
}

/** What the probe left behind in either store under the scratch folders. */
async function leftovers(id: string, etcdFolder = `_migrate/${id}/scratch/`): Promise<{ etcd: number; consul: number }> {
  const etcdKeys = await etcd.getAll().prefix(etcdFolder).keys();
  const consulKeys = await target.listKeys(`_migrate/${id}/scratch/`);
  return { etcd: etcdKeys.length, consul: consulKeys.length };
}

describe('migrate probe-latency (real servers)', () => {
  it('times an etcd watch and a Consul blocking query on scratch keys, reports percentiles, and deletes the scratch keys', async () => {
    const s = scenario();
    const run = await runCli(['probe-latency', '--samples', '12', '--interval', '20ms', '--wait', '5s', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
    expect(run.code, run.stderr).toBe(0);
    const report = JSON.parse(run.stdout);
    expect(report).toMatchObject({ version: 1, command: 'probe-latency', status: 'ok', migration: s.id, samples: 12, waitSeconds: 5 });
    for (const side of [report.etcd, report.consul]) {
      for (const figure of [side.notify, side.write]) {
        expect(figure.samples).toBe(12);
        expect(figure.p50Ms).toBeGreaterThan(0);
        expect(figure.p99Ms).toBeGreaterThanOrEqual(figure.p50Ms);
        expect(figure.maxMs).toBeGreaterThanOrEqual(figure.p99Ms);
      }
    }
    expect(report.difference.p50Ms).toBeCloseTo(report.consul.notify.p50Ms - report.etcd.notify.p50Ms, 1);
    expect(report.consul.emptyWakeups).toBeGreaterThanOrEqual(0);
    expect(await leftovers(s.id)).toEqual({ etcd: 0, consul: 0 });
  });

  it('explains, in markdown, what moving from watches to blocking queries means', async () => {
    const s = scenario();
    const run = await runCli(['probe-latency', '--samples', '3', '--interval', '1ms', '--format', 'markdown'], { cwd: s.dir, env: serverEnv() });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('| etcd watch |');
    expect(run.stdout).toContain('| Consul blocking query |');
    expect(run.stdout).toMatch(/not every intermediate value/);
    expect(await leftovers(s.id)).toEqual({ etcd: 0, consul: 0 });
  });

  it('refuses a scratch folder inside a copy rule, and bad flags, writing nothing', async () => {
    const s = scenario();
    const mapped = await runCli(['probe-latency', '--etcd-prefix', `/${s.id}/copied-scratch/`], { cwd: s.dir, env: serverEnv() });
    expect(mapped.code).toBe(2);
    expect(mapped.stderr).toContain('lies under rule "all-state"');
    expect(mapped.stderr).toContain('--etcd-prefix');
    expect((await etcd.getAll().prefix(`/${s.id}/`).keys()).length).toBe(0);

    const wait = await runCli(['probe-latency', '--wait', '20m'], { cwd: s.dir, env: serverEnv() });
    expect(wait.code).toBe(2);
    expect(wait.stderr).toContain('between 1s and 10m');
    const samples = await runCli(['probe-latency', '--samples', '0'], { cwd: s.dir, env: serverEnv() });
    expect(samples.code).toBe(2);
    expect(await leftovers(s.id)).toEqual({ etcd: 0, consul: 0 });
  });

  it('with Consul unreachable it exits 3 naming the address, and leaves no scratch key in etcd', async () => {
    const s = scenario();
    const run = await runCli(['probe-latency', '--samples', '3'], { cwd: s.dir, env: serverEnv({ CONSUL_HTTP_ADDR: 'http://127.0.0.1:1' }) });
    expect(run.code).toBe(3);
    expect(run.stderr).toContain('127.0.0.1:1');
    expect((await etcd.getAll().prefix(`_migrate/${s.id}/`).keys()).length).toBe(0);
  });
});
