import type { LeasePolicy } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import type { UnmappableReason } from '../mapping/escape.js';
import { routeKey } from '../mapping/route.js';
import type { SourceEvent, TxnOp, WatchMessage } from '../stores/types.js';

/**
 * The dual-run's pure core: the events of one etcd revision become the
 * Consul ops that reproduce their effects. The service groups revisions into
 * txns (with the checkpoint and the leader check) and sends them in order.
 */

/**
 * Where an etcd key goes during replication; only `mapped` is mirrored. `unmappable`:
 * a key of a copy rule that Consul cannot take (its key, or a value over the limit;
 * then `target` is where its smaller values went).
 */
export type ReplicationRoute =
  | { kind: 'mapped'; rule: string; target: string; leases: LeasePolicy }
  | { kind: 'unmappable'; rule: string; reason: UnmappableReason; detail: string; target?: string }
  | { kind: 'ignored' };

export function routeForReplication(mapping: Mapping, key: Buffer, valueBytes: number): ReplicationRoute {
  const route = routeKey(mapping, key, { valueBytes, maxValueBytes: mapping.maxValueBytes });
  if (route.kind === 'mapped' && route.rule.action === 'copy') return { kind: 'mapped', rule: route.rule.name, target: route.target, leases: route.rule.leases };
  if (route.kind !== 'unmappable' || route.rule.action !== 'copy') return { kind: 'ignored' };
  const unmappable = { kind: 'unmappable', rule: route.rule.name, reason: route.reason, detail: route.detail } as const;
  if (route.reason !== 'value-too-large') return unmappable;
  const key0 = routeKey(mapping, key, { valueBytes: 0 });
  return key0.kind === 'mapped' ? { ...unmappable, target: key0.target } : unmappable;
}

/** A put the dual-run cannot mirror (logged and counted by the service). */
export interface UnmappablePut {
  rule: string;
  key: Buffer;
  reason: UnmappableReason;
  detail: string;
}

/** A value too large for any txn, written by single PUT before the txn with the rest of its revision. */
export interface LargePut {
  key: string;
  value: Buffer;
  /** The session of its etcd lease, to hold the key. */
  acquire?: string;
  /** It leaves a lock (its old lease's session, known or not): freed from whichever session holds it in Consul. */
  free?: boolean;
}

export interface RevisionPlan {
  revision: number;
  /** Ops in event order; the ops of one event are adjacent. */
  ops: TxnOp[];
  largePuts: LargePut[];
  /** Events under no copy rule, or whose key or value cannot be mirrored. */
  ignored: number;
  /** Puts under a copy rule that Consul cannot take (counted in `ignored` too). */
  unmappable: UnmappablePut[];
  /** Leased puts whose lease had already ended: etcd's delete of the key follows. */
  expiredLeases: number;
}

export interface PlanRevisionInput {
  message: Extract<WatchMessage, { kind: 'revision' }>;
  route: (key: Buffer, valueBytes: number) => ReplicationRoute;
  /** The session mirroring a live lease; undefined once the lease has ended. */
  sessionFor: (leaseId: string) => string | undefined;
  /**
   * The session holding the target key now. By default it is derived from the
   * event's previous lease; the repair path passes what Consul really holds.
   */
  holderOf?: (event: SourceEvent, target: string, leases: LeasePolicy) => string | undefined;
  /** Whether one write fits a txn (else it goes by single PUT). */
  fits: (ops: TxnOp[]) => boolean;
}

function holderFromPrevious(sessionFor: (leaseId: string) => string | undefined) {
  return (event: SourceEvent, _target: string, leases: LeasePolicy): string | undefined =>
    leases === 'session' && event.previous && event.previous.lease !== '0' ? sessionFor(event.previous.lease) : undefined;
}

/**
 * Txn ops {@link planRevision} makes of one replicated event, as the audit sizes write groups: two for a
 * leased key that moves to another lease's session (unlock, then lock), one otherwise.
 */
export function replicationOps(event: SourceEvent, leases: LeasePolicy): number {
  const moves = event.type === 'put' && leases === 'session' && event.entry.lease !== '0' && event.previous !== undefined && event.previous.lease !== '0' && event.previous.lease !== event.entry.lease;
  return moves ? 2 : 1;
}

export function planRevision(input: PlanRevisionInput): RevisionPlan {
  const plan: RevisionPlan = { revision: input.message.revision, ops: [], largePuts: [], ignored: 0, unmappable: [], expiredLeases: 0 };
  const holderOf = input.holderOf ?? holderFromPrevious(input.sessionFor);
  for (const event of input.message.events) {
    const route = input.route(event.entry.key, event.entry.value.length);
    if (route.kind !== 'mapped') {
      plan.ignored++;
      if (route.kind === 'unmappable' && event.type === 'put') {
        plan.unmappable.push({ rule: route.rule, key: event.entry.key, reason: route.reason, detail: route.detail });
        // A value grown past the limit: Consul must not go on serving the last one that fitted (a copy would not write it either).
        if (route.target !== undefined) plan.ops.push({ verb: 'delete', key: route.target });
      }
      continue;
    }
    const key = route.target;
    if (event.type === 'delete') {
      plan.ops.push({ verb: 'delete', key });
      continue;
    }
    const value = event.entry.value;
    const leased = event.entry.lease !== '0';
    if (leased && route.leases === 'skip') {
      // Leased keys of a `skip` rule are not in Consul; a key that just became leased leaves it.
      plan.ops.push({ verb: 'delete', key });
      continue;
    }
    const holder = holderOf(event, key, route.leases);
    let ops: TxnOp[];
    if (leased && route.leases === 'session') {
      const session = input.sessionFor(event.entry.lease);
      if (!session) {
        plan.expiredLeases++;
        continue;
      }
      ops = holder && holder !== session
        ? [{ verb: 'unlock', key, value, session: holder }, { verb: 'lock', key, value, session }]
        : [{ verb: 'lock', key, value, session }];
    } else if (holder) {
      // Unlocking writes the value and releases the key from the old lease's session in one step.
      ops = [{ verb: 'unlock', key, value, session: holder }];
    } else if (route.leases === 'session' && event.previous && event.previous.lease !== '0' && !input.holderOf) {
      // It leaves a lease whose session is no longer known (the lease ended, or Consul was down): a set would keep
      // the key locked by that session, and Consul would delete it with the session. Deleted and set, it is free.
      ops = [{ verb: 'delete', key }, { verb: 'set', key, value }];
    } else {
      ops = [{ verb: 'set', key, value }];
    }
    if (input.fits(ops)) {
      plan.ops.push(...ops);
    } else {
      // Too large for a txn: single PUTs free the key (of the session Consul says holds it) and write (and lock) the value.
      const last = ops[ops.length - 1]!;
      const free = ops.some((o) => o.verb === 'unlock' || o.verb === 'delete');
      plan.largePuts.push({ key, value, ...(last.verb === 'lock' ? { acquire: last.session } : {}), ...(free ? { free } : {}) });
    }
  }
  return plan;
}
