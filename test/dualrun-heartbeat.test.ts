import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';

/**
 * `--heartbeat-key`: the leader writes the time to one etcd key outside every
 * copy rule each second; once the checkpoint committed to Consul passes its
 * revision (through watch progress: the key is outside the watch range), the
 * lag is timed end to end.
 */
const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

const id = `hb-${randomBytes(3).toString('hex')}`;
const root = `/${id}`;
const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n`);

describe('dualrun --heartbeat-key (real servers)', () => {
  it('refuses a heartbeat key inside a copy rule (exit 2), in dualrun and in acl', async () => {
    const run = await runCli(['dualrun', '--heartbeat-key', `${root}/app/heartbeat`], { cwd: dir, env: serverEnv() });
    expect(run.code, run.stderr).toBe(2);
    expect(run.stderr).toContain('error[heartbeat_key_in_rule]');
    expect(run.stderr).toContain('copy rule app');
    const acl = await runCli(['acl', '--heartbeat-key', `${root}/app/heartbeat`], { cwd: dir });
    expect(acl.code).toBe(2);
    const granted = await runCli(['acl', '--heartbeat-key', `${root}/heartbeat`], { cwd: dir });
    expect(granted.stdout).toContain(`etcdctl role grant-permission migrate-${id} readwrite '${root}/heartbeat'`);
  });

  it('exports the end-to-end lag, plausible on an idle and on a busy rule, and never replicates the heartbeat key', async () => {
    await etcd.put(`${root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(dir, ['--heartbeat-key', `${root}/heartbeat`]);
    try {
      await eventually('a heartbeat measured', async () => metric(await dr.metrics(), 'migrate_dualrun_heartbeat_lag_seconds') > 0);
      expect(new Date((await etcd.get(`${root}/heartbeat`).string())!).getTime()).toBeGreaterThan(Date.now() - 5000);
      const idle: number[] = [];
      for (let i = 0; i < 4; i++) {
        const text = await dr.metrics();
        idle.push(metric(text, 'migrate_dualrun_heartbeat_lag_seconds'));
        // With the heartbeat on, lag_seconds is the heartbeat's figure.
        expect(metric(text, 'migrate_dualrun_lag_seconds')).toBeGreaterThanOrEqual(metric(text, 'migrate_dualrun_heartbeat_lag_seconds') - 0.5);
        await new Promise((r) => setTimeout(r, 700));
      }
      for (const lag of idle) expect(lag).toBeGreaterThan(0), expect(lag).toBeLessThan(3);
      // Writes under the rule meanwhile: still plausible.
      for (let i = 0; i < 200; i++) await etcd.put(`${root}/app/k${i % 20}`).value(String(i));
      await waitCaughtUp(etcd, target, id);
      await new Promise((r) => setTimeout(r, 1500));
      const busy = metric(await dr.metrics(), 'migrate_dualrun_heartbeat_lag_seconds');
      expect(busy).toBeGreaterThan(0);
      expect(busy).toBeLessThan(3);
      const keys = await target.listKeys(`${id}/`);
      expect(keys.length).toBe(21);
      expect(keys.every((k) => k.startsWith(`${id}/app/`))).toBe(true);
      expect((await target.listKeys('')).filter((k) => k.includes(`${id}/heartbeat`) || k.endsWith('heartbeat'))).toEqual([]);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    expect(dr.stderr()).not.toMatch(/heartbeat key .* failed/);
  });
});
