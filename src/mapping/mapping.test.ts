import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { emptyConfig, loadConfig, parseConfig, type MigrationConfig } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { compileMapping } from './mapping.js';

/** The ConfigError that parsing `text` throws (fails the test when none is thrown). */
function configError(text: string): ConfigError {
  try {
    parseConfig(text, 'migration.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError, but the configuration was accepted');
}

const HEAD = 'version: 1\nid: demo\n';

describe('parseConfig: malformed mapping files name file:line:column and exit 2', () => {
  it('bad YAML', () => {
    const err = configError(`${HEAD}rules:\n  - name: app\n    from: [/app/\n`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(/^migration\.yaml:6:1: not valid YAML: /);
    expect(err.details).toMatchObject({ file: 'migration.yaml', line: 6, column: 1 });
  });

  it('a field of the wrong type', () => {
    const err = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    to: 5\n`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('migration.yaml:6:9: rules[0].to: expected a string, got number 5');
  });

  it('an unknown field', () => {
    const err = configError(`${HEAD}rules:\n  - name: app\n    form: /app/\n`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('migration.yaml:5:5: rules[0].form: unknown field "form"; allowed fields here: name, from, to, action, keys, leases, datacenters, service');
  });

  it('a rule without from', () => {
    const err = configError(`${HEAD}rules:\n  - name: app\n    to: app/\n`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('migration.yaml:4:5: rules[0]: missing required field "from" (a string)');
  });

  it('two rules with the same from', () => {
    const err = configError(`${HEAD}rules:
  - name: app
    from: /app/
    to: app/
  - name: app2
    from: /app/
    to: app2/
`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('migration.yaml:8:11: rules[1].from: duplicate from "/app/": rule "app" (rules[0], line 4) already maps it; allowed: a from no other rule uses');
    expect(err.details).toMatchObject({ line: 8, column: 11, path: 'rules[1].from' });
  });

  it('two rules with the same name', () => {
    const err = configError(`${HEAD}rules:
  - name: app
    from: /app/
    to: app/
  - name: app
    from: /app2/
    to: app2/
`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toBe('migration.yaml:7:11: rules[1].name: duplicate rule name "app": rule "app" (rules[0], line 4) already has it; allowed: a name no other rule uses');
  });

  it('copy rules whose to ranges overlap', () => {
    const inside = configError(`${HEAD}rules:
  - name: app
    from: /app/
    to: app/
  - name: v1
    from: /v1/
    to: app/v1/
`);
    expect(inside.exitCode).toBe(2);
    expect(inside.message).toBe(
      'migration.yaml:9:9: rules[1].to: to "app/v1/" is inside to "app/" of rule "app" (rules[0], line 4): two etcd keys could land on one Consul key; allowed: a prefix that neither lies inside nor contains another copy rule\'s to',
    );
    const containing = configError(`${HEAD}rules:
  - name: v1
    from: /v1/
    to: app/v1/
  - name: all
    from: /all/
    to: app
`);
    expect(containing.message).toMatch(/^migration\.yaml:9:9: rules\[1\]\.to: to "app" is a prefix of to "app\/v1\/" of rule "v1" \(rules\[0\], line 4\)/);
    const same = configError(`${HEAD}rules:
  - name: a
    from: /a/
    to: shared/
  - name: b
    from: /b/
    to: shared/
`);
    expect(same.message).toMatch(/^migration\.yaml:9:9: rules\[1\]\.to: to "shared\/" is the same prefix as to "shared\/"/);
  });

  it('a to inside the state prefix, or containing it', () => {
    const inside = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    to: _migrate/app/\n`);
    expect(inside.exitCode).toBe(2);
    expect(inside.message).toBe(
      'migration.yaml:6:9: rules[0].to: to "_migrate/app/" is inside the state prefix "_migrate/", which holds migrate\'s own state; allowed: a prefix that neither lies inside nor contains "_migrate/"',
    );
    const containing = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    to: _mig\n`);
    expect(containing.message).toMatch(/^migration\.yaml:6:9: rules\[0\]\.to: to "_mig" is a prefix of the state prefix "_migrate\/"/);
    const custom = configError(`${HEAD}state:\n  prefix: ops/state/\nrules:\n  - name: app\n    from: /app/\n    to: ops/\n`);
    expect(custom.message).toMatch(/^migration\.yaml:8:9: rules\[0\]\.to: to "ops\/" is a prefix of the state prefix "ops\/state\/"/);
    // Under another state prefix, the default one is still other migrations' state.
    const others = configError(`${HEAD}state:\n  prefix: ops/state/\nrules:\n  - name: app\n    from: /app/\n    to: _migrate/team-d/\n`);
    expect(others.message).toBe(
      'migration.yaml:8:9: rules[0].to: to "_migrate/team-d/" is inside the default state prefix "_migrate/", which holds other migrations\' state; allowed: a prefix that neither lies inside nor contains "_migrate/"',
    );
    const whole = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    to: ""\n`);
    expect(whole.message).toBe(
      'migration.yaml:6:9: rules[0].to: an empty to maps into the whole Consul KV, which holds the state prefix "_migrate/" and every other application\'s keys; allowed: a non-empty prefix such as "app/"',
    );
  });

  it('a to Consul cannot serve, pointing at from when to defaults to it', () => {
    const defaulted = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n`);
    expect(defaulted.exitCode).toBe(2);
    expect(defaulted.message).toBe(
      'migration.yaml:5:11: rules[0].to: to is not set, so it defaults to from "/app/", which is not a key prefix Consul can serve (leading-slash: the key begins with "/"; Consul redirects /v1/kv//… to another path); allowed: printable UTF-8 without a leading "/", "//", "." or ".." segments, or leading/trailing spaces, such as "app/"',
    );
    const cases: [string, RegExp][] = [
      ['/app/', /^migration\.yaml:6:9: rules\[0\]\.to: to "\/app\/" is not a key prefix Consul can serve \(leading-slash: /],
      ['app//x/', /^migration\.yaml:6:9: rules\[0\]\.to: to "app\/\/x\/" is not a key prefix Consul can serve \(empty-segment: .*such as "app\/x\/"$/],
      ['app/./', /^migration\.yaml:6:9: rules\[0\]\.to: .*\(dot-segment: /],
      ['"app/\\x01"', /^migration\.yaml:6:9: rules\[0\]\.to: .*\(control-character: character 5 is U\+0001/],
      ['"app/ "', /^migration\.yaml:6:9: rules\[0\]\.to: .*\(trailing-space: /],
      ['app%/', /^migration\.yaml:6:9: rules\[0\]\.to: to "app%\/" is a prefix with "%"/],
    ];
    for (const [to, message] of cases) expect(configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    to: ${to}\n`).message, to).toMatch(message);
  });

  it('a state prefix Consul cannot serve', () => {
    const err = configError(`${HEAD}state:\n  prefix: /state/\n`);
    expect(err.exitCode).toBe(2);
    expect(err.message).toMatch(/^migration\.yaml:4:11: state\.prefix: "\/state\/" is not a key prefix Consul can serve: the key begins with "\/"/);
  });

  it('accepts keep rules whatever their to, and nested froms', () => {
    const { mapping } = parseConfig(`${HEAD}rules:
  - name: app
    from: /app/
    to: app/
  - name: app-locks
    from: /app/locks/
    action: keep
  - name: registry
    from: /registry/
    to: app/
    action: keep
`, 'migration.yaml');
    expect(mapping.rules.map((rule) => rule.name)).toEqual(['app', 'app-locks', 'registry']);
    expect(mapping.routingOrder.map((rule) => rule.name)).toEqual(['app-locks', 'registry', 'app']);
    expect(mapping.copyRules.map((rule) => rule.name)).toEqual(['app']);
    expect(mapping.warnings.map((w) => `${w.code} ${w.path} ${w.position?.line}:${w.position?.col}`)).toEqual(['to-ignored-on-keep rules[2].to 12:9']);
  });
});

describe('service rules (action: service)', () => {
  it('fills the defaults, lists the rule among serviceRules, and warns that to is ignored', () => {
    const { config, mapping } = parseConfig(`${HEAD}rules:
  - { name: grpc, from: /services/, action: service }
  - name: dns
    from: /skydns/local/platform/
    to: ignored/
    action: service
    service:
      format: skydns
      name: "{1}"
      id: "dns-{1}-{2}"
      tags: [migrated, dns]
      check: { ttl: 1m, failuresBeforeCritical: 2, successBeforePassing: 3, deregisterCriticalAfter: 30m }
  - name: custom
    from: /reg/
    action: service
    service: { format: json, fields: { address: Service.Address, port: Service.Port, tags: Service.Tags } }
`, 'migration.yaml');
    expect(config.rules[0]!.service).toEqual({ format: 'hostport', fields: { address: 'address', port: 'port' }, name: '{1}', id: '{1}-{-1}', tags: [], check: { ttlSeconds: 30, failuresBeforeCritical: 3, successBeforePassing: 1 } });
    expect(config.rules[1]!.service).toEqual({ format: 'skydns', fields: { address: 'host', port: 'port' }, name: '{1}', id: 'dns-{1}-{2}', tags: ['migrated', 'dns'], check: { ttlSeconds: 60, failuresBeforeCritical: 2, successBeforePassing: 3, deregisterCriticalAfterSeconds: 1800 } });
    expect(config.rules[2]!.service!.fields).toEqual({ address: 'Service.Address', port: 'Service.Port', tags: 'Service.Tags' });
    expect(mapping.serviceRules.map((r) => r.name)).toEqual(['grpc', 'dns', 'custom']);
    expect(mapping.copyRules).toEqual([]);
    expect(mapping.warnings.map((w) => [w.code, w.rule])).toEqual([['to-ignored-on-service', 'dns']]);
  });

  it('refuses a service block on a copy rule, fields without format json, a bad template, a bad duration, an unknown field', () => {
    const onCopy = configError(`${HEAD}rules:\n  - name: app\n    from: /app/\n    service: { format: hostport }\n`);
    expect(onCopy.message).toBe('migration.yaml:6:14: rules[0].service: service: describes a catalog registration, but the rule\'s action is copy; allowed: service: only with action: service');
    const fields = configError(`${HEAD}rules:\n  - name: s\n    from: /s/\n    action: service\n    service: { format: skydns, fields: { address: a, port: p } }\n`);
    expect(fields.message).toMatch(/^migration\.yaml:7:\d+: rules\[0\]\.service\.fields: fields: names where a JSON value holds the address and port, but format is skydns; allowed: fields only with format: json$/);
    const template = configError(`${HEAD}rules:\n  - name: s\n    from: /s/\n    action: service\n    service: { name: "{0}" }\n`);
    expect(template.message).toContain('rules[0].service.name: "{0}" is not a template of text and key segments such as "{1}"');
    const duration = configError(`${HEAD}rules:\n  - name: s\n    from: /s/\n    action: service\n    service: { check: { ttl: 30 } }\n`);
    expect(duration.message).toContain('rules[0].service.check.ttl: expected a string, got number 30');
    const unknown = configError(`${HEAD}rules:\n  - name: s\n    from: /s/\n    action: service\n    service: { format: hostport, port: 80 }\n`);
    expect(unknown.message).toContain('rules[0].service.port: unknown field "port"; allowed fields here: format, fields, name, id, tags, check');
    const format = configError(`${HEAD}rules:\n  - name: s\n    from: /s/\n    action: service\n    service: { format: srv }\n`);
    expect(format.message).toContain('"srv" is not allowed; allowed values: hostport, skydns, json');
  });
});

describe('compileMapping', () => {
  it('warns when from does not end in "/", and when to drops the "/" of from', () => {
    const { mapping } = parseConfig(`${HEAD}rules:
  - name: app
    from: /app
    to: app
  - name: cfg
    from: /cfg/
    to: config
`, 'migration.yaml');
    expect(mapping.warnings).toEqual([
      {
        code: 'from-without-trailing-slash',
        rule: 'app',
        path: 'rules[0].from',
        message: 'from "/app" does not end in "/": prefixes match byte by byte, so it also routes keys such as "/app-other" and "/appx/…"',
        file: 'migration.yaml',
        position: { line: 5, col: 11 },
      },
      {
        code: 'to-without-trailing-slash',
        rule: 'cfg',
        path: 'rules[1].to',
        message: 'to "config" does not end in "/" but from "/cfg/" does: "/cfg/x" becomes "configx"',
        file: 'migration.yaml',
        position: { line: 9, col: 9 },
      },
    ]);
  });

  it('carries the state prefix, defaults and value limit', () => {
    const { mapping } = parseConfig(`${HEAD}state:\n  prefix: ops/migrate/\ndefaults:\n  keys: escape\n  unmapped: error\ntarget:\n  limits:\n    maxValueBytes: 2048\nrules:\n  - name: app\n    from: /app/\n    to: app/\n`, 'migration.yaml');
    expect(mapping.statePrefix).toBe('ops/migrate/');
    expect(mapping.defaults).toEqual({ keys: 'escape', leases: 'session', unmapped: 'error' });
    expect(mapping.maxValueBytes).toBe(2048);
    expect(mapping.rules[0]).toMatchObject({ name: 'app', keys: 'escape', action: 'copy', index: 0 });
    expect(mapping.rules[0]!.fromBytes.equals(Buffer.from('/app/'))).toBe(true);
  });

  it('validates in-memory configurations too, without positions', () => {
    const config: MigrationConfig = {
      ...emptyConfig(),
      rules: [
        { name: 'a', from: '/a/', to: 'x/', action: 'copy', keys: 'reject', leases: 'session' },
        { name: 'b', from: '/b/', to: 'x/y/', action: 'copy', keys: 'reject', leases: 'session' },
      ],
    };
    try {
      compileMapping({ config, file: undefined, document: undefined, lineCounter: undefined });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).exitCode).toBe(2);
      expect((err as ConfigError).message).toMatch(/^\(configuration\): rules\[1\]\.to: to "x\/y\/" is inside to "x\/" of rule "a" \(rules\[0\]\)/);
    }
  });
});

describe('loadConfig returns the compiled mapping', () => {
  const dir = mkdtempSync(join(tmpdir(), 'migrate-mapping-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('from a file', () => {
    const file = join(dir, 'migration.yaml');
    writeFileSync(file, `${HEAD}rules:\n  - name: app\n    from: /app/\n    to: app/\n`);
    const loaded = loadConfig({ configFlag: file, env: {}, cwd: dir });
    expect(loaded.mapping.rules.map((rule) => rule.to)).toEqual(['app/']);
  });

  it('refuses a file with overlapping rules, naming its path', () => {
    const file = join(dir, 'overlap.yaml');
    writeFileSync(file, `${HEAD}rules:\n  - name: a\n    from: /a/\n    to: x/\n  - name: b\n    from: /b/\n    to: x/\n`);
    expect(() => loadConfig({ configFlag: file, env: {}, cwd: dir })).toThrow(`${file}:9:9: rules[1].to: to "x/" is the same prefix as to "x/"`);
  });

  it('without a file: no rules', () => {
    const empty = mkdtempSync(join(tmpdir(), 'migrate-empty-'));
    try {
      const loaded = loadConfig({ env: {}, cwd: empty });
      expect(loaded.file).toBeUndefined();
      expect(loaded.mapping.rules).toEqual([]);
      expect(loaded.mapping.statePrefix).toBe('_migrate/');
      expect(loaded.mapping.maxValueBytes).toBe(524288);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
