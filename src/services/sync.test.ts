import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { RecordingTarget } from '../copy/recording-target.js';
import type { Mapping } from '../mapping/mapping.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { ServiceDefinition, TargetStore } from '../stores/types.js';
import { syncServiceRule, type ServiceRuleStats } from './sync.js';

const MIGRATION = 'm1';

function mappingOf(service = '{ format: hostport }'): Mapping {
  return parseConfig(`version: 1
id: ${MIGRATION}
rules:
  - name: svc
    from: /svc/
    action: service
    service: ${service}
  - { name: internal, from: /svc/internal/, to: internal/ }
  - name: dns
    from: /skydns/
    action: service
    service: { format: skydns, name: "{-2}", id: "{-1}", check: { ttl: 10s } }
`, 'migration.yaml').mapping;
}

function world(service?: string, target = new MemoryTarget()) {
  const source = new MemorySource();
  const mapping = mappingOf(service);
  const sync = async (ruleName = 'svc', options: { deleteExtraneous?: boolean; allowMassDelete?: boolean; on?: TargetStore } = {}): Promise<ServiceRuleStats> => {
    const on = options.on ?? target;
    const rule = mapping.serviceRules.find((r) => r.name === ruleName)!;
    const existing = await on.listServiceInstances(MIGRATION, 'agent');
    const revision = (await source.status()).revision;
    return syncServiceRule(rule, { source, target: on, mapping, migrationId: MIGRATION }, revision, existing, {
      deleteExtraneous: options.deleteExtraneous ?? false, allowMassDelete: options.allowMassDelete ?? false,
    });
  };
  return { source, target, mapping, sync };
}

/** An instance of this migration's `svc` rule that no etcd key produces. */
function stray(id: string, rule = 'svc', migration = MIGRATION): ServiceDefinition {
  return { id, name: 'old', address: '10.9.9.9', port: 1, tags: [], meta: { 'etcd-migrate-id': migration, 'etcd-migrate-rule': rule } };
}

const counts = (s: ServiceRuleStats) => ({ sourceKeys: s.sourceKeys, registered: s.registered, updated: s.updated, unchanged: s.unchanged, withoutLease: s.withoutLease, extraneous: s.extraneous, deregistered: s.deregistered });

describe('syncServiceRule', () => {
  it('never registers over an instance the rule did not register (by hand, another rule or migration; its id in any case), nor deregisters it', async () => {
    const { source, target, sync } = world();
    const byHand: ServiceDefinition = { id: 'api-i2', name: 'api', address: '10.1.1.1', port: 1, tags: [], meta: { owner: 'ops' }, check: { id: 'ops-api-i2', name: 'ops', ttlSeconds: 3600, status: 'passing' } };
    await target.registerService(byHand);
    await target.registerService({ ...stray('web-i1', 'other-rule'), name: 'web' });
    await target.registerService({ ...stray('DB-I1', 'svc', 'another-migration'), name: 'DB' });
    source.put('/svc/api/i2', '10.0.0.2:8080');
    source.put('/svc/web/i1', '10.0.0.3:8080');
    source.put('/svc/db/i1', '10.0.0.4:8080');
    source.put('/svc/ok/i1', '10.0.0.5:8080');
    const stats = await sync('svc', { deleteExtraneous: true });
    expect(counts(stats)).toMatchObject({ registered: 1, deregistered: 0 });
    expect(stats.problems).toEqual({ 'id-taken': 3 });
    expect(stats.problemExamples.map((p) => p.detail)).toEqual([
      'the agent has an instance "api-i2" of no migration (registered by hand or by another tool); it is not overwritten (Consul\'s catalog takes ids in any case as one): give this rule an id template of its own',
      'the agent has an instance "DB-I1" of migration another-migration; it is not overwritten (Consul\'s catalog takes ids in any case as one): give this rule an id template of its own',
      'the agent has an instance "web-i1" of rule other-rule of this migration; it is not overwritten (Consul\'s catalog takes ids in any case as one): give this rule an id template of its own',
    ]);
    expect(target.services.get('api-i2')).toEqual({ ...byHand, checkStatus: 'passing' });
    expect(target.services.get('web-i1')?.meta['etcd-migrate-rule']).toBe('other-rule');
    expect(target.services.get('DB-I1')?.meta['etcd-migrate-id']).toBe('another-migration');
    // Its key gone from etcd, the hand-registered instance stays (it was never the rule's).
    source.delete('/svc/api/i2');
    await sync('svc', { deleteExtraneous: true, allowMassDelete: true });
    expect(target.services.get('api-i2')).toEqual({ ...byHand, checkStatus: 'passing' });
  });

  it('two keys whose ids differ only in case make one instance (Consul\'s catalog takes them as one): the second is a duplicate', async () => {
    const { source, target, sync } = world();
    source.put('/svc/Cart/x', '10.0.1.1:80');
    source.put('/svc/cart/x', '10.0.1.2:80');
    const stats = await sync();
    expect(counts(stats)).toMatchObject({ registered: 1 });
    expect(stats.problemExamples).toEqual([{ key: '/svc/cart/x', problem: 'id-duplicate', detail: 'its instance id "cart-x" differs only in case from "Cart-x", the id of /svc/Cart/x (Consul\'s catalog takes them as one); make the id template include more of the key' }]);
    expect([...target.services.keys()]).toEqual(['Cart-x']);
  });

  it('registers every instance: a passing TTL check when the key has a lease, none otherwise', async () => {
    const { source, target, sync } = world();
    const lease = source.grantLease(30);
    source.put('/svc/redis/r1', '10.0.0.1:6379', lease);
    source.put('/svc/redis/r2', '10.0.0.2:6379', lease);
    source.put('/svc/pg/p1', '[2001:db8::3]:5432');
    const stats = await sync();
    expect(counts(stats)).toEqual({ sourceKeys: 3, registered: 3, updated: 0, unchanged: 0, withoutLease: 1, extraneous: 0, deregistered: 0 });
    expect(stats.problems).toEqual({});
    expect(target.services.get('redis-r1')).toEqual({
      id: 'redis-r1', name: 'redis', address: '10.0.0.1', port: 6379, tags: [],
      meta: { 'etcd-migrate-id': MIGRATION, 'etcd-migrate-rule': 'svc', 'etcd-lease': lease },
      check: { id: 'etcd-migrate:redis-r1', name: `etcd lease ${lease} of /svc/redis/r1`, ttlSeconds: 30, status: 'passing' },
      checkStatus: 'passing',
    });
    expect(target.services.get('pg-p1')).toEqual({
      id: 'pg-p1', name: 'pg', address: '2001:db8::3', port: 5432, tags: [], meta: { 'etcd-migrate-id': MIGRATION, 'etcd-migrate-rule': 'svc' },
    });
    expect([...target.services.keys()].sort()).toEqual(['pg-p1', 'redis-r1', 'redis-r2']);
  });

  it('the rule\'s check settings reach the definition (TTL, deregister after)', async () => {
    const { source, target, sync } = world('{ check: { ttl: 2m, deregisterCriticalAfter: 1h } }');
    source.put('/svc/api/a1', '10.0.0.1:80', source.grantLease(30));
    await sync();
    expect(target.services.get('api-a1')!.check).toEqual({ id: 'etcd-migrate:api-a1', name: expect.any(String), ttlSeconds: 120, deregisterCriticalAfterSeconds: 3600, status: 'passing' });
  });

  it('a second run leaves matching instances alone and writes nothing', async () => {
    const { source, target, sync } = world();
    const lease = source.grantLease(30);
    source.put('/svc/redis/r1', '10.0.0.1:6379', lease);
    source.put('/svc/pg/p1', '10.0.0.3:5432');
    await sync();
    const writes = target.writes;
    expect(counts(await sync())).toEqual({ sourceKeys: 2, registered: 0, updated: 0, unchanged: 2, withoutLease: 1, extraneous: 0, deregistered: 0 });
    expect(target.writes).toBe(writes);
  });

  it('a changed value re-registers the instance', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/redis/r2', '10.0.0.2:6379');
    await sync();
    source.put('/svc/redis/r1', '10.0.0.11:7000');
    expect(counts(await sync())).toMatchObject({ registered: 0, updated: 1, unchanged: 1 });
    expect(target.services.get('redis-r1')).toMatchObject({ address: '10.0.0.11', port: 7000 });
    expect(target.services.get('redis-r2')).toMatchObject({ address: '10.0.0.2', port: 6379 });
  });

  it('a lease added gives the instance its TTL check; a lease removed takes it away; another lease updates it', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    await sync();
    expect(target.services.get('redis-r1')!.check).toBeUndefined();

    const first = source.grantLease(30);
    source.put('/svc/redis/r1', '10.0.0.1:6379', first);
    expect(counts(await sync())).toMatchObject({ updated: 1, unchanged: 0, withoutLease: 0 });
    expect(target.services.get('redis-r1')).toMatchObject({ check: { id: 'etcd-migrate:redis-r1', status: 'passing' }, meta: { 'etcd-lease': first } });

    const second = source.grantLease(30);
    source.put('/svc/redis/r1', '10.0.0.1:6379', second);
    expect(counts(await sync())).toMatchObject({ updated: 1, unchanged: 0 });
    expect(target.services.get('redis-r1')).toMatchObject({ check: { name: `etcd lease ${second} of /svc/redis/r1` }, meta: { 'etcd-lease': second } });

    source.put('/svc/redis/r1', '10.0.0.1:6379');
    expect(counts(await sync())).toMatchObject({ updated: 1, unchanged: 0, withoutLease: 1 });
    expect(target.services.get('redis-r1')!.check).toBeUndefined();
    expect(target.services.get('redis-r1')!.meta).not.toHaveProperty('etcd-lease');
    expect(counts(await sync())).toMatchObject({ updated: 0, unchanged: 1 });
  });

  it('keys of a longer nested rule are not this rule\'s', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/internal/cache/c1', '10.0.0.9:11211');
    source.put('/svc/internal/garbage', 'not an address');
    const stats = await sync();
    expect(counts(stats)).toMatchObject({ sourceKeys: 1, registered: 1 });
    expect(stats.problems).toEqual({});
    expect([...target.services.keys()]).toEqual(['redis-r1']);
  });

  it('rules stay apart: one rule\'s sync neither counts nor removes the other\'s instances', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/skydns/local/platform/dns-api/x1', '{"host":"10.30.0.1","port":53,"priority":10}');
    await sync('svc');
    expect(counts(await sync('dns', { deleteExtraneous: true }))).toMatchObject({ sourceKeys: 1, registered: 1, extraneous: 0, deregistered: 0 });
    expect(target.services.get('x1')).toMatchObject({ name: 'dns-api', port: 53, meta: { 'etcd-migrate-rule': 'dns', 'skydns-priority': '10' } });
    expect(counts(await sync('svc', { deleteExtraneous: true }))).toMatchObject({ unchanged: 1, extraneous: 0, deregistered: 0 });
    expect([...target.services.keys()].sort()).toEqual(['redis-r1', 'x1']);
  });

  it('keys that make no instance are counted by problem, with examples, and register nothing', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/redis/r2', 'up');
    source.put('/svc/redis/r3', '10.0.0.3:0');
    source.put('/svc/redis/r4', '10.0.0.4:70000');
    const stats = await sync();
    expect(counts(stats)).toMatchObject({ sourceKeys: 4, registered: 1 });
    expect(stats.problems).toEqual({ 'value-not-hostport': 1, 'port-invalid': 2 });
    expect(stats.problemExamples.map((p) => [p.key, p.problem])).toEqual([['/svc/redis/r2', 'value-not-hostport'], ['/svc/redis/r3', 'port-invalid'], ['/svc/redis/r4', 'port-invalid']]);
    expect([...target.services.keys()]).toEqual(['redis-r1']);
  });

  it('two keys with one instance id: the first registers, the second is reported as a duplicate id', async () => {
    const { source, target, sync } = world('{ id: "{1}" }');
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/redis/r2', '10.0.0.2:6379');
    const stats = await sync();
    expect(counts(stats)).toMatchObject({ sourceKeys: 2, registered: 1 });
    expect(stats.problems).toEqual({ 'id-duplicate': 1 });
    expect(stats.problemExamples).toEqual([{ key: '/svc/redis/r2', problem: 'id-duplicate', detail: 'its instance id "redis" is also the id of /svc/redis/r1; make the id template include more of the key' }]);
    expect(target.services.get('redis')).toMatchObject({ address: '10.0.0.1' });
  });

  it('extraneous instances of the rule are reported, and deregistered only with deleteExtraneous; other rules\' and migrations\' are never touched', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    await target.registerService(stray('gone-1'));
    await target.registerService(stray('gone-2'));
    await target.registerService(stray('dns-1', 'dns'));
    await target.registerService(stray('theirs-1', 'svc', 'other-migration'));
    await target.registerService({ id: 'unmanaged', name: 'web', address: '10.1.1.1', port: 80, tags: [], meta: {} });

    const kept = await sync();
    expect(counts(kept)).toMatchObject({ registered: 1, extraneous: 2, deregistered: 0 });
    expect(kept.extraneousExamples.sort()).toEqual(['gone-1', 'gone-2']);
    expect([...target.services.keys()].sort()).toEqual(['dns-1', 'gone-1', 'gone-2', 'redis-r1', 'theirs-1', 'unmanaged']);

    const removed = await sync('svc', { deleteExtraneous: true });
    expect(counts(removed)).toMatchObject({ unchanged: 1, extraneous: 2, deregistered: 2 });
    expect([...target.services.keys()].sort()).toEqual(['dns-1', 'redis-r1', 'theirs-1', 'unmanaged']);
  });

  it('a registration whose value went bad is withdrawn: its stale address is deregistered (as the dual-run does), not kept as extraneous', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/redis/r2', '10.0.0.2:6379');
    await sync();
    source.put('/svc/redis/r1', 'maintenance');
    const stats = await sync();
    expect(counts(stats)).toMatchObject({ registered: 0, updated: 0, unchanged: 1, extraneous: 0, deregistered: 0 });
    expect(stats.withdrawn).toBe(1);
    expect(stats.problems).toEqual({ 'value-not-hostport': 1 });
    expect([...target.services.keys()]).toEqual(['redis-r2']);
    expect(JSON.stringify(stats)).not.toContain('maintenance');
  });

  it('the delete guard: more than 10 and more than 10% refuses, deregisters nothing, and --allow-mass-delete lets it through', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    source.put('/svc/redis/r2', '10.0.0.2:6379');
    await sync();
    for (let i = 0; i < 11; i++) await target.registerService(stray(`gone-${i}`));
    const writes = target.writes;
    const refused = sync('svc', { deleteExtraneous: true });
    await expect(refused).rejects.toMatchObject({ code: 'delete_guard', exitCode: 4, details: { rule: 'svc', deletes: 11, instances: 13 } });
    await expect(refused).rejects.toThrow(/^Deregistering 11 extraneous instances would remove 84\.6% of service rule svc's 13 instances; nothing was deregistered\.$/);
    expect(target.services.size).toBe(13);
    expect(target.writes).toBe(writes);

    const allowed = await sync('svc', { deleteExtraneous: true, allowMassDelete: true });
    expect(counts(allowed)).toMatchObject({ unchanged: 2, extraneous: 11, deregistered: 11 });
    expect([...target.services.keys()].sort()).toEqual(['redis-r1', 'redis-r2']);
  });

  it('ten strays are under the guard (it needs more than 10)', async () => {
    const { source, target, sync } = world();
    source.put('/svc/redis/r1', '10.0.0.1:6379');
    for (let i = 0; i < 10; i++) await target.registerService(stray(`gone-${i}`));
    expect(counts(await sync('svc', { deleteExtraneous: true }))).toMatchObject({ registered: 1, extraneous: 10, deregistered: 10 });
    expect([...target.services.keys()]).toEqual(['redis-r1']);
  });

  it('an empty etcd prefix never deregisters a mass of instances without the flag', async () => {
    const { target, sync } = world();
    for (let i = 0; i < 20; i++) await target.registerService(stray(`live-${i}`));
    await expect(sync('svc', { deleteExtraneous: true })).rejects.toMatchObject({ code: 'delete_guard' });
    expect(target.services.size).toBe(20);
  });

  it('dry-run: through the recording target the same run records each operation and writes nothing', async () => {
    const { source, target, sync } = world();
    const lease = source.grantLease(30);
    source.put('/svc/redis/r1', '10.0.0.1:6379', lease);
    source.put('/svc/pg/p1', '10.0.0.3:5432');
    await target.registerService(stray('gone-1'));
    const writes = target.writes;
    const recording = new RecordingTarget(target);
    const stats = await sync('svc', { deleteExtraneous: true, on: recording });
    expect(counts(stats)).toMatchObject({ registered: 2, extraneous: 1, deregistered: 1 });
    expect(recording.recorded).toEqual([
      { op: 'register-service', service: 'pg-p1', name: 'pg' },
      { op: 'register-service', service: 'redis-r1', name: 'redis', ttlSeconds: 30 },
      { op: 'deregister-service', service: 'gone-1' },
    ]);
    expect(target.writes).toBe(writes);
    expect([...target.services.keys()]).toEqual(['gone-1']);
  });
});
