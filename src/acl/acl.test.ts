import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { planAcl, policyName, rangeCovered, renderEtcdCommands, renderPolicyHcl, shellQuote } from './acl.js';
import { renderAcl } from './render.js';
import { checkHeartbeatKey } from '../dualrun/lag-heartbeat.js';

const b = (s: string) => Buffer.from(s);
const load = (rules: string) => parseConfig(`version: 1\nid: demo\nrules:\n${rules}`, 'migration.yaml');

describe('planAcl', () => {
  it('grants the migrator write on every copy target and the state prefix, sessions and agent read; apps get their prefix and phase key', () => {
    const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n  - { name: k8s, from: /registry/, action: keep }\n');
    const plan = planAcl(config, mapping, { appAccess: 'read' });
    expect(plan.consul.policies.map((p) => p.name)).toEqual(['migrate-demo-migrator', 'migrate-demo-verifier', 'migrate-demo-app-app']);
    expect(renderPolicyHcl(plan.consul.policies[0]!, { comments: false })).toBe([
      'key_prefix "app/" {', '  policy = "write"', '}',
      'key_prefix "/app/" {', '  policy = "read"', '}',
      'key_prefix "_migrate/demo/" {', '  policy = "write"', '}',
      'session_prefix "" {', '  policy = "write"', '}',
      'agent_prefix "" {', '  policy = "read"', '}', '',
    ].join('\n'));
    expect(plan.consul.policies[2]!.grants.map((g) => [g.resource, g.name, g.policy])).toEqual([['key_prefix', 'app/', 'list'], ['key', '_migrate/demo/rules/app', 'read']]);
    expect(plan.consul.policies[1]!.grants.map((g) => [g.resource, g.name, g.policy])).toEqual([
      ['key_prefix', 'app/', 'list'], ['key_prefix', '/app/', 'read'], ['key_prefix', '_migrate/demo/', 'read'], ['key_prefix', '_migrate/demo/verify/', 'write'], ['session_prefix', '', 'read'], ['agent_prefix', '', 'read'],
    ]);
    // One rule: no extra watch range; write on etcd only from cutover on.
    expect(plan.etcd.permissions.map((p) => [p.type, p.key.toString(), p.rangeEnd.toString(), p.when])).toEqual([['read', '/app/', '/app0', 'always'], ['readwrite', '/app/', '/app0', 'cutover']]);
  });

  it('--consul-node narrows sessions and agent read to that node', () => {
    const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n');
    const grants = planAcl(config, mapping, { consulNode: 'node-1' }).consul.policies[0]!.grants;
    expect(grants.filter((g) => !g.resource.startsWith('key')).map((g) => [g.resource, g.name])).toEqual([['session', 'node-1'], ['agent', 'node-1']]);
  });

  it('adds the dual-run watch range only when the rule ranges leave a gap', () => {
    const gap = load('  - { name: a, from: /a/, to: a/ }\n  - { name: c, from: /c/, to: c/ }\n');
    expect(planAcl(gap.config, gap.mapping).etcd.permissions.filter((p) => p.when === 'always' && !p.prefix).map((p) => [p.key.toString(), p.rangeEnd.toString()])).toEqual([['/a/', '/c0']]);
    const nested = load('  - { name: a, from: /a/, to: a/ }\n  - { name: ab, from: /a/b/, to: ab/ }\n');
    expect(planAcl(nested.config, nested.mapping).etcd.permissions.filter((p) => !p.prefix)).toEqual([]);
  });

  it('policy names keep to Consul\'s alphabet; etcdctl arguments are shell-quoted', () => {
    expect(policyName('migrate', 'my.id', 'app', 'svc.cfg')).toBe('migrate-my-id-app-svc-cfg');
    expect(shellQuote(b("/it's/"))).toBe(`'/it'\\''s/'`);
    expect(shellQuote(Buffer.from([0x2f, 0xff]))).toBe(`"$(printf '\\057\\377')"`);
    expect(rangeCovered(b('a'), b('c'), [{ key: b('a'), rangeEnd: b('b') }, { key: b('b'), rangeEnd: b('c') }])).toBe(true);
    expect(rangeCovered(b('a'), b('c'), [{ key: b('a'), rangeEnd: b('b') }, { key: b('b0'), rangeEnd: b('c') }])).toBe(false);
    const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n');
    expect(renderEtcdCommands(planAcl(config, mapping)).always).toEqual(["etcdctl role grant-permission --prefix=true migrate-demo read '/app/'"]);
  });

  it('--format json is one document with version, each policy\'s HCL rules and structured form', () => {
    const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n');
    const doc = JSON.parse(renderAcl(planAcl(config, mapping), 'json'));
    expect(doc).toMatchObject({ version: 1, command: 'acl', status: 'ok', consul: { policies: [{ name: 'migrate-demo-migrator', structured: { session_prefix: { '': { policy: 'write' } } } }, { name: 'migrate-demo-verifier' }, { name: 'migrate-demo-app-app' }] } });
    expect(doc.consul.policies[0].rules).toContain('key_prefix "_migrate/demo/" {');
    expect(doc.etcd.permissions[0]).toMatchObject({ type: 'read', key: '/app/', rangeEnd: '/app0', prefix: true, when: 'always' });
  });

  it('--heartbeat-key adds write on that one key from the start; a key inside a copy rule is refused (exit 2)', () => {
    const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n');
    const plan = planAcl(config, mapping, { heartbeatKey: checkHeartbeatKey(mapping, '/_migrate/heartbeat') });
    expect(renderEtcdCommands(plan).always).toEqual([
      "etcdctl role grant-permission --prefix=true migrate-demo read '/app/'",
      "etcdctl role grant-permission migrate-demo readwrite '/_migrate/heartbeat'",
    ]);
    expect(renderAcl(plan, 'text')).toContain('dualrun --heartbeat-key');
    expect(() => checkHeartbeatKey(mapping, '/app/heartbeat')).toThrow(expect.objectContaining({ code: 'heartbeat_key_in_rule', exitCode: 2 }));
  });
});
