import type { ValueHasher } from '../report/hash.js';
import { formatKey } from '../report/keys.js';
import { sameInstance, type Registration } from '../services/registration.js';
import { matches } from '../services/sync.js';
import type { ServiceInstance } from '../stores/types.js';
import { digest, type DifferenceKind, type Finding } from './compare.js';

/**
 * The comparison core of `migrate verify` for `service` rules (pure: no I/O,
 * no clock): the instances etcd at the cut makes (`desiredInstances`) against
 * the rule's instances in Consul's catalog, on every node. One difference per
 * instance; the first failing check wins: missing/extra, fields, TTL check,
 * check status. Differences name fields, never what the etcd value holds; the
 * digests are keyed hashes of the instance's fields, so an instance that
 * agrees on its fields shows the same hash on both sides.
 */

/** The fields of an instance a client of the catalog sees, in the order reports name them. */
export type InstanceField = 'name' | 'address' | 'port' | 'tags' | 'meta';

const FIELDS: readonly InstanceField[] = ['name', 'address', 'port', 'tags', 'meta'];

export interface InstanceCompareInput {
  rule: string;
  /** What etcd at the cut makes, by instance id. */
  desired: ReadonlyMap<string, Registration>;
  /** The rule's instances in the catalog (meta `etcd-migrate-rule`), every node. */
  instances: readonly ServiceInstance[];
  /** Whether an etcd lease is alive now (the service reads the leases of instances whose check is critical first). */
  leaseAlive: (lease: string) => boolean;
  hash: ValueHasher;
}

export interface InstanceComparison {
  findings: Finding[];
  /** Catalog instances no instance etcd makes accounts for (no etcd key, or a second instance of an id). */
  extras: number;
}

/**
 * Compares a rule's instances. A finding's `target` is the instance id, or
 * `<id>@<node>` for a second instance of one id on another node (the catalog
 * keys instances by node and id), so re-checks can tell them apart.
 */
export function compareInstances(input: InstanceCompareInput): InstanceComparison {
  const byId = new Map<string, ServiceInstance[]>();
  for (const instance of [...input.instances].sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0))) {
    const same = byId.get(instance.id);
    if (same) same.push(instance);
    else byId.set(instance.id, [instance]);
  }
  const findings: Finding[] = [];
  let extras = 0;
  const found = (target: string, kind: DifferenceKind, reason: string, detail: string, registration: Registration | undefined, instance: ServiceInstance | undefined) => findings.push({
    difference: {
      rule: input.rule,
      key: formatKey(target),
      kind,
      reason,
      detail,
      sourceKey: registration?.key ?? null,
      etcd: registration ? digest(canonical(registration), input.hash) : null,
      consul: instance ? digest(canonical(instance), input.hash) : null,
    },
    target,
    source: undefined,
    readBack: false,
  });

  for (const registration of input.desired.values()) {
    const same = byId.get(registration.id) ?? [];
    byId.delete(registration.id);
    // Of several instances with this id, the one that matches (else the first node's) stands for it; the others are extra.
    const primary = same.find((i) => matches(registration, i)) ?? same[0];
    for (const other of same) {
      if (other === primary) continue;
      extras++;
      found(`${other.id}@${other.node}`, 'extra', 'duplicate', `instance id ${other.id} of service ${other.name} is also registered on node ${other.node}, besides node ${primary!.node}; etcd key ${registration.key} makes one instance`, undefined, other);
    }
    if (!primary) {
      found(registration.id, 'missing', 'no-instance', `etcd key ${registration.key} makes instance ${registration.id} of service ${registration.name}; the catalog has no instance of that service with this id (an instance someone else registered under the id, by hand or from another rule, is not replaced: \`migrate copy --dry-run\` reports it as id-taken)`, registration, undefined);
      continue;
    }
    const fields = sameInstance(registration, primary) ? [] : differingFields(registration, primary);
    if (fields.length > 0) {
      found(registration.id, 'instance', fields.join(','), `the instance on node ${primary.node} differs from what etcd key ${registration.key} makes in ${fields.join(', ')}`, registration, primary);
      continue;
    }
    if (registration.lease !== undefined && primary.checkStatus === undefined) {
      found(registration.id, 'check', 'no-check', `etcd key ${registration.key} is leased (lease ${registration.lease}), but the instance has no TTL check: it would outlive the lease`, registration, primary);
    } else if (registration.lease === undefined && primary.checkStatus !== undefined) {
      found(registration.id, 'check', 'unexpected-check', `etcd key ${registration.key} has no lease, but the instance has a TTL check (${primary.checkStatus}): nothing keeps it passing`, registration, primary);
    } else if (registration.lease !== undefined && primary.checkStatus === 'critical' && input.leaseAlive(registration.lease)) {
      found(registration.id, 'check-critical', 'critical', `the instance's TTL check is critical while etcd lease ${registration.lease} of ${registration.key} is alive: health queries hide it (is the dual-run running and keeping checks passing?)`, registration, primary);
    }
  }

  // Left: instances of the rule that no etcd key makes at the cut.
  for (const [id, same] of byId) {
    same.forEach((instance, i) => {
      extras++;
      found(i === 0 ? id : `${id}@${instance.node}`, 'extra', 'no-etcd-key', `no etcd key of the rule makes instance ${id} of service ${instance.name} (on node ${instance.node}) at the cut`, undefined, instance);
    });
  }
  return { findings, extras };
}

/** The leases to read before {@link compareInstances}: of leased instances whose check is critical in the catalog. */
export function criticalLeases(desired: ReadonlyMap<string, Registration>, instances: readonly ServiceInstance[]): Set<string> {
  const leases = new Set<string>();
  for (const instance of instances) {
    const lease = desired.get(instance.id)?.lease;
    if (lease !== undefined && instance.checkStatus === 'critical') leases.add(lease);
  }
  return leases;
}

/** The fields in which an instance differs from the registration (empty exactly when `sameInstance` holds). */
export function differingFields(registration: Registration, instance: ServiceInstance): InstanceField[] {
  // Tags and meta through sameInstance itself (the other fields set equal), so the two never disagree.
  const same: Record<InstanceField, boolean> = {
    name: registration.name === instance.name,
    address: registration.address === instance.address,
    port: registration.port === instance.port,
    tags: sameInstance({ ...instance, tags: registration.tags }, instance),
    meta: sameInstance({ ...instance, meta: registration.meta }, instance),
  };
  return FIELDS.filter((f) => !same[f]);
}

/** The instance's fields as canonical JSON (sorted tags and meta), for its keyed hash. */
function canonical(instance: Pick<Registration, 'name' | 'address' | 'port' | 'tags' | 'meta'>): Buffer {
  const meta = Object.fromEntries(Object.entries(instance.meta).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return Buffer.from(JSON.stringify({ name: instance.name, address: instance.address, port: instance.port, tags: [...instance.tags].sort(), meta }));
}
