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

interface HealthEntry {
  Service: { ID: string; Address: string; Port: number; Tags: string[] | null };
  Checks: { CheckID: string; Status: string }[];
}

async function health(name: string, passing = false): Promise<HealthEntry[]> {
  const response = await target.http.request({ method: 'GET', path: `/v1/health/service/${encodeURIComponent(name)}`, query: { passing } });
  return JSON.parse(response.body.toString('utf8')) as HealthEntry[];
}

function checkOf(entry: HealthEntry | undefined): string | undefined {
  return entry?.Checks.find((c) => c.CheckID.startsWith('etcd-migrate:'))?.Status;
}

describe('migrate dualrun with service rules (real servers)', () => {
  it('registers puts, deregisters when the lease ends, keeps checks passing; stopped, checks turn critical within the TTL; restarted, they pass again', async () => {
    const id = `svc-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const web = `web-${id}`;
    const dir = configDir(`version: 1
id: ${id}
rules:
  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - name: registry
    from: ${root}/services/
    action: service
    service: { tags: [from-etcd], check: { ttl: 3s } }
`);
    const lease = etcd.lease(60);
    await lease.grant();
    await lease.put(`${root}/services/${web}/i1`).value('10.40.0.1:8080');
    await etcd.put(`${root}/app/k`).value('v');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    expect((await health(web)).map((e) => e.Service.ID)).toEqual([`${web}-i1`]);

    let dr = await startDualRun(dir);
    try {
      await waitCaughtUp(etcd, target, id);
      // A put registers; a put without a lease registers without a check; a bad value registers nothing.
      await lease.put(`${root}/services/${web}/i2`).value('10.40.0.2:8081');
      await etcd.put(`${root}/services/${web}/static`).value('10.40.0.9:9000');
      await etcd.put(`${root}/services/${web}/broken`).value('not an address');
      await waitCaughtUp(etcd, target, id);
      const instances = await health(web);
      expect(instances.map((e) => [e.Service.ID, e.Service.Address, e.Service.Port, e.Service.Tags, checkOf(e)]).sort()).toEqual([
        [`${web}-i1`, '10.40.0.1', 8080, ['from-etcd'], 'passing'],
        [`${web}-i2`, '10.40.0.2', 8081, ['from-etcd'], 'passing'],
        [`${web}-static`, '10.40.0.9', 9000, ['from-etcd'], undefined],
      ]);
      expect(dr.stderr()).toContain(`${root}/services/${web}/broken makes no instance (value-not-hostport`);
      expect(dr.stderr()).not.toContain('not an address');
      // The checks stay passing over several TTLs while the lease lives.
      await new Promise((r) => setTimeout(r, 7_000));
      expect((await health(web, true)).map((e) => e.Service.ID).sort()).toEqual([`${web}-i1`, `${web}-i2`, `${web}-static`]);
      expect(metric(await dr.metrics(), 'migrate_dualrun_service_instances{status="critical"}')).toBe(0);
      // status shows the rule with its etcd keys and catalog instances; cutover refuses it and changes nothing.
      const status = await runCli(['status', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(status.code, status.stderr).toBe(0);
      const line = (JSON.parse(status.stdout) as { rules: { name: string; action: string; phase: string | null; keys: { etcd: number; consul: number } }[] }).rules.find((r) => r.name === 'registry');
      expect(line).toMatchObject({ action: 'service', phase: null, keys: { etcd: 4, consul: 3 } });
      const cut = await runCli(['cutover', '--rule', 'registry', '--yes'], { cwd: dir, env: serverEnv() });
      expect(cut.code).toBe(4);
      expect(cut.stdout + cut.stderr).toContain('registry: action rule registry is a service rule');
      const back = await runCli(['rollback', '--rule', 'registry', '--yes'], { cwd: dir, env: serverEnv() });
      expect(back.code).toBe(4);
      expect(back.stdout + back.stderr).toContain('registry: action rule registry is a service rule');
      expect(await target.readKey(`_migrate/${id}/rules/registry`)).toBeUndefined();
      // A changed value re-registers with the new address.
      await lease.put(`${root}/services/${web}/i2`).value('10.40.0.3:8082');
      await eventually('i2 moved', async () => (await health(web)).some((e) => e.Service.ID === `${web}-i2` && e.Service.Address === '10.40.0.3' && e.Service.Port === 8082));
      // A key that loses its lease keeps its instance and loses the TTL check (Consul would otherwise keep the old check).
      await lease.put(`${root}/services/${web}/i3`).value('10.40.0.4:8083');
      const i3 = async () => (await health(web)).find((e) => e.Service.ID === `${web}-i3`);
      await eventually('i3 registered with a passing check', async () => checkOf(await i3()) === 'passing');
      await etcd.put(`${root}/services/${web}/i3`).value('10.40.0.4:8083');
      await eventually('i3 without its check', async () => (await i3()) !== undefined && checkOf(await i3()) === undefined);
      await etcd.delete().key(`${root}/services/${web}/i3`);
      await eventually('i3 deregistered', async () => (await i3()) === undefined);
    } finally {
      expect(await dr.stop()).toBe(0);
    }

    // Nobody passes the checks: critical within the TTL (3 s; Consul's timer, polled generously).
    await eventually('checks critical after the tool stopped', async () => (await health(web)).filter((e) => checkOf(e) === 'critical').length === 2, 20_000);
    dr = await startDualRun(dir);
    try {
      await eventually('checks passing again after a restart', async () => (await health(web, true)).length === 3, 20_000);
      // The lease ends: etcd deletes its keys and the dual-run deregisters their instances.
      await lease.revoke();
      await eventually('leased instances deregistered', async () => (await health(web)).map((e) => e.Service.ID).join() === `${web}-static`, 20_000);
      await etcd.delete().key(`${root}/services/${web}/static`);
      await eventually('static instance deregistered', async () => (await health(web)).length === 0, 20_000);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  });
});

describe('migrate dualrun stopping while it brings the catalog in line', () => {
  it('SIGTERM during the start-up sync of a service rule exits 0', async () => {
    const id = `svcstop-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1
id: ${id}
rules:
  - { name: registry, from: ${root}/services/, action: service }
`);
    for (let i = 0; i < 300; i++) await etcd.put(`${root}/services/many-${id}/i${i}`).value(`10.50.${i >> 8}.${i & 255}:80`);
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    // Deregistered behind the tool's back: the dual-run's start-up sync (at the copy's checkpoint) registers them again.
    for (let i = 0; i < 300; i++) await target.deregisterService(`many-${id}-i${i}`);
    const dr = await startDualRun(dir);
    await eventually('leading', async () => dr.stderr().includes('leading the dual-run'), 20_000);
    expect(await dr.stop()).toBe(0);
    expect(dr.stderr()).not.toContain('internal');
  });
});
