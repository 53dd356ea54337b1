import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { planAcl, policyCreateCommand, policyName, rangeCovered, renderEtcdCommands, renderPolicyHcl, serviceNames, shellQuote } from './acl.js';
import { renderAcl, renderAclFiles } from './render.js';
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
      'key_prefix "_migrate/" {', '  policy = "read"', '}',
      'session_prefix "" {', '  policy = "write"', '}',
      'agent_prefix "" {', '  policy = "read"', '}', '',
    ].join('\n'));
    expect(plan.consul.policies[2]!.grants.map((g) => [g.resource, g.name, g.policy])).toEqual([['key_prefix', 'app/', 'list'], ['key', '_migrate/demo/rules/app', 'read'], ['key', '_migrate/demo/owners', 'read']]);
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

  it('names the keep rules whose keys the watch range lets the migrator read (between the rules, not nested in one, not outside)', () => {
    const { config, mapping } = load([
      '  - { name: apps, from: /apps/, to: apps/ }',
      '  - { name: k8s, from: /registry/, action: keep }',
      '  - { name: secret, from: /apps/secret/, action: keep }',
      '  - { name: zz, from: /zz/, action: keep }',
      '  - { name: svc, from: /services/, to: services/ }',
      '',
    ].join('\n'));
    const watch = planAcl(config, mapping).etcd.permissions.find((p) => !p.prefix)!;
    expect([watch.key.toString(), watch.rangeEnd.toString()]).toEqual(['/apps/', '/services0']);
    expect(watch.why).toContain('the migrator can also read the keys of keep rule k8s (/registry/)');
    expect(watch.why).not.toMatch(/secret|zz/);
    const plain = load('  - { name: a, from: /a/, to: a/ }\n  - { name: c, from: /c/, to: c/ }\n  - { name: z, from: /z/, action: keep }\n');
    expect(planAcl(plain.config, plain.mapping).etcd.permissions.find((p) => !p.prefix)!.why).not.toContain('keep rule');
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

  describe('several datacenters (issue 11)', () => {
    const grantsOf = (plan: ReturnType<typeof planAcl>, name: string) => plan.consul.policies.find((p) => p.name === name)!.grants.map((g) => [g.resource, g.name, g.policy]);
    const multi = () => load([
      '  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }',
      '  - { name: local, from: /local/, to: local/ }',
      '  - { name: svc, from: /services/, action: service, service: { name: web } }',
      '  - { name: k8s, from: /registry/, action: keep }',
      '',
    ].join('\n'));

    it('one migrator and one verifier policy per datacenter, each valid only there; application policies are valid where their rule is copied', () => {
      const { config, mapping } = multi();
      const plan = planAcl(config, mapping, { primaryDatacenter: 'dc1' });
      expect(plan.consul.policies.map((p) => [p.name, p.datacenters, p.primary])).toEqual([
        ['migrate-demo-migrator-dc1', ['dc1'], true],
        ['migrate-demo-migrator-dc2', ['dc2'], false],
        ['migrate-demo-verifier-dc1', ['dc1'], true],
        ['migrate-demo-verifier-dc2', ['dc2'], false],
        ['migrate-demo-app-app', ['dc1', 'dc2'], true],
        ['migrate-demo-app-local', ['dc1'], true],
        ['migrate-demo-app-svc', ['dc1'], true],
      ]);
      // The primary: its rules, the state, sessions on the agent's node, agent read, the service rules.
      expect(grantsOf(plan, 'migrate-demo-migrator-dc1')).toEqual([
        ['key_prefix', 'app/', 'write'], ['key_prefix', 'local/', 'write'], ['key_prefix', '/app/', 'read'], ['key_prefix', '/local/', 'read'], ['key_prefix', '_migrate/demo/', 'write'], ['key_prefix', '_migrate/', 'read'],
        ['session_prefix', '', 'write'], ['agent_prefix', '', 'read'], ['service', 'web', 'write'], ['node_prefix', '', 'read'],
      ]);
      // Another datacenter: its rules and its own state; sessions on one of its server nodes, found in its catalog (service "consul", node read).
      expect(grantsOf(plan, 'migrate-demo-migrator-dc2')).toEqual([
        ['key_prefix', 'app/', 'write'], ['key_prefix', '/app/', 'read'], ['key_prefix', '_migrate/demo/', 'write'], ['key_prefix', '_migrate/', 'read'],
        ['session_prefix', '', 'write'], ['service', 'consul', 'read'], ['node_prefix', '', 'read'],
      ]);
      const dc2 = plan.consul.policies.find((p) => p.name === 'migrate-demo-migrator-dc2')!;
      expect(dc2.grants.find((g) => g.resource === 'session_prefix')!.why).toMatch(/server node of that datacenter, which the tool picks from its catalog at run time \(\/v1\/catalog\/service\/consul\?dc=dc2\); its name is not known offline/);
      expect(grantsOf(plan, 'migrate-demo-verifier-dc2')).toEqual([
        ['key_prefix', 'app/', 'list'], ['key_prefix', '/app/', 'read'], ['key_prefix', '_migrate/demo/', 'read'], ['key_prefix', '_migrate/demo/verify/', 'write'],
        ['session_prefix', '', 'read'], ['service', 'consul', 'read'], ['node_prefix', '', 'read'],
      ]);
      // --consul-node narrows the primary's sessions only: another datacenter's sessions are on its own servers.
      const narrowed = planAcl(config, mapping, { primaryDatacenter: 'dc1', consulNode: 'node-1' });
      expect(grantsOf(narrowed, 'migrate-demo-migrator-dc1').filter(([r]) => r!.startsWith('session') || r!.startsWith('agent'))).toEqual([['session', 'node-1', 'write'], ['agent', 'node-1', 'read']]);
      expect(grantsOf(narrowed, 'migrate-demo-migrator-dc2').filter(([r]) => r!.startsWith('session'))).toEqual([['session_prefix', '', 'write']]);
      // The etcd role does not depend on the datacenters.
      expect(renderEtcdCommands(plan)).toEqual(renderEtcdCommands(planAcl(config, load('  - { name: app, from: /app/, to: app/ }\n  - { name: local, from: /local/, to: local/ }\n  - { name: svc, from: /services/, action: service, service: { name: web } }\n').mapping)));
    });

    it('renders -valid-datacenter in the create commands and HCL comments, global tokens in the notes, and datacenters in JSON', () => {
      const { config, mapping } = multi();
      const plan = planAcl(config, mapping, { primaryDatacenter: 'dc1' });
      const app = plan.consul.policies.find((p) => p.name === 'migrate-demo-app-app')!;
      expect(policyCreateCommand(app)).toBe('consul acl policy create -name migrate-demo-app-app -rules @migrate-demo-app-app.hcl -valid-datacenter dc1 -valid-datacenter dc2');
      expect(renderPolicyHcl(app, { comments: true })).toContain('# valid only in datacenters dc1, dc2: consul acl policy create -name migrate-demo-app-app -rules @migrate-demo-app-app.hcl -valid-datacenter dc1 -valid-datacenter dc2\n');
      // The rules themselves carry no datacenter: Datacenters is a field of the policy.
      expect(renderPolicyHcl(app, { comments: false })).not.toContain('dc');
      const text = renderAcl(plan, 'text');
      expect(text).toContain('#   consul acl policy create -name migrate-demo-migrator-dc2 -rules @migrate-demo-migrator-dc2.hcl -valid-datacenter dc2\n');
      expect(text).toContain('# The migrator\'s token: consul acl token create -description "migrate demo" -policy-name migrate-demo-migrator-dc1 -policy-name migrate-demo-migrator-dc2\n');
      expect(text).toContain('-policy-name migrate-demo-verifier-dc1 -policy-name migrate-demo-verifier-dc2');
      expect(text).toContain('Tokens must be global to be valid in every datacenter: create them in the ACL primary datacenter (Consul\'s primary_datacenter) without -local');
      expect(text).toContain('In dc2 the tool\'s sessions name a server node of that datacenter');
      const doc = JSON.parse(renderAcl(plan, 'json'));
      expect(doc.consul.policies[1]).toMatchObject({ name: 'migrate-demo-migrator-dc2', datacenters: ['dc2'], primary: false, structured: { service: { consul: { policy: 'read' } } } });
      expect(doc.consul.policies[4]).toMatchObject({ name: 'migrate-demo-app-app', datacenters: ['dc1', 'dc2'] });
      // --out-dir: each HCL file says where its policy is valid.
      const dir = renderAclFiles(plan, 'hcl');
      expect(dir.find((f) => f.name === 'migrate-demo-verifier-dc2.hcl')!.content).toMatch(/^# migrate-demo-verifier-dc2: .*\n# valid only in datacenter dc2: consul acl policy create .* -valid-datacenter dc2\n/);
      // Without datacenters: in the rules, the policies have no datacenters at all.
      const single = load('  - { name: app, from: /app/, to: app/ }\n');
      const plain = planAcl(single.config, single.mapping, { primaryDatacenter: 'dc1' });
      expect(plain.consul.policies.every((p) => p.datacenters === undefined)).toBe(true);
      expect(JSON.parse(renderAcl(plain, 'json')).consul.policies[0]).not.toHaveProperty('datacenters');
      expect(renderAcl(plain, 'text')).not.toContain('valid');
    });

    it('an unnamed primary: its policies are not limited to a datacenter (null, primary: true), and the notes say so', () => {
      const { config, mapping } = multi();
      const plan = planAcl(config, mapping);
      expect(plan.consul.policies.map((p) => [p.name, p.datacenters, p.primary])).toEqual([
        ['migrate-demo-migrator-primary', null, true],
        ['migrate-demo-migrator-dc1', ['dc1'], false],
        ['migrate-demo-migrator-dc2', ['dc2'], false],
        ['migrate-demo-verifier-primary', null, true],
        ['migrate-demo-verifier-dc1', ['dc1'], false],
        ['migrate-demo-verifier-dc2', ['dc2'], false],
        ['migrate-demo-app-app', ['dc1', 'dc2'], false],
        ['migrate-demo-app-local', null, true],
        ['migrate-demo-app-svc', null, true],
      ]);
      expect(grantsOf(plan, 'migrate-demo-migrator-primary').map(([r, n]) => `${r} ${n}`)).toEqual(['key_prefix local/', 'key_prefix /local/', 'key_prefix _migrate/demo/', 'key_prefix _migrate/', 'session_prefix ', 'agent_prefix ', 'service web', 'node_prefix ']);
      expect(policyCreateCommand(plan.consul.policies[0]!)).toBe('consul acl policy create -name migrate-demo-migrator-primary -rules @migrate-demo-migrator-primary.hcl');
      expect(renderPolicyHcl(plan.consul.policies[0]!, { comments: true })).toContain('# valid in every datacenter: it is the primary datacenter\'s, whose name is not known here (set target.datacenter in migration.yaml to limit it)\n');
      expect(plan.notes.join('\n')).toContain('The primary datacenter is not named (set target.datacenter in migration.yaml)');
      expect(JSON.parse(renderAcl(plan, 'json')).consul.policies[0]).toMatchObject({ datacenters: null, primary: true });
    });

    it('a primary nothing is copied to still gets agent read, the one thing every run asks there', () => {
      const { config, mapping } = load('  - { name: app, from: /app/, to: app/, datacenters: [dc2, dc3] }\n');
      const plan = planAcl(config, mapping, { primaryDatacenter: 'dc1' });
      expect(plan.consul.policies.map((p) => [p.name, p.datacenters])).toEqual([
        ['migrate-demo-migrator-dc2', ['dc2']], ['migrate-demo-migrator-dc3', ['dc3']], ['migrate-demo-migrator-dc1', ['dc1']],
        ['migrate-demo-verifier-dc2', ['dc2']], ['migrate-demo-verifier-dc3', ['dc3']], ['migrate-demo-verifier-dc1', ['dc1']],
        ['migrate-demo-app-app', ['dc2', 'dc3']],
      ]);
      expect(grantsOf(plan, 'migrate-demo-migrator-dc1')).toEqual([['agent_prefix', '', 'read']]);
      expect(grantsOf(plan, 'migrate-demo-verifier-dc1')).toEqual([['agent_prefix', '', 'read']]);
      expect(plan.consul.policies.filter((p) => p.role !== 'application').every((p) => p.grants.filter((g) => g.resource.startsWith('agent')).length === (p.datacenters![0] === 'dc1' ? 1 : 0))).toBe(true);
    });
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
      // No copy rule: no KV grant but the state prefix (its own to write, the other migrations' to read).
      expect(migrator.grants.filter((g) => g.resource === 'key_prefix').map((g) => g.name)).toEqual(['_migrate/demo/', '_migrate/']);
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
