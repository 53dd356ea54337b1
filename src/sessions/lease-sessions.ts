import pLimit from 'p-limit';
import { isMigrateError } from '../errors.js';
import type { SourceReader, TargetStore, TxnOp } from '../stores/types.js';
import { parseStateDocument, STATE_SCHEMA_VERSION, type StatePaths } from '../state/state.js';

/** Consul's session TTL range (DESIGN §3). */
export const SESSION_TTL_MIN = 10;
export const SESSION_TTL_MAX = 86_400;
/** Session renewals a copy sends at once. */
const RENEWALS_IN_FLIGHT = 16;
/** Session records written in one txn: within the smallest op limit (64, before Consul 1.14). */
const RECORDS_PER_TXN = 64;

export interface TtlClamp {
  ttl: number;
  /** Set when the etcd TTL fell outside Consul's range. */
  clamped?: 'raised' | 'lowered';
}

/** An etcd lease TTL as a Consul session TTL: clamped to 10 s – 24 h. */
export function clampTtl(etcdTtl: number): TtlClamp {
  if (etcdTtl < SESSION_TTL_MIN) return { ttl: SESSION_TTL_MIN, clamped: 'raised' };
  if (etcdTtl > SESSION_TTL_MAX) return { ttl: SESSION_TTL_MAX, clamped: 'lowered' };
  return { ttl: Math.round(etcdTtl) };
}

/** The state document `sessions/<lease id>`: which Consul session mirrors an etcd lease. */
export interface SessionRecord {
  schemaVersion: number;
  leaseId: string;
  sessionId: string;
  ttlSeconds: number;
  etcdTtlSeconds: number;
  created: string;
}

export interface ClampFinding {
  leaseId: string;
  etcdTtl: number;
  sessionTtl: number;
  clamped: 'raised' | 'lowered';
}

/** A session record waiting for its txn, with the caller waiting on it. */
interface QueuedRecord {
  op: TxnOp;
  settle: (err?: unknown) => void;
}

/** The session records of one {@link LeaseSessions.ensureAll}: written once every lease of it has arrived. */
class RecordGroup {
  private readonly queued: QueuedRecord[] = [];

  constructor(private remaining: number, private readonly flush: (batch: readonly QueuedRecord[]) => void) {}

  /** A lease's new session to record; resolves once the record is written. */
  write(op: TxnOp): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ op, settle: (err) => (err === undefined ? resolve() : reject(err)) });
      this.arrived();
    });
  }

  /** A lease resolved (or failed) with nothing to record, or recorded through {@link write}. */
  arrived(): void {
    if (--this.remaining === 0 && this.queued.length > 0) this.flush(this.queued);
  }
}

/**
 * One Consul session per etcd lease, recorded under `sessions/` so that a
 * later run (a resumed copy, the dual-run) adopts it instead of creating a
 * second one: a second session could not lock keys the first one holds.
 */
/** Ended leases remembered (a few MB at most). */
const ENDED_KEPT = 100_000;

export class LeaseSessions {
  private readonly byLease = new Map<string, SessionRecord>();
  private readonly pending = new Map<string, Promise<string | undefined>>();
  private readonly expired = new Set<string>();
  readonly own = new Set<string>();
  /**
   * Leases whose session was replaced ({@link ensure} found the recorded one
   * gone: destroyed by hand, lost with Consul's data; or the dual-run re-created
   * it) and whose keys are not written again yet: the keys the old session held
   * went with it, and only the caller knows to write them again (the dual-run
   * does, then drops the lease from here).
   */
  readonly replaced = new Set<string>();
  readonly clamps: ClampFinding[] = [];
  created = 0;
  adopted = 0;
  /** Txns that wrote session records (a copy counts them with its own). */
  recordTxns = 0;
  private timer: NodeJS.Timeout | undefined;
  /** This migration's sessions no record names, by lease (see {@link takeOrphan}). */
  private orphans: Promise<Map<string, string[]>> | undefined;

  constructor(
    private readonly source: SourceReader,
    private readonly target: TargetStore,
    private readonly paths: StatePaths,
    private readonly migrationId: string,
    private readonly now: () => Date = () => new Date(),
    /** Told of each session whose TTL had to be clamped (the dual-run logs it; a copy reports {@link clamps}). */
    private readonly onClamp?: (finding: ClampFinding) => void,
  ) {}

  /** Reads the recorded sessions (the ones this migration owns). */
  async load(): Promise<void> {
    const keys = await this.target.listKeys(this.paths.sessions);
    for (const entry of await this.target.readEntries(keys, undefined, { listed: keys })) {
      const record = parseStateDocument<SessionRecord>(entry.key, entry.value);
      this.byLease.set(record.leaseId, record);
      this.own.add(record.sessionId);
    }
  }

  /**
   * Reads the records again and forgets what this run had resolved: after the
   * dual-run's re-baseline, whose copy made sessions for new leases (and
   * replaced lost ones) with a `LeaseSessions` of its own. Not reloaded, those
   * sessions went unrenewed until Consul reaped them with their keys, and the
   * leases got second sessions.
   */
  async reload(): Promise<void> {
    this.byLease.clear();
    this.pending.clear();
    this.own.clear();
    await this.load();
  }

  /**
   * The session mirroring `leaseId`: adopted (and renewed) when the recorded
   * one still exists in Consul, else created. Undefined when the etcd lease is gone.
   */
  async ensure(leaseId: string): Promise<string | undefined> {
    return (await this.ensureAll([leaseId])).get(leaseId);
  }

  /**
   * {@link ensure} for several leases at once (a copy's page, a dual-run
   * txn): the new sessions' records are written together once every lease
   * has its session, {@link RECORDS_PER_TXN} to a txn, so a dry-run sends as
   * many record txns as the copy it previews, however Consul's answers interleave.
   */
  async ensureAll(leaseIds: Iterable<string>): Promise<Map<string, string | undefined>> {
    const ids = [...new Set(leaseIds)];
    const fresh = ids.filter((id) => !this.pending.has(id));
    const group = new RecordGroup(fresh.length, (batch) => this.writeRecords(batch));
    for (const leaseId of fresh) {
      const resolving = this.resolveIn(leaseId, group);
      this.pending.set(leaseId, resolving);
      // A failure (Consul or etcd unreachable) is not kept: kept, every later write of the lease's keys failed
      // with it, and the dual-run, replaying them, stopped replicating for good after an outage.
      resolving.catch(() => {
        if (this.pending.get(leaseId) === resolving) this.pending.delete(leaseId);
      });
    }
    const resolving = ids.map((id) => this.pending.get(id)!);
    const sessions = await Promise.all(resolving);
    return new Map(ids.map((id, i) => [id, sessions[i]]));
  }

  /** {@link resolve} as one lease of `group`: it counts as arrived when it records a session or ends without one. */
  private async resolveIn(leaseId: string, group: RecordGroup): Promise<string | undefined> {
    let recorded = false;
    try {
      return await this.resolve(leaseId, (op) => {
        recorded = true;
        return group.write(op);
      });
    } finally {
      if (!recorded) group.arrived();
    }
  }

  private async resolve(leaseId: string, writeRecord: (op: TxnOp) => Promise<void>): Promise<string | undefined> {
    const recorded = this.byLease.get(leaseId);
    // Adopted by renewing it, not only by finding it: a session the last run stopped renewing may be
    // near the end of its TTL, and Consul reaped one (with its keys) before this run's first renewal,
    // half a TTL later, while the copy went on to exit 0 with the keys gone.
    if (recorded && (await this.target.renewSession(recorded.sessionId))) {
      this.adopted++;
      return recorded.sessionId;
    }
    if (recorded) this.replaced.add(leaseId);
    const lease = await this.source.readLease(leaseId);
    if (lease.ttl < 0) {
      this.ended(leaseId);
      return undefined;
    }
    const { ttl, clamped } = clampTtl(lease.grantedTtl);
    if (clamped) {
      const finding = { leaseId, etcdTtl: lease.grantedTtl, sessionTtl: ttl, clamped };
      this.clamps.push(finding);
      this.onClamp?.(finding);
    }
    // One a run made for the lease and died (kill -9) before recording: taken over, not left beside a second one.
    const orphan = await this.takeOrphan(leaseId);
    const sessionId = orphan ?? await this.target.createSession({ name: sessionName(this.migrationId, leaseId), ttlSeconds: ttl });
    const record: SessionRecord = { schemaVersion: STATE_SCHEMA_VERSION, leaseId, sessionId, ttlSeconds: ttl, etcdTtlSeconds: lease.grantedTtl, created: this.now().toISOString() };
    // Recorded before any key is locked with it: a run that dies after locking still finds the session.
    await writeRecord({ verb: 'set', key: this.paths.session(leaseId), value: Buffer.from(JSON.stringify(record)) });
    this.byLease.set(leaseId, record);
    this.own.add(sessionId);
    if (orphan) this.adopted++;
    else this.created++;
    return sessionId;
  }

  /**
   * A live session of this migration's name for `leaseId` that no record names: made by a run that
   * died between creating sessions and recording them. Listed once (a token that may not list
   * sessions adopts none); each is taken at most once, and only if it can still be renewed.
   */
  private async takeOrphan(leaseId: string): Promise<string | undefined> {
    this.orphans ??= this.target.listSessions().then((sessions) => {
      const prefix = sessionName(this.migrationId, '');
      const byLease = new Map<string, string[]>();
      for (const s of sessions) {
        if (!s.name.startsWith(prefix) || this.own.has(s.id)) continue;
        const lease = s.name.slice(prefix.length);
        byLease.set(lease, [...(byLease.get(lease) ?? []), s.id]);
      }
      return byLease;
    }, (err: unknown) => {
      if (isMigrateError(err) && err.code === 'consul_permission_denied') return new Map<string, string[]>();
      throw err;
    });
    const candidates = (await this.orphans).get(leaseId) ?? [];
    while (candidates.length > 0) {
      const id = candidates.shift()!;
      if (!this.own.has(id) && (await this.target.renewSession(id))) return id;
    }
    return undefined;
  }

  /** Writes session records, {@link RECORDS_PER_TXN} to a txn, and tells each caller how its own went. */
  private writeRecords(batch: readonly QueuedRecord[]): void {
    for (let i = 0; i < batch.length; i += RECORDS_PER_TXN) {
      const chunk = batch.slice(i, i + RECORDS_PER_TXN);
      this.target.applyTxn(chunk.map((q) => q.op)).then(() => {
        this.recordTxns++;
        chunk.forEach((q) => q.settle());
      }, (err: unknown) => chunk.forEach((q) => q.settle(err ?? new Error('session record write failed'))));
    }
  }

  /** Every lease this migration mirrors (recorded under `sessions/`). */
  records(): SessionRecord[] {
    return [...this.byLease.values()];
  }

  /** Remembers that `leaseId` ended (etcd never grants that id again while it could matter); the oldest are forgotten past {@link ENDED_KEPT}, so a dual-run that runs for months does not grow. */
  private ended(leaseId: string): void {
    this.expired.add(leaseId);
    if (this.expired.size > ENDED_KEPT) this.expired.delete(this.expired.values().next().value!);
  }

  /** The etcd lease ended: destroy its session (its keys are gone in etcd too) and drop the record. */
  async forget(leaseId: string, destroy: boolean): Promise<void> {
    const record = this.byLease.get(leaseId);
    this.byLease.delete(leaseId);
    this.pending.delete(leaseId);
    this.ended(leaseId);
    if (!record) return;
    this.own.delete(record.sessionId);
    if (destroy) await this.target.destroySession(record.sessionId);
    await this.target.deleteKey(this.paths.session(leaseId));
  }

  /**
   * Consul reaped the session of a live lease: make a new one (the caller
   * rewrites the keys). The old one is destroyed first: a server that has
   * just restarted can answer a renewal with "not found" before it has
   * restored its state, and the old session, alive after all, would go on
   * holding the lease's keys against the new one (Behavior delete: they go
   * with it, and the caller writes them again).
   */
  async recreate(leaseId: string): Promise<string | undefined> {
    const record = this.byLease.get(leaseId);
    if (record) {
      await this.target.destroySession(record.sessionId);
      this.own.delete(record.sessionId);
    }
    this.byLease.delete(leaseId);
    this.pending.delete(leaseId);
    return this.ensure(leaseId);
  }

  /**
   * Whether a session is this migration's: one it uses, or one it made for an
   * etcd lease it has since forgotten (the lease ended while Consul was down, so
   * the session could not be destroyed and still holds keys).
   */
  async isOurs(sessionId: string): Promise<boolean> {
    if (this.own.has(sessionId)) return true;
    return (await this.target.readSession(sessionId))?.name?.startsWith(sessionName(this.migrationId, '')) ?? false;
  }

  /**
   * Whether `holder`, a session this run does not own, is an older session of
   * the lease the recorded `session` mirrors: one a restarted Consul restored
   * after this run had made the recorded one (a renewal answered "not found"
   * before the server had its state back). It is destroyed (its keys go with
   * it, Behavior delete) and the lease marked replaced, so its keys are
   * written again with the recorded session. Returns that lease, if it was one.
   */
  async retireDuplicate(holder: string, session: string): Promise<string | undefined> {
    const leaseId = [...this.byLease.values()].find((r) => r.sessionId === session)?.leaseId;
    if (!leaseId) return undefined;
    if ((await this.target.readSession(holder))?.name !== sessionName(this.migrationId, leaseId)) return undefined;
    await this.target.destroySession(holder);
    this.replaced.add(leaseId);
    return leaseId;
  }

  /**
   * Renews every session this run uses, every half of the shortest TTL,
   * {@link RENEWALS_IN_FLIGHT} at a time; one round at a time, so thousands of
   * sessions do not pile rounds on top of each other.
   */
  startRenewing(onLost: (leaseId: string) => void): void {
    const active = () => [...this.pending.keys()].filter((l) => !this.expired.has(l) && this.byLease.has(l));
    let renewing = false;
    const tick = async () => {
      if (renewing) return;
      renewing = true;
      const limit = pLimit(RENEWALS_IN_FLIGHT);
      try {
        await Promise.all(active().map((leaseId) => limit(async () => {
          const record = this.byLease.get(leaseId);
          if (record && !(await this.target.renewSession(record.sessionId).catch(() => true))) onLost(leaseId);
        })));
      } finally {
        renewing = false;
      }
    };
    this.timer = setInterval(() => void tick(), (SESSION_TTL_MIN * 1000) / 2);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}

/** The name of the session mirroring etcd lease `leaseId` for migration `migrationId`. */
function sessionName(migrationId: string, leaseId: string): string {
  return `migrate ${migrationId} etcd lease ${leaseId}`;
}
