import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findConfigFile, loadConfig, parseConfig } from './load.js';
import type { MigrateError } from '../errors.js';

function errorOf(fn: () => unknown): MigrateError {
  try {
    fn();
  } catch (err) {
    return err as MigrateError;
  }
  throw new Error('expected an error');
}

describe('configuration file discovery (DESIGN §4 order)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'migrate-config-'));
  const sub = join(dir, 'sub');
  mkdirSync(sub);
  writeFileSync(join(dir, 'migration.yaml'), 'version: 1\nid: local\n');
  writeFileSync(join(dir, 'env.yaml'), 'version: 1\nid: from-env\n');
  writeFileSync(join(dir, 'flag.yaml'), 'version: 1\nid: from-flag\n');

  it('--config wins over $MIGRATE_CONFIG and ./migration.yaml', () => {
    expect(loadConfig({ configFlag: 'flag.yaml', env: { MIGRATE_CONFIG: join(dir, 'env.yaml') }, cwd: dir }).config.id).toBe('from-flag');
  });
  it('$MIGRATE_CONFIG wins over ./migration.yaml', () => {
    expect(loadConfig({ env: { MIGRATE_CONFIG: 'env.yaml' }, cwd: dir }).config.id).toBe('from-env');
  });
  it('./migration.yaml is used when nothing names a file', () => {
    const loaded = loadConfig({ env: {}, cwd: dir });
    expect(loaded.config.id).toBe('local');
    expect(loaded.file).toBe(join(dir, 'migration.yaml'));
  });
  it('without any file, commands that can run without one get the empty configuration', () => {
    const loaded = loadConfig({ env: {}, cwd: sub });
    expect(loaded.file).toBeUndefined();
    expect(loaded.config.rules).toEqual([]);
    expect(loaded.config.state.prefix).toBe('_migrate/');
  });
  it('a named file that does not exist is a usage error (exit 2) naming it', () => {
    const e = errorOf(() => findConfigFile('missing.yaml', {}, dir));
    expect(e.exitCode).toBe(2);
    expect(e.message).toContain(join(dir, 'missing.yaml'));
    expect(e.message).toContain('--config');
    const fromEnv = errorOf(() => findConfigFile(undefined, { MIGRATE_CONFIG: 'nope.yaml' }, dir));
    expect(fromEnv.message).toContain('MIGRATE_CONFIG');
  });
  it('commands that need a file say how to get one', () => {
    const e = errorOf(() => loadConfig({ env: {}, cwd: sub, required: true }));
    expect(e.code).toBe('config_not_found');
    expect(e.hint).toContain('migrate init');
  });
});

describe('validation with positions', () => {
  it('applies defaults to rules', () => {
    const { config } = parseConfig('version: 1\nid: demo\nrules:\n  - name: app\n    from: /app/\n    to: app/\n  - name: k8s\n    from: /registry/\n    action: keep\n', 'm.yaml');
    expect(config.rules).toEqual([
      { name: 'app', from: '/app/', to: 'app/', action: 'copy', keys: 'reject', leases: 'session' },
      { name: 'k8s', from: '/registry/', to: '/registry/', action: 'keep', keys: 'reject', leases: 'session' },
    ]);
    expect(config.defaults).toEqual({ keys: 'reject', leases: 'session', unmapped: 'skip' });
  });

  it.each([
    ['bad YAML', 'version: 1\nid: [demo\n', /^m\.yaml:\d+:\d+: not valid YAML/],
    ['wrong type', 'version: 1\nid: demo\ntarget:\n  limits:\n    txnMaxOps: many\n', /^m\.yaml:5:16: target\.limits\.txnMaxOps: expected an integer ≥ 2 and ≤ 4096, got the string "many"/],
    ['unknown field', 'version: 1\nid: demo\nsource:\n  endpoint: http://x\n', /^m\.yaml:4:3: source\.endpoint: unknown field "endpoint"; allowed fields here: endpoints, tls, auth/],
    ['unsupported version', 'version: 2\nid: demo\n', /^m\.yaml:1:10: version: 2 is out of range; expected 1$/],
    ['missing id', 'version: 1\n', /^m\.yaml:1:1: missing required field "id"/],
    ['enum value', 'version: 1\nid: demo\ndefaults:\n  leases: forever\n', /^m\.yaml:4:11: defaults\.leases: "forever" is not allowed; allowed values: session, persist, skip/],
    ['missing from', 'version: 1\nid: demo\nrules:\n  - name: app\n    to: app/\n', /^m\.yaml:4:5: rules\[0\]: missing required field "from"/],
    ['state prefix without slash', 'version: 1\nid: demo\nstate:\n  prefix: _m\n', /^m\.yaml:4:11: state\.prefix: "_m" must end with "\/"/],
    ['duplicate key', 'version: 1\nid: demo\nid: again\n', /^m\.yaml:3:1: not valid YAML: Map keys must be unique/],
    ['empty file', '', /^m\.yaml: the file is empty/],
  ])('%s → file:line:column message, exit 2', (_name, text, pattern) => {
    const e = errorOf(() => parseConfig(text, 'm.yaml'));
    expect(e.exitCode).toBe(2);
    expect(e.code).toBe('config_invalid');
    expect(e.message).toMatch(pattern);
  });

  it('a TTL check shorter than 1 s is refused at its line: Consul refused 0 only at the first registration, after copy had written its state', () => {
    const yaml = (ttl: string) => `version: 1\nid: demo\nrules:\n  - name: web\n    from: /svc/\n    action: service\n    service: { check: { ttl: ${ttl} } }\n`;
    for (const ttl of ['0s', '00m', '0ms', '1ms', '999ms']) {
      const e = errorOf(() => parseConfig(yaml(ttl), 'm.yaml'));
      expect(e.code, ttl).toBe('config_invalid');
      expect(e.message, ttl).toMatch(/^m\.yaml:7:.*at least 1s/);
    }
    for (const [ttl, seconds] of [['1s', 1], ['1000ms', 1], ['10s', 10], ['2m', 120]] as const) {
      expect(parseConfig(yaml(ttl), 'm.yaml').config.rules[0]!.service!.check.ttlSeconds, ttl).toBe(seconds);
    }
  });

  it('refuses inline secrets and says where they go instead', () => {
    const token = errorOf(() => parseConfig('version: 1\nid: demo\ntarget:\n  token: s3cr3t-token\n', 'm.yaml'));
    expect(token.message).toMatch(/^m\.yaml:4:3: target\.token: unknown field "token"/);
    expect(token.hint).toMatch(/environment variable or a file/);
    expect(token.message).not.toContain('s3cr3t-token');
    const password = errorOf(() => parseConfig('version: 1\nid: demo\nsource:\n  auth:\n    password: hunter22\n', 'm.yaml'));
    expect(password.hint).toMatch(/environment variable or a file/);
    expect(password.message).not.toContain('hunter22');
    // etcdctl's ETCDCTL_USER may be `user:password`; the file's user may not (and the error does not repeat it).
    const inUser = errorOf(() => parseConfig('version: 1\nid: demo\nsource:\n  auth:\n    user: "migrator:hunter23"\n', 'm.yaml'));
    expect(inUser.message).toMatch(/^m\.yaml:5:11: source\.auth\.user: the value is not a user name without ":" \(what follows it would be taken as the password\)\. Secrets are never written in migration\.yaml/);
    expect(inUser.message).not.toContain('hunter23');
  });

  it('never shows the content of a file that is not a migration.yaml (a token or a key given to --config by mistake)', () => {
    const files = {
      token: '6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8\n',
      pem: '-----BEGIN PRIVATE KEY-----\nMIIEvSECRETSECRET\n-----END PRIVATE KEY-----\n',
      shadow: 'root:*:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n',
      json: '{"Token": "6f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8"}\n',
    };
    for (const [name, text] of Object.entries(files)) {
      const error = errorOf(() => parseConfig(text, `${name}.txt`));
      expect(error.code, name).toBe('config_invalid');
      expect(error.message, name).toMatch(new RegExp(`^${name}\\.txt`));
      for (const secret of ['6f1a2b3c', 'SECRET', '20228', 'BEGIN']) expect(error.message, name).not.toContain(secret);
    }
    expect(errorOf(() => parseConfig(files.token, 'token.txt')).message).toMatch(/expected a mapping, got text of 36 characters \(not shown: is this a migration\.yaml\?\)/);
    // A field name a migration.yaml could hold is still shown.
    expect(errorOf(() => parseConfig('version: 1\nid: demo\ncolour: red\n', 'm.yaml')).message).toMatch(/unknown field "colour"/);
  });
});
