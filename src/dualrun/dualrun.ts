import { hostname } from 'node:os';
import pLimit from 'p-limit';
import { ExitCode, RefusedError, isMigrateError, type MigrateError } from '../errors.js';
import type { MigrationConfig } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import { formatKey } from '../report/keys.js';
import { ConsulTooLargeError, TxnFailedError, isRetryable, sleep } from '../stores/consul-http.js';
import { SourceCompactedError, unorderedProgress } from '../stores/etcd.js';
import { watchSpan } from '../mapping/watch-span.js';
import { TxnBatcher, batchCapacity, groupFitsInTxn, packTxnBatches, wireOpBytes, type TargetLimits } from '../stores/txn-batcher.js';
import type { KeyRange, SourceEntry, SourceEvent, SourceReader, SourceWatch, TargetEntry, TargetStore, TxnOp, WatchMessage } from '../stores/types.js';
import { LeaseSessions, type SessionRecord } from '../sessions/lease-sessions.js';
import { checkIdentity, ensureMeta, leftBehind, mappingHash, parseStateDocument, readState, recordedRules, statePaths, type StateMeta, STATE_SCHEMA_VERSION, type IdentityVerdict, type StatePaths } from '../state/state.js';
import { copyRunning, deleteGuardError, refuseWhileCopyRuns, type CheckpointState, type CopyOptions, type CopyResult, type CopyState } from '../copy/copy.js';
import { LEADER_TTL_SECONDS, LeaderLock } from './leader.js';
import { runningCopy } from '../copy/lock.js';
import { currentOwner, ownedByConsul, ownerAt, ownersKey, type OwnersDoc } from '../cutover/phase.js';
import { readOwnership, readRuleDocs, recordTrip, refuseOwnedMappingChanges } from '../cutover/state-io.js';
import { findRule } from '../mapping/route.js';
import type { BlockingReader } from '../stores/consul-blocking.js';
import { PollingReader } from '../stores/consul-blocking.js';
import type { SourceWriteOp, SourceWriter } from '../stores/etcd-writer.js';
import { Ownership, ReverseMirror } from './reverse-mirror.js';
import { OwnWrites } from './own-writes.js';
import { TRIP_KEYS_KEPT } from '../cutover/phase.js';
import { planRevision, routeForReplication, type RevisionPlan } from './plan-revision.js';
import { LAG_HEARTBEAT_MS, LagHeartbeat, type HeartbeatLag } from './lag-heartbeat.js';
import { ServiceMirror, type ServiceMirrorStats } from '../services/mirror.js';
import { SeenRevisions } from './seen-revisions.js';
import { DUALRUN_TXN_RESERVE } from './reserve.js';
import { putLarge } from '../stores/large-put.js';
import { refuseOverlappingMigrations } from '../state/migrations.js';

/** Counters and gauges of a running dual-run (exported as Prometheus metrics). */
export interface DualRunStats {
  role: 'starting' | 'standby' | 'leader' | 'stopped';
  checkpoint: number;
  etcdRevision: number;
  /** When the checkpoint last equalled etcd's current revision (ms since epoch). */
  caughtUpAt: number;
  /** etcd's revision as the watch last heard it, taken by the applier or still queued (see {@link SeenRevisions}). */
  seenRevision: number;
  /** Since when (ms since epoch) a revision the watch heard past the checkpoint has waited; undefined when none waits. */
  behindSince?: number;
  /**
   * When the leader last wrote its checkpoint (ms since epoch): with every txn, and at least every
   * HEARTBEAT_MS on an idle etcd. Older than twice that, etcd or Consul is not answering.
   */
  checkpointWrittenAt: number;
  connected: boolean;
  /**
   * When Consul last answered a standby (ms since epoch): it asks every second or so, but a Consul
   * that holds its requests open (a black hole) fails none of them for a minute.
   */
  consulAnsweredAt?: number;
  /** Whether the leader has opened its etcd watch since it took the lead: not while it sets up (reads the checkpoint, renews the sessions). */
  started: boolean;
  events: number;
  ops: number;
  txns: number;
  checkpointOnlyTxns: number;
  splitRevisions: number;
  largePuts: number;
  /** etcd puts under a copy rule that Consul cannot take (key not servable, value over the limit): not replicated. */
  unmappable: number;
  rebaselines: number;
  repairs: number;
  sessions: number;
  /** Sessions of live etcd leases Consul no longer had while this dual-run led (renewed too late, or destroyed), made again with their keys. */
  sessionsRecreated: number;
  errors: Record<string, number>;
  /** Writes to etcd under a rule owned by Consul that the reverse mirror did not make, per rule. */
  lateWrites: Record<string, number>;
  /** etcd ops the reverse mirrors applied (Consul → etcd). */
  reverseOps: number;
  /** Deletes the reverse mirror refused to derive (delete guard). */
  guardTrips: number;
  /** Rules whose reverse mirror runs. */
  reverseRules: number;
  /** Rules whose reverse mirror has failed since (ms since epoch) and not completed a pass since: /healthz is not ready once one fails 10 s. */
  mirrorsFailing: Record<string, number>;
  /** The end-to-end lag the heartbeat key measures (with `--heartbeat-key`). */
  heartbeat?: HeartbeatLag;
  /** `service` rules: instances kept in the catalog (with service rules only). */
  services?: ServiceMirrorStats;
  /** With rules in several datacenters (issue 11): each one's own progress, the primary's included. */
  datacenters?: Record<string, DatacenterStats>;
}

/** How far one datacenter's replication has come (each keeps its own checkpoint). */
export type DatacenterStats = Pick<DualRunStats, 'role' | 'checkpoint' | 'etcdRevision' | 'caughtUpAt' | 'checkpointWrittenAt' | 'connected' | 'started' | 'events' | 'ops' | 'txns' | 'rebaselines' | 'sessions' | 'errors'>;

/**
 * One datacenter the dual-run writes to: its view of the rules and the target
 * addressing it. The primary lane holds the leader lock of the whole dual-run;
 * every other lane holds a lock of its own in its datacenter, which its txns
 * check, so a paused former leader cannot write there either.
 */
export interface DualRunLane {
  datacenter: string;
  primary: boolean;
  target: TargetStore;
  config: MigrationConfig;
  mapping: Mapping;
  /** Blocking queries on this datacenter; polled without. */
  blocking?: BlockingReader;
}

export interface DualRunLog {
  (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>): void;
}

/** One key read at the checkpoint only to learn whether etcd still has that revision: the first of the watched range, which the role may read. */
function checkpointProbe(range: KeyRange): KeyRange {
  return { start: range.start, end: Buffer.concat([range.start, Buffer.from([0])]) };
}

/** How often a standby (--ha) looks again whether the copy that keeps it from leading has ended (ms). */
const COPY_WAIT_MS = 5000;
/** How often a lease pass runs (ms): it renews the sessions that are due and notices leases etcd ended. */
const LEASE_EVERY_MS = 3000;
/** Leases a pass checks at once (an etcd lease read and a Consul renewal each). */
const LEASE_CHECKS_IN_FLIGHT = 16;
/** The longest a lease goes unchecked whatever its TTL (ms): a session lost another way (destroyed by hand) comes back within it. */
const LEASE_CHECK_MAX_MS = 60_000;

export interface DualRunOptions {
  ha: boolean;
  baseline: boolean;
  acceptMappingChange: boolean;
  /** A re-baseline after compaction may delete past the delete guard (`--allow-mass-delete`). */
  allowMassDelete?: boolean;
  signal: AbortSignal;
  toolVersion: string;
  log: DualRunLog;
  /** Runs the copy for `--baseline` and for re-baselines after compaction (the copy stage's service), in one lane's datacenter. */
  copy: (options: Partial<CopyOptions>, lane: DualRunLane) => Promise<CopyResult>;
  /** How often to ask etcd for watch progress while idle (ms). */
  progressEveryMs?: number;
  /** How often to check leases and renew their sessions (ms). */
  leaseEveryMs?: number;
  /** The etcd key the leader writes the time to every second, to time the lag end to end (outside every copy rule; needs `writer`). */
  heartbeatKey?: Buffer;
  onStats?: (stats: DualRunStats) => void;
}

export interface DualRunSummary {
  stats: DualRunStats;
  /** Why the loop ended. */
  reason: 'signal' | 'leadership-lost';
  /** Whether it led when it stopped: a standby's checkpoint is the one it reached when it last led, not the migration's. */
  leading: boolean;
}

export interface DualRunDeps {
  source: SourceReader;
  /** Writes to etcd for the reverse mirror after a cutover; without it a cut-over rule is not mirrored back (logged). */
  writer?: SourceWriter;
  /** Every datacenter the rules write to, the primary's first (one lane without `datacenters:` in the rules). */
  lanes: DualRunLane[];
}

/** The etcd range one ordered watch must cover to see every copy and service rule. */
export function watchRange(mapping: Mapping): KeyRange {
  const span = watchSpan(mapping);
  if (!span) {
    throw new RefusedError('dualrun_no_rules', 'migration.yaml has no copy or service rule: the dual-run has nothing to mirror.', { hint: 'Add a rule with action: copy or action: service (see `migrate init`).' });
  }
  return span;
}

/**
 * `migrate dualrun`: replicates every etcd change under the copy rules into
 * Consul, in revision order, one revision per txn when it fits, each txn
 * carrying the checkpoint and the leader check (DESIGN §3).
 */
export async function runDualRun(deps: DualRunDeps, options: DualRunOptions): Promise<DualRunSummary> {
  const { source, lanes } = deps;
  const primaryLane = lanes.find((l) => l.primary) ?? lanes[0]!;
  const secondaryLanes = lanes.filter((l) => l !== primaryLane);
  const newStats = (): DualRunStats => ({
    role: 'starting', checkpoint: 0, etcdRevision: 0, caughtUpAt: Date.now(), seenRevision: 0, checkpointWrittenAt: Date.now(), connected: false, started: false, events: 0, ops: 0, txns: 0, checkpointOnlyTxns: 0,
    splitRevisions: 0, largePuts: 0, unmappable: 0, rebaselines: 0, repairs: 0, sessions: 0, sessionsRecreated: 0, errors: {}, lateWrites: {}, reverseOps: 0, guardTrips: 0, reverseRules: 0, mirrorsFailing: {},
  });
  // Nothing to mirror: refused before a server is asked or the lock taken.
  if (secondaryLanes.length === 0) watchRange(primaryLane.mapping);
  const stats = newStats();
  const laneStats = new Map<DualRunLane, DualRunStats>([[primaryLane, stats], ...secondaryLanes.map((l): [DualRunLane, DualRunStats] => [l, newStats()])]);
  const publish = () => {
    const snapshot: DualRunStats = { ...stats, errors: { ...stats.errors }, lateWrites: { ...stats.lateWrites }, mirrorsFailing: { ...stats.mirrorsFailing }, ...(stats.heartbeat ? { heartbeat: { ...stats.heartbeat } } : {}), ...(stats.services ? { services: { ...stats.services } } : {}) };
    if (secondaryLanes.length > 0) {
      snapshot.datacenters = Object.fromEntries(lanes.map((lane) => {
        const s = laneStats.get(lane)!;
        return [lane.datacenter, { role: s.role, checkpoint: s.checkpoint, etcdRevision: Math.max(s.etcdRevision, stats.etcdRevision), caughtUpAt: s.caughtUpAt, checkpointWrittenAt: s.checkpointWrittenAt, connected: s.connected, started: s.started, events: s.events, ops: s.ops, txns: s.txns, rebaselines: s.rebaselines, sessions: s.sessions, errors: { ...s.errors } }];
      }));
    }
    options.onStats?.(snapshot);
  };
  const status = await source.status();
  const paths = statePaths(primaryLane.config.state.prefix, primaryLane.config.id);
  const info = await primaryLane.target.info();
  // Before the new mapping is recorded: refused, the next start sees the change again.
  if (options.acceptMappingChange) await refuseCutOverMappingChanges(lanes);
  await refuseOverlappingMigrations(primaryLane.target, primaryLane.config, (text) => options.log('warn', text));
  const identity = { id: primaryLane.config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(primaryLane.config), rules: recordedRules(primaryLane.config) };
  // Refused before the first write (meta): a dual-run with nothing to start from wrote the migration's identity, and a
  // mapping edited before the first copy was then refused as a change.
  if (!options.baseline && !(await readState<CheckpointState>(primaryLane.target, paths.checkpoint())) && (await runningCopy(primaryLane.target, primaryLane.config)) === undefined) {
    // A recorded identity that does not match is the first thing to say (another cluster, datacenter or mapping).
    checkIdentity(await readState<StateMeta>(primaryLane.target, paths.meta), identity, { acceptMappingChange: options.acceptMappingChange });
    throw noCheckpoint(primaryLane.config, await readState<CopyState>(primaryLane.target, paths.copy));
  }
  const verdict = await ensureMeta(primaryLane.target, paths, identity, options.toolVersion, new Date(), { acceptMappingChange: options.acceptMappingChange, deferMappingChange: true });
  const mappingChanged = recordedOnceInForce(verdict, () => ensureMeta(primaryLane.target, paths, identity, options.toolVersion, new Date(), { acceptMappingChange: true }));
  if (verdict === 'mapping-changed') {
    // Not the data of rules Consul owns: the applications' own (a finalized rule removed from migration.yaml).
    const owned = new Set([...(await readRuleDocs(primaryLane.target, paths)).values()].filter((d) => ownedByConsul(d.doc)).map((d) => d.doc.rule));
    for (const left of leftBehind((await readState<StateMeta>(primaryLane.target, paths.meta))?.rules, primaryLane.config, owned)) {
      options.log('warn', `mapping change: rule ${left.rule}'s keys under ${left.to} stay in Consul and are replicated no more (${left.why}); nothing deletes them (but a leased key, with its session, when its etcd lease ends): remove them once no application reads them (consul kv delete -recurse ${left.to})`, { rule: left.rule, prefix: left.to });
    }
  }
  const holder = `${hostname()}:${process.pid}`;

  for (;;) {
    const leader = new LeaderLock(primaryLane.target, paths.leader, holder);
    stats.role = 'standby';
    publish();
    const acquired = await leader.acquire({ wait: options.ha, signal: options.signal, ...standbyRetries(options.log, stats, publish), onWaiting: (leading) => options.log('info', `standby: another dual-run leads this migration (${leading}); waiting for its lock`, { leader: leading }) });
    if (!acquired) {
      await leader.release();
      stats.role = 'stopped';
      return { stats, reason: 'signal', leading: false };
    }
    let copying: string | undefined;
    try {
      copying = await runningCopy(primaryLane.target, primaryLane.config);
      if (copying !== undefined && !options.ha) throw copyRunning(primaryLane.config, copying);
      // This process checked the mapping when it started; a standby may lead hours later. Rules may have been cut over
      // since (with a changed to, a reverse mirror would write etcd from the wrong Consul prefix, deleting the rule's keys
      // there), or another dual-run may have recorded another mapping: checked again before this leadership writes.
      if (copying === undefined) {
        if (options.acceptMappingChange) await refuseCutOverMappingChanges(lanes);
        mappingChanged.pending = (await ensureMeta(primaryLane.target, paths, identity, options.toolVersion, new Date(), { acceptMappingChange: options.acceptMappingChange, deferMappingChange: true })) === 'mapping-changed';
      }
    } catch (err) {
      await leader.release();
      throw err;
    }
    if (copying !== undefined) {
      await leader.release();
      // A standby (--ha) waits for the copy to end, as it waits for the lock: replicas of a Deployment must not crash-loop meanwhile.
      options.log('warn', `A copy of migration "${primaryLane.config.id}" is running (it holds the copy lock: ${copying}): waiting for it to end (checked every ${COPY_WAIT_MS / 1000} s)`);
      // A standby that Consul answers (it read the copy's lock): ready, as one waiting for the leader lock.
      stats.connected = true;
      publish();
      await sleep(COPY_WAIT_MS, options.signal).catch(() => undefined);
      if (!options.signal.aborted) continue;
      stats.role = 'stopped';
      return { stats, reason: 'signal', leading: false };
    }
    const lost = new AbortController();
    leader.keepAlive((why) => {
      // A warning: the process goes on, as a standby under --ha, or taking the lock again.
      options.log('warn', `lost the leader lock (${LOST_WHY[why]}); stepping down`);
      // Not the leader from now on, for /metrics and /healthz too, however long the stopping takes against a Consul that does not answer.
      stats.role = 'standby';
      publish();
      lost.abort();
    }, { unconfirmed: options.ha });
    stats.role = 'leader';
    stats.checkpointWrittenAt = Date.now();
    options.log('info', 'leading the dual-run', { holder });
    // The other datacenters follow while this process leads; one that fails for good stops them all.
    const lanesStop = new AbortController();
    let fatal: unknown;
    const failed = (err: unknown) => {
      fatal ??= err;
      lost.abort();
    };
    const following = secondaryLanes.map((lane) => followLane({ source, lane, stats: laneStats.get(lane)!, publish, writer: deps.writer, holder, shared: stats }, { ...options, signal: AbortSignal.any([options.signal, lanesStop.signal, lost.signal]) }).catch(failed));
    let reason: DualRunSummary['reason'];
    try {
      reason = primaryLane.mapping.copyRules.length + primaryLane.mapping.serviceRules.length > 0 || secondaryLanes.length === 0
        ? await lead({ source, lane: primaryLane, target: primaryLane.target, config: primaryLane.config, mapping: primaryLane.mapping, paths, range: watchRange(primaryLane.mapping), leader, lost: lost.signal, stats, publish, writer: deps.writer, blocking: primaryLane.blocking ?? new PollingReader(primaryLane.target), mappingChanged, fail: failed }, options)
        : await holdLead(options.signal, lost.signal);
    } finally {
      lanesStop.abort();
      await Promise.all(following);
      await leader.release();
    }
    if (fatal) throw fatal;
    if (reason === 'signal') {
      stats.role = 'stopped';
      for (const s of laneStats.values()) s.role = 'stopped';
      publish();
      return { stats, reason, leading: true };
    }
    // Lost the lock (Consul reaped our session: an outage, a paused process). A standby waits to lead
    // again; without --ha the lock is taken again at once, from the checkpoint, or, when another
    // dual-run took it meanwhile, the process stops with dualrun_locked (exit 4) rather than exit 0.
    options.log('warn', options.ha ? 'stepped down; waiting to lead again' : 'stepped down; taking the leader lock again');
  }
}

/** Why a leader lost its lock, in its log line. */
const LOST_WHY = {
  expired: 'Consul no longer knows our session: it expired',
  unconfirmed: `Consul has not confirmed our session for ${LEADER_TTL_SECONDS} s, its TTL: it may have expired and another dual-run may lead`,
} as const;

/**
 * Why the replication must start with a re-baseline, if it must: the rules changed (accepted with
 * `--accept-mapping-change`), or a copy rule Consul does not own was never copied whole (added to
 * migration.yaml since the copy, or a re-baseline for that reason cut short). Replaying the watch from
 * the checkpoint brings over only what changes, so such a rule's other keys would stay missing.
 */
async function uncopiedRules(ctx: LeadContext): Promise<string | undefined> {
  if (ctx.mappingChanged.pending) return 'migration.yaml\'s rules changed since the migration recorded them (--accept-mapping-change)';
  const copy = await readState<CopyState>(ctx.target, ctx.paths.copy);
  if (!copy) return undefined;
  const phases = await readRuleDocs(ctx.target, ctx.paths);
  const uncopied = ctx.mapping.copyRules.filter((r) => phases.get(r.name)?.doc.owner !== 'consul' && !copy.rules[r.name]?.done).map((r) => r.name);
  return uncopied.length > 0 ? `rule(s) ${uncopied.join(', ')} were never copied whole` : undefined;
}

/** `--accept-mapping-change` of what Consul owns: refused (see {@link refuseOwnedMappingChanges}). */
async function refuseCutOverMappingChanges(lanes: readonly DualRunLane[]): Promise<void> {
  for (const lane of lanes) {
    // The primary must answer; another datacenter that does not answer now goes unchecked (its lane waits for it).
    await refuseOwnedMappingChanges(lane.target, statePaths(lane.config.state.prefix, lane.config.id), lane.config, lane.mapping, lanes.length > 1 ? ` in datacenter ${lane.datacenter}` : '').catch((err: unknown) => {
      if (lane.primary || !isTransient(err)) throw err;
    });
  }
}

/**
 * At the start, and when etcd answers that the checkpoint is a future revision: an etcd whose revision is
 * below the checkpoint went back in time (restored from a backup, or another cluster with its id). Waiting for it to pass the
 * checkpoint would skip what it makes meanwhile (those revisions are others than the ones replicated):
 * refused (etcd_behind_checkpoint, exit 4). A member lagging behind the others is waited for.
 */
async function refuseEtcdBehind(ctx: Pick<LeadContext, 'source' | 'target' | 'paths'>, checkpoint: Pick<CheckpointState, 'revision' | 'rewound'>): Promise<void> {
  const refusal = (found: string) => new RefusedError('etcd_behind_checkpoint', `${found} the migration's checkpoint ${checkpoint.revision}: etcd went back in time (restored from a backup, or replaced by a cluster with the same id). Consul holds changes up to revision ${checkpoint.revision} that etcd may no longer have, and the revisions etcd makes now are not the ones the checkpoint counts. No data was written; the finding is recorded with the checkpoint, so the dual-run refuses to start, whatever etcd's revision, until a copy puts the checkpoint back.`, {
    hint: 'Decide which store holds the data to keep. To make Consul match etcd again: run `migrate copy --delete-extraneous` (it copies at etcd\'s current revision and moves the checkpoint back to it), then start the dual-run. A rule cut over keeps the applications\' writes in Consul: copy leaves it alone.',
  });
  // Found before: etcd's writers may have taken it past the checkpoint since, with other revisions than the ones replicated.
  if (checkpoint.rewound) throw refusal(`A dual-run found etcd's revision ${checkpoint.rewound.etcdRevision} below (${checkpoint.rewound.found})`);
  const head = (await ctx.source.status().catch(() => undefined))?.revision;
  if (head === undefined || head >= checkpoint.revision) return;
  // Recorded in the checkpoint (if it is still the one read): the next start refuses too, whatever etcd's revision by then.
  // (Best effort: the refusal stands whether it is recorded or not.)
  await (async () => {
    const entry = await ctx.target.readKey(ctx.paths.checkpoint());
    if (!entry) return;
    const doc: CheckpointState = { ...parseStateDocument<CheckpointState>(ctx.paths.checkpoint(), entry.value), rewound: { etcdRevision: head, found: new Date().toISOString() } };
    await ctx.target.applyTxn([{ verb: 'cas', key: ctx.paths.checkpoint(), value: Buffer.from(JSON.stringify(doc)), index: entry.modifyIndex }]);
  })().catch(() => undefined);
  throw refusal(`etcd's revision ${head} is below`);
}

/**
 * The owners document went back to an older version (Consul restored from a snapshot; no cutover or rollback
 * writes an older one): rules cut over since are owned by etcd again in the restored state, with nothing
 * said to the applications that write them in Consul.
 */
function warnOwnersRewound(before: OwnersDoc | undefined, after: OwnersDoc | undefined, log: DualRunLog): void {
  const undone = Object.keys(before?.rules ?? {}).filter((name) => currentOwner(before, name) === 'consul' && currentOwner(after, name) !== 'consul');
  log('warn', `the owners document went back in time (Consul restored from a snapshot?)${undone.length > 0 ? `: rule(s) ${undone.join(', ')}, cut over before, are owned by etcd in the restored state; what applications write to them in Consul no longer reaches etcd, and etcd's changes are replicated over it. Check \`migrate status\`, then cut them over again` : ''}`, { rules: undone });
}

/** The primary lane when every rule goes to other datacenters: it only holds the lock. */
async function holdLead(signal: AbortSignal, lost: AbortSignal): Promise<DualRunSummary['reason']> {
  const both = AbortSignal.any([signal, lost]);
  if (!both.aborted) await new Promise<void>((resolve) => both.addEventListener('abort', () => resolve(), { once: true }));
  return lost.aborted && !signal.aborted ? 'leadership-lost' : 'signal';
}

/**
 * Replication into one datacenter other than the primary, while this process
 * leads: its own lock (`_migrate/<id>/leader` in that datacenter, checked by
 * its txns), its own checkpoint and watch. A datacenter that does not answer
 * does not stop the others: its lane retries with backoff, its lag grows and
 * shows in the stats, and it resumes from its own checkpoint when it returns.
 */
async function followLane(run: { source: SourceReader; lane: DualRunLane; stats: DualRunStats; publish: () => void; writer: SourceWriter | undefined; holder: string; shared: DualRunStats }, options: DualRunOptions): Promise<void> {
  const { lane, stats } = run;
  const dc = lane.datacenter;
  const paths = statePaths(lane.config.state.prefix, lane.config.id);
  const log: DualRunLog = (level, message, fields) => options.log(level, `${dc}: ${message}`, { datacenter: dc, ...fields });
  let backoff = 1000;
  let metaChecked = false;
  let mappingChanged: MappingChange = { pending: false, record: async () => undefined };
  while (!options.signal.aborted) {
    const lock = new LeaderLock(lane.target, paths.leader, run.holder, `dual-run leader in ${dc}`);
    try {
      if (!metaChecked) {
        const status = await run.source.status();
        const info = await lane.target.info();
        const identity = { id: lane.config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(lane.config), rules: recordedRules(lane.config) };
        const verdict = await ensureMeta(lane.target, paths, identity, options.toolVersion, new Date(), { acceptMappingChange: options.acceptMappingChange, deferMappingChange: true });
        mappingChanged = recordedOnceInForce(verdict, () => ensureMeta(lane.target, paths, identity, options.toolVersion, new Date(), { acceptMappingChange: true }));
        metaChecked = true;
      }
      stats.role = 'standby';
      run.publish();
      // Free unless a former leader's session still holds it; that one expires within 2× its TTL.
      const acquired = await lock.acquire({ wait: true, signal: options.signal, ...standbyRetries(log, stats, run.publish), onWaiting: () => log('info', 'waiting for the lock in this datacenter (held by a former leader until its session expires)') });
      if (!acquired) break;
      await refuseWhileCopyRuns(lane.target, lane.config);
      const lost = new AbortController();
      lock.keepAlive((why) => {
        log('warn', `lost the lock in this datacenter (${LOST_WHY[why]}); taking it again`);
        stats.role = 'standby';
        run.publish();
        lost.abort();
      }, { unconfirmed: options.ha });
      let failure: unknown;
      const fail = (err: unknown) => {
        failure ??= err;
        lost.abort();
      };
      stats.role = 'leader';
      stats.checkpointWrittenAt = Date.now();
      log('info', 'replicating into this datacenter');
      backoff = 1000;
      const reason = await lead({ source: run.source, lane, target: lane.target, config: lane.config, mapping: lane.mapping, paths, range: watchRange(lane.mapping), leader: lock, lost: lost.signal, stats, publish: run.publish, writer: run.writer, blocking: lane.blocking ?? new PollingReader(lane.target), mappingChanged, fail }, { ...options, log, heartbeatKey: undefined });
      if (failure) throw failure;
      if (reason === 'signal') break;
    } catch (err) {
      if (options.signal.aborted) break;
      if (!isTransient(err)) throw err;
      const kind = isMigrateError(err) ? err.code : 'internal';
      stats.errors[kind] = (stats.errors[kind] ?? 0) + 1;
      stats.connected = false;
      run.publish();
      log('warn', `${(err as Error).message}; retrying in ${backoff} ms (the other datacenters go on)`);
      await sleep(backoff, options.signal);
      backoff = Math.min(30_000, backoff * 2);
    } finally {
      await lock.release();
    }
  }
  stats.role = 'stopped';
  stats.connected = false;
  run.publish();
}

/**
 * A mapping change accepted with `--accept-mapping-change`: recorded in `meta`
 * only once the re-baseline that puts it in force is done. Recorded before, a
 * re-baseline the delete guard refused left the new mapping recorded and never
 * applied: the next start saw no change, re-baselined nothing, and the keys the
 * change moved or dropped stayed in Consul.
 */
interface MappingChange {
  pending: boolean;
  record: () => Promise<unknown>;
}

function recordedOnceInForce(verdict: IdentityVerdict, record: () => Promise<unknown>): MappingChange {
  return { pending: verdict === 'mapping-changed', record };
}

interface LeadContext {
  source: SourceReader;
  lane: DualRunLane;
  target: TargetStore;
  config: MigrationConfig;
  mapping: Mapping;
  paths: StatePaths;
  range: KeyRange;
  leader: LeaderLock;
  lost: AbortSignal;
  stats: DualRunStats;
  publish: () => void;
  writer: SourceWriter | undefined;
  blocking: BlockingReader;
  /** The rules changed since the migration recorded them, and the change was accepted: re-baseline first (cleared once done, by whichever leadership does it). */
  mappingChanged: MappingChange;
  /** Ends the dual-run with `err` (a fault found off the replication's own path, as the owners follower's). */
  fail: (err: unknown) => void;
}

class LeadershipLost extends Error {}

/** Late writes of a rule logged one by one in a window; the rest are counted only. */
const LATE_LINES_PER_WINDOW = 10;
const LATE_LOG_WINDOW_MS = 60_000;

/**
 * The owners document as the dual-run takes it, read with the rule documents it must agree with
 * ({@link readOwnership}: one that disagrees with them is refused, state_inconsistent). One missing while
 * rule documents say Consul owns a rule (deleted by hand) is rebuilt from them and written back, said in
 * the log: taken as missing, those rules would be etcd's again, and etcd's changes replicated over what
 * applications write to Consul. So is a rule document missing while the owners document says Consul owns
 * the rule: applications that read it (the Node client) would write to etcd again.
 */
async function readOwners(target: TargetStore, paths: StatePaths, log: DualRunLog): Promise<{ doc: OwnersDoc | undefined; index: number }> {
  for (;;) {
    const read = await readOwnership(target, paths);
    if (!read.rebuilt && read.rebuiltRules.length === 0) return read.owners;
    const owned = Object.keys(read.owners.doc?.rules ?? {}).filter((rule) => currentOwner(read.owners.doc, rule) === 'consul');
    try {
      if (read.rebuilt) {
        const index = await target.applyTxn([{ verb: 'cas', key: ownersKey(paths), value: Buffer.from(JSON.stringify(read.owners.doc)), index: 0 }]);
        log('warn', `the owners document was missing while the rule documents say Consul owns rule(s) ${owned.join(', ')} (deleted by hand?): rebuilt from them, so those rules stay Consul's`, { rules: owned });
        return { doc: read.owners.doc, index: index ?? 0 };
      }
      // Only if the owners document is still the one they were rebuilt from.
      await target.applyTxn([
        { verb: 'check-index', key: ownersKey(paths), index: read.owners.index },
        ...read.rebuiltRules.map((rule): TxnOp => ({ verb: 'cas', key: paths.rule(rule), value: Buffer.from(JSON.stringify(read.docs.get(rule)!.doc)), index: 0 })),
      ]);
      log('warn', `the rule document of rule(s) ${read.rebuiltRules.join(', ')} was missing while the owners document says Consul owns them (deleted by hand?): rebuilt from it, so applications that read it keep writing to Consul`, { rules: read.rebuiltRules });
      return read.owners;
    } catch (err) {
      // Written meanwhile (a cutover, another dual-run): read again.
      if (!(err instanceof TxnFailedError)) throw err;
    }
  }
}

/** The owners fence failed: a cutover, rollback or finalize happened since the txn was planned. */
class OwnersChanged extends Error {}

/** The checkpoint in Consul is older than the one this dual-run committed: Consul was restored from a snapshot. */
class StateRewound extends Error {
  constructor(readonly revision: number, readonly committed: number) {
    super(`Consul's checkpoint is at revision ${revision}, below the ${committed} this dual-run committed`);
  }
}

import { HEARTBEAT_MS } from './heartbeat.js';

export { HEARTBEAT_MS };

/** What the replication of one lane works with, once read from Consul (and etcd) after the lock was taken. */
interface LeadSetup {
  sessions: LeaseSessions;
  ownership: Ownership;
  own: OwnWrites;
  heartbeat: LagHeartbeat | undefined;
  services: ServiceMirror;
  applier: Applier;
  /** Why the replication starts with a re-baseline, if it does ({@link uncopiedRules}). */
  rebaselineFirst: string | undefined;
  /** When the checkpoint it starts from was written (ms since epoch): etcd's revisions past it have waited since then at most. */
  checkpointWrittenAt: number;
}

/**
 * Sets up what {@link lead} replicates with. Consul or etcd unreachable meanwhile is waited out with backoff,
 * the lock still held: a server that went away in the second after the lock was taken used to end the dual-run (exit 3).
 */
async function setUpLead(ctx: LeadContext, options: DualRunOptions): Promise<LeadSetup | DualRunSummary['reason']> {
  // At most 5 s apart: each attempt renews the sessions, which Consul reaps 2× their TTL (10 s at least) after the last renewal.
  for (let backoff = 250; ; backoff = Math.min(5000, backoff * 2)) {
    try {
      return await trySetUpLead(ctx, options);
    } catch (err) {
      if (options.signal.aborted) return 'signal';
      if (err instanceof LeadershipLost || ctx.lost.aborted) return 'leadership-lost';
      if (!isTransient(err)) throw err;
      const kind = isMigrateError(err) ? err.code : 'internal';
      ctx.stats.errors[kind] = (ctx.stats.errors[kind] ?? 0) + 1;
      ctx.publish();
      options.log('warn', `${(err as Error).message}; setting up the replication again in ${backoff} ms`);
      await sleep(backoff, AbortSignal.any([options.signal, ctx.lost]));
      if (options.signal.aborted) return 'signal';
      if (ctx.lost.aborted) return 'leadership-lost';
    }
  }
}

/** No checkpoint and no --baseline: nothing says from which revision to replicate. */
function noCheckpoint(config: MigrationConfig, started: CopyState | undefined): RefusedError {
  return new RefusedError('dualrun_no_checkpoint', `Migration "${config.id}" has no checkpoint: nothing says from which etcd revision to replicate.`, {
    hint: started && !started.completed
      ? 'Run `migrate copy --resume` first (a copy started and did not finish; it leaves the checkpoint when it does), or start with `migrate dualrun --baseline` to copy now.'
      : 'Run `migrate copy` first (it leaves the checkpoint), or start with `migrate dualrun --baseline` to copy now.',
  });
}

async function trySetUpLead(ctx: LeadContext, options: DualRunOptions): Promise<LeadSetup> {
  const { source, target, paths, stats } = ctx;
  let checkpointDoc = await readState<CheckpointState>(target, paths.checkpoint());
  if (!checkpointDoc) {
    if (!options.baseline) {
      throw noCheckpoint(ctx.config, await readState<CopyState>(target, paths.copy));
    }
    options.log('info', 'no checkpoint: running the baseline copy first');
    await options.copy({}, ctx.lane);
    checkpointDoc = await readState<CheckpointState>(target, paths.checkpoint());
    if (!checkpointDoc) throw new Error('internal: the baseline copy left no checkpoint');
  }
  stats.checkpoint = checkpointDoc.revision;
  ctx.publish();
  // Before anything is written (the copy's checkpoint is taken over below).
  await refuseEtcdBehind(ctx, checkpointDoc);
  // Said once per TTL: an application granting a 6 s lease per request made hundreds of the same line.
  const clampsSaid = new Set<number>();
  const sessions = new LeaseSessions(source, target, paths, ctx.config.id, undefined, (c) => {
    if (clampsSaid.has(c.etcdTtl)) return;
    clampsSaid.add(c.etcdTtl);
    options.log('warn', `etcd lease ${c.leaseId}: TTL ${c.etcdTtl}s ${c.clamped} to ${c.sessionTtl}s for its Consul session (Consul sessions live 10 s to 24 h); other leases of ${c.etcdTtl}s are not said again`, { lease: c.leaseId, etcdTtl: c.etcdTtl, sessionTtl: c.sessionTtl });
  });
  await sessions.load();
  // Read again at each lead: the agent may run another release than when this process last led (upgraded or rolled back).
  target.forgetInfo?.();
  const limits = await target.limits();
  const ownership = new Ownership();
  const owners = await readOwners(target, paths, options.log);
  ownership.set(owners.doc, owners.index);
  const own = new OwnWrites({
    target, folder: paths.ownWrites, checkpoint: () => stats.checkpoint,
    fence: () => ({ verb: 'check-session', key: paths.leader, session: ctx.leader.session ?? '' }),
  });
  // The reverse mirrors' last writes of the run that stopped here, which its checkpoint did not pass.
  own.adopt(checkpointDoc.mirrored ?? []);
  if (options.heartbeatKey && !ctx.writer) throw new Error('internal: --heartbeat-key needs an etcd writer');
  const heartbeat = options.heartbeatKey && ctx.writer ? new LagHeartbeat(options.heartbeatKey, ctx.writer) : undefined;
  const services = new ServiceMirror({ source, target, mapping: ctx.mapping, migrationId: ctx.config.id, log: options.log });
  const applier = new Applier(ctx, sessions, limits, options, ownership, own, services, heartbeat);
  // First, as every attempt of setUpLead renews the sessions here, whatever fails after.
  await applier.reconcileLeases().catch((err: unknown) => {
    // etcd down: the lease passes renew the sessions meanwhile and check the leases once it answers.
    if (!isTransient(err)) throw err;
    options.log('warn', `checking the mirrored leases failed: ${(err as Error).message}; the lease pass retries every ${(options.leaseEveryMs ?? LEASE_EVERY_MS) / 1000} s`);
  });
  // And those a run killed announced (it recorded none of the writes it made past its last checkpoint): before any event
  // is judged. (After the sessions are renewed above, whatever fails here.)
  await own.adoptJournal();
  if (services.active) {
    stats.services = services.stats;
    await services.start(stats.checkpoint, options.signal);
  }
  // A checkpoint the copy wrote, or one marked stopped: taken over at once, so status and verify see a running dual-run.
  if (checkpointDoc.by !== 'dualrun' || checkpointDoc.stopped !== undefined) await applier.flush(true);
  const written = Date.parse(checkpointDoc.updated);
  return { sessions, ownership, own, heartbeat, services, applier, rebaselineFirst: await uncopiedRules(ctx), checkpointWrittenAt: Number.isFinite(written) ? written : Date.now() };
}

async function lead(ctx: LeadContext, options: DualRunOptions): Promise<DualRunSummary['reason']> {
  const { source, target, paths, stats } = ctx;
  stats.started = false;
  const setup = await setUpLead(ctx, options);
  if (typeof setup === 'string') return setup;
  const { sessions, ownership, own, heartbeat, services, applier } = setup;
  // Why the replication re-baselines first: the rules changed or were never copied whole, or etcd compacted past the checkpoint.
  let rebaselineFirst: { why: string; compacted: boolean } | undefined = setup.rebaselineFirst ? { why: setup.rebaselineFirst, compacted: false } : undefined;
  const stopped = () => options.signal.aborted || ctx.lost.aborted;
  const following = new AbortController();
  const stopFollowing = () => following.abort();
  options.signal.addEventListener('abort', stopFollowing, { once: true });
  ctx.lost.addEventListener('abort', stopFollowing, { once: true });
  const mirrors = new Map<string, ReverseMirror>();
  // One at a time: the owners follower and a late-write check both reconcile, and two at once (rules finalized
  // together) could restart a finalized rule's mirror and record an older owners index last (finalize then waited
  // for it to its timeout and deleted nothing).
  const reconciling = pLimit(1);
  const reconcileMirrors = () => reconciling(async () => {
    const index = ownership.index;
    const wanted = new Set(ownership.mirrored());
    for (const [name, mirror] of mirrors) {
      if (wanted.has(name)) continue;
      mirrors.delete(name);
      await mirror.stop();
    }
    for (const name of wanted) {
      if (mirrors.has(name) || following.signal.aborted) continue;
      const rule = ctx.mapping.copyRules.find((r) => r.name === name);
      if (!rule) {
        options.log('warn', `rule ${name} is cut over in the state but is not a copy rule of migration.yaml; not mirrored back`);
        continue;
      }
      if (!ctx.writer) {
        options.log('error', `rule ${name} is cut over, but this dual-run cannot write to etcd; its reverse mirror does not run`);
        continue;
      }
      const mirror = new ReverseMirror({
        rule, mapping: ctx.mapping, source, writer: ctx.writer, blocking: ctx.blocking, own, target: ctx.target, leaseSessions: sessions.own, restored: applier.restored, log: options.log,
        checkpoint: () => stats.checkpoint,
        allowMassDelete: options.allowMassDelete ?? false,
        onChangedSince: (entry) => applier.lateSinceCheckpoint(name, entry),
        onLeaseSessionGone: (session) => applier.checkLeaseOf(session),
        onApplied: (n) => {
          stats.reverseOps += n;
          ctx.publish();
        },
        onError: (kind) => {
          stats.errors[kind] = (stats.errors[kind] ?? 0) + 1;
          stats.mirrorsFailing[name] ??= Date.now();
          ctx.publish();
        },
        onPass: () => {
          if (stats.mirrorsFailing[name] === undefined) return;
          delete stats.mirrorsFailing[name];
          ctx.publish();
        },
        onGuardTrip: (detail) => {
          stats.guardTrips++;
          ctx.publish();
          options.log('error', `delete guard tripped in the reverse mirror of rule ${name}: ${detail}`, { rule: name });
          void recordTrip(target, paths, name, (doc) => {
            doc.guardTrips.count++;
            doc.guardTrips.lastAt = new Date().toISOString();
            doc.guardTrips.detail = detail;
          }).catch((err) => options.log('warn', `could not record the guard trip of rule ${name}: ${(err as Error).message}`));
        },
      });
      mirrors.set(name, mirror);
      mirror.start(following.signal);
    }
    stats.reverseRules = mirrors.size;
    applier.mirroring(index);
    ctx.publish();
  });
  await reconcileMirrors();
  /** Reads the owners document ({@link readOwners}) and takes it: true when it changed. One older than the last (a Consul restored from a snapshot) is said. */
  const takeOwners = async (): Promise<boolean> => {
    const before = { doc: ownership.doc, index: ownership.index };
    const owners = await readOwners(target, paths, options.log);
    if (!ownership.set(owners.doc, owners.index)) return false;
    if (owners.index < before.index) warnOwnersRewound(before.doc, ownership.doc, options.log);
    return true;
  };
  applier.refreshOwners = async () => {
    if (!(await takeOwners())) return false;
    await reconcileMirrors();
    return true;
  };
  // Follows the owners document with a blocking query: mirrors start and stop as rules are cut over or back. And
  // the rule documents, written with it: one deleted by hand while Consul owns its rule is written back at once
  // (see readOwners). Those only while Consul owns a rule: their documents (or tombstones) exist then, and a
  // blocking query on a prefix that never held a key answers at every write to Consul's KV store.
  // Refused (a guard, state edited by hand): nothing replicates any more, so the checkpoint is marked stopped as at a
  // clean stop (status said for 20 s that a dual-run ran, with none left), the reverse mirrors' last writes recorded.
  const markStopped = async (): Promise<void> => {
    await Promise.all([...mirrors.values()].map((m) => m.stop()));
    await applier.markStopped().catch(() => undefined);
  };
  const follow = async (what: string, read: (index: number) => Promise<{ index: number }>, start: number): Promise<void> => {
    let index = start;
    // 1 s after a failure, doubling to 10 s while Consul stays down (the replication's txns are fenced meanwhile).
    let retryMs = 1000;
    while (!following.signal.aborted) {
      try {
        const answer = await read(index);
        if (following.signal.aborted) break;
        retryMs = 1000;
        if (answer.index !== index) {
          if (await takeOwners()) {
            options.log('info', 'rule ownership changed', { owners: Object.fromEntries(Object.entries(ownership.doc?.rules ?? {}).map(([n, r]) => [n, r.phase])) });
            await reconcileMirrors();
          }
          index = answer.index;
        }
      } catch (err) {
        if (following.signal.aborted) break;
        // The state disagrees with itself (edited by hand): no ownership to follow, so nothing to replicate by.
        if (isMigrateError(err) && err.code === 'state_inconsistent') {
          await markStopped();
          ctx.fail(err);
          break;
        }
        options.log('warn', `reading the ${what} failed: ${(err as Error).message}; retrying in ${retryMs} ms`);
        await sleep(retryMs, following.signal);
        retryMs = Math.min(10_000, retryMs * 2);
      }
    }
  };
  const follower = Promise.all([
    follow('owners document', (index) => ctx.blocking.readKey(ownersKey(paths), index, following.signal), ownership.index),
    follow('rule documents', async (index) => {
      const ownsAny = Object.keys(ownership.doc?.rules ?? {}).some((rule) => currentOwner(ownership.doc, rule) === 'consul');
      if (ownsAny) return ctx.blocking.readPrefix(paths.rule(''), index, following.signal);
      // Looked at again each second (no request): a document deleted right after the first cutover waited 5 s.
      await sleep(1_000, following.signal);
      return { index };
    }, 0),
  ]);
  // One lease pass at a time: with thousands of leases a pass can outlast the interval, and passes that
  // pile up renew every session several times over. Stopping ends the pass between leases.
  const maintenance = new AbortController();
  let maintaining: Promise<void> | undefined;
  let renewing: Promise<void> | undefined;
  const leaseTimer = setInterval(() => {
    const signal = AbortSignal.any([maintenance.signal, ctx.lost]);
    const failed = (what: string) => (err: unknown) => {
      if (!maintenance.signal.aborted && !ctx.lost.aborted) options.log('warn', `${what} failed: ${(err as Error).message}`);
    };
    if (!maintaining) {
      maintaining = applier.maintainLeases(false, signal).catch(failed('lease maintenance')).finally(() => (maintaining = undefined));
      return;
    }
    // A pass still waits on etcd (each lease read waits out its deadline while etcd does not answer): the sessions
    // that come due meanwhile are renewed apart, or Consul reaps them and their keys while their leases live.
    renewing ??= applier.renewDue(signal).then(() => undefined, failed('renewing the lease sessions')).finally(() => (renewing = undefined));
  }, options.leaseEveryMs ?? LEASE_EVERY_MS);
  leaseTimer.unref();
  let beating = false;
  const checkTimer = services.active
    ? setInterval(() => {
        if (beating) return;
        beating = true;
        void services.keepChecks().then(() => ctx.publish(), (err) => options.log('warn', `passing the service checks failed: ${(err as Error).message}`)).finally(() => (beating = false));
      }, services.checkEveryMs)
    : undefined;
  checkTimer?.unref();
  let watch: SourceWatch | undefined;
  // A leader taking over (or restarted) is behind by what etcd made since the checkpoint it starts from was written.
  const seen = new SeenRevisions(setup.checkpointWrittenAt);
  // Caught up at best when that checkpoint was written: not when the process started (/healthz said ready,
  // its lag counted from the start, while it replayed a backlog of thousands of revisions), nor when it last
  // led or began to stand by (a standby taking over said it was as far behind as it had waited). Never later than now.
  stats.caughtUpAt = Math.min(Date.now(), setup.checkpointWrittenAt);
  // A frozen server answers nothing, not even an error: said in the log (and counted), not only by /healthz.
  let stallWarned = false;
  let rebaselining = false;
  const stallTimer = setInterval(() => {
    const since = Date.now() - stats.checkpointWrittenAt;
    // A re-baseline writes its copy's progress, not checkpoints, and logs its own end.
    if (since <= 2 * HEARTBEAT_MS || rebaselining) {
      if (stallWarned) options.log('info', `checkpoints are written again (checkpoint ${stats.checkpoint})`, { checkpoint: stats.checkpoint });
      stallWarned = false;
      return;
    }
    if (stallWarned) return;
    stallWarned = true;
    stats.errors.stalled = (stats.errors.stalled ?? 0) + 1;
    ctx.publish();
    // etcd's head, when it answers: a watch silent on a large revision heard of none, and the lag said 0.
    void source.status().then((s) => {
      if (s.revision <= stats.etcdRevision) return;
      stats.etcdRevision = s.revision;
      ctx.publish();
    }, () => undefined);
    options.log('warn', `no checkpoint written for ${Math.round(since / 1000)} s: etcd or Consul does not answer (a frozen server holds requests open until they time out), or etcd is still reading a revision of many keys for the watch (a delete of a large prefix: minutes on etcd 3.4); /healthz answers 503 (stalled, or disconnected once a request has failed)`, { checkpoint: stats.checkpoint, seconds: Math.round(since / 1000) });
  }, 1000);
  stallTimer.unref();
  const heartbeatTimer = heartbeat ? startHeartbeat(heartbeat, ctx, options, () => watch) : undefined;
  let backoff = 250;
  // The checkpoint at the last failure: the backoff starts again from 250 ms once a write to Consul moved it, not
  // at every etcd event (with Consul down, the watch still delivers events, and the retries ran 4 times a second).
  let failedAt = -1;
  /**
   * Copies every rule again at etcd's current revision (deleting what etcd no longer holds, behind the
   * delete guard) and replicates on from there: when the history since the checkpoint is gone, and when
   * the rules changed or a rule was never copied whole. False when a stop interrupted it: the checkpoint
   * stays where it was (the keys are not all etcd's yet), and the next start re-baselines again.
   */
  const rebaseline = async (compacted: boolean): Promise<boolean> => {
    stats.rebaselines++;
    // Counted on /metrics from its start: a copy waiting on Consul publishes nothing until it ends (CI read 0 then).
    ctx.publish();
    applier.reset();
    rebaselining = true;
    const result = await options.copy({ deleteExtraneous: true, allowMassDelete: options.allowMassDelete ?? false }, ctx.lane).catch((failed: unknown) => {
      throw isMigrateError(failed) && failed.code === 'delete_guard' ? rebaselineGuardError(failed, compacted ? stats.checkpoint : undefined) : failed;
    }).finally(() => (rebaselining = false));
    if (result.interrupted) {
      options.log('info', `re-baseline interrupted: the checkpoint stays at revision ${stats.checkpoint} (part of the rules is copied at revision ${result.revision}); the next start re-baselines again`);
      return false;
    }
    stats.checkpoint = result.revision;
    // The copy's sessions (new leases, lost sessions replaced) are this run's to renew from now on.
    await sessions.reload();
    // The copy wrote the checkpoint as its own; the dual-run takes it over at once, so status,
    // cutover and verify see a running dual-run rather than a copy that just finished.
    applier.reset();
    await applier.flush(true);
    if (services.active) await services.load(options.signal);
    options.log('info', `re-baselined at revision ${result.revision}`, { created: sum(result, 'created'), updated: sum(result, 'updated'), deleted: sum(result, 'deleted') });
    return true;
  };
  try {
    while (!stopped()) {
      watch = undefined;
      try {
        if (rebaselineFirst) {
          options.log('warn', `${rebaselineFirst.why}; re-baselining`);
          if (!(await rebaseline(rebaselineFirst.compacted))) break;
          rebaselineFirst = undefined;
          if (ctx.mappingChanged.pending) {
            await ctx.mappingChanged.record();
            ctx.mappingChanged.pending = false;
          }
          continue;
        }
        // etcd lets a watch start at its compaction revision but keeps no delete made at that revision, so a watch
        // from checkpoint + 1 would miss it: the history is whole only while the checkpoint itself can be read.
        await source.count(checkpointProbe(ctx.range), stats.checkpoint);
        // etcd's head: the watch replays the backlog in batches, each naming only its own last revision, and a
        // checkpoint at the end of one is not caught up (/healthz said ready, lag 0, halfway through a replay).
        stats.etcdRevision = Math.max(stats.etcdRevision, (await source.status()).revision);
        // Every write an earlier leader announced is at or below etcd's head as this one first watches.
        own.headAtTakeover(stats.etcdRevision);
        watch = await source.watch(ctx.range, stats.checkpoint + 1);
        // Stopped while etcd opened the watch (it hangs while etcd does): closed here, as the stop's own close
        // found no watch to close, and its open stream kept the process from exiting.
        if (stopped()) {
          await watch.close();
          break;
        }
        // Connected again once a txn lands in Consul (the next checkpoint write), not when etcd's watch opens:
        // a watch reopened while Consul is still down made /healthz say ready, then not, then ready.
        stats.started = true;
        ctx.publish();
        // Not asked for progress at once: etcd before 3.4.31 and 3.5.13 answers with its current revision ahead of the
        // events the new watch still replays (etcd-io/etcd#15220), and the checkpoint would pass them. Until the first
        // tick's answer, /healthz says starting (etcd's revision, so the lag, is unknown).
        const progressTimer = setInterval(() => {
          if (!watch) return;
          watch.requestProgress();
          seen.seen(watch.latestRevision(), Date.now());
          const behind = seen.behind(stats.checkpoint);
          stats.seenRevision = behind.revision;
          stats.behindSince = behind.since;
          ctx.publish();
        }, options.progressEveryMs ?? 1000);
        progressTimer.unref();
        const onStop = () => void watch?.close();
        options.signal.addEventListener('abort', onStop, { once: true });
        ctx.lost.addEventListener('abort', onStop, { once: true });
        try {
          for await (const message of watch) {
            if (stopped()) break;
            await applier.handle(message, watch.buffered());
            if (stats.checkpoint !== failedAt) backoff = 250;
          }
        } finally {
          clearInterval(progressTimer);
          options.signal.removeEventListener('abort', onStop);
          ctx.lost.removeEventListener('abort', onStop);
        }
        await applier.flush();
        if (!stopped()) throw new Error('the etcd watch ended');
      } catch (err) {
        await watch?.close().catch(() => undefined);
        stats.connected = false;
        if (err instanceof LeadershipLost || ctx.lost.aborted) return 'leadership-lost';
        if (stopped()) break;
        if (err instanceof OwnersChanged) {
          // Re-plan from the checkpoint under the new ownership (replaying is idempotent).
          if (await takeOwners()) await reconcileMirrors();
          applier.reset();
          options.log('info', `rule ownership changed under a pending txn; re-planning from revision ${stats.checkpoint + 1}`);
          continue;
        }
        if (err instanceof StateRewound) {
          // Replayed from the restored checkpoint (idempotent): Consul gets back what the restore took from it.
          options.log('warn', `Consul's state went back in time (restored from a snapshot?): its checkpoint is at revision ${err.revision}, this dual-run had written ${err.committed}; replaying etcd's changes from revision ${err.revision + 1}, so Consul gets back what the restore took`, { checkpoint: err.revision, committed: err.committed });
          stats.checkpoint = err.revision;
          applier.reset();
          // The restore took back session records too; the lease passes mend what this read misses.
          await sessions.reload().catch((failed: unknown) => options.log('warn', `reading the session records again failed: ${(failed as Error).message}`));
          continue;
        }
        if (err instanceof ConsulTooLargeError && /too many operations/i.test(err.message) && (await applier.takeSmallerLimits())) {
          options.log('warn', `Consul refused a txn of more ops than its agent now takes (${applier.txnMaxOps} a txn: an agent replaced by an older release?); re-planning from revision ${stats.checkpoint + 1} with that limit`, { txnMaxOps: applier.txnMaxOps });
          continue;
        }
        if (err instanceof SourceCompactedError) {
          // Re-baselined at the top of the loop, inside the try: a server failing during it is retried with
          // backoff like any other (it was outside every retry, and Consul down then ended the dual-run).
          rebaselineFirst = { why: `etcd compacted its history past the checkpoint ${stats.checkpoint}${err.compactRevision > 0 ? ` (oldest available ${err.compactRevision})` : ''}`, compacted: true };
          continue;
        }
        const kind = isMigrateError(err) ? err.code : 'internal';
        stats.errors[kind] = (stats.errors[kind] ?? 0) + 1;
        ctx.publish();
        if (/future revision/i.test((err as Error).message)) await refuseEtcdBehind(ctx, { revision: stats.checkpoint });
        if (!isTransient(err)) throw err;
        applier.reset();
        failedAt = stats.checkpoint;
        options.log('warn', `${(err as Error).message}; retrying in ${backoff} ms from revision ${stats.checkpoint + 1}`);
        await sleep(backoff, options.signal);
        backoff = Math.min(10_000, backoff * 2);
      }
    }
    if (ctx.lost.aborted) return 'leadership-lost';
    // The reverse mirrors first: a write they have in flight lands now, and the checkpoint below records
    // its revision, which the watch stopped before seeing (the next run took it for a late write).
    await Promise.all([...mirrors.values()].map((m) => m.stop()));
    // A clean stop, still leading: the checkpoint once more, marked stopped, so status, verify
    // and cutover see at once that nothing replicates (not 20 s later, when the heartbeat goes stale).
    await applier.flush(true, { stopped: true })
      .catch(async (err: unknown) => {
        // The owners document changed a moment ago and the follower has not read it yet: read it, and once more.
        if (!(err instanceof OwnersChanged)) throw err;
        await takeOwners();
        await applier.flush(true, { stopped: true });
      })
      .catch((err: unknown) => options.log('warn', `could not mark the checkpoint stopped: ${(err as Error).message}`));
    return 'signal';
  } catch (err) {
    // Not for a server that failed: it may not answer.
    if (isMigrateError(err) && err.exitCode === ExitCode.refused && !ctx.lost.aborted) await markStopped();
    throw err;
  } finally {
    clearInterval(leaseTimer);
    clearInterval(stallTimer);
    maintenance.abort();
    await maintaining;
    await renewing;
    if (checkTimer) clearInterval(checkTimer);
    if (heartbeatTimer) clearInterval(heartbeatTimer);
    sessions.stop();
    await applier.recordLateWrites();
    following.abort();
    options.signal.removeEventListener('abort', stopFollowing);
    ctx.lost.removeEventListener('abort', stopFollowing);
    await follower;
    await Promise.all([...mirrors.values()].map((m) => m.stop()));
    stats.reverseRules = 0;
  }
}

/**
 * Puts the time into the heartbeat key every second (one put in flight at
 * most), then asks the watch for progress so the checkpoint passes the put's
 * revision without waiting for the next periodic request.
 */
function startHeartbeat(heartbeat: LagHeartbeat, ctx: LeadContext, options: DualRunOptions, watch: () => SourceWatch | undefined): NodeJS.Timeout {
  let busy = false;
  let lastWarned = 0;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    heartbeat.beat().then(() => {
      ctx.stats.heartbeat = heartbeat.lag();
      watch()?.requestProgress();
    }, (err: unknown) => {
      ctx.stats.errors.heartbeat = (ctx.stats.errors.heartbeat ?? 0) + 1;
      ctx.publish();
      if (Date.now() - lastWarned < 60_000) return;
      lastWarned = Date.now();
      const denied = /permission denied/i.test((err as Error).message);
      options.log('warn', `writing the heartbeat key ${formatKey(heartbeat.key)} failed: ${(err as Error).message}${denied ? '; grant the dual-run\'s etcd role readwrite on it (`migrate acl --heartbeat-key <key>` prints the grant)' : ''}; lag in seconds is not measured end to end meanwhile`);
    }).finally(() => (busy = false));
  }, LAG_HEARTBEAT_MS);
  timer.unref();
  return timer;
}

function sum(result: CopyResult, field: 'created' | 'updated' | 'deleted'): number {
  return result.rules.reduce((n, r) => n + r[field], 0);
}

/** How a standby waits out a Consul that does not answer: it says so at most every 10 s, and is `connected` (ready to lead) only while Consul answers it. */
function standbyRetries(log: DualRunOptions['log'], stats: DualRunStats, publish: () => void): { transient: (err: unknown) => boolean; onUnavailable: (err: unknown) => void; onAnswered: () => void } {
  let saidAt = 0;
  const connected = (up: boolean) => {
    if (stats.connected === up) return;
    stats.connected = up;
    publish();
  };
  return {
    transient: isTransient,
    onUnavailable: (err) => {
      connected(false);
      if (Date.now() - saidAt < 10_000) return;
      saidAt = Date.now();
      log('warn', `standby: Consul did not answer (${(err as Error).message}); still waiting for the lock`);
    },
    onAnswered: () => {
      // Published at every answer (about once a second): /healthz reads the time of the last one it was given.
      stats.consulAnsweredAt = Date.now();
      stats.connected = true;
      publish();
    },
  };
}

/** Errors worth waiting out: servers unreachable or overloaded, a watch that broke. */
function isTransient(err: unknown): boolean {
  if (isRetryable(err)) return true;
  if (isMigrateError(err)) return ['etcd_unreachable', 'etcd_failed', 'etcd_watch_canceled', 'consul_unreachable', 'consul_unavailable', 'consul_no_leader'].includes(err.code);
  return err instanceof Error && /watch ended/.test(err.message);
}

/** How often, at most, an etcd with unordered progress answers is asked whether a progress answer can be taken ({@link Applier}). */
const PROGRESS_CHECK_MS = 5_000;

/** Turns watch messages into ordered txns; owns the pending batch and the checkpoint. */
class Applier {
  private batcher: TxnBatcher;
  private pendingRevision: number;
  // 0, not now: the first progress notification rewrites the checkpoint, so a dual-run just
  // started on an idle etcd shows as running (status, cutover, verify) at once, not after HEARTBEAT_MS.
  private lastCheckpointWrite = 0;
  /** The checkpoint's ModifyIndex after this run's last txn: the next one is a compare-and-set on it ({@link StateRewound}). */
  private checkpointIndex: number | undefined;
  private readonly reserve = DUALRUN_TXN_RESERVE;
  /** The owners index every decision since the last txn was made under (the fence of the next txn). */
  private fenceIndex: number;
  /** The revision of the last watch event handled (planned, whether or not it made ops). */
  private lastEventRevision = 0;
  /** The owners index the reverse mirrors were last started and stopped for ({@link mirroring}). */
  private mirrorsAt = 0;
  /** Whether etcd's answers to progress requests may run ahead of the watch's events ({@link confirmedProgress}); asked once. */
  private progressUnordered: boolean | undefined;
  private progressCheckedAt = 0;
  private readonly lateSeen = new Set<string>();
  /** Per rule, the late writes logged one by one in the current minute (an application never switched writes one per write). */
  private readonly lateLogged = new Map<string, { since: number; lines: number }>();
  private readonly lateTrips = new Map<string, { count: number; keys: string[]; revision: number; firstAt: string }>();
  private tripsTimer: NodeJS.Timeout | undefined;
  /** When each lease's session was last renewed (ms since the epoch): a lease pass renews only those due. */
  private readonly renewedAt = new Map<string, number>();
  /** Leases found ended, with etcd's revision then: their sessions go once the checkpoint has passed it. */
  private readonly endedAt = new Map<string, number>();
  /**
   * Keys of cut-over rules written back into Consul after their lease's session was lost (Consul key → what was
   * written): the reverse mirror takes those writes for what they are, not for an application's.
   */
  readonly restored = new Map<string, { session: string; value: Buffer }>();

  constructor(
    private readonly ctx: LeadContext,
    private readonly sessions: LeaseSessions,
    private limits: TargetLimits,
    private readonly options: DualRunOptions,
    private readonly ownership: Ownership,
    private readonly own: OwnWrites,
    private readonly services: ServiceMirror,
    private readonly heartbeat?: LagHeartbeat,
  ) {
    this.fenceIndex = ownership.index;
    this.batcher = new TxnBatcher(limits, this.reserve);
    this.pendingRevision = ctx.stats.checkpoint;
  }

  /**
   * The reverse mirrors now run as the owners document at `index` says (a
   * finalized rule's stopped, its last write landed): recorded in the
   * checkpoint, written at the next progress notification rather than the next
   * heartbeat, for `finalize --delete-etcd`, which waits for it.
   */
  mirroring(index: number): void {
    if (index === this.mirrorsAt) return;
    this.mirrorsAt = index;
    this.lastCheckpointWrite = 0;
  }

  /** Reads the owners document again and takes it (set by the leadership that runs this applier): true when it changed. */
  refreshOwners: () => Promise<boolean> = async () => false;

  reset(): void {
    this.batcher.flush();
    this.pendingRevision = this.ctx.stats.checkpoint;
    this.fenceIndex = this.ownership.index;
  }

  get txnMaxOps(): number {
    return this.limits.txnMaxOps;
  }

  /**
   * After Consul refused a txn for its op count: the agent's limit read again, and taken (with the pending
   * batch dropped, as {@link reset} does) when it is below the one planned with. False when it is not: the
   * refusal has another cause, and stands.
   */
  async takeSmallerLimits(): Promise<boolean> {
    this.ctx.target.forgetInfo?.();
    const limits = await this.ctx.target.limits();
    if (limits.txnMaxOps >= this.limits.txnMaxOps) return false;
    this.limits = limits;
    this.batcher = new TxnBatcher(limits, this.reserve);
    this.reset();
    return true;
  }

  async handle(message: WatchMessage, buffered: number): Promise<void> {
    const stats = this.ctx.stats;
    stats.etcdRevision = Math.max(stats.etcdRevision, message.revision);
    if (message.kind === 'progress') {
      if (this.batcher.pendingOps === 0) {
        // Idle rules on a busy etcd: the checkpoint follows etcd anyway (throttled), so
        // restarts and verify barriers do not stall and compaction does not force a re-baseline.
        // On an idle etcd it is rewritten every HEARTBEAT_MS, so readers can tell a running dual-run.
        const since = Date.now() - this.lastCheckpointWrite;
        const revision = message.requested ? await this.confirmedProgress(message.revision) : message.revision;
        if (revision > stats.checkpoint) this.pendingRevision = Math.max(this.pendingRevision, revision);
        // A heartbeat put waiting for this revision is measured now rather than after the throttle.
        const due = since >= 1000 || Boolean(this.heartbeat?.waiting(revision));
        if ((revision > stats.checkpoint && due) || since >= HEARTBEAT_MS) await this.send([], this.pendingRevision);
      }
      if (stats.checkpoint >= stats.etcdRevision) stats.caughtUpAt = Date.now();
      this.ctx.publish();
      return;
    }
    stats.events += message.events.length;
    this.lastEventRevision = message.revision;
    // Decisions made under an older ownership go out (fenced by its index) before any under the new one.
    if (this.fenceIndex !== this.ownership.index) {
      await this.flush();
      this.fenceIndex = this.ownership.index;
    }
    // Service rules go to the catalog first; the txn that follows moves the checkpoint past them.
    const forward = await this.routeOwnership(await this.services.apply(message));
    const plan = await this.plan(forward);
    await this.add(plan);
    // Flush when the stream has nothing more queued: consecutive revisions share a txn under load only.
    if (buffered === 0 || this.batcher.pendingOps >= this.limits.txnMaxOps - 2) await this.flush();
  }

  /**
   * How far an answer to a progress request lets the checkpoint go. etcd
   * before 3.4.31 and 3.5.13 answers with its current revision even while
   * events of the watch are still queued ({@link unorderedProgress}): behind a
   * slow Consul on a busy etcd, the checkpoint jumped 60,000 revisions at once,
   * over a 20,000-key delete, and Consul never got those events. There, the
   * answer is taken only once etcd's store shows no change in the watched range
   * after the last revision this run knows complete (no key modified since, and
   * as many keys as then: no delete), checked at most every
   * {@link PROGRESS_CHECK_MS}; otherwise the checkpoint stays where the events
   * put it. etcd's periodic notifications travel with the events: taken as they are.
   * Once etcd has compacted that last revision, only the first test can be made.
   */
  private async confirmedProgress(revision: number): Promise<number> {
    const known = Math.max(this.ctx.stats.checkpoint, this.lastEventRevision);
    if (revision <= known) return revision;
    this.progressUnordered ??= unorderedProgress((await this.ctx.source.status()).version);
    if (!this.progressUnordered) return revision;
    if (Date.now() - this.progressCheckedAt < PROGRESS_CHECK_MS) return known;
    this.progressCheckedAt = Date.now();
    const { source, range } = this.ctx;
    if (await source.modifiedSince(range, revision, known + 1)) return known;
    try {
      const [now, then] = await Promise.all([source.count(range, revision), source.count(range, known)]);
      return now === then ? revision : known;
    } catch (err) {
      // etcd compacted the last revision known complete (a retention of seconds): its keys cannot be counted, so a
      // delete since stays unseen; waiting for the next event instead left an idle checkpoint behind for good. A
      // delete still queued for this watch then is all that could be missed (etcd cancels a watch it compacts past).
      if (err instanceof SourceCompactedError) return revision;
      throw err;
    }
  }

  /**
   * Events of rules that Consul owned at their revision are not replicated:
   * the reverse mirror's own writes are dropped, anything else is a late
   * writer (counted, logged with its key, recorded for verify).
   */
  private async routeOwnership(message: Extract<WatchMessage, { kind: 'revision' }>): Promise<Extract<WatchMessage, { kind: 'revision' }>> {
    if (!this.ownership.doc) return message;
    let refreshed = false;
    const forward: SourceEvent[] = [];
    // A lease that ends deletes all its keys in one revision: its state is read once, not once per key.
    const ended = new Map<string, Promise<boolean>>();
    const persisted: { rule: string; key: Buffer }[] = [];
    for (const event of message.events) {
      const rule = findRule(this.ctx.mapping, event.entry.key);
      // The document as it stands now: the follower may take a newer one while this revision is routed.
      const owner = rule && rule.action === 'copy' ? ownerAt(this.ownership.doc, rule.name, message.revision) : undefined;
      if (!rule || owner?.owner !== 'consul') {
        forward.push(event);
        continue;
      }
      if ((await this.own.isOwn(message.revision)) || this.own.announcedEarlier(event)) continue;
      // Deleting a finalized rule's etcd keys is the retirement `finalize --delete-etcd` does, not a late write.
      if (owner.phase === 'finalized' && event.type === 'delete') continue;
      if (await this.leaseEnded(event, ended)) {
        // Under `leases: persist` Consul holds the key without a session, and keeps it: etcd, Consul's mirror now, gets it back.
        if (rule.leases === 'persist') persisted.push({ rule: rule.name, key: event.entry.key });
        continue;
      }
      if (await this.sameAsConsul(event)) continue;
      // The owners document may have changed a moment ago, and the follower not have read it yet (finalize deletes
      // etcd's keys right after its flip): read once more before calling anything a late write.
      if (!refreshed) await this.refreshOwners();
      refreshed = true;
      const now = ownerAt(this.ownership.doc, rule.name, message.revision);
      if (now.owner !== 'consul') {
        forward.push(event);
        continue;
      }
      if (now.phase === 'finalized' && event.type === 'delete') continue;
      await this.lateWrite(rule.name, event, message.revision);
    }
    if (persisted.length > 0) await this.writeBackPersisted(persisted);
    return forward.length === message.events.length ? message : { ...message, events: forward };
  }

  /**
   * Keys of rules Consul owns, under `leases: persist`, that etcd dropped when their lease ended (the
   * application's keep-alive went with it to Consul): Consul keeps them without a session, so the
   * reverse mirror, which follows Consul's changes only, would never write them again, and etcd lacked
   * them until the next dual-run's first pass (verify: extra; rollback refused). Written back from
   * Consul's value, without a lease, as the mirror's own writes.
   */
  private async writeBackPersisted(keys: { rule: string; key: Buffer }[]): Promise<void> {
    const writer = this.ctx.writer;
    if (!writer) return;
    const ops: SourceWriteOp[] = [];
    for (const { key } of keys) {
      const route = routeForReplication(this.ctx.mapping, key, 0);
      if (route.kind !== 'mapped') continue;
      const current = await this.ctx.target.readKey(route.target);
      // Deleted in Consul meanwhile, or held by a session again: the reverse mirror has that change.
      if (current && !current.session) ops.push({ verb: 'put', key, value: current.value });
    }
    if (ops.length === 0) return;
    await this.own.track('persisted', ops, () => writer.applyTxn(ops));
    const rules = [...new Set(keys.map((k) => k.rule))];
    this.options.log('info', `etcd dropped ${ops.length} key(s) of rule(s) ${rules.join(', ')} (leases: persist, owned by Consul) when their lease ended; written back to etcd from Consul, without a lease`, { rules, keys: ops.length });
  }

  /**
   * etcd deleting a leased key because its lease ended is no late write: no
   * application wrote. The session mirroring the lease is checked at the next
   * lease pass, which destroys it, and Consul deletes the keys it still holds
   * (those an application rewrote in Consul were released from it).
   */
  private async leaseEnded(event: SourceEvent, ended: Map<string, Promise<boolean>>): Promise<boolean> {
    const lease = event.type === 'delete' ? event.previous?.lease : undefined;
    if (!lease || lease === '0') return false;
    let answer = ended.get(lease);
    if (!answer) {
      answer = this.ctx.source.readLease(lease).then((l) => l.ttl < 0);
      ended.set(lease, answer);
    }
    if (!(await answer)) return false;
    this.renewedAt.delete(lease);
    return true;
  }

  /**
   * An etcd key under a rule's prefix that the reverse mirror's first pass
   * found unlike Consul and changed after the checkpoint: a late write, as the
   * watch would judge its put at that revision. The watch may never replay it
   * (etcd compacted the history while the dual-run was stopped), and the pass
   * then writes Consul's value over it; recorded once either way.
   */
  async lateSinceCheckpoint(rule: string, entry: SourceEntry): Promise<void> {
    if (ownerAt(this.ownership.doc, rule, entry.modRevision).owner !== 'consul') return;
    if ((await this.own.isOwn(entry.modRevision)) || this.own.announcedEarlier({ type: 'put', entry })) return;
    await this.lateWrite(rule, { type: 'put', entry }, entry.modRevision);
  }

  /** A write that leaves etcd equal to Consul (an own write replayed after a restart) is no late write. */
  private async sameAsConsul(event: SourceEvent): Promise<boolean> {
    const route = routeForReplication(this.ctx.mapping, event.entry.key, event.entry.value.length);
    if (route.kind !== 'mapped') return false;
    const current = await this.ctx.target.readKey(route.target).catch(() => undefined);
    return event.type === 'delete' ? current === undefined : current !== undefined && current.value.equals(event.entry.value);
  }

  private async lateWrite(rule: string, event: SourceEvent, revision: number): Promise<void> {
    // A replay from the checkpoint (after a restart of the watch) sees the same event again: count it once.
    const id = `${revision}:${event.entry.key.toString('hex')}`;
    if (this.lateSeen.has(id)) return;
    this.lateSeen.add(id);
    if (this.lateSeen.size > 10_000) this.lateSeen.delete(this.lateSeen.values().next().value!);
    const stats = this.ctx.stats;
    stats.lateWrites[rule] = (stats.lateWrites[rule] ?? 0) + 1;
    this.ctx.publish();
    const key = formatKey(event.entry.key);
    // A finalized rule is no longer compared by verify: its trips show in status (and refuse a rollback, which finalize ended anyway).
    const finalized = ownerAt(this.ownership.doc, rule, revision).phase === 'finalized';
    const now = Date.now();
    let logged = this.lateLogged.get(rule);
    if (!logged || now - logged.since >= LATE_LOG_WINDOW_MS) this.lateLogged.set(rule, (logged = { since: now, lines: 0 }));
    if (logged.lines < LATE_LINES_PER_WINDOW) {
      logged.lines++;
      const more = logged.lines === LATE_LINES_PER_WINDOW ? `; more late writes under rule ${rule} until ${new Date(logged.since + LATE_LOG_WINDOW_MS).toISOString()} are counted (migrate_dualrun_late_writes_total, and the trips in \`migrate status\`), not logged` : '';
      this.options.log('warn', `late write: etcd ${event.type} of ${key} under rule ${rule}, which Consul owns; not replicated (${finalized ? 'the rule is finalized: status shows the trip until acknowledged' : 'verify fails until acknowledged'})${more}`, { rule, key, revision });
    }
    const pending = this.lateTrips.get(rule) ?? { count: 0, keys: [] as string[], revision: 0, firstAt: new Date().toISOString() };
    pending.count++;
    pending.revision = Math.max(pending.revision, revision);
    if (!pending.keys.includes(key) && pending.keys.length < TRIP_KEYS_KEPT) pending.keys.push(key);
    this.lateTrips.set(rule, pending);
    // Recorded in batches: an application that was never switched must not slow replication down to one CAS per write.
    this.tripsTimer ??= setTimeout(() => void this.recordLateWrites(), 300);
  }

  /** Adds the late writes seen since the last call to the rules' trips documents. */
  async recordLateWrites(): Promise<void> {
    if (this.tripsTimer) clearTimeout(this.tripsTimer);
    this.tripsTimer = undefined;
    const batch = [...this.lateTrips];
    this.lateTrips.clear();
    const at = new Date().toISOString();
    for (const [rule, pending] of batch) {
      await recordTrip(this.ctx.target, this.ctx.paths, rule, (doc) => {
        const late = doc.lateWrites;
        late.count += pending.count;
        late.firstAt ??= pending.firstAt;
        late.lastAt = at;
        late.lastRevision = Math.max(late.lastRevision ?? 0, pending.revision);
        for (const key of pending.keys) if (!late.keys.includes(key) && late.keys.length < TRIP_KEYS_KEPT) late.keys.push(key);
      }).catch((err) => this.options.log('warn', `could not record ${pending.count} late write(s) under rule ${rule}: ${(err as Error).message}`));
    }
  }

  private async plan(message: Extract<WatchMessage, { kind: 'revision' }>, holderOf?: Parameters<typeof planRevision>[0]['holderOf']): Promise<RevisionPlan> {
    const leases = new Set<string>();
    for (const e of message.events) {
      // Sessions only for the leases of keys a `leases: session` rule copies, as copy and plan count them: not for
      // keys of persist or skip rules, nor for keys of no rule that the watch range spans.
      const rule = findRule(this.ctx.mapping, e.entry.key);
      if (rule?.action === 'copy' && rule.leases === 'session') {
        if (e.type === 'put' && e.entry.lease !== '0') leases.add(e.entry.lease);
        if (e.previous && e.previous.lease !== '0') leases.add(e.previous.lease);
      }
      // A leased key deleted: its lease may have ended, so the next lease pass looks at it, due or not.
      if (e.type === 'delete' && e.previous && e.previous.lease !== '0') this.renewedAt.delete(e.previous.lease);
    }
    const sessionOf = await this.sessions.ensureAll(leases);
    this.ctx.stats.sessions = this.sessions.own.size;
    return planRevision({
      message,
      route: (key, size) => routeForReplication(this.ctx.mapping, key, size),
      sessionFor: (l) => sessionOf.get(l),
      fits: (ops) => groupFitsInTxn(ops, this.limits, this.reserve),
      ...(holderOf ? { holderOf } : {}),
    });
  }

  private async add(plan: RevisionPlan): Promise<void> {
    const stats = this.ctx.stats;
    for (const put of plan.unmappable) {
      stats.unmappable++;
      this.options.log('warn', `etcd put of ${formatKey(put.key)} under rule ${put.rule} not replicated: ${put.reason} (${put.detail})${put.reason === 'value-too-large' ? '; its earlier value is deleted from Consul' : ''}`, { rule: put.rule, key: formatKey(put.key), reason: put.reason, revision: plan.revision });
    }
    if (plan.largePuts.length > 0) {
      await this.flush();
      for (const put of plan.largePuts) {
        // What Consul holds now, not what the previous lease says: the session to free it from may be unknown (the lease ended).
        const holder = put.free ? (await this.ctx.target.readKey(put.key))?.session : undefined;
        const ok = await putLarge(this.ctx.target, put.key, put.value, { release: holder, acquire: put.acquire });
        if (!ok) this.options.log('warn', `single PUT of ${formatKey(put.key)} could not ${put.acquire ? `take the lock of session ${put.acquire}` : `free it from session ${holder}`} (another session holds it, or that session ended): the key is not held as its etcd lease says; verify reports it, a copy (the dual-run stopped) rewrites it`, { key: formatKey(put.key) });
        stats.largePuts++;
      }
    }
    if (this.batcher.wouldFit(plan.ops)) {
      for (const op of plan.ops) this.batcher.add(op);
      this.pendingRevision = plan.revision;
      return;
    }
    await this.flush();
    if (this.batcher.wouldFit(plan.ops)) {
      for (const op of plan.ops) this.batcher.add(op);
      this.pendingRevision = plan.revision;
      return;
    }
    // One etcd revision larger than a Consul txn: applied in parts, counted and logged;
    // only the last part moves the checkpoint past it.
    stats.splitRevisions++;
    const parts = packTxnBatches(plan.ops, this.limits, this.reserve);
    const room = batchCapacity(this.limits, this.reserve);
    const over = plan.ops.length > room.ops
      ? `${plan.ops.length} ops, more than one Consul txn holds (${room.ops} of its ${this.limits.txnMaxOps}: the dual-run keeps ${this.reserve.reservedOps} for its checkpoint and checks)`
      : `${plan.ops.length} ops of ${plan.ops.reduce((n, op) => n + wireOpBytes(op), 0)} bytes as txn ops (values base64-encoded), more than one Consul txn holds (${room.bytes} of its ${this.limits.txnMaxBytes}: the dual-run keeps the rest for its checkpoint and checks)`;
    this.options.log('warn', `revision ${plan.revision} has ${over}; applied in ${parts.length} txns, not atomically`, { revision: plan.revision, ops: plan.ops.length, txns: parts.length });
    for (const [i, part] of parts.entries()) await this.send(part, i === parts.length - 1 ? plan.revision : plan.revision - 1, plan);
  }

  /** Sends the pending ops with the checkpoint and the leader check; with `checkpointAnyway`, the checkpoint even when nothing is pending. */
  async flush(checkpointAnyway = false, mark: { stopped?: boolean } = {}): Promise<void> {
    const ops = this.batcher.flush() ?? [];
    if (ops.length === 0 && this.pendingRevision <= this.ctx.stats.checkpoint && !checkpointAnyway) return;
    await this.send(ops, this.pendingRevision, undefined, mark.stopped);
  }

  private async send(ops: TxnOp[], revision: number, plan?: RevisionPlan, stopped = false): Promise<void> {
    const stats = this.ctx.stats;
    // A checkpoint that passes no event beyond the last one committed carries no decision made under an older
    // ownership: fenced by the current one. (On an idle etcd the fence moved only with the next event, so the
    // checkpoint a clean stop writes just after a cutover or rollback failed its fence and was not marked
    // stopped.) Events planned under the older ownership, even all dropped (no ops), keep its fence: a txn
    // under a stale owners document must fail and be re-planned, or those events would be lost.
    if (ops.length === 0 && this.batcher.pendingOps === 0 && this.lastEventRevision <= stats.checkpoint) this.fenceIndex = this.ownership.index;
    // A checkpoint past a late write comes after its trip is recorded: what reads the two (finalize, rollback, verify)
    // takes a checkpoint at or past a revision to mean its late writes are on record (the trip waited 300 ms for others).
    if (this.lateTrips.size > 0) await this.recordLateWrites();
    const key = this.ctx.paths.checkpoint();
    const txn: TxnOp[] = [...ops, this.checkpointWrite(revision, stopped), this.fence(), this.leaderCheck()];
    try {
      this.checkpointIndex = await this.ctx.target.applyTxn(txn);
    } catch (err) {
      if (!(err instanceof TxnFailedError)) throw err;
      if (err.errors.some((e) => e.opIndex === txn.length - 1 || /session check|check session/.test(e.what))) throw new LeadershipLost('leader check failed');
      if (err.errors.some((e) => e.opIndex === txn.length - 2)) throw new OwnersChanged('owners fence failed');
      if (err.errors.some((e) => e.opIndex === txn.length - 3)) {
        this.checkpointIndex = undefined;
        const stored = await readState<CheckpointState>(this.ctx.target, key);
        if (stored && stored.revision < stats.checkpoint) throw new StateRewound(stored.revision, stats.checkpoint);
        // Written since by a txn of this run whose answer was lost, or by its re-baseline's copy: sent again, as a set.
        return this.send(ops, revision, plan, stopped);
      }
      // A lock or unlock did not match what Consul holds (a session reaped during an outage,
      // a key written in Consul directly): re-plan these keys from Consul's real state.
      await this.repair(ops, revision, plan);
      return;
    }
    stats.txns++;
    if (ops.length === 0) stats.checkpointOnlyTxns++;
    stats.ops += ops.length;
    stats.checkpoint = revision;
    // What the next checkpoint-only write (progress, heartbeat, stop) sends: never below what this one wrote
    // (the parts of a split revision are sent here directly, and a stop after one wrote the revision before it).
    this.pendingRevision = Math.max(this.pendingRevision, revision);
    if (this.heartbeat) {
      this.heartbeat.committed(revision);
      stats.heartbeat = this.heartbeat.lag();
    }
    this.own.prune(revision - 1000);
    this.lastCheckpointWrite = Date.now();
    stats.checkpointWrittenAt = this.lastCheckpointWrite;
    stats.connected = true;
    if (stats.checkpoint >= stats.etcdRevision) stats.caughtUpAt = Date.now();
    this.ctx.publish();
  }

  /**
   * The committed checkpoint again, marked stopped, for a dual-run that a refusal ends: no data, so no owners fence
   * (the refusal may be that the owners document was edited), only this run's checkpoint index and its leader lock.
   */
  async markStopped(): Promise<void> {
    this.checkpointIndex = await this.ctx.target.applyTxn([this.checkpointWrite(this.ctx.stats.checkpoint, true), this.leaderCheck()]);
  }

  /**
   * The checkpoint document at `revision` (marked stopped: with the reverse mirrors' writes past it), written by a
   * compare-and-set on the index this dual-run's last txn gave it: a Consul restored from a snapshot takes back what
   * was written since (data, checkpoint, sessions) with no error to any request, and a checkpoint written over the
   * restored one would never replay it.
   */
  private checkpointWrite(revision: number, stopped: boolean): TxnOp {
    const updated = new Date().toISOString();
    const mirrored = stopped ? this.own.after(revision) : [];
    const checkpoint: CheckpointState = { schemaVersion: STATE_SCHEMA_VERSION, revision, updated, by: 'dualrun', owners: this.mirrorsAt, ...(stopped ? { stopped: updated } : {}), ...(mirrored.length > 0 ? { mirrored } : {}) };
    const key = this.ctx.paths.checkpoint();
    const value = Buffer.from(JSON.stringify(checkpoint));
    return this.checkpointIndex !== undefined ? { verb: 'cas', key, value, index: this.checkpointIndex } : { verb: 'set', key, value };
  }

  /** The txn fails unless this process still holds the leader lock. */
  private leaderCheck(): TxnOp {
    return { verb: 'check-session', key: this.ctx.paths.leader, session: this.ctx.leader.session ?? '' };
  }

  /** `check-index` on the owners document as read when the pending decisions were made. */
  private fence(): TxnOp {
    const key = ownersKey(this.ctx.paths);
    return this.fenceIndex > 0 ? { verb: 'check-index', key, index: this.fenceIndex } : { verb: 'check-not-exists', key };
  }

  /** Applies ops one key at a time from what Consul holds now (the slow path after a failed check). */
  private async repair(ops: TxnOp[], revision: number, _plan?: RevisionPlan): Promise<void> {
    this.ctx.stats.repairs++;
    const keys = [...new Set(ops.map((o) => o.key))];
    let current = await this.entriesOf(keys);
    // Keys an older session of ours held went with it: read them again.
    if (await this.retireHolders(ops, current)) current = await this.entriesOf(keys);
    const fixed: TxnOp[] = [];
    const ours = await this.oursAmong(current);
    // The last write to each key wins; rebuild it against the real holder.
    const last = new Map<string, TxnOp>();
    for (const op of ops) last.set(op.key, op);
    for (const [key, op] of last) {
      const holder = current.get(key)?.session;
      const own = holder && ours.has(holder);
      if (op.verb === 'delete') fixed.push(op);
      else if (op.verb === 'lock') {
        if (!(await this.ctx.target.readSession(op.session))) {
          const lost = this.sessions.records().find((r) => r.sessionId === op.session);
          if (lost) this.renewedAt.delete(lost.leaseId);
          this.options.log('warn', `session ${op.session} for ${formatKey(key)} is gone; the next lease pass re-creates it`);
          continue;
        }
        if (holder && holder !== op.session && own) fixed.push({ verb: 'unlock', key, value: op.value, session: holder });
        if (holder && !own) {
          this.options.log('warn', `${formatKey(key)} is held by a session this migration does not own; left alone`);
          continue;
        }
        fixed.push(op);
      } else if (op.verb === 'unlock' || op.verb === 'set') {
        fixed.push(holder && own ? { verb: 'unlock', key, value: op.value, session: holder } : { verb: 'set', key, value: op.value });
      }
    }
    // The usual path after a restart, or when keys move between leases: worth a line, not a warning.
    this.options.log('info', `txn up to revision ${revision} found a key held by another session than planned (usual after a restart, or when keys move between leases); re-applying its ${fixed.length} key(s) against Consul's current state (nothing for the operator to do)`);
    for (const part of packTxnBatches(fixed, this.limits, this.reserve)) {
      try {
        await this.ctx.target.applyTxn([...part, this.fence(), this.leaderCheck()]);
      } catch (err) {
        if (err instanceof TxnFailedError && err.errors.some((e) => e.opIndex === part.length)) throw new OwnersChanged('owners fence failed');
        throw err;
      }
    }
    await this.send([], revision);
  }

  /** The lease whose session `session` was (Consul lost it): checked by the next lease pass, not after its renewal interval. */
  checkLeaseOf(session: string): void {
    const record = this.sessions.records().find((r) => r.sessionId === session);
    if (record) this.renewedAt.delete(record.leaseId);
  }

  /**
   * At start: sessions Consul reaped while no dual-run renewed them (their keys
   * are gone) are re-created for live leases and their keys rewritten; sessions
   * whose etcd lease ended are destroyed.
   */
  async reconcileLeases(): Promise<void> {
    await this.maintainLeases(true);
  }

  /**
   * One pass over the mirrored leases, {@link LEASE_CHECKS_IN_FLIGHT} at a
   * time: a lease etcd ended has its session destroyed; a live one has its
   * session renewed, or re-created with its keys when Consul reaped it. A
   * session is renewed before half its TTL has passed, counting the wait for
   * the next pass (Consul reaps one only after a whole TTL without a renewal),
   * and at least every {@link LEASE_CHECK_MAX_MS}; so a pass touches only the
   * sessions that are due, the leases whose keys were just deleted (they may
   * have ended) and those whose session the replication found gone; at start,
   * all of them.
   */
  async maintainLeases(atStart = false, signal?: AbortSignal): Promise<void> {
    const due = this.dueSessions(atStart);
    const limit = pLimit(LEASE_CHECKS_IN_FLIGHT);
    // Every due session is renewed first, apart from etcd: while etcd cannot say whether a lease ended (it is
    // down, or hangs until each call's deadline, as in a partition), its keys are still in etcd, and Consul must not
    // reap them meanwhile. Renewals paired with the lease checks reached the last sessions of a pass of hundreds
    // of leases, 16 checks at a time, each waiting out its deadline, only after Consul had reaped them.
    const renewing = Date.now();
    const renewals = await this.renew(due, renewing, limit, signal);
    // Then the leases in etcd. The first read etcd fails ends the pass (the rest would wait out the same outage one
    // by one); those leases are checked by a later pass. Settled, not raced: a pass ends when its last lease does,
    // so the next never overlaps this one.
    const pass: { etcdFailed?: unknown } = {};
    const outcomes = await Promise.allSettled(due.map((record, i) => limit(() => (signal?.aborted || pass.etcdFailed ? undefined : this.maintainLease(record, renewals[i]!, renewing, atStart, pass)))));
    this.ctx.stats.sessions = this.sessions.own.size;
    const failed = outcomes.find((o) => o.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Renews the sessions that are due, and nothing else: while a lease pass waits on etcd, the timer renews
   * here meanwhile. A session Consul no longer has is left to the next pass (it re-creates it).
   */
  async renewDue(signal?: AbortSignal): Promise<void> {
    const due = this.dueSessions(false).filter((r) => !this.sessions.replaced.has(r.leaseId));
    await this.renew(due, Date.now(), pLimit(LEASE_CHECKS_IN_FLIGHT), signal);
  }

  /**
   * The sessions to renew now: renewed before half their TTL has passed, counting the wait for the next
   * pass (Consul reaps one only after a whole TTL without a renewal), and at least every
   * {@link LEASE_CHECK_MAX_MS}; every one at start, and those the replication found replaced.
   */
  private dueSessions(atStart: boolean): SessionRecord[] {
    const everyMs = this.options.leaseEveryMs ?? LEASE_EVERY_MS;
    const now = Date.now();
    return this.sessions.records().filter((r) =>
      atStart || this.sessions.replaced.has(r.leaseId) || now - (this.renewedAt.get(r.leaseId) ?? 0) + everyMs >= Math.min((r.ttlSeconds * 1000) / 2, LEASE_CHECK_MAX_MS));
  }

  /** Renews `due` (whether each session still exists, or the failure), marking those renewed at `at`. */
  private renew(due: readonly SessionRecord[], at: number, limit: ReturnType<typeof pLimit>, signal?: AbortSignal): Promise<PromiseSettledResult<boolean>[]> {
    return Promise.allSettled(due.map((record) => limit(async () => {
      if (signal?.aborted) return true;
      const alive = await this.ctx.target.renewSession(record.sessionId);
      if (alive) this.renewedAt.set(record.leaseId, at);
      return alive;
    })));
  }

  private async maintainLease(record: SessionRecord, renewal: PromiseSettledResult<boolean>, renewing: number, atStart: boolean, pass: { etcdFailed?: unknown }): Promise<void> {
    const read = await this.ctx.source.readLease(record.leaseId).catch((err: unknown) => {
      pass.etcdFailed ??= err;
      throw err;
    });
    if (read.ttl < 0) {
      this.renewedAt.delete(record.leaseId);
      // Destroyed once the replication has applied every change etcd had made when the lease was found ended: a key
      // taken off the lease while Consul was down or no dual-run ran is still held by the session until its put is
      // replayed, and Consul would delete it with the session (it came back only with the replay). Renewed meanwhile.
      const until = this.endedAt.get(record.leaseId) ?? (await this.ctx.source.status()).revision;
      if (this.ctx.stats.checkpoint < until) {
        this.endedAt.set(record.leaseId, until);
        return;
      }
      this.endedAt.delete(record.leaseId);
      await this.stillLeading();
      await this.sessions.forget(record.leaseId, true);
      this.options.log('info', `etcd lease ${record.leaseId} ended; destroyed its session`, { lease: record.leaseId });
      return;
    }
    if (renewal.status === 'rejected') throw renewal.reason;
    const alive = renewal.value;
    let session = record.sessionId;
    if (!alive) {
      await this.stillLeading();
      const created = await this.sessions.recreate(record.leaseId);
      if (!created) return;
      session = created;
      this.sessions.replaced.add(record.leaseId);
    }
    // A replaced session (here, or by the replication when it found the old one gone) holds only the keys
    // written since; it stays marked until the lease's keys are written again, so a failed rewrite is retried.
    if (this.sessions.replaced.has(record.leaseId)) {
      // The lease's keys only now: renewals, every half TTL of every lease, need none of them.
      const { keys } = await this.ctx.source.readLease(record.leaseId, { keys: true });
      await this.rewriteLeaseKeys(record.leaseId, keys ?? [], session, alive ? 'replaced it' : 're-created it', atStart);
    }
    this.renewedAt.set(record.leaseId, renewing);
  }

  /**
   * Throws once this process lost the leader lock: session upkeep (destroying,
   * re-creating, retiring sessions) is not fenced by the lock as KV writes are,
   * and a paused former leader that went on with it destroyed the sessions the
   * new leader had made, and their keys with them.
   */
  private async stillLeading(): Promise<void> {
    // Asked of Consul, not of the last renewal: a process resumed after a pause runs its overdue lease pass
    // before its overdue lock renewal has found the lock gone.
    if (this.ctx.lost.aborted || !(await this.ctx.leader.held())) throw new LeadershipLost('lost the leader lock: no session upkeep');
  }

  /** Consul's entries of `keys`, by key: what a repair rebuilds writes against. */
  private async entriesOf(keys: string[]): Promise<Map<string, TargetEntry>> {
    return new Map((await this.ctx.target.readEntries(keys)).map((e) => [e.key, e]));
  }

  /** The sessions holding `current`'s keys that are this migration's (see {@link LeaseSessions.isOurs}). */
  private async oursAmong(current: ReadonlyMap<string, TargetEntry>): Promise<Set<string>> {
    const ours = new Set<string>();
    for (const holder of new Set([...current.values()].flatMap((e) => (e.session ? [e.session] : [])))) {
      if (await this.sessions.isOurs(holder)) ours.add(holder);
    }
    return ours;
  }

  /**
   * Retires the older sessions of ours (Consul restored them after a restart,
   * once this run had made new ones) that hold, as `current` (Consul's entries
   * of those keys) says, keys the `lock` ops of `ops` write with a lease's
   * recorded session; whether there were any.
   */
  private async retireHolders(ops: TxnOp[], current: ReadonlyMap<string, TargetEntry>): Promise<boolean> {
    const seen = new Set<string>();
    let retired = false;
    for (const op of ops) {
      if (op.verb !== 'lock') continue;
      const holder = current.get(op.key)?.session;
      if (!holder || holder === op.session || this.sessions.own.has(holder) || seen.has(holder)) continue;
      seen.add(holder);
      await this.stillLeading();
      const lease = await this.sessions.retireDuplicate(holder, op.session);
      if (!lease) continue;
      retired = true;
      this.renewedAt.delete(lease);
      this.options.log('warn', `session ${holder} is an older session of etcd lease ${lease} (Consul restored it after a restart); destroyed it, and the lease's keys are written again with session ${op.session}`);
    }
    return retired;
  }

  private async rewriteLeaseKeys(leaseId: string, keys: Buffer[], session: string, what: string, atStart: boolean): Promise<void> {
    const ops: TxnOp[] = [];
    const consulOwned: TxnOp[] = [];
    for (const key of keys) {
      const route = routeForReplication(this.ctx.mapping, key, 0);
      if (route.kind !== 'mapped' || route.leases !== 'session') continue;
      const owned = ownerAt(this.ownership.doc, route.rule, Number.MAX_SAFE_INTEGER).owner === 'consul';
      for await (const page of this.ctx.source.readPages({ start: key, end: Buffer.concat([key, Buffer.from([0])]) })) {
        for (const entry of page.entries) if (entry.lease === leaseId) (owned ? consulOwned : ops).push({ verb: 'lock', key: route.target, value: entry.value, session });
      }
    }
    // Consul owns a cut-over rule's keys: a key there (an application wrote it) stays as it is. One absent went with
    // the reaped session, as the etcd lease lives on: written back, or the reverse mirror would delete it from etcd too.
    if (consulOwned.length > 0) {
      const current = await this.entriesOf(consulOwned.map((op) => op.key));
      for (const op of consulOwned) {
        if (current.has(op.key) || op.verb !== 'lock') continue;
        this.restored.set(op.key, { session: op.session, value: op.value });
        ops.push(op);
      }
    }
    const apply = (part: TxnOp[]) => this.ctx.target.applyTxn([...part, this.leaderCheck()]);
    for (const part of packTxnBatches(ops, this.limits, this.reserve)) {
      try {
        await apply(part);
      } catch (err) {
        if (!(err instanceof TxnFailedError)) throw err;
        const keys = part.map((o) => o.key);
        let current = await this.entriesOf(keys);
        // A key still held by an older session of this lease (Consul restored it after a restart): retire it.
        if (await this.retireHolders(part, current)) current = await this.entriesOf(keys);
        const ours = await this.oursAmong(current);
        // A key another lease's session of ours holds (the key moved to this lease while no dual-run ran): released
        // from it in the same txn. One a session of someone else holds is left alone, as the replication does.
        const rebuilt = part.flatMap((op): TxnOp[] => {
          const holder = current.get(op.key)?.session;
          if (op.verb !== 'lock' || !holder || holder === op.session) return [op];
          if (ours.has(holder)) return [{ verb: 'unlock', key: op.key, value: op.value, session: holder }, op];
          this.options.log('warn', `${formatKey(op.key)} is held by a session this migration does not own; left alone`);
          return [];
        });
        for (const again of packTxnBatches(rebuilt, this.limits, this.reserve)) await apply(again);
      }
    }
    this.sessions.replaced.delete(leaseId);
    // Counted at a start or takeover too: the keys were gone from Consul all the same (a stop, or a leader that died,
    // longer than the session's TTL); only the log line is quieter then, one per lease after a planned stop.
    this.ctx.stats.sessionsRecreated++;
    this.options.log(atStart ? 'info' : 'warn', `session of etcd lease ${leaseId} was gone from Consul; ${what} and rewrote ${ops.length} key(s)`);
  }
}

/**
 * The delete guard of a re-baseline, with its cause: etcd compacted past `checkpoint` (the keys are gone
 * from etcd), or, without one, the rules changed (the change takes the keys out of a rule). The copy's
 * advice (`copy --allow-mass-delete`) is not the way out of a dual-run. What the dual-run did before
 * (its lease pass at start may have re-created a session and rewritten its keys) stands: only the
 * deletes are refused.
 */
function rebaselineGuardError(guard: MigrateError, checkpoint: number | undefined): RefusedError {
  // The copy's own words say it wrote nothing; the dual-run's lease pass may have written before it (re-created sessions).
  const keys = guard.details as { rule?: string; deletes?: number; targetKeys?: number } | undefined;
  const said = (keys?.rule !== undefined && keys.deletes !== undefined && keys.targetKeys !== undefined
    ? deleteGuardError(keys.rule, keys.deletes, keys.targetKeys, 'the re-baseline wrote and deleted nothing').message
    : guard.message).replace(/\.$/, '');
  return checkpoint !== undefined
    ? new RefusedError('delete_guard', `${said} (it ran because etcd compacted past the checkpoint ${checkpoint}: those keys are gone from etcd, deleted while the dual-run was behind or stopped).`, {
        hint: 'Check that etcd lost those keys on purpose (`migrate plan` lists the rule\'s keys); if so, start the dual-run again with --allow-mass-delete. The re-baseline deleted nothing.',
        details: guard.details,
      })
    : new RefusedError('delete_guard', `${said} (it ran for migration.yaml's changed rules: the change takes those keys out of the rule, as a narrower rule, a nested keep rule or leases: skip does, so they would be deleted from Consul; the change is not recorded).`, {
        hint: 'Check the change (`migrate copy --dry-run --accept-mapping-change --delete-extraneous --allow-mass-delete --show-ops` lists the keys; a dry-run writes nothing); if it is meant, start the dual-run again with --accept-mapping-change --allow-mass-delete. The re-baseline deleted nothing.',
        details: guard.details,
      });
}
