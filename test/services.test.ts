import { randomBytes } from 'node:crypto';
import { Resolver } from 'node:dns/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { Lease } from 'etcd3';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv, servers } from './support/harness.js';
import { eventually } from './support/dualrun.js';

/**
 * `action: service` rules on the real servers: Registrator-style `host:port`
 * keys and SkyDNS JSON records become catalog instances that Consul's health
 * API and DNS interface serve. Service names carry a suffix unique to the
 * run: every test file shares one Consul.
 */
const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

interface HealthEntry {
  Service: { ID: string; Service: string; Address: string; Port: number; Tags: string[] | null; Meta: Record<string, string> | null };
  Checks: { CheckID: string; Status: string; ServiceID: string }[];
}

interface CheckEntry {
  CheckID: string;
  ServiceID: string;
  Status: string;
}

async function getJson<T>(path: string, query: Record<string, string | boolean> = {}): Promise<T> {
  const response = await target.http.request({ method: 'GET', path, query });
  return JSON.parse(response.body.toString('utf8')) as T;
}

const health = (name: string, passing = false) => getJson<HealthEntry[]>(`/v1/health/service/${encodeURIComponent(name)}`, { passing });
const checks = (name: string) => getJson<CheckEntry[]>(`/v1/health/checks/${encodeURIComponent(name)}`);
const catalog = (name: string) => getJson<unknown[]>(`/v1/catalog/service/${encodeURIComponent(name)}`);

/** Each instance as [id, address, port, tags, status of the tool's TTL check (undefined: none)], sorted. */
function instances(entries: HealthEntry[]) {
  return entries
    .map((e) => [e.Service.ID, e.Service.Address, e.Service.Port, e.Service.Tags ?? [], e.Checks.find((c) => c.CheckID === `etcd-migrate:${e.Service.ID}`)?.Status])
    .sort((a, b) => String(a[0]).localeCompare(String(b[0])));
}

function dns(): Resolver {
  const resolver = new Resolver({ timeout: 2_000, tries: 2 });
  resolver.setServers([`127.0.0.1:${servers().consulDnsPort}`]);
  return resolver;
}

async function srvPorts(name: string): Promise<number[]> {
  return (await dns().resolveSrv(`${name}.service.consul`)).map((r) => r.port).sort((a, b) => a - b);
}

interface ServiceStats {
  name: string;
  sourceKeys: number;
  registered: number;
  updated: number;
  unchanged: number;
  withoutLease: number;
  problems: Record<string, number>;
  problemExamples: { key: string; problem: string; detail: string }[];
  extraneous: number;
  extraneousExamples: string[];
  deregistered: number;
}

function ruleStats(stdout: string, rule: string): ServiceStats {
  const doc = JSON.parse(stdout) as { services: ServiceStats[] };
  const stats = doc.services.find((s) => s.name === rule);
  if (!stats) throw new Error(`no service rule ${rule} in the copy result`);
  return stats;
}

const counts = (s: ServiceStats) => ({ sourceKeys: s.sourceKeys, registered: s.registered, updated: s.updated, unchanged: s.unchanged, withoutLease: s.withoutLease, extraneous: s.extraneous, deregistered: s.deregistered });

describe('migrate copy with service rules (real servers)', () => {
  it('registers Registrator and SkyDNS registrations: dry-run first, then health, DNS, no check without a lease, unchanged on a re-run, deregistered once the lease ends', async () => {
    const suffix = randomBytes(3).toString('hex');
    const id = `services-${suffix}`;
    const root = `/${id}`;
    const [redis, pg, nats, dnsApi] = ['redis', 'pg', 'nats', 'dnsapi'].map((n) => `${n}-${suffix}`) as [string, string, string, string];
    const dir = configDir(`version: 1
id: ${id}
rules:
  - name: registrator
    from: ${root}/services/
    action: service
    service: { format: hostport, tags: [registrator] }
  - name: skydns
    from: ${root}/skydns/local/platform/
    action: service
    service: { format: skydns, name: "{1}", id: "dns-{1}-{2}", tags: [skydns] }
`);
    const lease: Lease = etcd.lease(60);
    await lease.grant();
    try {
      const reg = (name: string, instance: string) => `${root}/services/${name}/${instance}`;
      await lease.put(reg(redis, 'r1')).value('10.20.0.1:50061');
      await lease.put(reg(redis, 'r2')).value('10.20.0.2:50062');
      await lease.put(reg(pg, 'p1')).value('10.20.0.3:50063');
      await lease.put(reg(pg, 'p2')).value('10.20.0.4:50064');
      await lease.put(reg(nats, 'n1')).value('10.20.0.5:50065');
      // No lease: registered without a TTL check (nothing would ever pass it).
      await etcd.put(reg(nats, 'n2')).value('10.20.0.6:50066');
      // Not host:port: reported, registers nothing.
      await etcd.put(reg(redis, 'broken')).value('maintenance');
      await lease.put(`${root}/skydns/local/platform/${dnsApi}/x1`).value(JSON.stringify({ host: '10.30.0.1', port: 8053, priority: 10 }));
      await lease.put(`${root}/skydns/local/platform/${dnsApi}/x2`).value(JSON.stringify({ host: '10.30.0.2', port: 8054, priority: 10, weight: 5 }));

      // Dry-run: the register operations, and nothing in Consul.
      const dry = await runCli(['copy', '--dry-run', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(dry.code, dry.stderr).toBe(0);
      const plan = JSON.parse(dry.stdout) as { dryRun: boolean; ops: { op: string; service?: string; name?: string; ttlSeconds?: number }[] };
      expect(plan.dryRun).toBe(true);
      expect(plan.ops.map((o) => [o.op, o.service, o.name, o.ttlSeconds ?? null]).sort()).toEqual([
        ['register-service', `${nats}-n1`, nats, 30],
        ['register-service', `${nats}-n2`, nats, null],
        ['register-service', `${pg}-p1`, pg, 30],
        ['register-service', `${pg}-p2`, pg, 30],
        ['register-service', `${redis}-r1`, redis, 30],
        ['register-service', `${redis}-r2`, redis, 30],
        ['register-service', `dns-${dnsApi}-x1`, dnsApi, 30],
        ['register-service', `dns-${dnsApi}-x2`, dnsApi, 30],
      ].sort());
      expect(counts(ruleStats(dry.stdout, 'registrator'))).toEqual({ sourceKeys: 7, registered: 6, updated: 0, unchanged: 0, withoutLease: 1, extraneous: 0, deregistered: 0 });
      for (const name of [redis, pg, nats, dnsApi]) expect(await catalog(name), name).toEqual([]);
      expect(await target.listServiceInstances(id, 'catalog')).toEqual([]);

      // The copy registers them.
      const run = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(run.code, run.stderr).toBe(0);
      const registrator = ruleStats(run.stdout, 'registrator');
      expect(counts(registrator)).toEqual({ sourceKeys: 7, registered: 6, updated: 0, unchanged: 0, withoutLease: 1, extraneous: 0, deregistered: 0 });
      expect(registrator.problems).toEqual({ 'value-not-hostport': 1 });
      expect(registrator.problemExamples).toEqual([{ key: reg(redis, 'broken'), problem: 'value-not-hostport', detail: 'the value (11 bytes) is not host:port or [ipv6]:port' }]);
      expect(counts(ruleStats(run.stdout, 'skydns'))).toEqual({ sourceKeys: 2, registered: 2, updated: 0, unchanged: 0, withoutLease: 0, extraneous: 0, deregistered: 0 });
      // Values are never printed.
      expect(run.stdout).not.toContain('maintenance');
      expect(run.stdout).not.toContain('10.20.0.1');

      expect(instances(await health(redis, true))).toEqual([
        [`${redis}-r1`, '10.20.0.1', 50061, ['registrator'], 'passing'],
        [`${redis}-r2`, '10.20.0.2', 50062, ['registrator'], 'passing'],
      ]);
      expect(instances(await health(pg, true))).toEqual([
        [`${pg}-p1`, '10.20.0.3', 50063, ['registrator'], 'passing'],
        [`${pg}-p2`, '10.20.0.4', 50064, ['registrator'], 'passing'],
      ]);
      // The key without a lease: an instance with no TTL check, passing (only the node's serf check applies).
      expect(instances(await health(nats, true))).toEqual([
        [`${nats}-n1`, '10.20.0.5', 50065, ['registrator'], 'passing'],
        [`${nats}-n2`, '10.20.0.6', 50066, ['registrator'], undefined],
      ]);
      expect((await checks(nats)).map((c) => [c.ServiceID, c.CheckID, c.Status]).sort()).toEqual([[`${nats}-n1`, `etcd-migrate:${nats}-n1`, 'passing']]);
      const skydns = await health(dnsApi, true);
      expect(instances(skydns)).toEqual([
        [`dns-${dnsApi}-x1`, '10.30.0.1', 8053, ['skydns'], 'passing'],
        [`dns-${dnsApi}-x2`, '10.30.0.2', 8054, ['skydns'], 'passing'],
      ]);
      expect(skydns.find((e) => e.Service.ID === `dns-${dnsApi}-x2`)!.Service.Meta).toMatchObject({ 'skydns-priority': '10', 'skydns-weight': '5', 'etcd-migrate-id': id, 'etcd-migrate-rule': 'skydns' });

      // Consul's DNS serves them: SRV ports and A addresses.
      expect(await srvPorts(redis)).toEqual([50061, 50062]);
      expect(await srvPorts(nats)).toEqual([50065, 50066]);
      expect(await srvPorts(dnsApi)).toEqual([8053, 8054]);
      expect((await dns().resolve4(`${pg}.service.consul`)).sort()).toEqual(['10.20.0.3', '10.20.0.4']);

      // A second copy: everything unchanged, the bad key still reported.
      const again = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(again.code, again.stderr).toBe(0);
      expect(counts(ruleStats(again.stdout, 'registrator'))).toEqual({ sourceKeys: 7, registered: 0, updated: 0, unchanged: 6, withoutLease: 1, extraneous: 0, deregistered: 0 });
      expect(ruleStats(again.stdout, 'registrator').problems).toEqual({ 'value-not-hostport': 1 });
      expect(counts(ruleStats(again.stdout, 'skydns'))).toEqual({ sourceKeys: 2, registered: 0, updated: 0, unchanged: 2, withoutLease: 0, extraneous: 0, deregistered: 0 });

      // r2 loses its lease: re-registered without a check, and Consul drops the old TTL check with it.
      await etcd.put(reg(redis, 'r2')).value('10.20.0.2:50062');
      const flipped = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(flipped.code, flipped.stderr).toBe(0);
      expect(counts(ruleStats(flipped.stdout, 'registrator'))).toMatchObject({ registered: 0, updated: 1, unchanged: 5, withoutLease: 2 });
      expect((await checks(redis)).map((c) => c.CheckID)).toEqual([`etcd-migrate:${redis}-r1`]);
      expect(instances(await health(redis, true))).toEqual([
        [`${redis}-r1`, '10.20.0.1', 50061, ['registrator'], 'passing'],
        [`${redis}-r2`, '10.20.0.2', 50062, ['registrator'], undefined],
      ]);

      // The lease ends: etcd deletes its keys; without --delete-extraneous the instances stay, reported.
      await lease.revoke();
      const kept = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(kept.code, kept.stderr).toBe(0);
      expect(counts(ruleStats(kept.stdout, 'registrator'))).toEqual({ sourceKeys: 3, registered: 0, updated: 0, unchanged: 2, withoutLease: 2, extraneous: 4, deregistered: 0 });
      expect(ruleStats(kept.stdout, 'registrator').extraneousExamples.sort()).toEqual([`${nats}-n1`, `${pg}-p1`, `${pg}-p2`, `${redis}-r1`]);
      expect((await health(pg)).length).toBe(2);

      // With it, they are deregistered; the unleased ones stay.
      const cleaned = await runCli(['copy', '--delete-extraneous', '--yes', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(cleaned.code, cleaned.stderr).toBe(0);
      expect(counts(ruleStats(cleaned.stdout, 'registrator'))).toEqual({ sourceKeys: 3, registered: 0, updated: 0, unchanged: 2, withoutLease: 2, extraneous: 4, deregistered: 4 });
      expect(counts(ruleStats(cleaned.stdout, 'skydns'))).toEqual({ sourceKeys: 0, registered: 0, updated: 0, unchanged: 0, withoutLease: 0, extraneous: 2, deregistered: 2 });
      expect(await catalog(pg)).toEqual([]);
      expect(await catalog(dnsApi)).toEqual([]);
      expect(instances(await health(redis))).toEqual([[`${redis}-r2`, '10.20.0.2', 50062, ['registrator'], undefined]]);
      expect(instances(await health(nats))).toEqual([[`${nats}-n2`, '10.20.0.6', 50066, ['registrator'], undefined]]);
      expect(await srvPorts(redis)).toEqual([50062]);
    } finally {
      await lease.revoke().catch(() => undefined);
      // Leave no instance behind on the shared agent.
      for (const instance of await target.listServiceInstances(id, 'agent')) await target.deregisterService(instance.id);
    }
  });

  it('a TTL check nobody passes turns critical after its TTL, and the instance leaves DNS', async () => {
    const suffix = randomBytes(3).toString('hex');
    const id = `services-ttl-${suffix}`;
    const root = `/${id}`;
    const name = `ephemeral-${suffix}`;
    const dir = configDir(`version: 1
id: ${id}
rules:
  - name: short
    from: ${root}/services/
    action: service
    service: { check: { ttl: 2s } }
`);
    const lease = etcd.lease(60);
    await lease.grant();
    try {
      await lease.put(`${root}/services/${name}/e1`).value('10.50.0.1:7001');
      const run = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
      expect(run.code, run.stderr).toBe(0);
      expect(counts(ruleStats(run.stdout, 'short'))).toMatchObject({ registered: 1, withoutLease: 0 });
      expect((await checks(name)).map((c) => c.CheckID)).toEqual([`etcd-migrate:${name}-e1`]);
      // Consul's TTL timer, polled generously: no tight timing.
      await eventually('the TTL check turns critical', async () => (await checks(name))[0]?.Status === 'critical', 10_000);
      expect(await health(name, true)).toEqual([]);
      expect((await health(name)).map((e) => e.Service.ID)).toEqual([`${name}-e1`]);
      await expect(srvPorts(name)).rejects.toMatchObject({ code: expect.stringMatching(/^(ENOTFOUND|ENODATA)$/) });
    } finally {
      await lease.revoke().catch(() => undefined);
      for (const instance of await target.listServiceInstances(id, 'agent')) await target.deregisterService(instance.id);
    }
  });
});
