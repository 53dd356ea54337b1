import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { planAcl, policyName, rangeCovered, renderEtcdCommands, renderPolicyHcl, serviceNames, shellQuote } from './acl.js';
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

  describe('service rules', () => {
    const grantsOf = (plan: ReturnType<typeof planAcl>, name: string) => plan.consul.policies.find((p) => p.name === name)!.grants.map((g) => [g.resource, g.name, g.policy]);

    it('a name template that starts with a key segment: the migrator writes every service and reads the node; the verifier and the rule\'s applications read them', () => {
      const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n  - { name: svc, from: /services/, action: service }\n');
      const plan = planAcl(config, mapping);
      expect(grantsOf(plan, 'migrate-demo-migrator').slice(-2)).toEqual([['service_prefix', '', 'write'], ['node_prefix', '', 'read']]);
      expect(grantsOf(plan, 'migrate-demo-verifier').slice(-2)).toEqual([['service_prefix', '', 'read'], ['node_prefix', '', 'read']]);
      // Discovery only: no KV prefix, no phase document (the Node client follows copy rules), whatever --app-access says.
      expect(grantsOf(planAcl(config, mapping, { appAccess: 'write' }), 'migrate-demo-app-svc')).toEqual([['service_prefix', '', 'read'], ['node_prefix', '', 'read']]);
      expect(plan.notes.join('\n')).toContain('service_prefix ""');
      expect(plan.notes.join('\n')).toContain('acl.tokens.default');
      expect(renderPolicyHcl(plan.consul.policies[0]!, { comments: false })).toContain('service_prefix "" {\n  policy = "write"\n}\nnode_prefix "" {\n  policy = "read"\n}\n');
    });

    it('a fixed text before the first segment bounds the names; a template without segments is one service; rules that share a scope share a grant', () => {
      expect(serviceNames({ service: { name: 'legacy-{1}' } })).toEqual({ resource: 'service_prefix', name: 'legacy-' });
      expect(serviceNames({ service: { name: 'web' } })).toEqual({ resource: 'service', name: 'web' });
      expect(serviceNames({ service: { name: '{-1}-svc' } })).toEqual({ resource: 'service_prefix', name: '' });
      const { config, mapping } = load([
        '  - { name: legacy, from: /legacy/, action: service, service: { name: "legacy-{1}" } }',
        '  - { name: old, from: /old/, action: service, service: { name: "legacy-{2}" } }',
        '  - { name: web, from: /web/, action: service, service: { name: web, id: "web-{1}" } }',
        '',
      ].join('\n'));
      const plan = planAcl(config, mapping, { consulNode: 'node-1' });
      const migrator = plan.consul.policies[0]!;
      expect(migrator.grants.filter((g) => g.resource.startsWith('service') || g.resource.startsWith('node')).map((g) => [g.resource, g.name, g.policy])).toEqual([
        ['service_prefix', 'legacy-', 'write'], ['service', 'web', 'write'], ['node', 'node-1', 'read'],
      ]);
      expect(migrator.grants.find((g) => g.name === 'legacy-')!.why).toMatch(/^rules legacy, old /);
      expect(grantsOf(plan, 'migrate-demo-app-web')).toEqual([['service', 'web', 'read'], ['node', 'node-1', 'read']]);
      expect(plan.notes.join('\n')).not.toContain('service_prefix ""');
      // No copy rule: no KV grant but the state prefix.
      expect(migrator.grants.filter((g) => g.resource === 'key_prefix').map((g) => g.name)).toEqual(['_migrate/demo/']);
    });

    it('the etcd role reads the service rules and the dual-run\'s one watch spans them with the copy rules; only copy rules are written after cutover', () => {
      const { config, mapping } = load('  - { name: app, from: /app/, to: app/ }\n  - { name: svc, from: /services/, action: service }\n');
      const plan = planAcl(config, mapping);
      expect(plan.etcd.permissions.map((p) => [p.type, p.key.toString(), p.rangeEnd.toString(), p.when, p.rules.join(',')])).toEqual([
        ['read', '/app/', '/app0', 'always', 'app'],
        ['read', '/services/', '/services0', 'always', 'svc'],
        ['read', '/app/', '/services0', 'always', 'app,svc'],
        ['readwrite', '/app/', '/app0', 'cutover', 'app'],
      ]);
      const only = load('  - { name: svc, from: /services/, action: service }\n');
      expect(renderEtcdCommands(planAcl(only.config, only.mapping))).toMatchObject({ always: ["etcdctl role grant-permission --prefix=true migrate-demo read '/services/'"], cutover: [] });
    });

    it('--format json carries the service and node rules in each policy\'s structured form', () => {
      const { config, mapping } = load('  - { name: svc, from: /services/, action: service, service: { name: "svc-{1}" } }\n');
      const doc = JSON.parse(renderAcl(planAcl(config, mapping), 'json'));
      expect(doc.consul.policies.map((p: { name: string }) => p.name)).toEqual(['migrate-demo-migrator', 'migrate-demo-verifier', 'migrate-demo-app-svc']);
      expect(doc.consul.policies[0].structured).toMatchObject({ service_prefix: { 'svc-': { policy: 'write' } }, node_prefix: { '': { policy: 'read' } } });
      expect(doc.consul.policies[2]).toMatchObject({ role: 'application', rule: 'svc', structured: { service_prefix: { 'svc-': { policy: 'read' } }, node_prefix: { '': { policy: 'read' } } } });
    });
  });
});
