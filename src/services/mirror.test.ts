import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { WatchMessage } from '../stores/types.js';
import { ServiceMirror } from './mirror.js';

const { mapping } = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/ }
  - name: registry
    from: /services/
    action: service
    service: { check: { ttl: 9s, failuresBeforeCritical: 2, successBeforePassing: 2 } }
`, 'migration.yaml');

function world() {
  const source = new MemorySource();
  const target = new MemoryTarget();
  const logs: string[] = [];
  const mirror = new ServiceMirror({ source, target, mapping, migrationId: 'demo', log: (_level, message) => logs.push(message) });
  /** The watch messages etcd gives for the writes made since `from`. */
  const messages = async (from: number) => {
    const out: Extract<WatchMessage, { kind: 'revision' }>[] = [];
    for await (const m of await source.watch({ start: Buffer.from('/'), end: Buffer.from('0') }, from)) if (m.kind === 'revision') out.push(m);
    return out;
  };
  return { source, target, mirror, logs, messages };
}

describe('ServiceMirror', () => {
  it('applies service events and hands the others back; a put of the same instance is not sent again', async () => {
    const w = world();
    const lease = w.source.grantLease(30);
    const from = (await w.source.status()).revision + 1;
    w.source.write([{ key: '/services/web/i1', value: '10.0.0.1:80', lease }, { key: '/app/a', value: 'A' }]);
    w.source.put('/services/web/i1', '10.0.0.1:80', lease);
    w.source.put('/services/web/bad', 'nope');
    const [first, again, bad] = await w.messages(from);
    const rest = await w.mirror.apply(first!);
    expect(rest.events.map((e) => e.entry.key.toString())).toEqual(['/app/a']);
    expect(w.target.services.get('web-i1')).toMatchObject({ name: 'web', address: '10.0.0.1', port: 80, check: { id: 'etcd-migrate:web-i1', ttlSeconds: 9, status: 'passing' } });
    const writes = w.target.writes;
    expect((await w.mirror.apply(again!)).events).toEqual([]);
    expect(w.target.writes).toBe(writes);
    await w.mirror.apply(bad!);
    expect(w.mirror.stats).toMatchObject({ registered: 1, problems: 1, instances: 1 });
    expect(w.logs.join('\n')).toContain('/services/web/bad makes no instance (value-not-hostport');
    expect(w.logs.join('\n')).not.toContain('nope');
  });

  it('a second key with the instance id of another is not registered over it', async () => {
    const { mapping: byName } = parseConfig(`version: 1
id: demo
rules:
  - { name: registry, from: /services/, action: service, service: { id: "{1}" } }
`, 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    const logs: string[] = [];
    const mirror = new ServiceMirror({ source, target, mapping: byName, migrationId: 'demo', log: (_l, m) => logs.push(m) });
    source.put('/services/web/i1', '10.0.0.1:80');
    source.put('/services/web/i2', '10.0.0.2:80');
    for await (const m of await source.watch({ start: Buffer.from('/'), end: Buffer.from('0') }, 1)) if (m.kind === 'revision') await mirror.apply(m);
    expect(target.services.get('web')).toMatchObject({ address: '10.0.0.1' });
    expect(mirror.stats.problems).toBe(1);
    expect(logs.join('\n')).toContain('/services/web/i2 makes instance id "web", which /services/web/i1 already has');
  });

  it('never registers over, nor deregisters, an instance of the same id someone else registered on the agent (by hand, another migration)', async () => {
    const w = world();
    const byHand = { id: 'web-i1', name: 'web', address: '10.1.1.1', port: 1, tags: [], meta: { owner: 'ops' } };
    await w.target.registerService(byHand);
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i1', '10.0.0.1:80');
    w.source.delete('/services/web/i1');
    const [put, del] = await w.messages(from);
    await w.mirror.apply(put!);
    expect(w.target.services.get('web-i1')).toEqual(byHand);
    expect(w.mirror.stats).toMatchObject({ registered: 0, problems: 1 });
    expect(w.logs.join('\n')).toContain('/services/web/i1 makes instance id "web-i1", but the agent has an instance "web-i1" of no migration (registered by hand or by another tool); it is not overwritten');
    await w.mirror.apply(del!);
    expect(w.target.services.get('web-i1')).toEqual(byHand);
    expect(w.mirror.stats.deregistered).toBe(0);
  });

  it('a key whose id differs only in case from a tracked instance\'s, or is another rule\'s instance id, is not registered over it', async () => {
    const { mapping: two } = parseConfig(`version: 1
id: demo
rules:
  - { name: s3, from: /s3/, action: service }
  - { name: s3b, from: /s3b/, action: service, service: { name: "{1}", id: "{1}-{2}" } }
`, 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    const logs: string[] = [];
    const mirror = new ServiceMirror({ source, target, mapping: two, migrationId: 'demo', log: (_l, m) => logs.push(m) });
    source.put('/s3/pay/A', '10.7.0.1:80');
    source.put('/s3/api/i1', '10.2.0.1:80');
    for await (const m of await source.watch({ start: Buffer.from('/'), end: Buffer.from('0') }, 1)) if (m.kind === 'revision') await mirror.apply(m);
    const from = (await source.status()).revision + 1;
    source.put('/s3/pay/a', '10.7.0.2:81');
    source.put('/s3b/api/i1', '10.2.0.9:91');
    for await (const m of await source.watch({ start: Buffer.from('/'), end: Buffer.from('0') }, from)) if (m.kind === 'revision') await mirror.apply(m);
    expect([...target.services.keys()].sort()).toEqual(['api-i1', 'pay-A']);
    expect(target.services.get('api-i1')).toMatchObject({ address: '10.2.0.1', meta: { 'etcd-migrate-rule': 's3' } });
    expect(mirror.stats.problems).toBe(2);
    expect(logs.join('\n')).toContain('/s3/pay/a makes instance id "pay-a", but it differs only in case from "pay-A", which Consul\'s catalog takes as the same; not registered');
    expect(logs.join('\n')).toContain('/s3b/api/i1 makes instance id "api-i1", but the agent has an instance "api-i1" of rule s3 of this migration');
    // The instances that held the ids go: the refused keys make them now (the catalog kept none until a restart).
    const later = (await source.status()).revision + 1;
    source.delete('/s3/pay/A');
    source.delete('/s3/api/i1');
    for await (const m of await source.watch({ start: Buffer.from('/'), end: Buffer.from('0') }, later)) if (m.kind === 'revision') await mirror.apply(m);
    expect([...target.services.keys()].sort()).toEqual(['api-i1', 'pay-a']);
    expect(target.services.get('pay-a')).toMatchObject({ address: '10.7.0.2', port: 81 });
    expect(target.services.get('api-i1')).toMatchObject({ address: '10.2.0.9', port: 91, meta: { 'etcd-migrate-rule': 's3b' } });
  });

  it('tolerates failuresBeforeCritical - 1 unreadable leases, then marks critical; passes again after successBeforePassing good reads', async () => {
    const w = world();
    const lease = w.source.grantLease(30);
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i1', '10.0.0.1:80', lease);
    for (const m of await w.messages(from)) await w.mirror.apply(m);
    const readLease = w.source.readLease.bind(w.source);
    let etcdDown = false;
    w.source.readLease = async (id) => {
      if (etcdDown) throw new Error('etcd unreachable');
      return readLease(id);
    };
    const status = () => w.target.services.get('web-i1')!.checkStatus;
    etcdDown = true;
    await w.mirror.keepChecks();
    expect(status()).toBe('passing');
    await w.mirror.keepChecks();
    expect(status()).toBe('critical');
    expect(w.mirror.stats.critical).toBe(1);
    etcdDown = false;
    await w.mirror.keepChecks();
    expect(status()).toBe('critical');
    await w.mirror.keepChecks();
    expect(status()).toBe('passing');
    expect(w.mirror.stats.critical).toBe(0);
  });

  it('registers an instance again when the agent no longer knows its check; a lease that ended is left to the watch', async () => {
    const w = world();
    const lease = w.source.grantLease(30);
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i1', '10.0.0.1:80', lease);
    for (const m of await w.messages(from)) await w.mirror.apply(m);
    w.target.services.clear();
    await w.mirror.keepChecks();
    expect(w.target.services.get('web-i1')).toMatchObject({ address: '10.0.0.1', checkStatus: 'passing' });
    expect(w.logs.join('\n')).toContain('the agent no longer knows instance web-i1');

    const at = (await w.source.status()).revision + 1;
    w.source.revokeLease(lease);
    const writes = w.target.writes;
    await w.mirror.keepChecks();
    expect(w.target.writes).toBe(writes);
    for (const m of await w.messages(at)) await w.mirror.apply(m);
    expect(w.target.services.size).toBe(0);
    expect(w.mirror.stats).toMatchObject({ deregistered: 1, instances: 0 });
  });

  it('a key whose instance id another key already has leaves that instance alone when it changes or goes', async () => {
    const { mapping: dup } = parseConfig(`version: 1
id: demo
rules:
  - { name: registry, from: /services/, action: service, service: { id: "{1}-{-1}" } }
`, 'migration.yaml');
    const w = world();
    const mirror = new ServiceMirror({ source: w.source, target: w.target, mapping: dup, migrationId: 'demo', log: (_level, message) => w.logs.push(message) });
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/dup/a/h1', '10.0.0.1:80');
    w.source.put('/services/dup/b/h1', '10.0.0.2:80');
    for (const m of await w.messages(from)) await mirror.apply(m);
    expect(w.target.services.get('dup-h1')).toMatchObject({ address: '10.0.0.1' });
    const at = (await w.source.status()).revision + 1;
    w.source.put('/services/dup/b/h1', 'garbage');
    w.source.delete('/services/dup/b/h1');
    for (const m of await w.messages(at)) await mirror.apply(m);
    expect(w.target.services.get('dup-h1')).toMatchObject({ address: '10.0.0.1' });
    // The owner's own delete deregisters it.
    const then = (await w.source.status()).revision + 1;
    w.source.delete('/services/dup/a/h1');
    for (const m of await w.messages(then)) await mirror.apply(m);
    expect(w.target.services.has('dup-h1')).toBe(false);
  });

  it('registers again an instance without a lease that the agent lost (it has no check to find it gone by)', async () => {
    const w = world();
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/web/plain', '10.0.0.7:80');
    for (const m of await w.messages(from)) await w.mirror.apply(m);
    expect(w.target.services.get('web-plain')?.check).toBeUndefined();
    w.target.services.delete('web-plain');
    await w.mirror.keepChecks();
    expect(w.target.services.get('web-plain')).toMatchObject({ address: '10.0.0.7', port: 80 });
    expect(w.logs.join('\n')).toContain('the agent no longer knows instance web-plain');
    // Present: nothing is sent again.
    const writes = w.target.writes;
    await w.mirror.keepChecks();
    expect(w.target.writes).toBe(writes);
  });

  it('a beat that overlaps a change of its instance does not register the old definition back: neither a check the key lost nor an instance deleted', async () => {
    const w = world();
    const lease = w.source.grantLease(30);
    const from = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i1', '10.0.0.1:80', lease);
    w.source.put('/services/web/i2', '10.0.0.2:80', lease);
    for (const m of await w.messages(from)) await w.mirror.apply(m);
    const at = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i1', '10.0.0.1:80');
    w.source.delete('/services/web/i2');
    const changes = await w.messages(at);
    // The beat reads the lease; the watch's events are applied meanwhile (the dual-run does both at once).
    const readLease = w.source.readLease.bind(w.source);
    w.source.readLease = async (id) => {
      for (const m of changes) await w.mirror.apply(m);
      return readLease(id);
    };
    await w.mirror.keepChecks();
    expect(w.target.services.get('web-i1')).toMatchObject({ address: '10.0.0.1' });
    expect(w.target.services.get('web-i1')?.check).toBeUndefined();
    expect(w.target.services.has('web-i2')).toBe(false);

    // The same while the beat updates the check: Consul answers that the check is gone (the change dropped it).
    w.source.readLease = readLease;
    const later = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i3', '10.0.0.3:80', lease);
    for (const m of await w.messages(later)) await w.mirror.apply(m);
    const last = (await w.source.status()).revision + 1;
    w.source.put('/services/web/i3', '10.0.0.3:80');
    const dropped = await w.messages(last);
    const updateCheck = w.target.updateCheck.bind(w.target);
    w.target.updateCheck = async (checkId, status) => {
      for (const m of dropped.splice(0)) await w.mirror.apply(m);
      return updateCheck(checkId, status);
    };
    await w.mirror.keepChecks();
    expect(w.target.services.get('web-i3')).toMatchObject({ address: '10.0.0.3' });
    expect(w.target.services.get('web-i3')?.check).toBeUndefined();
    expect(w.logs.join('\n')).not.toContain('no longer knows');
  });

  it('at start brings the agent in line with etcd at the checkpoint and tracks what is there', async () => {
    const w = world();
    const lease = w.source.grantLease(30);
    w.source.put('/services/web/i1', '10.0.0.1:80', lease);
    const checkpoint = w.source.put('/services/db/i1', '10.0.0.2:5432', lease);
    w.source.put('/services/web/i2', '10.0.0.3:80', lease);
    // A stray of this migration on the agent (no etcd key): removed; another migration's instance: left alone.
    await w.target.registerService({ id: 'old-x', name: 'old', address: '10.9.9.9', port: 1, tags: [], meta: { 'etcd-migrate-id': 'demo', 'etcd-migrate-rule': 'registry' } });
    await w.target.registerService({ id: 'other', name: 'other', address: '10.9.9.8', port: 1, tags: [], meta: { 'etcd-migrate-id': 'another' } });
    await w.mirror.start(checkpoint, new AbortController().signal);
    expect([...w.target.services.keys()].sort()).toEqual(['db-i1', 'other', 'web-i1']);
    expect(w.mirror.stats.instances).toBe(2);
  });
});
