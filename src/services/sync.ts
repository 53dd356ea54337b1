import type { ServiceSpec } from '../config/load.js';
import { RefusedError } from '../errors.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { findRule } from '../mapping/route.js';
import { deleteGuardTrips, shareText } from '../copy/plan.js';
import { prefixEnd } from '../stores/key-range.js';
import type { ServiceDefinition, ServiceInstance, SourceReader, TargetStore } from '../stores/types.js';
import { checkIdOf, instanceIdOf, META_RULE, registrationOf, sameInstance, takenBy, type Registration, type RegistrationProblem } from './registration.js';

/** What the copy did (or, dry-run, would do) for one `service` rule. */
export interface ServiceRuleStats {
  name: string;
  from: string;
  /** etcd keys under the rule at the pinned revision. */
  sourceKeys: number;
  registered: number;
  updated: number;
  unchanged: number;
  /** Instances whose key has no lease: registered without a TTL check (nothing would ever expire them). */
  withoutLease: number;
  /** Keys whose value or name did not make an instance, by problem. */
  problems: Partial<Record<RegistrationProblem, number>>;
  problemExamples: { key: string; problem: RegistrationProblem; detail: string }[];
  /** The rule's instances on the agent that no etcd key produced (instance ids). */
  extraneous: number;
  extraneousExamples: string[];
  deregistered: number;
  /** Instances whose key no longer describes one (a value that stopped parsing): deregistered, as the dual-run does. */
  withdrawn: number;
}

const EXAMPLES = 20;

/** The agent registration of an instance: a TTL check when the key has a lease, none otherwise. */
export function definitionOf(registration: Registration, spec: ServiceSpec, status: 'passing' | 'critical' = 'passing'): ServiceDefinition {
  const { id, name, address, port, tags, meta } = registration;
  return {
    id, name, address, port, tags, meta,
    ...(registration.lease
      ? {
          check: {
            id: checkIdOf(id),
            name: `etcd lease ${registration.lease} of ${registration.key}`,
            ttlSeconds: spec.check.ttlSeconds,
            status,
            ...(spec.check.deregisterCriticalAfterSeconds ? { deregisterCriticalAfterSeconds: spec.check.deregisterCriticalAfterSeconds } : {}),
          },
        }
      : {}),
  };
}

/** The registration an instance on the agent matches: same fields, and a TTL check exactly when leased. */
export function matches(registration: Registration, instance: ServiceInstance): boolean {
  return sameInstance(registration, instance) && (registration.lease !== undefined) === (instance.checkStatus !== undefined);
}

/** A key that makes no instance; `id` is the instance it would have had (when the id template fits the key). */
export interface KeyProblem {
  key: string;
  problem: RegistrationProblem;
  detail: string;
  id?: string;
}

/**
 * Reads a service rule's keys at `revision` and parses each into the
 * instance it registers. Memory holds one registration per instance (a
 * catalog, not a keyspace: thousands, not millions).
 */
export async function desiredInstances(
  mapping: Mapping,
  rule: CompiledRule,
  source: SourceReader,
  revision: number,
  migrationId: string,
  options: { pageKeys?: number; signal?: AbortSignal } = {},
): Promise<{ sourceKeys: number; registrations: Map<string, Registration>; problems: KeyProblem[] }> {
  const registrations = new Map<string, Registration>();
  // By id in lower case: Consul's catalog takes `Cart-x` and `cart-x` for one instance, and they displaced each other.
  const byLowerId = new Map<string, Registration>();
  const problems: KeyProblem[] = [];
  let sourceKeys = 0;
  const start = rule.fromBytes;
  for await (const page of source.readPages({ start, end: prefixEnd(start) }, { revision, pageKeys: options.pageKeys, signal: options.signal })) {
    for (const entry of page.entries) {
      // A longer nested rule owns its own keys.
      if (findRule(mapping, entry.key) !== rule) continue;
      sourceKeys++;
      const parsed = registrationOf(rule, entry, migrationId);
      if (!parsed.ok) {
        const id = instanceIdOf(rule, entry.key);
        problems.push({ key: parsed.key, problem: parsed.problem, detail: parsed.detail, ...(id !== undefined ? { id } : {}) });
        continue;
      }
      const earlier = byLowerId.get(parsed.registration.id.toLowerCase());
      if (earlier) {
        const same = earlier.id === parsed.registration.id ? `is also the id of ${earlier.key}` : `differs only in case from "${earlier.id}", the id of ${earlier.key} (Consul's catalog takes them as one)`;
        problems.push({ key: parsed.registration.key, problem: 'id-duplicate', detail: `its instance id "${parsed.registration.id}" ${same}; make the id template include more of the key` });
        continue;
      }
      registrations.set(parsed.registration.id, parsed.registration);
      byLowerId.set(parsed.registration.id.toLowerCase(), parsed.registration);
    }
  }
  return { sourceKeys, registrations, problems };
}

/**
 * The copy of one `service` rule at `revision`: registers on the agent every
 * instance that is missing or differs, leaves the ones that match, and
 * reports (with `deleteExtraneous`, deregisters under the delete guard) the
 * rule's instances that no etcd key produced.
 */
export async function syncServiceRule(
  rule: CompiledRule,
  deps: { source: SourceReader; target: TargetStore; mapping: Mapping; migrationId: string },
  revision: number,
  existing: ServiceInstance[],
  options: { deleteExtraneous: boolean; allowMassDelete: boolean; pageKeys?: number; signal?: AbortSignal },
): Promise<ServiceRuleStats> {
  const spec = rule.service!;
  const desired = await desiredInstances(deps.mapping, rule, deps.source, revision, deps.migrationId, options);
  const stats: ServiceRuleStats = {
    name: rule.name, from: rule.from, sourceKeys: desired.sourceKeys, registered: 0, updated: 0, unchanged: 0, withoutLease: 0,
    problems: {}, problemExamples: [], extraneous: 0, extraneousExamples: [], deregistered: 0, withdrawn: 0,
  };
  const mine = existing.filter((i) => i.meta[META_RULE] === rule.name);
  const byId = new Map(mine.map((i) => [i.id, i]));
  const owners = await deps.target.agentServiceOwners(options.signal);
  for (const registration of desired.registrations.values()) {
    if (options.signal?.aborted) break;
    const current = byId.get(registration.id);
    const taken = current ? undefined : takenBy(owners.get(registration.id.toLowerCase()), deps.migrationId, rule.name);
    if (taken) {
      desired.problems.push({ key: registration.key, problem: 'id-taken', detail: taken });
      continue;
    }
    if (!registration.lease) stats.withoutLease++;
    byId.delete(registration.id);
    if (current && matches(registration, current)) {
      stats.unchanged++;
      continue;
    }
    await deps.target.registerService(definitionOf(registration, spec));
    if (current) stats.updated++;
    else stats.registered++;
  }
  for (const p of desired.problems) stats.problems[p.problem] = (stats.problems[p.problem] ?? 0) + 1;
  stats.problemExamples = desired.problems.slice(0, EXAMPLES).map(({ key, problem, detail }) => ({ key, problem, detail }));
  if (options.signal?.aborted) return stats;
  // A key whose value no longer describes an instance: the address it advertised is stale (as the dual-run does).
  for (const p of desired.problems) {
    if (p.id === undefined || !byId.has(p.id) || desired.registrations.has(p.id)) continue;
    await deps.target.deregisterService(p.id);
    byId.delete(p.id);
    stats.withdrawn++;
  }
  stats.extraneous = byId.size;
  stats.extraneousExamples = [...byId.keys()].slice(0, EXAMPLES);
  if (options.deleteExtraneous && byId.size > 0) {
    if (deleteGuardTrips(byId.size, mine.length) && !options.allowMassDelete) {
      throw new RefusedError('delete_guard', `Deregistering ${byId.size} extraneous instances would remove ${shareText(byId.size, mine.length)} of service rule ${rule.name}'s ${mine.length} instances; nothing was deregistered.`, {
        hint: 'Check that etcd holds the registrations (a wrong from, or a role that cannot read them, looks like an empty prefix). If the deregistrations are intended, pass --allow-mass-delete.',
        details: { rule: rule.name, deletes: byId.size, instances: mine.length },
      });
    }
    for (const id of byId.keys()) {
      await deps.target.deregisterService(id);
      stats.deregistered++;
    }
  }
  return stats;
}
