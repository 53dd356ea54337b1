import type { MigrationConfig, ServiceSpec } from '../config/load.js';
import { datacenterNames, datacentersOf, namesDatacenters } from '../mapping/datacenters.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { keepRulesInWatchSpan, watchSpan } from '../mapping/watch-span.js';
import { ownersKey } from '../cutover/phase.js';
import { statePaths } from '../state/state.js';
import { prefixEnd } from '../stores/key-range.js';

/**
 * The least privilege the migration needs, derived from migration.yaml alone
 * (pure: `migrate acl` contacts no server). What the tool calls decides every
 * line; a rule here that the code does not need is a bug, and so is a call
 * the code makes that no rule here allows (test/acl.test.ts runs every
 * command with only the migrator's policy).
 */

/** Consul's access levels; `list` (KV rules only) is read plus recursive reads (needed when `acl.enable_key_list_policy` is on). */
export type ConsulAccess = 'read' | 'list' | 'write';

/** The resources of Consul's ACL rule language (1.4+ syntax, same on 1.13 and 1.22) that the tool uses. */
export type ConsulResource = 'key_prefix' | 'key' | 'session_prefix' | 'session' | 'agent_prefix' | 'agent' | 'service_prefix' | 'service' | 'node_prefix' | 'node';

/** One rule of a Consul policy, with the reason it is there (printed as an HCL comment). */
export interface ConsulRuleGrant {
  resource: ConsulResource;
  /** The key, prefix, service or node name the rule applies to (`""` with a `_prefix` resource: all). */
  name: string;
  policy: ConsulAccess;
  why: string;
}

export interface ConsulPolicyPlan {
  /** A valid Consul policy name (`[A-Za-z0-9_-]`, at most 128 characters). */
  name: string;
  description: string;
  /** `migrator` for the tool's own token; `verifier` for read-only checks (verify in CI); `application` for one rule's applications. */
  role: 'migrator' | 'verifier' | 'application';
  /** The rule an application policy is for. */
  rule?: string;
  /**
   * Only when the configuration names datacenters (issue 11): the policy's
   * `Datacenters`, where Consul applies it (`-valid-datacenter`); null when it
   * is for the primary datacenter and the primary's name is not known offline
   * (then it is valid in every datacenter).
   */
  datacenters?: string[] | null;
  /** With `datacenters`: the policy is the primary datacenter's (the one rules without `datacenters:` go to). */
  primary?: boolean;
  grants: ConsulRuleGrant[];
}

/** One etcd role permission: `[key, rangeEnd)` (etcd's own representation). */
export interface EtcdPermissionPlan {
  type: 'read' | 'readwrite';
  key: Buffer;
  rangeEnd: Buffer;
  /** True when `[key, rangeEnd)` is exactly the prefix `key` (etcdctl `--prefix=true`). */
  prefix: boolean;
  /** `always`: from the first audit on; `cutover`: grant before the first `migrate cutover` (the reverse mirror writes etcd). */
  when: 'always' | 'cutover';
  rules: string[];
  why: string;
}

export interface AclPlan {
  migration: string;
  stateRoot: string;
  consul: { policies: ConsulPolicyPlan[] };
  etcd: { role: string; user: string; permissions: EtcdPermissionPlan[] };
  /** What the plan deliberately leaves out (printed as comments and in JSON). */
  notes: string[];
}

export interface AclOptions {
  /** What applications of a copy rule may do under its target prefix (default `write`); a service rule's applications only read. */
  appAccess?: 'read' | 'write';
  /** The Consul agent's node name, to narrow the session, agent and node rules from "every node" to that one. */
  consulNode?: string;
  /** The etcd key `migrate dualrun --heartbeat-key` writes (checked outside every copy rule): the role may write it. */
  heartbeatKey?: Buffer;
  /**
   * The primary datacenter's name when known offline (`target.datacenter`
   * of migration.yaml): with `datacenters:` in the rules, the datacenter
   * whose policies take the rules without `datacenters:`, the agent read and
   * the service rules.
   */
  primaryDatacenter?: string;
}

const POLICY_NAME_MAX = 128;

/** A Consul policy name from free text: Consul allows `[A-Za-z0-9_-]` up to 128 characters. */
export function policyName(...parts: string[]): string {
  return parts.join('-').replace(/[^A-Za-z0-9_-]/g, '-').slice(0, POLICY_NAME_MAX);
}

/** Whether `[start, end)` lies inside the union of `ranges` (an empty `end` is the end of the keyspace). */
export function rangeCovered(start: Buffer, end: Buffer, ranges: readonly { key: Buffer; rangeEnd: Buffer }[]): boolean {
  const sorted = [...ranges].sort((a, b) => Buffer.compare(a.key, b.key));
  let reached = start;
  for (const r of sorted) {
    if (Buffer.compare(r.key, reached) > 0) break;
    if (r.rangeEnd.length === 0) return true;
    if (Buffer.compare(r.rangeEnd, reached) > 0) reached = r.rangeEnd;
    if (end.length > 0 && Buffer.compare(reached, end) >= 0) return true;
  }
  return false;
}

/**
 * The service names a `service` rule can register: its name template up to
 * the first key segment (`{1}`, `{-1}`), which every name it makes begins
 * with; a template without segments is one name. A template that starts with
 * a segment is bounded by nothing (`""`): the names come from etcd keys.
 *
 * A per-rule list of the expected names would narrow that, but it would have
 * to be kept in step with etcd (a new service registering under the rule
 * would be refused by Consul until someone edits the list), so it is not
 * offered; put a fixed text before the segment (`name: "legacy-{1}"`) to
 * bound the names instead.
 */
export function serviceNames(rule: { service?: Pick<ServiceSpec, 'name'> }): { resource: 'service' | 'service_prefix'; name: string } {
  const template = rule.service?.name ?? '';
  const segment = template.search(/\{-?[1-9][0-9]*\}/);
  return segment < 0 ? { resource: 'service', name: template } : { resource: 'service_prefix', name: template.slice(0, segment) };
}

/** One grant per service name scope, naming every service rule that shares it. */
function serviceScopes(rules: readonly CompiledRule[]): { resource: 'service' | 'service_prefix'; name: string; rules: string[] }[] {
  const scopes = new Map<string, { resource: 'service' | 'service_prefix'; name: string; rules: string[] }>();
  for (const rule of rules) {
    const names = serviceNames(rule);
    const key = `${names.resource}\0${names.name}`;
    const scope = scopes.get(key) ?? { ...names, rules: [] };
    scope.rules.push(rule.name);
    scopes.set(key, scope);
  }
  return [...scopes.values()];
}

function describeServiceScope(scope: { resource: 'service' | 'service_prefix'; name: string; rules: string[] }): string {
  const rules = `${scope.rules.length > 1 ? 'rules' : 'rule'} ${scope.rules.join(', ')}`;
  if (scope.resource === 'service') return `${rules} (service "${scope.name}")`;
  return scope.name === '' ? `${rules} (service names from etcd key segments: no prefix bounds them)` : `${rules} (service names starting "${scope.name}")`;
}

/** Where a set of Consul policies applies: the only datacenter, the primary of several, or another one. */
type Place = { kind: 'single' } | { kind: 'primary' | 'other'; datacenter: string | null };

/** The migrator's and the verifier's grants in one datacenter (pure). */
function toolGrants(config: MigrationConfig, copyRules: readonly CompiledRule[], services: ReturnType<typeof serviceScopes>, node: string | undefined, place: Place): { migrator: ConsulRuleGrant[]; verifier: ConsulRuleGrant[] } {
  const paths = statePaths(config.state.prefix, config.id);
  // The agent's node, the agent's endpoints and the service rules' instances are the primary's (the agent the tool talks to).
  const agentSide = place.kind !== 'other';
  const there = place.kind === 'other' ? ` in ${place.datacenter}` : '';
  const migrator: ConsulRuleGrant[] = [];
  for (const rule of copyRules) {
    migrator.push({ resource: 'key_prefix', name: rule.to, policy: 'write', why: `rule ${rule.name}: copy and dual-run write here, verify reads it, the reverse mirror follows it with blocking queries after cutover` });
  }
  for (const rule of copyRules) {
    if (rule.to.startsWith('/')) continue;
    migrator.push({ resource: 'key_prefix', name: `/${rule.to}`, policy: 'read', why: `rule ${rule.name}: verify looks for keys stranded with a leading "/" (only a txn reaches them)` });
  }
  migrator.push({ resource: 'key_prefix', name: paths.root, policy: 'write', why: place.kind === 'single' ? 'the tool\'s state: meta, copy progress, checkpoint, leader lock, sessions, rule phases, verify summary, doctor\'s probe key' : `the tool's state${there || ' in this datacenter'} (each datacenter keeps its own): meta, copy progress, checkpoint, leader lock, sessions, rule phases, verify summary, doctor's probe key` });
  // Longest prefix wins: write stays on this migration's own state, read on the rest.
  migrator.push({ resource: 'key_prefix', name: config.state.prefix, policy: 'read', why: `other migrations' state beside this one${there} (their meta and owners): copy and dualrun refuse a rule that writes where another migration does, cutover one whose etcd keys another migration mirrors back` });
  // Another datacenter's sessions name one of its server nodes, picked from its catalog at run time: its name is not known offline.
  const sessionAnyNode = (policy: ConsulAccess): ConsulRuleGrant => ({ resource: 'session_prefix', name: '', policy, why: `mirrored etcd leases and the dual-run leader lock${there} are sessions on a server node of that datacenter, which the tool picks from its catalog at run time (/v1/catalog/service/consul?dc=${place.kind === 'other' ? place.datacenter : '<dc>'}); its name is not known offline, so the rule names every node, scoped to this datacenter by the policy's Datacenters` });
  migrator.push(!agentSide
    ? sessionAnyNode('write')
    : node
      ? { resource: 'session', name: node, policy: 'write', why: `mirrored etcd leases and the dual-run leader lock are sessions on the agent's node ${node}` }
      : { resource: 'session_prefix', name: '', policy: 'write', why: 'mirrored etcd leases and the dual-run leader lock are sessions on the agent\'s node (pass --consul-node to name it)' });
  const agentRead: ConsulRuleGrant = node
    ? { resource: 'agent', name: node, policy: 'read', why: 'GET /v1/agent/self: the Consul version (the txn op limit) and the datacenter recorded in meta' }
    : { resource: 'agent_prefix', name: '', policy: 'read', why: 'GET /v1/agent/self: the Consul version (the txn op limit) and the datacenter recorded in meta' };
  // The catalog lists a service's instances only to a token that may read both the service and their nodes.
  const serverNodeRead = (reader: string): ConsulRuleGrant[] => [
    { resource: 'service', name: 'consul', policy: 'read', why: `${reader} picks the server node for its sessions${there} from /v1/catalog/service/consul?dc=${place.kind === 'other' ? place.datacenter : '<dc>'}` },
    { resource: 'node_prefix', name: '', policy: 'read', why: `the catalog lists a server of the "consul" service only with node:read on its node; the servers${there} are not known offline` },
  ];
  if (agentSide) migrator.push(agentRead);
  else migrator.push(...serverNodeRead('the tool'));
  // Registering on the agent, deregistering, passing a TTL check and listing the agent's services all check the service name only;
  // the agent then syncs each instance to the catalog with the token that registered it, which needs the same.
  const ownServices = agentSide ? services : [];
  for (const scope of ownServices) {
    migrator.push({ resource: scope.resource, name: scope.name, policy: 'write', why: `${describeServiceScope(scope)}: copy and dual-run register its instances on the agent, pass their TTL checks and deregister strays; verify reads them back` });
  }
  if (ownServices.length > 0) migrator.push(nodeReadGrant('verify', node));

  // CI runs verify on a schedule: reads everything the migrator reads, writes only its summary.
  const verifier: ConsulRuleGrant[] = [
    ...copyRules.map((rule): ConsulRuleGrant => ({ resource: 'key_prefix', name: rule.to, policy: 'list', why: `rule ${rule.name}: verify lists and reads the target keys (list: key listing when acl.enable_key_list_policy is on)` })),
    ...migrator.filter((g) => g.resource === 'key_prefix' && g.policy === 'read' && g.name !== config.state.prefix),
    { resource: 'key_prefix', name: paths.root, policy: 'read', why: `the tool's state${there}: meta, the dual-run checkpoint (the consistent cut), mirrored-lease sessions` },
    { resource: 'key_prefix', name: paths.verifyLast.replace(/last$/, ''), policy: 'write', why: `the verify summary (verify/last)${there} that cutover gates on; --no-record runs need only read` },
    !agentSide
      ? { ...sessionAnyNode('read'), why: `verify compares the sessions of leased keys${there}, on a server node of that datacenter (not known offline)` }
      : node
        ? { resource: 'session', name: node, policy: 'read', why: 'verify compares the sessions of leased keys' }
        : { resource: 'session_prefix', name: '', policy: 'read', why: 'verify compares the sessions of leased keys' },
    ...(agentSide ? [agentRead] : serverNodeRead('verify')),
    ...ownServices.map((scope): ConsulRuleGrant => ({ resource: scope.resource, name: scope.name, policy: 'read', why: `${describeServiceScope(scope)}: verify lists the catalog's services and reads their instances` })),
    ...(ownServices.length > 0 ? [nodeReadGrant('verify', node)] : []),
  ];
  return { migrator, verifier };
}

/** The health and catalog endpoints show an instance only to a token that may also read its node: the agent's node, where the tool registers. */
function nodeReadGrant(reader: string, node: string | undefined): ConsulRuleGrant {
  return node
    ? { resource: 'node', name: node, policy: 'read', why: `${reader} reads the instances through /v1/health/service, which shows an instance only with node:read on its node (${node}, where the tool registers them)` }
    : { resource: 'node_prefix', name: '', policy: 'read', why: `${reader} reads the instances through /v1/health/service, which shows an instance only with node:read on its node (the agent's node, where the tool registers them; pass --consul-node to name it)` };
}

/** The policies and the etcd role the migration needs (pure). */
export function planAcl(config: MigrationConfig, mapping: Mapping, options: AclOptions = {}): AclPlan {
  const paths = statePaths(config.state.prefix, config.id);
  const copyRules = mapping.copyRules;
  const node = options.consulNode;
  const appAccess = options.appAccess ?? 'write';
  const services = serviceScopes(mapping.serviceRules);
  const several = namesDatacenters(config);
  // '' stands for a primary whose name is not known offline ('' is never a datacenter name).
  const primary = options.primaryDatacenter ?? '';
  const datacentersOfRule = (rule: CompiledRule): string[] | null => {
    const dcs = datacentersOf(rule, primary);
    return dcs.includes('') ? null : dcs;
  };

  const policies: ConsulPolicyPlan[] = [];
  if (!several) {
    const { migrator, verifier } = toolGrants(config, copyRules, services, node, { kind: 'single' });
    policies.push({
      name: policyName('migrate', config.id, 'migrator'),
      description: `etcd-consul-migrate: the migrator of migration "${config.id}" (copy, dual-run, verify, cutover)`,
      role: 'migrator',
      grants: migrator,
    }, {
      name: policyName('migrate', config.id, 'verifier'),
      description: `etcd-consul-migrate: read-only checks of migration "${config.id}" (verify in CI, status)`,
      role: 'verifier',
      grants: verifier,
    });
  } else {
    // One migrator and one verifier policy per datacenter, each valid only there (Consul checks a request where it is served).
    const names = datacenterNames(config, primary);
    const suffix = (dc: string) => (dc !== '' ? dc : names.includes('primary') ? 'primary-datacenter' : 'primary');
    for (const role of ['migrator', 'verifier'] as const) {
      for (const dc of names) {
        const place: Place = { kind: dc === primary ? 'primary' : 'other', datacenter: dc === '' ? null : dc };
        const here = copyRules.filter((rule) => datacentersOf(rule, primary).includes(dc));
        const grants = toolGrants(config, here, services, node, place)[role];
        const where = dc === '' ? 'the primary datacenter' : `datacenter ${dc}${dc === primary ? ', the primary' : ''}`;
        policies.push({
          name: policyName('migrate', config.id, role, suffix(dc)),
          description: role === 'migrator'
            ? `etcd-consul-migrate: the migrator of migration "${config.id}" in ${where} (copy, dual-run, verify, cutover)`
            : `etcd-consul-migrate: read-only checks of migration "${config.id}" in ${where} (verify in CI, status)`,
          role,
          datacenters: dc === '' ? null : [dc],
          primary: dc === primary,
          grants,
        });
      }
      if (!names.includes(primary)) {
        // Nothing is written in the primary, but every run asks the agent there for its version.
        const agentRead = toolGrants(config, [], [], node, { kind: 'primary', datacenter: primary || null })[role].filter((g) => g.resource.startsWith('agent'));
        policies.push({
          name: policyName('migrate', config.id, role, suffix(primary)),
          description: `etcd-consul-migrate: the ${role} of migration "${config.id}" in ${primary === '' ? 'the primary datacenter' : `datacenter ${primary}, the primary`}: nothing is copied there, only the agent is read`,
          role,
          datacenters: primary === '' ? null : [primary],
          primary: true,
          grants: agentRead,
        });
      }
    }
  }
  const placement = (dcs: string[] | null): Pick<ConsulPolicyPlan, 'datacenters' | 'primary'> => (several ? { datacenters: dcs, primary: dcs === null || dcs.includes(primary) } : {});
  for (const rule of mapping.rules) {
    if (rule.action === 'copy') {
      policies.push({
        name: policyName('migrate', config.id, 'app', rule.name),
        description: `etcd-consul-migrate: applications of rule "${rule.name}" of migration "${config.id}" (${appAccess})`,
        role: 'application',
        rule: rule.name,
        ...placement(datacentersOfRule(rule)),
        grants: [
          appAccess === 'write'
            ? { resource: 'key_prefix', name: rule.to, policy: 'write', why: `rule ${rule.name}: the application reads and writes its keys in Consul` }
            : { resource: 'key_prefix', name: rule.to, policy: 'list', why: `rule ${rule.name}: the application reads its keys; list also allows the recursive watch the Node client uses when acl.enable_key_list_policy is on` },
          { resource: 'key', name: paths.rule(rule.name), policy: 'read', why: `the rule's phase document: the Node client reads it to know whether etcd or Consul owns rule ${rule.name}` },
          { resource: 'key', name: ownersKey(paths), policy: 'read', why: `the owners document: the Node client reads it when rule ${rule.name}'s phase document is missing (deleted by hand while Consul owns the rule)` },
        ],
      });
    } else if (rule.action === 'service') {
      // Consumers only discover: the tool registers the instances (--app-access does not apply), and the Node client follows copy rules only.
      const names = serviceNames(rule);
      policies.push({
        name: policyName('migrate', config.id, 'app', rule.name),
        description: `etcd-consul-migrate: applications of rule "${rule.name}" of migration "${config.id}" (discovery)`,
        role: 'application',
        rule: rule.name,
        // Instances are registered on the agent, in the primary's catalog.
        ...placement(primary === '' ? null : [primary]),
        grants: [
          { resource: names.resource, name: names.name, policy: 'read', why: `${describeServiceScope({ ...names, rules: [rule.name] })}: the application discovers the instances (/v1/health/service, /v1/catalog/service)` },
          nodeReadGrant('the application', node),
        ],
      });
    }
  }

  // Service rules are read and watched like copy rules (their registrations are etcd keys); only copy rules are written back after a cutover.
  const readRules = mapping.rules.filter((rule) => rule.action === 'copy' || rule.action === 'service');
  const permissions: EtcdPermissionPlan[] = readRules.map((rule) => ({
    type: 'read',
    key: rule.fromBytes,
    rangeEnd: prefixEnd(rule.fromBytes),
    prefix: true,
    when: 'always',
    rules: [rule.name],
    why: rule.action === 'service'
      ? `rule ${rule.name}: audit, plan, copy and verify read its service registrations; the dual-run watches them`
      : `rule ${rule.name}: audit, plan, copy, verify and export read it; the dual-run watches it`,
  }));
  if (readRules.length > 1) {
    // The dual-run keeps one ordered watch over every copy and service rule (DESIGN §3), and etcd checks a watch over its whole interval.
    const { start, end } = watchSpan(mapping)!;
    if (!rangeCovered(start, end, permissions)) {
      const kept = keepRulesInWatchSpan(mapping);
      permissions.push({
        type: 'read',
        key: start,
        rangeEnd: end,
        prefix: false,
        when: 'always',
        rules: readRules.map((r) => r.name),
        why: `the dual-run watches one range from the first rule to the last, so revisions stay in order; etcd checks read over the whole range, gaps between the rules included${kept.length > 0 ? `, so the migrator can also read the keys of keep rule${kept.length > 1 ? 's' : ''} ${kept.map((r) => `${r.name} (${r.from})`).join(', ')} (their changes reach the dual-run, which ignores them)` : ''}`,
      });
    }
  }
  for (const rule of copyRules) {
    permissions.push({
      type: 'readwrite',
      key: rule.fromBytes,
      rangeEnd: prefixEnd(rule.fromBytes),
      prefix: true,
      when: 'cutover',
      rules: [rule.name],
      why: `rule ${rule.name}: after its cutover the reverse mirror writes Consul's changes back (rollback, finalize --delete-etcd too)`,
    });
  }

  if (options.heartbeatKey) {
    permissions.push({
      type: 'readwrite',
      key: options.heartbeatKey,
      rangeEnd: Buffer.concat([options.heartbeatKey, Buffer.from([0])]),
      prefix: false,
      when: 'always',
      rules: [],
      why: 'dualrun --heartbeat-key: the leader writes the time to this one key every second to time the lag end to end',
    });
  }

  const notes = [
    'cutover --snapshot (GET /v1/snapshot) needs a token with acl = "write"; the migrator policy does not grant it, and the snapshot stays optional.',
    'The etcd role reads only the rule ranges: audit falls back to them when the whole keyspace is refused, and reports keys outside every rule as unknown.',
    'Leases: etcd answers a lease\'s TTL only to a user who may read every key attached to it; a lease shared with keys outside the rules needs read there too.',
  ];
  if (copyRules.some((r) => r.to === '')) notes.push('A rule maps into the empty Consul prefix: its key_prefix "" rule covers the whole KV store.');
  if (services.some((scope) => scope.resource === 'service_prefix' && scope.name === '')) {
    notes.push('A service rule\'s name template starts with a key segment, so its service names are not known in advance: the migrator may write every service (service_prefix ""). A fixed text before the segment (name: "legacy-{1}") bounds them.');
  }
  if (services.length > 0) {
    notes.push('The agent keeps the migrator\'s token with each instance it registers and syncs the instance and its check to the catalog with it: keep the token until the instances are deregistered.');
    notes.push('DNS answers with the agent\'s default token (acl.tokens.default), not the application\'s: applications that discover service-rule instances over DNS need service and node read on that token.');
  }
  if (config.target.namespace || config.target.partition) notes.push('Create the policies in the namespace/partition migration.yaml names (Consul Enterprise).');
  if (several) notes.push(...datacenterNotes(config, primary));
  return {
    migration: config.id,
    stateRoot: paths.root,
    consul: { policies },
    etcd: { role: policyName('migrate', config.id), user: policyName('migrate', config.id), permissions },
    notes,
  };
}

/** What the per-datacenter policies need from whoever creates them (issue 11). */
function datacenterNotes(config: MigrationConfig, primary: string): string[] {
  const others = datacenterNames(config, primary).filter((dc) => dc !== primary);
  const notes = [
    'Each policy is valid only in the datacenters it names (its Datacenters: `consul acl policy create -valid-datacenter <dc>`): Consul applies a policy only to requests served in one of them, so give one token every per-datacenter policy of its role.',
    'Tokens must be global to be valid in every datacenter: create them in the ACL primary datacenter (Consul\'s primary_datacenter) without -local, with ACL token replication on (acl.enable_token_replication) in the other datacenters. A local token is valid only in the datacenter that created it.',
    'GET /v1/agent/self is answered by the agent the tool talks to, in its own datacenter: the primary\'s policies carry agent read; if target.datacenter names another datacenter than the agent\'s, add the agent\'s datacenter to those policies.',
  ];
  if (others.length > 0) notes.push(`In ${others.join(', ')} the tool's sessions name a server node of that datacenter, picked from its catalog at run time: those policies grant session write on every node (session_prefix ""), service "consul" read and node read there, and nothing outside that datacenter.`);
  if (primary === '') notes.push('The primary datacenter is not named (set target.datacenter in migration.yaml): its policies, and those of the rules without datacenters:, are not limited to a datacenter, so they apply in every datacenter.');
  return notes;
}

/** The policy's rules in Consul's JSON rule syntax: Consul accepts it wherever it accepts HCL rules. */
export function policyRulesObject(policy: ConsulPolicyPlan): Record<string, Record<string, { policy: ConsulAccess }>> {
  const out: Record<string, Record<string, { policy: ConsulAccess }>> = {};
  for (const grant of policy.grants) (out[grant.resource] ??= {})[grant.name] = { policy: grant.policy };
  return out;
}

/** An HCL string literal (Consul's HCL takes JSON-style escapes). */
function hclString(text: string): string {
  return JSON.stringify(text);
}

/** The `consul acl policy create` command of a policy (its `Datacenters` as `-valid-datacenter`). */
export function policyCreateCommand(policy: ConsulPolicyPlan, rulesFile = `@${policy.name}.hcl`): string {
  return `consul acl policy create -name ${policy.name} -rules ${rulesFile}${(policy.datacenters ?? []).map((dc) => ` -valid-datacenter ${dc}`).join('')}`;
}

/** Where a per-datacenter policy applies, in words. */
function validWhere(policy: ConsulPolicyPlan): string {
  if (policy.datacenters === null) return 'valid in every datacenter: it is the primary datacenter\'s, whose name is not known here (set target.datacenter in migration.yaml to limit it)';
  const dcs = policy.datacenters ?? [];
  return `valid only in datacenter${dcs.length > 1 ? 's' : ''} ${dcs.join(', ')}: ${policyCreateCommand(policy)}`;
}

/** The policy as HCL rules; with `comments`, each rule carries its reason. */
export function renderPolicyHcl(policy: ConsulPolicyPlan, options: { comments: boolean }): string {
  const lines: string[] = [];
  if (options.comments) lines.push(`# ${policy.name}: ${policy.description}`);
  if (options.comments && policy.datacenters !== undefined) lines.push(`# ${validWhere(policy)}`);
  for (const grant of policy.grants) {
    if (options.comments) lines.push(`# ${grant.why}`);
    lines.push(`${grant.resource} ${hclString(grant.name)} {`, `  policy = ${hclString(grant.policy)}`, '}');
  }
  return `${lines.join('\n')}\n`;
}

/** A shell word for bytes: single-quoted text, or printf escapes for bytes that are not printable UTF-8. */
export function shellQuote(bytes: Buffer): string {
  const text = bytes.toString('utf8');
  // eslint-disable-next-line no-control-regex
  if (Buffer.from(text, 'utf8').equals(bytes) && !/[\x00-\x1f\x7f\ufffd]/.test(text)) return `'${text.replace(/'/g, `'\\''`)}'`;
  return `"$(printf '${[...bytes].map((b) => `\\${b.toString(8).padStart(3, '0')}`).join('')}')"`;
}

/** The etcdctl commands that create the migrator's role and user (run them as root; `user add` prompts for the password). */
export function renderEtcdCommands(plan: AclPlan): { setup: string[]; always: string[]; cutover: string[] } {
  const role = plan.etcd.role;
  const grant = (p: EtcdPermissionPlan) => p.prefix
    ? `etcdctl role grant-permission --prefix=true ${role} ${p.type} ${shellQuote(p.key)}`
    : p.rangeEnd.equals(Buffer.concat([p.key, Buffer.from([0])]))
    ? `etcdctl role grant-permission ${role} ${p.type} ${shellQuote(p.key)}`
    : p.rangeEnd.length === 0
      ? `etcdctl role grant-permission --from-key=true ${role} ${p.type} ${shellQuote(p.key)}`
      : `etcdctl role grant-permission ${role} ${p.type} ${shellQuote(p.key)} ${shellQuote(p.rangeEnd)}`;
  return {
    setup: [`etcdctl role add ${role}`, `etcdctl user add ${plan.etcd.user}`, `etcdctl user grant-role ${plan.etcd.user} ${role}`],
    always: plan.etcd.permissions.filter((p) => p.when === 'always').map(grant),
    cutover: plan.etcd.permissions.filter((p) => p.when === 'cutover').map(grant),
  };
}
