import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import type { CompiledRule } from '../mapping/mapping.js';
import type { SourceEntry } from '../stores/types.js';
import { checkIdOf, registrationOf, sameInstance, type Registration, type RegistrationResult } from './registration.js';

/** The one service rule of a mapping whose `service:` block is `service` (YAML flow text). */
function ruleOf(service: string, from = '/svc/'): CompiledRule {
  const { mapping } = parseConfig(`version: 1\nid: m1\nrules:\n  - name: svc\n    from: ${from}\n    action: service\n    service: ${service}\n`, 'migration.yaml');
  return mapping.serviceRules[0]!;
}

function entry(key: string | Buffer, value: string | Buffer, lease = '0'): SourceEntry {
  return { key: Buffer.isBuffer(key) ? key : Buffer.from(key), value: Buffer.isBuffer(value) ? value : Buffer.from(value), createRevision: 5, modRevision: 7, version: 2, lease };
}

function ok(result: RegistrationResult): Registration {
  if (!result.ok) throw new Error(`expected a registration, got ${result.problem}: ${result.detail}`);
  return result.registration;
}

function problem(result: RegistrationResult): { problem: string; detail: string } {
  if (result.ok) throw new Error(`expected a problem, got the registration ${JSON.stringify(result.registration)}`);
  return { problem: result.problem, detail: result.detail };
}

const hostport = ruleOf('{ format: hostport }');
const skydns = ruleOf('{ format: skydns, name: "{-2}", id: "dns-{-1}" }', '/skydns/local/platform/');

describe('registrationOf: format hostport (Registrator)', () => {
  it('an IPv4 host:port on a lease: name {1}, id {1}-{-1}, the tool\'s meta, the lease', () => {
    const r = ok(registrationOf(hostport, entry('/svc/redis/r1', '10.0.0.1:6379', '7587862412'), 'm1'));
    expect(r).toEqual({
      rule: 'svc', id: 'redis-r1', name: 'redis', address: '10.0.0.1', port: 6379, tags: [],
      meta: { 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc', 'etcd-lease': '7587862412' },
      lease: '7587862412', key: '/svc/redis/r1',
    });
  });

  it('no lease: no lease on the registration and no etcd-lease meta', () => {
    const r = ok(registrationOf(hostport, entry('/svc/redis/r1', '10.0.0.1:6379'), 'm1'));
    expect(r.lease).toBeUndefined();
    expect(r.meta).toEqual({ 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc' });
  });

  it('IPv6 in brackets; the brackets are not part of the address', () => {
    expect(ok(registrationOf(hostport, entry('/svc/a/1', '[2001:db8::1]:8080'), 'm1'))).toMatchObject({ address: '2001:db8::1', port: 8080 });
    expect(ok(registrationOf(hostport, entry('/svc/a/1', '[::1]:1'), 'm1'))).toMatchObject({ address: '::1', port: 1 });
  });

  it('IPv6 without brackets, or a bracketed text that is not an address, is refused', () => {
    expect(problem(registrationOf(hostport, entry('/svc/a/1', '2001:db8::1:8080'), 'm1')).problem).toBe('value-not-hostport');
    expect(problem(registrationOf(hostport, entry('/svc/a/1', '[2001:db8::zz]:8080'), 'm1')).problem).toBe('value-not-hostport');
    expect(problem(registrationOf(hostport, entry('/svc/a/1', '[1:2:3:4:5:6:7:8:9]:80'), 'm1')).problem).toBe('address-invalid');
  });

  it('host names, with the trailing newline an echo leaves trimmed', () => {
    expect(ok(registrationOf(hostport, entry('/svc/a/1', 'redis-0.redis.default.svc.cluster.local:6379\n'), 'm1'))).toMatchObject({ address: 'redis-0.redis.default.svc.cluster.local', port: 6379 });
    expect(ok(registrationOf(hostport, entry('/svc/a/1', 'localhost:80'), 'm1'))).toMatchObject({ address: 'localhost', port: 80 });
    expect(ok(registrationOf(hostport, entry('/svc/a/1', 'db.internal.:5432'), 'm1'))).toMatchObject({ address: 'db.internal.', port: 5432 });
  });

  it('host names that are not: a leading hyphen, an underscore, a label over 63, a mistyped IPv4 address', () => {
    for (const bad of ['-db.internal', 'db_1.internal', `${'a'.repeat(64)}.internal`, '10.0.0.256', '999.1.1.1', '10.0.0']) {
      expect(problem(registrationOf(hostport, entry('/svc/a/1', `${bad}:80`), 'm1')), bad).toMatchObject({ problem: 'address-invalid' });
    }
  });

  it('ports outside 1..65535 are refused; a leading zero is still the port', () => {
    for (const port of ['0', '65536', '99999999999999999999']) {
      expect(problem(registrationOf(hostport, entry('/svc/a/1', `10.0.0.1:${port}`), 'm1'))).toEqual({ problem: 'port-invalid', detail: 'the port is not between 1 and 65535' });
    }
    expect(ok(registrationOf(hostport, entry('/svc/a/1', '10.0.0.1:65535'), 'm1')).port).toBe(65535);
    expect(ok(registrationOf(hostport, entry('/svc/a/1', '10.0.0.1:080'), 'm1')).port).toBe(80);
  });

  it('values that are not host:port name the size, never the value', () => {
    for (const value of ['', 'up', '10.0.0.1', '10.0.0.1:', ':80', '10.0.0.1:80:90', 'http://10.0.0.1:80', '10.0.0.1:-1', '10.0.0.1 :80', '{"host":"10.0.0.1","port":80}']) {
      const p = problem(registrationOf(hostport, entry('/svc/a/1', value), 'm1'));
      expect(p, value).toEqual({ problem: 'value-not-hostport', detail: `the value (${Buffer.byteLength(value)} bytes) is not host:port or [ipv6]:port` });
    }
  });

  it('adds the rule\'s tags, without duplicates', () => {
    const rule = ruleOf('{ tags: [grpc, migrated, grpc] }');
    expect(ok(registrationOf(rule, entry('/svc/a/1', '10.0.0.1:80'), 'm1')).tags).toEqual(['grpc', 'migrated']);
  });
});

describe('registrationOf: name and id templates', () => {
  it('{-1} is the last segment, literal text stays, and empty segments do not count', () => {
    const rule = ruleOf('{ name: "{1}-{2}", id: "x-{-1}.{-2}" }');
    expect(ok(registrationOf(rule, entry('/svc/prod//api/i-9', '10.0.0.1:80'), 'm1'))).toMatchObject({ name: 'prod-api', id: 'x-i-9.api' });
  });

  it('a segment the template needs and the key lacks: segment-missing for the name, then for the id', () => {
    const rule = ruleOf('{ name: "{1}", id: "{1}-{3}" }');
    expect(problem(registrationOf(rule, entry('/svc/a/b', '10.0.0.1:80'), 'm1'))).toEqual({
      problem: 'segment-missing', detail: 'the instance id template "{1}-{3}" needs segment {3}, but the key has 2 after from',
    });
    expect(problem(registrationOf(hostport, entry('/svc/', '10.0.0.1:80'), 'm1'))).toEqual({
      problem: 'segment-missing', detail: 'the service name template "{1}" needs segment {1}, but the key has 0 after from',
    });
    const back = ruleOf('{ name: "{-3}" }');
    expect(problem(registrationOf(back, entry('/svc/a/b', '10.0.0.1:80'), 'm1')).detail).toBe('the service name template "{-3}" needs segment {-3}, but the key has 2 after from');
  });

  it('the default id {1}-{-1} of a key with one segment repeats it', () => {
    expect(ok(registrationOf(hostport, entry('/svc/solo', '10.0.0.1:80'), 'm1'))).toMatchObject({ name: 'solo', id: 'solo-solo' });
  });

  it('a control character in the instance id or the service name makes no instance: Consul answers 400 for it on every agent endpoint, so it could never be deregistered', () => {
    expect(problem(registrationOf(hostport, entry('/svc/web/ctl\u0001', '10.0.0.1:80'), 'm1'))).toMatchObject({ problem: 'id-invalid', detail: expect.stringContaining('instance id') });
    expect(problem(registrationOf(hostport, entry('/svc/w\u007feb/h1', '10.0.0.1:80'), 'm1'))).toMatchObject({ problem: 'id-invalid' });
    expect(problem(registrationOf(ruleOf('{ id: "{-1}" }'), entry('/svc/w\teb/h1', '10.0.0.1:80'), 'm1'))).toMatchObject({ problem: 'id-invalid', detail: expect.stringContaining('service name') });
    expect(ok(registrationOf(hostport, entry('/svc/web/q?x#y%2F s', '10.0.0.1:80'), 'm1'))).toMatchObject({ id: 'web-q?x#y%2F s' });
  });

  it('a template is checked before the value: a bad value under a short key reports the missing segment', () => {
    const rule = ruleOf('{ id: "{1}-{2}" }');
    expect(problem(registrationOf(rule, entry('/svc/a', 'garbage'), 'm1')).problem).toBe('segment-missing');
  });
});

describe('registrationOf: format skydns', () => {
  it('host and port, with priority, weight, text and group kept as skydns-* meta', () => {
    const value = JSON.stringify({ host: '10.30.0.7', port: 8053, priority: 10, weight: 20, text: 'primary', group: 'g1', ttl: 60, targetstrip: 1 });
    const r = ok(registrationOf(skydns, entry('/skydns/local/platform/dns_api/x1', value, '99'), 'm1'));
    expect(r).toEqual({
      rule: 'svc', id: 'dns-x1', name: 'dns_api', address: '10.30.0.7', port: 8053, tags: [],
      meta: { 'skydns-priority': '10', 'skydns-weight': '20', 'skydns-text': 'primary', 'skydns-group': 'g1', 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc', 'etcd-lease': '99' },
      lease: '99', key: '/skydns/local/platform/dns_api/x1',
    });
  });

  it('only the SRV fields that are there; a host name as host', () => {
    const r = ok(registrationOf(skydns, entry('/skydns/local/platform/web/a', '{"host":"web.internal","port":"443"}'), 'm1'));
    expect(r).toMatchObject({ address: 'web.internal', port: 443, meta: { 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc' } });
    expect(Object.keys(r.meta).filter((k) => k.startsWith('skydns-'))).toEqual([]);
  });

  it('bad JSON, JSON that is not an object, a missing host or port, a port out of range', () => {
    const at = (value: string) => problem(registrationOf(skydns, entry('/skydns/local/platform/web/a', value), 'm1'));
    expect(at('{"host": "10.0.0.1", port: 80}')).toEqual({ problem: 'value-not-json', detail: 'the value (30 bytes) is not JSON' });
    expect(at('10.0.0.1:80')).toEqual({ problem: 'value-not-json', detail: 'the value (11 bytes) is not JSON' });
    expect(at('[1,2]')).toEqual({ problem: 'value-not-json', detail: 'the value is JSON but not an object' });
    expect(at('null')).toEqual({ problem: 'value-not-json', detail: 'the value is JSON but not an object' });
    expect(at('{"port":80}')).toEqual({ problem: 'field-missing', detail: 'no string at field "host" for the address' });
    expect(at('{"host":"","port":80}')).toEqual({ problem: 'field-missing', detail: 'no string at field "host" for the address' });
    expect(at('{"host":42,"port":80}')).toEqual({ problem: 'field-missing', detail: 'no string at field "host" for the address' });
    expect(at('{"host":"10.0.0.1"}')).toEqual({ problem: 'field-missing', detail: 'no port at field "port"' });
    for (const port of ['0', '70000', '80.5', '"80a"', 'true', 'null']) {
      expect(at(`{"host":"10.0.0.1","port":${port}}`), port).toEqual({ problem: 'port-invalid', detail: 'the value at "port" is not a port between 1 and 65535' });
    }
    expect(at('{"host":"not a host","port":80}')).toEqual({ problem: 'address-invalid', detail: 'the value at "host" is neither an IP address nor a host name' });
  });

  it('an SRV text over 512 bytes makes no instance (Consul refuses the meta value)', () => {
    const p = problem(registrationOf(skydns, entry('/skydns/local/platform/web/a', JSON.stringify({ host: '10.0.0.1', port: 80, text: 'x'.repeat(513) })), 'm1'));
    expect(p).toEqual({ problem: 'meta-invalid', detail: 'a meta value is 513 bytes; Consul accepts at most 512' });
  });
});

describe('registrationOf: format json with dotted fields', () => {
  const json = ruleOf('{ format: json, fields: { address: Service.Address, port: Service.Port, tags: Service.Tags, meta: Service.Meta }, name: "{1}", id: "{-1}", tags: [etcd] }');
  const doc = (service: Record<string, unknown>) => JSON.stringify({ Service: service, Other: 1 });

  it('address, port, tags and meta at the configured paths; the rule\'s tags after the value\'s', () => {
    const r = ok(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '2001:db8::7', Port: 9000, Tags: ['v2', 'etcd'], Meta: { version: '2.1', canary: false, shard: 3 } }), '12'), 'm1'));
    expect(r).toMatchObject({ name: 'billing', id: 'b-1', address: '2001:db8::7', port: 9000, tags: ['v2', 'etcd'] });
    expect(r.meta).toEqual({ version: '2.1', canary: 'false', shard: '3', 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc', 'etcd-lease': '12' });
  });

  it('the tool\'s own meta wins over the value\'s', () => {
    const r = ok(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 9000, Meta: { 'etcd-migrate-id': 'other', 'etcd-migrate-rule': 'other' } })), 'm1'));
    expect(r.meta).toEqual({ 'etcd-migrate-id': 'm1', 'etcd-migrate-rule': 'svc' });
  });

  it('optional tags and meta may be absent; a path through a non-object is a missing field', () => {
    expect(ok(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 9000 })), 'm1'))).toMatchObject({ tags: ['etcd'] });
    expect(problem(registrationOf(json, entry('/svc/billing/b-1', JSON.stringify({ Service: 'x' })), 'm1'))).toEqual({ problem: 'field-missing', detail: 'no string at field "Service.Address" for the address' });
    expect(problem(registrationOf(json, entry('/svc/billing/b-1', JSON.stringify({ Address: '10.0.0.1', Port: 80 })), 'm1')).problem).toBe('field-missing');
    expect(problem(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1' })), 'm1'))).toEqual({ problem: 'field-missing', detail: 'no port at field "Service.Port"' });
  });

  it('tags that are not a list of strings', () => {
    for (const tags of ['v2', ['v2', 3], { a: 'b' }, null]) {
      expect(problem(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Tags: tags })), 'm1')), JSON.stringify(tags)).toEqual({ problem: 'tags-invalid', detail: 'the value at "Service.Tags" is not a list of strings' });
    }
  });

  it('meta that is not an object of scalars', () => {
    const at = (meta: unknown) => problem(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: meta })), 'm1'));
    expect(at(['a'])).toEqual({ problem: 'meta-invalid', detail: 'the value at "Service.Meta" is not an object' });
    expect(at('a=b')).toEqual({ problem: 'meta-invalid', detail: 'the value at "Service.Meta" is not an object' });
    expect(at({ nested: { a: 1 } })).toEqual({ problem: 'meta-invalid', detail: 'a meta value is not a string, number or boolean' });
    expect(at({ gone: null })).toEqual({ problem: 'meta-invalid', detail: 'a meta value is not a string, number or boolean' });
  });

  it('meta keys Consul refuses: reserved consul- prefix, characters outside [A-Za-z0-9_-], empty, over 128', () => {
    for (const key of ['consul-network-segment', 'consul-', 'app.version', 'a b', 'é', '', 'k'.repeat(129)]) {
      const p = problem(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: { [key]: 'v' } })), 'm1'));
      expect(p.problem, key).toBe('meta-invalid');
      expect(p.detail).toContain('starts with the reserved "consul-"');
    }
    // Consul's check is case-sensitive, and the prefix needs its hyphen.
    expect(ok(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: { 'Consul-x': 'v', consulate: 'v', ['k'.repeat(128)]: 'v' } })), 'm1')).meta).toMatchObject({ 'Consul-x': 'v', consulate: 'v' });
  });

  it('meta values: 512 bytes pass, 513 do not, counted in UTF-8 bytes as Consul does', () => {
    const at = (value: string) => registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: { note: value } })), 'm1');
    expect(ok(at('x'.repeat(512))).meta.note).toHaveLength(512);
    expect(problem(at('x'.repeat(513)))).toEqual({ problem: 'meta-invalid', detail: 'a meta value is 513 bytes; Consul accepts at most 512' });
    // 171 × "€" is 171 UTF-16 units but 513 bytes.
    expect(problem(at('€'.repeat(171))).problem).toBe('meta-invalid');
    expect(ok(at('€'.repeat(170))).meta.note).toBe('€'.repeat(170));
  });

  it('more than 64 meta pairs with the tool\'s own', () => {
    const meta = Object.fromEntries(Array.from({ length: 62 }, (_, i) => [`k${i}`, 'v']));
    expect(ok(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: meta })), 'm1')).meta).toHaveProperty('k61');
    expect(problem(registrationOf(json, entry('/svc/billing/b-1', doc({ Address: '10.0.0.1', Port: 80, Meta: meta }), '5'), 'm1'))).toEqual({ problem: 'meta-invalid', detail: '65 meta pairs; Consul accepts at most 64' });
  });
});

describe('checkIdOf and sameInstance', () => {
  it('the check id names the instance', () => {
    expect(checkIdOf('redis-r1')).toBe('etcd-migrate:redis-r1');
  });

  it('compares what a client sees: tags as a set, meta as a map', () => {
    const a = { name: 'redis', address: '10.0.0.1', port: 6379, tags: ['a', 'b'], meta: { x: '1', y: '2' } };
    expect(sameInstance(a, { ...a, tags: ['b', 'a'], meta: { y: '2', x: '1' } })).toBe(true);
    expect(sameInstance(a, { ...a, port: 6380 })).toBe(false);
    expect(sameInstance(a, { ...a, address: '10.0.0.2' })).toBe(false);
    expect(sameInstance(a, { ...a, name: 'redis2' })).toBe(false);
    expect(sameInstance(a, { ...a, tags: ['a'] })).toBe(false);
    expect(sameInstance(a, { ...a, tags: ['a', 'c'] })).toBe(false);
    expect(sameInstance(a, { ...a, meta: { x: '1' } })).toBe(false);
    expect(sameInstance(a, { ...a, meta: { x: '1', y: '3' } })).toBe(false);
    expect(sameInstance(a, { ...a, meta: { x: '1', z: '2' } })).toBe(false);
  });
});
