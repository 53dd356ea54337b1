import { serviceNames } from '../acl/acl.js';
import { ServerError, isMigrateError } from '../errors.js';
import type { MigrationConfig } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import { formatKey } from '../report/keys.js';
import { statePaths } from '../state/state.js';
import { ConsulResponseError } from '../stores/consul-http.js';
import type { ConsulTarget } from '../stores/consul.js';
import { consulTooOld } from './consul-version.js';
import { prefixRange } from '../stores/key-range.js';
import { watchSpan } from '../mapping/watch-span.js';
import type { SourceReader } from '../stores/types.js';

/**
 * The permission preflight of the commands that work on Consul (DESIGN §4,
 * issue 8): before the first read or write of real work, ask Consul whether
 * the token may do what the command will do, so a missing permission stops
 * the command before anything is written, naming the permission and the
 * prefix (exit 3).
 */

/** One permission a command needs on a KV prefix. */
export interface KeyNeed {
  access: 'read' | 'write';
  prefix: string;
  /** What needs it: `rule <name>` or `state`. */
  for: string;
}

/** The service names a command registers on the agent for one `service` rule, as Consul's ACL rules name them. */
export interface ServiceNeed {
  resource: 'service' | 'service_prefix';
  /** The one service name, or the prefix every name of the rule starts with (`""`: any name). */
  name: string;
  /** `rule <name>`. */
  for: string;
}

export interface MissingPermission {
  permission: string;
  prefix?: string;
  /** `service:write`: the service rule (or name prefix) of the policy that grants it. */
  service?: { resource: 'service' | 'service_prefix'; name: string };
  for: string;
}

/** What a command will do on Consul. */
export interface PreflightScope {
  /** Writes rule targets (copy, dualrun): KV keys, and the instances of service rules. */
  writeTargets: boolean;
  /** Writes state documents (copy, dualrun); `verify`: only the verify summary (`verify/`). */
  writeState: boolean | 'verify';
  /** Creates sessions (leased keys mirrored as sessions, the dual-run leader lock). */
  sessions: boolean;
  /** Reads under `/<to>` (verify, for keys stranded with a leading `/`). */
  strandedReads?: boolean;
}

/** The KV permissions a command with `scope` needs (pure). */
export function keyNeeds(config: MigrationConfig, mapping: Mapping, scope: PreflightScope): KeyNeed[] {
  const root = statePaths(config.state.prefix, config.id).root;
  return [
    { access: scope.writeState === true ? 'write' : 'read', prefix: root, for: 'state' },
    ...(scope.writeState === 'verify' ? [{ access: 'write', prefix: `${root}verify/`, for: 'the verify summary' } as const] : []),
    ...mapping.copyRules.map((rule): KeyNeed => ({ access: scope.writeTargets ? 'write' : 'read', prefix: rule.to, for: `rule ${rule.name}` })),
  ];
}

/** The service names a command with `scope` registers: one need per service rule (pure). */
export function serviceNeeds(mapping: Mapping, scope: PreflightScope): ServiceNeed[] {
  if (!scope.writeTargets) return [];
  return mapping.serviceRules.map((rule) => ({ ...serviceNames(rule), for: `rule ${rule.name}` }));
}

// An index no key ever has: the probes below always fail their check, so the txn rolls back and writes nothing.
const NEVER_INDEX = Number.MAX_SAFE_INTEGER;
const PROBE_LEAF = '.migrate-permission-probe';
const PROBE_SERVICE = 'migrate-permission-probe';

/**
 * Asks Consul, without changing anything, which of `needs` the token lacks.
 * One `/v1/txn` holds a probe per need: a `check-index` (needs key:read) or a
 * `cas` (needs key:write) on a key under the prefix, with an index no key
 * has. Consul checks every op's ACL before it applies anything and reports
 * each denied op; an allowed probe then fails its index check, so the txn is
 * always rolled back.
 */
export async function findMissingKeyPermissions(target: ConsulTarget, needs: readonly KeyNeed[]): Promise<MissingPermission[]> {
  const probes = needs.map((need) => ({ KV: { Verb: need.access === 'write' ? 'cas' : 'check-index', Key: `${need.prefix}${PROBE_LEAF}`, Index: NEVER_INDEX } }));
  return (await deniedProbes(target, probes)).map((i) => ({ permission: `key:${needs[i]!.access}`, prefix: needs[i]!.prefix, for: needs[i]!.for }));
}

/**
 * Whether the token may register the service rules' instances, asked the
 * same way: a catalog `cas` of a service named like the rule's instances
 * (service:write on the name, the check that registering on the agent,
 * deregistering and passing a TTL check make) with an index no service has.
 */
export async function findMissingServicePermissions(target: ConsulTarget, needs: readonly ServiceNeed[]): Promise<MissingPermission[]> {
  if (needs.length === 0) return [];
  const { nodeName } = await target.info();
  const probes = needs.map((need) => ({
    Service: { Verb: 'cas', Node: nodeName, Service: { ID: PROBE_SERVICE, Service: need.resource === 'service' ? need.name : `${need.name}${PROBE_SERVICE}`, ModifyIndex: NEVER_INDEX } },
  }));
  return (await deniedProbes(target, probes)).map((i) => ({ permission: 'service:write', service: { resource: needs[i]!.resource, name: needs[i]!.name }, for: needs[i]!.for }));
}

/**
 * Whether the token may read `/<to>` of every copy rule, where verify looks for
 * keys stranded with a leading `/`: Consul's ACLs hide such keys from a token
 * that may not read them, and verify reported parity over them. Asked in a txn
 * of its own: releases that refuse a leading `/` in a txn refuse the whole
 * request (verify then warns that it could not look), which would stop the
 * other probes.
 */
export async function findMissingStrandedReads(target: ConsulTarget, mapping: Mapping): Promise<MissingPermission[]> {
  const needs: KeyNeed[] = mapping.copyRules.map((rule) => ({ access: 'read', prefix: `/${rule.to}`, for: `rule ${rule.name}: keys stranded with a leading "/"` }));
  if (needs.length === 0) return [];
  try {
    return await findMissingKeyPermissions(target, needs);
  } catch (err) {
    if (err instanceof ConsulResponseError && err.status === 400) return [];
    throw err;
  }
}

/** Sends `probes` in txns of the target's op limit; the indexes of the ones Consul denied. */
async function deniedProbes(target: ConsulTarget, probes: readonly object[]): Promise<number[]> {
  const { txnMaxOps } = await target.limits();
  const denied: number[] = [];
  for (let i = 0; i < probes.length; i += txnMaxOps) {
    const chunk = probes.slice(i, i + txnMaxOps);
    const response = await target.http.request({ method: 'PUT', path: '/v1/txn', body: JSON.stringify(chunk), accept: [409] });
    if (response.status === 200) continue; // cannot happen with NEVER_INDEX; nothing to learn either way
    for (const error of parseErrors(response.body)) {
      if (/permission denied/i.test(error.What) && error.OpIndex < chunk.length) denied.push(i + error.OpIndex);
    }
  }
  return denied;
}

function parseErrors(body: Buffer): { OpIndex: number; What: string }[] {
  try {
    return (JSON.parse(body.toString('utf8')) as { Errors?: { OpIndex: number; What: string }[] | null }).Errors ?? [];
  } catch {
    return [];
  }
}

/** Whether the token may create sessions on the agent's node: creates one (10 s TTL, no checks, no keys) and destroys it. */
export async function findMissingSessionPermission(target: ConsulTarget): Promise<MissingPermission[]> {
  try {
    const id = await target.createSession({ name: 'migrate permission probe', ttlSeconds: 10 });
    await target.destroySession(id).catch(() => undefined);
    return [];
  } catch (err) {
    if (err instanceof ConsulResponseError && err.code === 'consul_permission_denied') return [{ permission: 'session:write', for: 'sessions on the agent\'s node' }];
    throw err;
  }
}

/** The error a preflight raises: every missing permission with its prefix, and the fix. */
export function missingPermissionsError(address: string, command: string, missing: readonly MissingPermission[]): ServerError {
  const list = missing.map((m) => `${m.permission}${m.prefix !== undefined ? ` on prefix ${m.prefix === '' ? '"" (the whole KV store)' : formatKey(m.prefix)}` : ''}${m.service ? ` on ${m.service.resource} ${JSON.stringify(m.service.name)}` : ''} (${m.for})`);
  return new ServerError('consul_permission_denied', `The Consul token lacks ${list.join(', ')} at ${address}; ${command} stopped before doing any work and wrote nothing.`, {
    hint: 'Create the policy that `migrate acl` prints (the migrator\'s; the verifier\'s for a CI verify) and attach it to the token, then run `migrate doctor`.',
    details: { missing },
  });
}

/**
 * The preflight: throws a {@link ServerError} (exit 3) naming every missing
 * permission and prefix before `command` reads or writes anything else.
 */
/**
 * Whether etcd lets the user read each copy and service rule's range, asked
 * before a dual-run waits for its lock: a standby (--ha) whose role may not
 * read them waited, then failed only when it took the lead, and no dual-run
 * replicated. One key's range at each rule's `from`, which a grant of the
 * rule's prefix covers (the whole range would make etcd 3.4 walk it).
 */
export async function preflightEtcdReads(source: Pick<SourceReader, 'count'>, mapping: Mapping, command: string): Promise<void> {
  const denied: string[] = [];
  for (const rule of mapping.rules.filter((r) => r.action !== 'keep')) {
    const start = prefixRange(rule.fromBytes).start;
    try {
      await source.count({ start, end: Buffer.concat([start, Buffer.from([0])]) });
    } catch (err) {
      if (!isMigrateError(err) || err.code !== 'etcd_permission_denied') throw err;
      denied.push(`rule ${rule.name} (${formatKey(rule.fromBytes)})`);
    }
  }
  // The one watch over every rule, gaps between them included: etcd checks its whole interval (a count walks it: once, at the start).
  const span = watchSpan(mapping);
  if (denied.length === 0 && span && mapping.rules.filter((r) => r.action !== 'keep').length > 1) {
    try {
      await source.count(span);
    } catch (err) {
      if (!isMigrateError(err) || err.code !== 'etcd_permission_denied') throw err;
      denied.push(`the watch range from the first rule to the last, ${formatKey(span.start)} to ${formatKey(span.end)} (the gaps between the rules included: etcd checks a watch over its whole interval)`);
    }
  }
  if (denied.length === 0) return;
  throw new ServerError('etcd_permission_denied', `${command}: etcd does not let this user read ${denied.join(', ')}; nothing was written.`, {
    hint: 'Grant the role `migrate acl` prints for etcd (read on every rule range), then run `migrate doctor`.',
    details: { rules: denied },
  });
}

export async function preflightConsul(target: ConsulTarget, config: MigrationConfig, mapping: Mapping, command: string, scope: PreflightScope): Promise<void> {
  const tooOld = consulTooOld(target.address, (await target.info()).version);
  if (tooOld) throw tooOld;
  const missing = await findMissingKeyPermissions(target, keyNeeds(config, mapping, scope));
  missing.push(...(await findMissingServicePermissions(target, serviceNeeds(mapping, scope))));
  if (scope.strandedReads) missing.push(...(await findMissingStrandedReads(target, mapping)));
  if (scope.sessions) missing.push(...(await findMissingSessionPermission(target)));
  if (missing.length > 0) throw missingPermissionsError(target.address, command, missing);
}

/** For doctor: the same probes as a list of what is missing, or the error that stopped them. */
export async function checkPermissions(target: ConsulTarget, config: MigrationConfig, mapping: Mapping): Promise<{ missing: MissingPermission[]; checked: number } | { error: unknown }> {
  try {
    const scope = { writeTargets: true, writeState: true, sessions: true };
    const needs = keyNeeds(config, mapping, scope);
    const services = serviceNeeds(mapping, scope);
    const missing = await findMissingKeyPermissions(target, needs);
    missing.push(...(await findMissingServicePermissions(target, services)));
    missing.push(...(await findMissingStrandedReads(target, mapping)));
    missing.push(...(await findMissingSessionPermission(target)));
    return { missing, checked: needs.length + services.length + mapping.copyRules.length + 1 };
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    return { error: err };
  }
}
