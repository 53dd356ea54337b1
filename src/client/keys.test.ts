import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import { routeKey } from '../mapping/route.js';
import { consulKeyInPlan, etcdKeyInPlan, planWatch, routeClientKey } from './keys.js';

const mapping: Mapping = parseConfig(
  `version: 1
id: demo
rules:
  - name: app
    from: /app/
    to: app/
    keys: escape
  - name: app-secrets
    from: /app/secrets/
    to: vault/
  - name: plain
    from: /plain/
    to: plain/
  - name: registry
    from: /registry/
    action: keep
`,
  'migration.yaml',
).mapping;

const both = new Set(['app', 'plain', 'registry']);
const k = (text: string) => Buffer.from(text);

describe('routeClientKey', () => {
  it('maps a key of a client rule, escaping where its rule says so', () => {
    expect(routeClientKey(mapping, both, k('/app/a/b'))).toMatchObject({ consulKey: 'app/a/b', whyNotInConsul: undefined });
    expect(routeClientKey(mapping, both, k('/app/a//b')).consulKey).toBe('app/a/~2Fb');
  });

  it('says why a key has no Consul key', () => {
    expect(routeClientKey(mapping, both, k('/plain/a//b'))).toMatchObject({ consulKey: undefined, whyNotInConsul: expect.stringContaining('empty-segment') });
    expect(routeClientKey(mapping, both, k('/registry/x')).whyNotInConsul).toContain('keeps its keys on etcd');
  });

  it('refuses keys of other rules and keys of no rule, naming them', () => {
    expect(() => routeClientKey(mapping, both, k('/app/secrets/db'))).toThrow(/belongs to rule "app-secrets", not to this client's rules/);
    expect(() => routeClientKey(mapping, both, k('/other/x'))).toThrow(/belongs to no rule/);
  });
});

describe('planWatch', () => {
  it('watches one rule under its prefix, with whole unescaped segments in Consul', () => {
    const [entry, ...rest] = planWatch(mapping, ['app'], k('/app/config/fea'));
    expect(rest).toEqual([]);
    expect(entry!.etcdPrefix.toString()).toBe('/app/config/fea');
    expect(entry!.consulPrefix).toBe('app/config/');
  });

  it('falls back to the rule prefix when the segments would be escaped', () => {
    expect(planWatch(mapping, ['app'], k('/app/a~b/c'))[0]!.consulPrefix).toBe('app/');
    expect(planWatch(mapping, ['app'], k('/app//x/'))[0]!.consulPrefix).toBe('app/');
  });

  it('takes every client rule that lies under a wider prefix', () => {
    const plan = planWatch(mapping, ['app', 'plain', 'registry'], k('/'));
    expect(plan.map((e) => [e.rule.name, e.etcdPrefix.toString(), e.consulPrefix])).toEqual([
      ['app', '/app/', 'app/'],
      ['plain', '/plain/', 'plain/'],
      ['registry', '/registry/', undefined],
    ]);
  });

  it('refuses a prefix that holds none of the client rules', () => {
    expect(() => planWatch(mapping, ['plain'], k('/app/'))).toThrow(/holds no key of this client's rules/);
  });

  it('leaves out keys a nested rule of another client routes', () => {
    const [entry] = planWatch(mapping, ['app'], k('/app/'));
    expect(etcdKeyInPlan(mapping, entry!, k('/app/x'))).toBe(true);
    expect(etcdKeyInPlan(mapping, entry!, k('/app/secrets/db'))).toBe(false);
    expect(consulKeyInPlan(mapping, entry!, 'vault/db')).toBeUndefined();
    expect(consulKeyInPlan(mapping, entry!, 'app/~zz')).toBeUndefined();
  });

  it('finds every key under the prefix in Consul, and only those (property)', () => {
    const segment = fc.oneof(fc.constantFrom('', '.', '..', ' a', 'a~b', '%', 'x'), fc.string({ maxLength: 4 }), fc.uint8Array({ maxLength: 3 }).map((b) => Buffer.from(b).toString('latin1')));
    fc.assert(
      fc.property(fc.array(segment, { maxLength: 4 }), fc.array(segment, { maxLength: 3 }), (prefixParts, restParts) => {
        const prefix = Buffer.concat([k('/app/'), Buffer.from(prefixParts.join('/'), 'latin1')]);
        const key = Buffer.concat([prefix, Buffer.from(restParts.join('/'), 'latin1')]);
        const route = routeKey(mapping, key);
        if (route.kind !== 'mapped' || route.rule.name !== 'app') return;
        const [entry] = planWatch(mapping, ['app'], prefix);
        expect(route.target.startsWith(entry!.consulPrefix!)).toBe(true);
        expect(consulKeyInPlan(mapping, entry!, route.target)?.equals(key)).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });
});
