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

describe('a rule of leased keys, cut over (real servers)', () => {
  it('a key the application rewrites in Consul outlives the old etcd lease; the keys it left go with the lease in both stores; the lease\'s end is no late write', async () => {
    const id = `col-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: svc, from: ${root}/svc/, to: ${id}/svc/, leases: session }\n`);
    const cli = (args: string[]) => runCli(args, { cwd: dir, env: serverEnv() });
    // The old application instance: its etcd lease kept alive by etcd3 until revoked.
    const lease = etcd.lease(30);
    await lease.put(`${root}/svc/a`).value('old-a');
    await lease.put(`${root}/svc/b`).value('old-b');
    expect((await cli(['copy'])).code).toBe(0);
    const dr = await startDualRun(dir);
    try {
      await etcd.put(`${root}/tick`).value('x');
      await waitCaughtUp(etcd, target, id);
      expect((await cli(['verify', '--progress', 'none'])).code).toBe(0);
      const cut = await cli(['cutover', '--rule', 'svc', '--yes', '--drain', '200ms']);
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
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
      expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBeNaN();
      const verify = await cli(['verify', '--progress', 'none']);
      expect(verify.code, verify.stdout).toBe(0);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);
});
