import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { isServableKey } from './escape.js';
import type { Mapping } from './mapping.js';
import { findRule, routeKey, routeTargetKey, ruleRanges, type Route } from './route.js';

function mappingOf(yaml: string): Mapping {
  return parseConfig(`version: 1\nid: demo\n${yaml}`, 'migration.yaml').mapping;
}

const mapping = mappingOf(`
rules:
  - name: config
    from: /platform/config/
    to: config/
  - name: secrets
    from: /platform/config/secrets/
    to: vault-staging/
  - name: app
    from: /app/
    to: app/
    keys: escape
  - name: apple
    from: /apple
    to: fruit/
    keys: escape
  - name: registry
    from: /registry/
    action: keep
`);

const key = (text: string) => Buffer.from(text, 'utf8');
/** A compact view for assertions: the fields that matter, rule by name. */
function summary(route: Route): Record<string, unknown> {
  switch (route.kind) {
    case 'mapped':
      return { kind: 'mapped', rule: route.rule.name, target: route.target, escaped: route.escaped };
    case 'keep':
      return { kind: 'keep', rule: route.rule.name };
    case 'service':
      return { kind: 'service', rule: route.rule.name };
    case 'unmapped':
      return { kind: 'unmapped' };
    case 'unmappable':
      return { kind: 'unmappable', rule: route.rule.name, reason: route.reason };
  }
}

describe('routeKey: rule selection', () => {
  it('substitutes from by to on a plain key', () => {
    expect(summary(routeKey(mapping, key('/platform/config/auth_service/db_url')))).toEqual({ kind: 'mapped', rule: 'config', target: 'config/auth_service/db_url', escaped: false });
  });

  it('lets the longest from win', () => {
    expect(summary(routeKey(mapping, key('/platform/config/secrets/db')))).toEqual({ kind: 'mapped', rule: 'secrets', target: 'vault-staging/db', escaped: false });
    expect(summary(routeKey(mapping, key('/platform/config/secretsX')))).toEqual({ kind: 'mapped', rule: 'config', target: 'config/secretsX', escaped: false });
  });

  it('matches plain byte prefixes: /app does not hold /apple, /apple holds /applesauce', () => {
    const rules = mappingOf(`
rules:
  - name: app
    from: /app
    to: app
`);
    expect(summary(routeKey(rules, key('/apple/x')))).toEqual({ kind: 'mapped', rule: 'app', target: 'apple/x', escaped: false });
    expect(summary(routeKey(rules, key('/app')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app', escaped: false });
    expect(summary(routeKey(mapping, key('/applesauce/1')))).toEqual({ kind: 'mapped', rule: 'apple', target: 'fruit/sauce/1', escaped: false });
    expect(summary(routeKey(mapping, key('/app/1')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/1', escaped: false });
  });

  it('maps the from key itself to to', () => {
    expect(summary(routeKey(mapping, key('/app/')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/', escaped: false });
  });

  it('keeps keys of keep rules, whatever their key or value', () => {
    expect(summary(routeKey(mapping, key('/registry/pods/default/web-1')))).toEqual({ kind: 'keep', rule: 'registry' });
    expect(summary(routeKey(mapping, Buffer.from([...key('/registry//'), 0xff]), { valueBytes: 10_000_000 }))).toEqual({ kind: 'keep', rule: 'registry' });
  });

  it('leaves keys under no rule unmapped', () => {
    expect(routeKey(mapping, key('/other/thing'))).toEqual({ kind: 'unmapped' });
    expect(routeKey(mapping, key('/platform/confi'))).toEqual({ kind: 'unmapped' });
    expect(routeKey(mapping, Buffer.alloc(0))).toEqual({ kind: 'unmapped' });
    expect(findRule(mapping, key('/registr'))).toBeUndefined();
  });
});

describe('routeKey: an agent with Consul 1.21.5\'s key rule (mapping.strictKeys)', () => {
  const strict: Mapping = Object.freeze({ ...mapping, strictKeys: true });

  it('holds back keys outside its character set under either key policy, saying which character', () => {
    expect(routeKey(strict, key('/platform/config/hosts/10.0.0.1:8080'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: 'the key holds ":", outside the characters Consul 1.21.5 serves on /v1/kv (a-z A-Z 0-9 , _ . / - ? & =)' });
    expect(routeKey(strict, key('/app/users/alice@example.com'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: expect.stringContaining('"@"') });
    expect(routeKey(strict, key('/app/feature flags/x'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: expect.stringContaining('a space') });
    expect(routeKey(strict, key('/app/café'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: expect.stringContaining('"é"') });
    expect(routeKey(strict, key('/platform/config/v1..2'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: 'the key contains "..", which Consul 1.21.5 refuses anywhere in a key' });
  });

  it('holds back escaped keys too: the escapes use "~"', () => {
    expect(summary(routeKey(mapping, key('/app//double')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/~2Fdouble', escaped: true });
    expect(routeKey(strict, key('/app//double'))).toMatchObject({ kind: 'unmappable', reason: 'key-charset', detail: 'it escapes to "app/~2Fdouble", and that holds "~", outside the characters Consul 1.21.5 serves on /v1/kv (a-z A-Z 0-9 , _ . / - ? & =)' });
  });

  it('maps the keys it serves as before, and other agents\' keys are untouched', () => {
    const plain = key('/platform/config/auth_service/db-url_v2,x?y&z=1');
    expect(routeKey(strict, plain)).toEqual(routeKey(mapping, plain));
    expect(routeKey(strict, plain)).toMatchObject({ kind: 'mapped', target: 'config/auth_service/db-url_v2,x?y&z=1' });
    expect(routeKey(mapping, key('/platform/config/hosts/10.0.0.1:8080'))).toMatchObject({ kind: 'mapped' });
  });

  it('reports the usual reasons first', () => {
    expect(routeKey(strict, key('/platform/config/a//b'))).toMatchObject({ kind: 'unmappable', reason: 'empty-segment' });
  });
});

describe('routeKey: keys: reject', () => {
  const cases: [Buffer, string, string][] = [
    [key('/platform/config//double'), 'empty-segment', '"//" at character 17 makes an empty segment; Consul cleans it away and reads or writes another key'],
    [key('/platform/config/a/./b'), 'dot-segment', 'the key has a "." segment; Consul cleans it away or refuses it as path traversal'],
    [key('/platform/config/a/..'), 'dot-segment', 'the key has a ".." segment; Consul cleans it away or refuses it as path traversal'],
    [key('/platform/config/v%2E%2E'), 'dot-segment', 'the key percent-decodes to text containing ".."; Consul 1.21.6+ decodes keys a second time and refuses that as path traversal'],
    [Buffer.from([...key('/platform/config/bin'), 0xff, 0xfe]), 'invalid-utf8', 'byte 0xFF at offset 20 is not valid UTF-8'],
    [key('/platform/config/a\x01b'), 'control-character', "character 19 is U+0001, which is not printable; Consul's HTTP API answers 400 for it"],
    [key('/platform/config/nb\u00a0sp'), 'control-character', "character 20 is U+00A0, which is not printable; Consul's HTTP API answers 400 for it"],
    [key('/platform/config/name '), 'trailing-space', 'the key ends with a space; Consul 1.21.6+ refuses leading and trailing spaces'],
    [key('/platform/config/a%20b'), 'trailing-space', 'the key percent-decodes to text containing a space; Consul 1.21.6+ decodes keys a second time and refuses any space in the result'],
  ];
  for (const [input, reason, detail] of cases) {
    it(`reports ${reason} for ${JSON.stringify(input.toString('latin1'))}`, () => {
      expect(routeKey(mapping, input)).toEqual({ kind: 'unmappable', rule: mapping.rules[0], reason, detail });
    });
  }

  it('reports leading-slash and empty-key through isServableKey (a validated to never starts with "/" and is never empty)', () => {
    expect(isServableKey('/config/x')).toMatchObject({ ok: false, reason: 'leading-slash' });
    expect(isServableKey('')).toMatchObject({ ok: false, reason: 'empty-key' });
  });

  it('copies servable keys with "~" and "%" unchanged', () => {
    expect(summary(routeKey(mapping, key('/platform/config/a~7Eb')))).toEqual({ kind: 'mapped', rule: 'config', target: 'config/a~7Eb', escaped: false });
    expect(summary(routeKey(mapping, key('/platform/config/100%')))).toEqual({ kind: 'mapped', rule: 'config', target: 'config/100%', escaped: false });
  });

  it('refuses values over the limit under either key policy', () => {
    expect(routeKey(mapping, key('/platform/config/model.bin'), { valueBytes: 524_289 })).toMatchObject({ kind: 'unmappable', reason: 'value-too-large', detail: 'the value is 524289 bytes; the target accepts at most 524288 (kv_max_value_size)' });
    expect(routeKey(mapping, key('/platform/config/model.bin'), { valueBytes: 524_288 })).toMatchObject({ kind: 'mapped' });
    expect(routeKey(mapping, key('/app/model.bin'), { valueBytes: 700_000 })).toMatchObject({ kind: 'unmappable', reason: 'value-too-large' });
    expect(routeKey(mapping, key('/app/x'), { valueBytes: 101, maxValueBytes: 100 })).toMatchObject({ kind: 'unmappable', reason: 'value-too-large' });
    const limited = mappingOf(`
target:
  limits:
    maxValueBytes: 1000
rules:
  - name: a
    from: /a/
    to: a/
`);
    expect(limited.maxValueBytes).toBe(1000);
    expect(routeKey(limited, key('/a/x'), { valueBytes: 1001 })).toMatchObject({ kind: 'unmappable', reason: 'value-too-large' });
    expect(routeKey(limited, key('/a/x'), { valueBytes: 1000 })).toMatchObject({ kind: 'mapped', target: 'a/x' });
  });

  it('reports the key problem before the value size', () => {
    expect(routeKey(mapping, key('/platform/config//x'), { valueBytes: 10_000_000 })).toMatchObject({ reason: 'empty-segment' });
  });
});

describe('routeKey: keys over 256 KiB (GET /v1/kv/<key> answers 431 past about 1 MiB of URL; a txn op must hold the key)', () => {
  it('refuses a longer key, under either key policy; escaping cannot shorten it', () => {
    expect(routeKey(mapping, key(`/platform/config/${'d'.repeat(600_000)}`))).toMatchObject({ kind: 'unmappable', reason: 'key-too-long', detail: expect.stringContaining('over the 262144 a key may have') });
    // 270 KB of UTF-8 in 135,000 characters.
    expect(routeKey(mapping, key(`/platform/config/${'é'.repeat(135_000)}`))).toMatchObject({ kind: 'unmappable', reason: 'key-too-long' });
    expect(routeKey(mapping, key(`/app/${'é'.repeat(135_000)}`))).toMatchObject({ kind: 'unmappable', reason: 'key-too-long' });
    // Escaped: the escapes make it longer than the plain key, which alone would fit.
    expect(routeKey(mapping, key(`/app/${'\x01'.repeat(100_000)}`))).toMatchObject({ kind: 'unmappable', reason: 'key-too-long' });
    expect(isServableKey(`x/${'é'.repeat(135_000)}`)).toMatchObject({ ok: false, reason: 'key-too-long' });
  });

  it('copies long keys that fit', () => {
    expect(routeKey(mapping, key(`/platform/config/${'d'.repeat(250_000)}`))).toMatchObject({ kind: 'mapped' });
    expect(routeKey(mapping, key(`/platform/config/${'é'.repeat(120_000)}`))).toMatchObject({ kind: 'mapped' });
  });
});

describe('routeKey: keys: escape', () => {
  const cases: [Buffer, string][] = [
    [key('/app//double'), 'app/~2Fdouble'],
    [key('/app/./dot'), 'app/~2E/dot'],
    [key('/app/a/..'), 'app/a/~2E.'],
    [Buffer.from([...key('/app/bin'), 0xff, 0xfe]), 'app/bin~FF~FE'],
    [key('/app/a\x01b'), 'app/a~01b'],
    [key('/app/nb\u00a0sp'), 'app/nb~C2~A0sp'],
    [key('/app/name '), 'app/name~20'],
    [key('/app/a%20b'), 'app/a~2520b'],
    [key('/app/v%2E%2E'), 'app/v~252E~252E'],
    // "~" is the escape character: escaped even where Consul could serve it.
    [key('/app/a~b'), 'app/a~7Eb'],
    [key('/app/~2F'), 'app/~7E2F'],
  ];
  for (const [input, target] of cases) {
    it(`escapes ${JSON.stringify(input.toString('latin1'))} to ${target}`, () => {
      expect(summary(routeKey(mapping, input))).toEqual({ kind: 'mapped', rule: 'app', target, escaped: true });
    });
  }

  it('maps a key that needs no escaping to the plain substitution', () => {
    expect(summary(routeKey(mapping, key('/app/config/db_url')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/config/db_url', escaped: false });
    expect(summary(routeKey(mapping, key('/app/100%')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/100%', escaped: false });
    expect(summary(routeKey(mapping, key('/app/café/a b/')))).toEqual({ kind: 'mapped', rule: 'app', target: 'app/café/a b/', escaped: false });
  });

  it('escapes the empty segment that a from without "/" and a to with "/" create', () => {
    // "/apple" → "fruit/": "/apple/x" would be "fruit//x".
    expect(summary(routeKey(mapping, key('/apple/x')))).toEqual({ kind: 'mapped', rule: 'apple', target: 'fruit/~2Fx', escaped: true });
  });

  it('never lets an escaped key meet a plain one (collision)', () => {
    // The plain key "~2Fx" and the escape of "/x" would both be "~2Fx" if "~" were not reserved.
    const plainLookalike = routeKey(mapping, key('/app/~2Fx'));
    const escaped = routeKey(mapping, key('/app//x'));
    expect(plainLookalike).toMatchObject({ target: 'app/~7E2Fx' });
    expect(escaped).toMatchObject({ target: 'app/~2Fx' });
  });
});

describe('routeTargetKey', () => {
  it('finds the one etcd key behind a Consul key', () => {
    expect(routeTargetKey(mapping, 'app/~2Fdouble')).toMatchObject({ kind: 'owned', source: key('/app//double'), escaped: true });
    expect(routeTargetKey(mapping, 'config/auth/db')).toMatchObject({ kind: 'owned', source: key('/platform/config/auth/db'), escaped: false });
    expect(routeTargetKey(mapping, '_migrate/demo/meta')).toEqual({ kind: 'state' });
    expect(routeTargetKey(mapping, 'elsewhere/x')).toEqual({ kind: 'outside' });
  });

  it('calls keys no etcd key maps to foreign', () => {
    // A longer from sends /platform/config/secrets/… elsewhere.
    expect(routeTargetKey(mapping, 'config/secrets/db')).toMatchObject({ kind: 'foreign', detail: 'the etcd key it would come from belongs to rule "secrets" and maps to another key' });
    expect(routeTargetKey(mapping, 'app/~2f')).toMatchObject({ kind: 'foreign', detail: 'the part after to contains "~" but is not a canonical escape' });
    expect(routeTargetKey(mapping, 'app/a~7E')).toMatchObject({ kind: 'owned', source: key('/app/a~') });
    expect(routeTargetKey(mapping, 'config/a\ufffd')).toMatchObject({ kind: 'foreign', detail: 'the etcd key it would come from is unmappable (control-character)' });
  });
});

describe('routeKey properties', () => {
  const froms = ['/platform/config/', '/platform/config/secrets/', '/app/', '/apple', '/registry/', '/unmapped/'];
  const suffix = fc.oneof(
    fc.uint8Array({ maxLength: 16 }).map((array) => Buffer.from(array)),
    fc.array(fc.constantFrom('/', '//', '.', '..', ' ', '~', '~2F', '~7E', '%', '%20', 'a', 'secrets/', 'é', '\u00a0', '\x00'), { maxLength: 8 }).map((parts) => Buffer.from(parts.join(''), 'utf8')),
  );
  const sourceKey = fc.tuple(fc.constantFrom(...froms), suffix).map(([from, rest]) => Buffer.concat([Buffer.from(from, 'utf8'), rest]));

  it('sends distinct etcd keys to distinct, servable Consul keys inside their rule', () => {
    fc.assert(
      fc.property(fc.uniqueArray(sourceKey, { maxLength: 60, selector: (k) => k.toString('hex') }), (keys) => {
        const owners = new Map<string, string>();
        for (const source of keys) {
          const route = routeKey(mapping, source);
          if (route.kind !== 'mapped') continue;
          expect(isServableKey(route.target)).toEqual({ ok: true });
          expect(route.target.startsWith(route.rule.to)).toBe(true);
          expect(route.target.startsWith(mapping.statePrefix)).toBe(false);
          expect(owners.get(route.target)).toBeUndefined();
          owners.set(route.target, source.toString('hex'));
        }
      }),
      { numRuns: 2_000 },
    );
    // Small random batches rarely hold a key and its escape look-alike; one large batch does.
    const owners = new Map<string, string>();
    for (const source of fc.sample(sourceKey, 30_000)) {
      const route = routeKey(mapping, source);
      if (route.kind !== 'mapped') continue;
      const owner = owners.get(route.target);
      if (owner !== undefined) expect(owner).toBe(source.toString('hex'));
      owners.set(route.target, source.toString('hex'));
    }
    expect(owners.size).toBeGreaterThan(5_000);
  });

  it('is inverted by routeTargetKey', () => {
    fc.assert(
      fc.property(sourceKey, (source) => {
        const route = routeKey(mapping, source);
        if (route.kind !== 'mapped') return;
        const back = routeTargetKey(mapping, route.target);
        expect(back.kind).toBe('owned');
        if (back.kind === 'owned') {
          expect(back.source.equals(source)).toBe(true);
          expect(back.rule).toBe(route.rule);
          expect(back.escaped).toBe(route.escaped);
        }
      }),
      { numRuns: 5_000 },
    );
  });

  it('maps every key under an escape rule', () => {
    fc.assert(
      fc.property(suffix, (rest) => {
        expect(routeKey(mapping, Buffer.concat([key('/app/'), rest])).kind).toBe('mapped');
      }),
      { numRuns: 3_000 },
    );
  });
});

describe('ruleRanges', () => {
  const within = (k: Buffer, r: { start: Buffer; end: Buffer }) => Buffer.compare(k, r.start) >= 0 && (r.end.length === 0 || Buffer.compare(k, r.end) < 0);

  it('leaves out the prefixes of nested rules, and of rules nested in those only once', () => {
    const nested = mappingOf(`
rules:
  - { name: root, from: /, action: keep }
  - { name: services, from: /services/, to: services/ }
  - { name: web, from: /services/web/, to: web/ }
  - { name: web-canary, from: /services/web/canary/, to: canary/ }
  - { name: api, from: /services/api/, to: api/ }
`);
    const ranges = (name: string) => ruleRanges(nested, nested.rules.find((r) => r.name === name)!).map((r) => [r.start.toString('latin1'), r.end.toString('latin1')]);
    expect(ranges('services')).toEqual([['/services/', '/services/api/'], ['/services/api0', '/services/web/'], ['/services/web0', '/services0']]);
    expect(ranges('web')).toEqual([['/services/web/', '/services/web/canary/'], ['/services/web/canary0', '/services/web0']]);
    expect(ranges('web-canary')).toEqual([['/services/web/canary/', '/services/web/canary0']]);
    expect(ranges('root')).toEqual([['/', '/services/'], ['/services0', '0']]);
  });

  it('findRule gives the rule of the longest from that prefixes the key, with few rules (tried in turn) and many (a trie)', () => {
    const segment = fc.constantFrom('a', 'b', 'a/', 'b/', '/', 'ab', 'ÿ', 'c');
    const from = fc.array(segment, { minLength: 1, maxLength: 4 }).map((parts) => parts.join(''));
    const keyText = fc.array(segment, { maxLength: 6 }).map((parts) => parts.join(''));
    for (const [minLength, maxLength] of [[1, 8], [17, 60]] as const) {
      fc.assert(fc.property(fc.uniqueArray(from, { minLength, maxLength }), fc.array(keyText, { minLength: 1, maxLength: 30 }), (fromList, keys) => {
        const m = mappingOf(`rules:\n${fromList.map((f, i) => `  - { name: r${i}, from: ${JSON.stringify(f)}, action: keep }`).join('\n')}\n`);
        for (const text of keys) {
          const k = Buffer.from(text, 'utf8');
          const longest = m.rules.filter((r) => k.subarray(0, r.fromBytes.length).equals(r.fromBytes)).sort((a, b) => b.fromBytes.length - a.fromBytes.length)[0];
          expect(findRule(m, k)?.name, `${JSON.stringify(text)} among ${fromList.length} rules`).toBe(longest?.name);
        }
      }), { numRuns: 300 });
    }
  });

  it('holds exactly the keys findRule gives the rule', () => {
    const segment = fc.constantFrom('a', 'b', 'a/', 'b/', '/', 'ab', 'ÿ');
    const froms = fc.uniqueArray(fc.array(segment, { minLength: 1, maxLength: 3 }).map((parts) => parts.join('')), { minLength: 1, maxLength: 5 });
    const keyText = fc.array(segment, { maxLength: 5 }).map((parts) => parts.join(''));
    fc.assert(fc.property(froms, fc.array(keyText, { minLength: 1, maxLength: 20 }), (fromList, keys) => {
      const rules = fromList.map((from, i) => `  - { name: r${i}, from: ${JSON.stringify(from)}, action: keep }`).join('\n');
      const m = mappingOf(`rules:\n${rules}\n`);
      for (const rule of m.rules) {
        const ranges = ruleRanges(m, rule);
        for (const text of keys) {
          const k = Buffer.from(text, 'utf8');
          expect(ranges.some((r) => within(k, r)), `${JSON.stringify(text)} in ${rule.name}`).toBe(findRule(m, k) === rule);
        }
      }
    }), { numRuns: 500 });
  });
});
