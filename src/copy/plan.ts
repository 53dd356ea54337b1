import type { LeasePolicy } from '../config/load.js';
import type { SourceEntry, TargetEntry, TxnOp } from '../stores/types.js';

/**
 * The copy planner (pure): one page of source entries, routed, against the
 * target entries read for the same keys, becomes the writes that make Consul
 * equal to etcd at the pinned revision. No I/O, no clock: the copy service
 * feeds it pages and sends what it returns.
 */

/** Why a source key is not written. */
export type SkipReason =
  | 'leading-slash'
  | 'empty-segment'
  | 'dot-segment'
  | 'invalid-utf8'
  | 'control-character'
  | 'value-too-large'
  | 'empty-key'
  | 'trailing-space'
  | 'key-too-long'
  | 'key-charset'
  | 'collision'
  | 'lease-skip'
  | 'lease-expired'
  | 'foreign-session';

/** What the planner needs to know about a key's route (a subset of the mapping's Route). */
export type PlannedRoute =
  | { kind: 'mapped'; rule: string; target: string; leases: LeasePolicy }
  | { kind: 'other-rule'; rule: string }
  | { kind: 'skip'; rule: string; reason: SkipReason; detail: string };

export interface PlannedWrite {
  kind: 'create' | 'update';
  rule: string;
  key: string;
  sourceKey: Buffer;
  value: Buffer;
  /** The ModifyIndex seen when planning (0 for a create): the write is a compare-and-set on it. */
  expectIndex: number;
  /** Consul session that must hold the key (leases: session), or none. */
  session?: string;
  /** The session currently holding the key, when it must be released first (lease changed or dropped). */
  releaseSession?: string;
}

export interface PlannedSkip {
  rule: string;
  sourceKey: Buffer;
  reason: SkipReason;
  detail: string;
}

export interface PagePlan {
  writes: PlannedWrite[];
  unchanged: number;
  skips: PlannedSkip[];
}

export interface PlanPageInput {
  entries: readonly SourceEntry[];
  route: (entry: SourceEntry) => PlannedRoute;
  /** The target entries that exist for this page's target keys. */
  existing: ReadonlyMap<string, TargetEntry>;
  /** Session mirroring each live etcd lease (leases: session); a lease absent here has expired. */
  sessionFor: (leaseId: string) => string | undefined;
  /** Every session this migration owns (to tell them from foreign ones). */
  ownSessions: ReadonlySet<string>;
}

export function planPage(input: PlanPageInput): PagePlan {
  const plan: PagePlan = { writes: [], unchanged: 0, skips: [] };
  for (const entry of input.entries) {
    const route = input.route(entry);
    if (route.kind === 'other-rule') continue;
    if (route.kind === 'skip') {
      plan.skips.push({ rule: route.rule, sourceKey: entry.key, reason: route.reason, detail: route.detail });
      continue;
    }
    const leased = entry.lease !== '0';
    if (leased && route.leases === 'skip') {
      plan.skips.push({ rule: route.rule, sourceKey: entry.key, reason: 'lease-skip', detail: `leased (lease ${entry.lease}); the rule says leases: skip` });
      continue;
    }
    let session: string | undefined;
    if (leased && route.leases === 'session') {
      session = input.sessionFor(entry.lease);
      if (!session) {
        plan.skips.push({ rule: route.rule, sourceKey: entry.key, reason: 'lease-expired', detail: `lease ${entry.lease} ended (expired or revoked) after the pinned revision; etcd deletes the key` });
        continue;
      }
    }
    const existing = input.existing.get(route.target);
    if (existing?.session && !input.ownSessions.has(existing.session)) {
      plan.skips.push({ rule: route.rule, sourceKey: entry.key, reason: 'foreign-session', detail: `held by session ${existing.session}, which this migration does not own` });
      continue;
    }
    if (existing && existing.value.equals(entry.value) && existing.session === session) {
      plan.unchanged++;
      continue;
    }
    const write: PlannedWrite = {
      kind: existing ? 'update' : 'create',
      rule: route.rule,
      key: route.target,
      sourceKey: entry.key,
      value: entry.value,
      expectIndex: existing?.modifyIndex ?? 0,
    };
    if (session) write.session = session;
    if (existing?.session && existing.session !== session) write.releaseSession = existing.session;
    plan.writes.push(write);
  }
  return plan;
}

/**
 * The txn ops of one write: a compare-and-set on the index seen at planning
 * time, so a key changed in Consul since then is not overwritten blindly.
 * Session-held keys are written with `lock` behind an index check; a key
 * moving between sessions is released from the old one first (same txn).
 */
export function writeOps(write: PlannedWrite): TxnOp[] {
  const ops: TxnOp[] = [];
  if (!write.session && !write.releaseSession) {
    ops.push({ verb: 'cas', key: write.key, value: write.value, index: write.expectIndex });
    return ops;
  }
  ops.push(write.expectIndex === 0 ? { verb: 'check-not-exists', key: write.key } : { verb: 'check-index', key: write.key, index: write.expectIndex });
  if (write.releaseSession) ops.push({ verb: 'unlock', key: write.key, value: write.value, session: write.releaseSession });
  if (write.session) ops.push({ verb: 'lock', key: write.key, value: write.value, session: write.session });
  return ops;
}

/** Deletes the tool derives itself never remove more than this share of a rule's keys without a flag (DESIGN §3). */
/** The share of `total` that `deletes` are, as a message shows it: one decimal, so 41 of 394 reads 10.4%, not "10%" above a 10% limit. */
export function shareText(deletes: number, total: number): string {
  return `${((100 * deletes) / Math.max(1, total)).toFixed(1)}%`;
}

export function deleteGuardTrips(deletes: number, targetKeys: number): boolean {
  return deletes > 10 && deletes > targetKeys * 0.1;
}
