import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

/**
 * Rule `name` under `leases`, whose `leased` keys an application instance keeps on one etcd lease (kept
 * alive by etcd3 until revoked), beside `plain` keys: copied, replicated, verified and cut over.
 */
async function cutOverLeasedRule(name: string, leases: string, leased: Record<string, string>, plain: Record<string, string> = {}) {
  const id = `co${leases[0]}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: ${name}, from: ${root}/${name}/, to: ${id}/${name}/, leases: ${leases} }\n`);
  const cli = (args: string[]) => runCli(args, { cwd: dir, env: serverEnv() });
  const lease = etcd.lease(30);
  for (const [key, value] of Object.entries(leased)) await lease.put(`${root}/${name}/${key}`).value(value);
  for (const [key, value] of Object.entries(plain)) await etcd.put(`${root}/${name}/${key}`).value(value);
  expect((await cli(['copy'])).code).toBe(0);
  const dr = await startDualRun(dir);
  try {
    await etcd.put(`${root}/tick`).value('x');
    await waitCaughtUp(etcd, target, id);
    expect((await cli(['verify', '--progress', 'none'])).code).toBe(0);
    const cut = await cli(['cutover', '--rule', name, '--yes', '--drain', '200ms']);
    expect(cut.code, cut.stdout + cut.stderr).toBe(0);
  } catch (err) {
    await dr.stop();
    throw err;
  }
  return { id, root, cli, lease, dr };
}

/** The lease's end was no late write, and verify finds parity. */
async function noLateWriteAndParity(dr: Awaited<ReturnType<typeof startDualRun>>, cli: (args: string[]) => ReturnType<typeof runCli>): Promise<void> {
  expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBeNaN();
  const verify = await cli(['verify', '--progress', 'none']);
  expect(verify.code, verify.stdout).toBe(0);
}

describe('a rule of leased keys, cut over (real servers)', () => {
  it('a key the application rewrites in Consul outlives the old etcd lease; the keys it left go with the lease in both stores; the lease\'s end is no late write', async () => {
    // The old application instance: its etcd lease kept alive until revoked.
    const { id, root, cli, lease, dr } = await cutOverLeasedRule('svc', 'session', { a: 'old-a', b: 'old-b' });
    try {
      const session = (await target.readKey(`${id}/svc/a`))!.session;
      expect(session).toBeDefined();

      // The application, now on Consul, rewrites a (a plain PUT: Consul keeps the session's lock on it).
      await target.putKey(`${id}/svc/a`, Buffer.from('new-a'));
      await eventually('a mirrored back to etcd', async () => (await etcd.get(`${root}/svc/a`).string()) === 'new-a');
      await eventually('a released from the lease\'s session', async () => (await target.readKey(`${id}/svc/a`))?.session === undefined);
      expect((await target.readKey(`${id}/svc/b`))?.session).toBe(session);

      // The old instance goes away: etcd deletes what is still on its lease (b), the session goes, and Consul deletes b.
      await lease.revoke();
      await eventually('b gone from Consul with the session', async () => (await target.readKey(`${id}/svc/b`)) === undefined);
      expect((await target.readKey(`${id}/svc/a`))?.value.toString()).toBe('new-a');
      expect(await etcd.get(`${root}/svc/a`).string()).toBe('new-a');
      expect(await etcd.get(`${root}/svc/b`).string()).toBeNull();
      await noLateWriteAndParity(dr, cli);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);
});

describe('a rule of leased keys under leases: persist, cut over (real servers)', () => {
  it('keys etcd drops when their lease ends are written back to etcd from Consul, which keeps them: verify passes, no late write', async () => {
    const { id, root, cli, lease, dr } = await cutOverLeasedRule('locks', 'persist', { a: 'held-a', b: 'held-b' }, { plain: 'p' });
    try {
      // Persisted: Consul holds the keys without a session.
      expect((await target.readKey(`${id}/locks/a`))?.session).toBeUndefined();
      // The application moved to Consul and stopped keeping its etcd lease alive: etcd drops a and b.
      await lease.revoke();
      await eventually('a and b written back to etcd', async () => (await etcd.get(`${root}/locks/a`).string()) === 'held-a' && (await etcd.get(`${root}/locks/b`).string()) === 'held-b', 20_000);
      // Without a lease now: nothing drops them again.
      const kv = await etcd.get(`${root}/locks/a`).exec();
      expect(kv.kvs[0]!.lease.toString()).toBe('0');
      expect((await target.readKey(`${id}/locks/b`))?.value.toString()).toBe('held-b');
      await noLateWriteAndParity(dr, cli);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);
});
