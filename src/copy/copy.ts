import { getMaxListeners, setMaxListeners } from 'node:events';
import pLimit from 'p-limit';
import { hostname } from 'node:os';
import { RefusedError, ServerError, isMigrateError } from '../errors.js';
import { LeaderLock, lockHolder } from '../dualrun/leader.js';
import { copyLockKey, runningCopy } from './lock.js';
import type { MigrationConfig, RuleConfig } from '../config/load.js';
import { formatKey } from '../report/keys.js';
import { ConsulTooLargeError, TOO_LARGE_HINT, TxnFailedError, sleep } from '../stores/consul-http.js';
import { SourceCompactedError, readAgainAtFreshRevision } from '../stores/etcd.js';
import { prefixRange, readRanges, splitRanges } from '../stores/key-range.js';
import { putLarge } from '../stores/large-put.js';
import { ListedKeys } from '../stores/listed-keys.js';
import { readAhead } from '../stores/read-ahead.js';
import { TxnBatcher, groupFitsInTxn, splitBatch, wireOpBytes, type TargetLimits } from '../stores/txn-batcher.js';
import type { KeyRange, ServiceInstance, SourceEntry, SourceReader, TargetEntry, TargetStore, TxnOp } from '../stores/types.js';
import { META_RULE } from '../services/registration.js';
import { checkIdentity, ensureMeta, mappingHash, readState, recordedRules, statePaths, STATE_SCHEMA_VERSION, type StateMeta, type StatePaths } from '../state/state.js';
import { LeaseSessions, type ClampFinding } from '../sessions/lease-sessions.js';
import { deleteGuardTrips, planPage, shareText, writeOps, type PlannedRoute, type PlannedSkip, type PlannedWrite, type SkipReason } from './plan.js';
import { DRY_RUN_LOCK_SESSION, RecordingTarget, type RecordedOp } from './recording-target.js';
import { routeForCopy } from './route.js';
import { syncServiceRule, type ServiceRuleStats } from '../services/sync.js';
import type { Mapping } from '../mapping/mapping.js';
import { readRuleDocs, refuseOwnedMappingChanges } from '../cutover/state-io.js';
import { countRuleKeys, ruleRanges } from '../mapping/route.js';

/** How often progress is reported while a page is being written (ms). */
const PROGRESS_EVERY_MS = 250;

/** `copy` state document: the pinned revision and, per rule, the low-water mark. */
export interface CopyState {
  schemaVersion: number;
  revision: number;
  started: string;
  completed?: string;
  /**
   * Consul's index when this copy began writing: every key it wrote has a
   * higher ModifyIndex. Kept across --resume; absent in a dry-run.
   */
  startIndex?: number;
  /** Per rule: base64 of the last source key such that every key up to it is written. */
  rules: Record<string, { lowWater?: string; done?: boolean }>;
}

/** `checkpoint` state document: the last etcd revision whose effects are fully applied. */
export interface CheckpointState {
  schemaVersion: number;
  revision: number;
  updated: string;
  by: 'copy' | 'dualrun';
  /** When the dual-run stopped cleanly (its last checkpoint); absent while it runs. */
  stopped?: string;
  /**
   * The dual-run's: the owners document's index its reverse mirrors were last
   * started and stopped for. `finalize --delete-etcd` waits for the index of its
   * flip here before it deletes, so no mirror write lands after the delete.
   */
  owners?: number;
  /**
   * The dual-run's clean stop: revisions past `revision` that its reverse
   * mirrors wrote to etcd (their last writes, landed as it stopped). The next
   * dual-run replays them as its own writes, not as an application's late writes.
   */
  mirrored?: number[];
  /**
   * Set by the dual-run that found etcd's revision below `revision` (etcd restored
   * from a backup): every later dual-run refuses to start, even once etcd's writers
   * have taken it past `revision` again, until a copy puts the checkpoint back at its
   * own revision (a copy's checkpoint never carries it).
   */
  rewound?: { etcdRevision: number; found: string };
}

export type OnConflict = 'overwrite' | 'skip' | 'fail';

export interface CopyOptions {
  dryRun: boolean;
  /** Record every operation in the result (dry-run `--show-ops`, JSON). */
  recordOps: boolean;
  resume: boolean;
  onConflict: OnConflict;
  deleteExtraneous: boolean;
  allowMassDelete: boolean;
  acceptMappingChange: boolean;
  /** `--accept-cluster-change`: the migration's etcd cluster was rebuilt (a new cluster id): record the new one, and put the checkpoint at this copy's revision. */
  acceptClusterChange?: boolean;
  /** The dual-run's re-baseline: a changed mapping is recorded by the dual-run once the copy is done, not before (see its `MappingChange`). */
  deferMappingChange?: boolean;
  /** Writes per second across all workers (ops), 0 = unthrottled. */
  rate: number;
  concurrency: number;
  pageKeys: number;
  signal: AbortSignal;
  now: () => Date;
  toolVersion: string;
  onProgress?: (event: CopyProgressEvent) => void;
  /** Takes the one-copy-at-a-time lock ({@link acquireCopyLock}); `migrate copy` passes it, the dual-run's re-baseline runs under its own. */
  lock?: () => Promise<CopyLock>;
}

/** The lock a copy holds while it writes. */
export interface CopyLock {
  release(): Promise<void>;
  /** The op every write txn of the copy carries: it fails once Consul no longer holds the lock (wiped, restored, session gone). */
  fence: TxnOp;
}

export type CopyProgressEvent =
  | { type: 'start'; revision: number; rules: { name: string; keys: number }[] }
  | { type: 'progress'; rule: string; keysDone: number; bytes: number; retries: number }
  | { type: 'rule-done'; rule: string }
  | { type: 'warning'; message: string };

export interface RuleCopyStats {
  name: string;
  from: string;
  to: string;
  sourceKeys: number;
  created: number;
  updated: number;
  unchanged: number;
  bytesWritten: number;
  skipped: Partial<Record<SkipReason, number>>;
  skippedExamples: { key: string; reason: SkipReason; detail: string }[];
  extraneous: number;
  extraneousExamples: string[];
  deleted: number;
  /** Extraneous keys `--delete-extraneous` left: held by a session this migration does not own. */
  extraneousHeld: number;
  /** Keys this copy wrote at a revision etcd then compacted, gone from etcd at the revision it went on at. */
  deletedStale: number;
  /** With --resume: the rule's keys below the interrupted copy's low-water mark, written by it and not planned again (not in the counts above). */
  resumedBelow: number;
  conflicts: { overwritten: number; skipped: number };
  singlePuts: number;
}

export interface CopyResult {
  dryRun: boolean;
  migration: string;
  revision: number;
  resumedFrom?: number;
  /** Revisions etcd compacted while this run copied at them; the run went on at a newer one. */
  compactedAt?: number[];
  rules: RuleCopyStats[];
  /** Copy rules not copied: Consul owns their data (cut over or finalized), which a copy from etcd would overwrite. */
  ownedByConsul: { rule: string; phase: 'cutover' | 'finalized' }[];
  /** `service` rules: instances registered on the agent's catalog. */
  services: ServiceRuleStats[];
  sessions: { created: number; adopted: number; clamps: ClampFinding[] };
  txns: number;
  retries: number;
  durationMs: number;
  interrupted: boolean;
  ops?: RecordedOp[];
}

const EXAMPLES = 20;
/** How long a lock refused for an ended session's lock delay is tried again (Consul caps lock delays at 60 s), and how often. */
const LOCK_DELAY_WAIT_MS = 65_000;
const LOCK_DELAY_POLL_MS = 1_000;
/** Halvings of a batch Consul refuses as too large: down to the one write it refuses (128 ops take 7), which the error names. */
const SPLIT_RETRY_LIMIT = 8;
/** Keys per Consul read of the guard's extraneous keys (the txn op limit of every version). */
const READ_CHUNK_KEYS = 64;
const LOW_WATER_KEY_MAX = 4096;

/**
 * Copies every `copy` rule at one pinned etcd revision. The same code path
 * runs for `--dry-run` with a recording target (DESIGN §2).
 */
/**
 * `migrate copy` refuses while a dual-run holds the leader lock: a copy pins an
 * older revision than the one the dual-run has applied, and its writes would
 * put older values back over newer ones. (The dual-run's own re-baseline runs
 * the copy under that lock and does not come through here.)
 */
export async function refuseWhileDualRunLeads(target: TargetStore, config: MigrationConfig): Promise<void> {
  const paths = statePaths(config.state.prefix, config.id);
  const leader = await target.readKey(paths.leader);
  if (!leader?.session) return;
  throw new RefusedError('copy_dualrun_running', `A dual-run of migration "${config.id}" is running (it holds the leader lock: ${lockHolder(leader.value) ?? 'unknown holder'}); a copy now would write older values over what it replicates.`, {
    hint: 'The dual-run replicates etcd\'s changes; it does not rewrite keys changed in Consul since (the drift verify reports). To copy again, stop the dual-run first, then start it again after the copy (it resumes from its checkpoint, or from the copy\'s with --delete-extraneous).',
  });
}

/**
 * `migrate dualrun` refuses to lead while a `migrate copy` holds the copy lock
 * (checked once it holds the leader lock, as the copy checks the leader lock
 * once it holds its own, so two started together cannot both go on): the copy
 * writes values of its pinned revision over keys the dual-run has replicated
 * since, and its conflict handling takes them for changes made in Consul.
 */
export async function refuseWhileCopyRuns(target: TargetStore, config: MigrationConfig): Promise<void> {
  const holder = await runningCopy(target, config);
  if (holder !== undefined) throw copyRunning(config, holder);
}

/** The refusal of a dual-run while the copy `holder` runs (dualrun_copy_running). */
export function copyRunning(config: Pick<MigrationConfig, 'id'>, holder: string): RefusedError {
  return new RefusedError('dualrun_copy_running', `A copy of migration "${config.id}" is running (it holds the copy lock: ${holder}); a dual-run now would have its newer values overwritten by the copy's older ones.`, {
    hint: 'Start the dual-run when the copy has finished: it starts from the copy\'s checkpoint. (A copy killed on this host does not count; the lock of one killed elsewhere frees itself within about 20 s.)',
  });
}

/**
 * One `migrate copy` per migration at a time: two copies pinned at different
 * revisions would each overwrite the other's newer values. The lock is the
 * dual-run's kind (a session on `_migrate/<id>/copy-lock`, Behavior delete),
 * so a copy killed on this host does not block `--resume`: its dead holder is
 * cleared at once, and elsewhere the lock frees itself within 2× the TTL.
 */
export async function acquireCopyLock(target: TargetStore, config: MigrationConfig, signal: AbortSignal): Promise<CopyLock> {
  const lock = new LeaderLock(target, copyLockKey(config), `${hostname()}:${process.pid}`, 'copy lock');
  try {
    await lock.acquire({ wait: false, signal });
  } catch (err) {
    if (!isMigrateError(err) || err.code !== 'dualrun_locked') throw err;
    // The holder as read when the lock was refused: read again now, a copy just finishing would be gone.
    const holder = String((err.details as { holder?: string } | undefined)?.holder ?? 'unknown holder');
    throw new RefusedError('copy_locked', `Another copy of migration "${config.id}" is running (${holder}).`, {
      hint: 'Wait for it to finish (then there is nothing to resume), or stop it and run `migrate copy --resume`.',
    });
  }
  try {
    // Again under the lock: a dual-run that started since the first check now sees this copy's lock, or this copy sees its.
    await refuseWhileDualRunLeads(target, config);
  } catch (err) {
    await lock.release();
    throw err;
  }
  lock.keepAlive(() => undefined);
  return { release: () => lock.release(), fence: { verb: 'check-session', key: copyLockKey(config), session: lock.session! } };
}

/**
 * The error for a write txn that failed on the copy lock's check: Consul no longer holds the lock, so what
 * it held of the migration may be gone too (a Consul wiped or restored from a snapshot under the copy
 * took the keys written before with it, and a copy going on would end "done" over them).
 */
function lockLost(err: unknown, ops: readonly TxnOp[], fence: readonly TxnOp[]): unknown {
  if (!(err instanceof TxnFailedError) || fence.length === 0) return err;
  const at = ops.indexOf(fence[0]!);
  if (!err.errors.some((e) => e.opIndex === at)) return err;
  const { key } = fence[0]!;
  return new ServerError('copy_lock_lost', `Consul no longer holds this copy's lock (${key}): it lost the migration's state (wiped, or restored from a snapshot), or the lock's session ended (the copy stalled for more than about 20 s). Keys this copy wrote before may be gone from Consul; it stopped writing.`, {
    hint: 'Check Consul (`migrate status`), then run `migrate copy --resume`: it plans against what Consul holds now and writes what is missing. Run `migrate verify` afterwards.',
    details: { lock: key },
  });
}

export async function runCopy(deps: CopyDeps, options: CopyOptions): Promise<CopyResult> {
  const started = Date.now();
  // Every request and throttle wait in flight listens on the signal (workers × requests): more than Node's default 10.
  setMaxListeners(Math.max(getMaxListeners(options.signal), 256), options.signal);
  const { config, source } = deps;
  const target: TargetStore = options.dryRun ? new RecordingTarget(deps.target) : deps.target;
  const paths = statePaths(config.state.prefix, config.id);
  const status = await source.status();
  const info = await target.info();
  const limits = await target.limits();
  const identity = { id: config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(config), rules: recordedRules(config) };
  // A renamed finalized rule, say, would be copied from etcd over what applications wrote in Consul.
  if (options.acceptMappingChange) await refuseOwnedMappingChanges(target, paths, deps.config, deps.mapping);
  const recorded = await readState<StateMeta>(target, paths.meta);
  const accept = { acceptMappingChange: options.acceptMappingChange, acceptClusterChange: options.acceptClusterChange ?? false };
  if (options.dryRun) {
    checkIdentity(recorded, identity, accept);
  } else {
    await ensureMeta(target, paths, identity, options.toolVersion, options.now(), { ...accept, deferMappingChange: options.deferMappingChange });
  }
  // The revisions the migration's checkpoint counts are another cluster's: this copy's revision replaces it.
  const clusterChanged = recorded !== undefined && recorded.etcdClusterId !== status.clusterId ? recorded.etcdClusterId : undefined;
  // Taken once etcd answered and the identity holds, so a refused or unreachable run writes nothing.
  const lock = options.dryRun ? undefined : await options.lock?.();
  // A dry-run takes no lock, but its txns keep the room the lock's check takes in the copy's, so it packs them as the copy does.
  const fence: TxnOp[] = lock ? [lock.fence] : options.dryRun && options.lock ? [{ verb: 'check-session', key: copyLockKey(config), session: DRY_RUN_LOCK_SESSION }] : [];
  try {
    return await copyPinned({ ...deps, target }, options, paths, { revision: status.revision, clusterChanged }, limits, started, fence);
  } finally {
    await lock?.release();
  }
}

async function copyPinned(deps: CopyDeps, options: CopyOptions, paths: StatePaths, etcd: { revision: number; clusterChanged: string | undefined }, limits: TargetLimits, started: number, fence: TxnOp[]): Promise<CopyResult> {
  const { config, source, target } = deps;
  const currentRevision = etcd.revision;
  const previous = await readState<CopyState>(target, paths.copy);
  let revision = currentRevision;
  let resumedFrom: number | undefined;
  let lowWaters: Record<string, { lowWater?: string; done?: boolean }> = {};
  let startIndex: number | undefined;
  // Set once keys this copy wrote at one revision are planned at a newer one: those gone from etcd meanwhile are deleted.
  let staleSince: number | undefined;
  if (options.resume && (!previous || previous.completed)) {
    options.onProgress?.({ type: 'warning', message: `--resume: ${previous ? `the last copy completed (at revision ${previous.revision})` : 'no copy has started'}, so there is nothing to resume; copying the whole mapping at revision ${revision} (the diff skips what is already there)` });
  }
  if (options.resume && previous && !previous.completed) {
    resumedFrom = previous.revision;
    startIndex = previous.startIndex;
    try {
      // One key's range inside a rule (the etcd role may read no other): a read at a compacted revision fails whatever its range.
      const start = prefixRange(config.rules.find((r) => r.action !== 'keep')?.from ?? '').start;
      await source.count({ start, end: Buffer.concat([start, Buffer.from([0])]) }, previous.revision);
      revision = previous.revision;
      lowWaters = previous.rules;
    } catch (err) {
      // R was compacted: a new pinned revision, and the diff makes the full re-plan safe.
      if (!(err instanceof SourceCompactedError)) throw err;
      staleSince = startIndex;
      options.onProgress?.({ type: 'warning', message: `revision ${previous.revision} of the interrupted copy was compacted; copying at revision ${revision} instead (the diff skips what is already there)` });
    }
  }
  const copyRules: RuleConfig[] = [];
  const ownedByConsul: CopyResult['ownedByConsul'] = [];
  const phases = await readRuleDocs(target, paths);
  for (const rule of config.rules.filter((r) => r.action === 'copy')) {
    // A rule cut over (or finalized) lives in Consul now: etcd's copy of it is stale, and copying it would overwrite the application's data.
    const phase = phases.get(rule.name)?.doc;
    if (phase?.owner === 'consul') {
      const owned = phase.phase === 'finalized' ? 'finalized' : 'cutover';
      ownedByConsul.push({ rule: rule.name, phase: owned });
      options.onProgress?.({ type: 'warning', message: `rule ${rule.name} is not copied: it is ${owned === 'finalized' ? 'finalized' : 'cut over'}, and Consul owns its data; a copy from etcd would overwrite it` });
    } else copyRules.push(rule);
  }
  const sessions = new LeaseSessions(source, target, paths, config.id, options.now);
  await sessions.load();
  if (options.deleteExtraneous && !options.allowMassDelete) await refuseMassDeletes({ ...deps, target }, copyRules, revision, sessions, options);
  // Counted before the first write: a rule range the etcd role may not read stops the copy here, not
  // after it has replaced the copy document (the next dual-run then re-baselined every rule).
  // (Compacted meanwhile: the pass counts again, and re-reads at a fresh revision as a compaction during its read.)
  let totals = await countRules(deps, copyRules, revision).catch((err: unknown) => {
    if (err instanceof SourceCompactedError) return undefined;
    throw err;
  });
  if (!options.dryRun && startIndex === undefined) startIndex = await markStart(target, paths.copy, { schemaVersion: STATE_SCHEMA_VERSION, revision, started: options.now().toISOString(), rules: lowWaters });
  sessions.startRenewing((leaseId) => options.onProgress?.({ type: 'warning', message: `Consul no longer knows the session of etcd lease ${leaseId}; its keys are re-created by the next copy or dual-run` }));
  const compactedAt: number[] = [];
  const earlier = { txns: 0, retries: 0 };
  let pass: CopyPass;
  try {
    for (;;) {
      const state: CopyState = { schemaVersion: STATE_SCHEMA_VERSION, revision, started: options.now().toISOString(), ...(startIndex !== undefined ? { startIndex } : {}), rules: Object.fromEntries(copyRules.map((r) => [r.name, { ...lowWaters[r.name] }])) };
      const engine = new CopyEngine(target, limits, paths, state, options, fence);
      try {
        totals ??= await countRules(deps, copyRules, revision);
        pass = await copyPass(deps, options, copyRules, engine, sessions, { revision, staleSince }, totals);
        break;
      } catch (err) {
        if (!readAgainAtFreshRevision(err, compactedAt.length + 1, options.signal)) throw err;
        // Nothing of this pass may still be in flight when the next one plans from Consul.
        await engine.settle();
        // etcd compacted R while the copy read it (auto-compaction on a busy cluster): copy
        // again at the current revision; the diff skips what this pass already wrote.
        compactedAt.push(revision);
        earlier.txns += engine.txns;
        earlier.retries += engine.retries;
        const next = (await source.status()).revision;
        options.onProgress?.({ type: 'warning', message: `etcd compacted revision ${revision} while the copy read it (${engine.txns} txns written at it); copying again at revision ${next}, and the diff skips what is already there` });
        if (target instanceof RecordingTarget) target.forgetWrites();
        revision = next;
        totals = undefined;
        lowWaters = {};
        staleSince = startIndex;
      }
    }
  } finally {
    sessions.stop();
  }
  const { state, engine, stats, services } = pass;

  const interrupted = options.signal.aborted;
  if (!interrupted && !options.dryRun) {
    state.completed = options.now().toISOString();
    const checkpoint = await readState<CheckpointState>(target, paths.checkpoint());
    const ops: TxnOp[] = [{ verb: 'set', key: paths.copy, value: Buffer.from(JSON.stringify(state)) }];
    // The dual-run starts from here; never move a dual-run's checkpoint backwards. Nor forwards, unless this
    // copy deleted the extraneous keys too: the dual-run replays what changed since its checkpoint, deletes
    // included, and a copy that keeps extraneous keys would make it skip the deletes in between.
    const keepsDualRun = checkpoint?.by === 'dualrun' && !options.deleteExtraneous;
    // Unless etcd went back in time (restored from a backup): the revisions up to the checkpoint are others now, and a
    // dual-run that waited for etcd to pass it would skip what etcd makes meanwhile. The checkpoint comes back to this copy's.
    const etcdWentBack = checkpoint !== undefined && (checkpoint.revision > currentRevision || checkpoint.rewound !== undefined || etcd.clusterChanged !== undefined);
    if (etcdWentBack) {
      const found = etcd.clusterChanged !== undefined
        ? `the migration moves from etcd cluster ${etcd.clusterChanged} to this one (--accept-cluster-change), whose revisions are not the ones of`
        : checkpoint.revision > currentRevision ? `etcd's revision ${currentRevision} is below` : `a dual-run found etcd's revision ${checkpoint.rewound!.etcdRevision} below (${checkpoint.rewound!.found})`;
      options.onProgress?.({ type: 'warning', message: `${found} the migration's checkpoint ${checkpoint.revision}${etcd.clusterChanged !== undefined ? '' : ' (etcd restored from a backup?)'}: the checkpoint moves ${etcd.clusterChanged !== undefined ? 'to' : 'back to'} this copy's revision ${revision}${options.deleteExtraneous ? '' : '; Consul keeps the keys etcd no longer has (verify reports them as extra; --delete-extraneous deletes them)'}` });
    }
    if (((!checkpoint || checkpoint.revision < revision) && !keepsDualRun) || etcdWentBack) {
      const doc: CheckpointState = { schemaVersion: STATE_SCHEMA_VERSION, revision, updated: options.now().toISOString(), by: 'copy' };
      ops.push({ verb: 'set', key: paths.checkpoint(), value: Buffer.from(JSON.stringify(doc)) });
    } else if (keepsDualRun && checkpoint.revision < revision) {
      options.onProgress?.({ type: 'warning', message: `the dual-run's checkpoint stays at revision ${checkpoint.revision}: when it starts again it replays what etcd changed since, deletes included (this copy deleted no extraneous keys; with --delete-extraneous it would take the checkpoint to ${revision})` });
    }
    await applyFenced(target, ops, fence);
  } else if (interrupted && !options.dryRun) {
    await applyFenced(target, [{ verb: 'set', key: paths.copy, value: Buffer.from(JSON.stringify(state)) }], fence);
  }

  const result: CopyResult = {
    dryRun: options.dryRun,
    migration: config.id,
    revision,
    rules: stats,
    ownedByConsul,
    services,
    sessions: { created: sessions.created, adopted: sessions.adopted, clamps: sessions.clamps },
    // Data txns and session-record txns: every txn a dry-run lists.
    txns: earlier.txns + engine.txns + sessions.recordTxns,
    retries: earlier.retries + engine.retries,
    durationMs: Date.now() - started,
    interrupted,
  };
  if (resumedFrom !== undefined) result.resumedFrom = resumedFrom;
  if (compactedAt.length > 0) result.compactedAt = compactedAt;
  if (options.recordOps && target instanceof RecordingTarget) result.ops = target.recorded;
  return result;
}

/** Applies `ops` with the copy lock's check. */
async function applyFenced(target: TargetStore, ops: TxnOp[], fence: readonly TxnOp[]): Promise<void> {
  const fenced = [...ops, ...fence];
  await target.applyTxn(fenced).catch((err: unknown) => {
    throw lockLost(err, fenced, fence);
  });
}

/** Writes the `copy` document before any data and returns its ModifyIndex: every later write of this copy is above it. */
async function markStart(target: TargetStore, key: string, state: CopyState): Promise<number> {
  await target.applyTxn([{ verb: 'set', key, value: Buffer.from(JSON.stringify(state)) }]);
  const [written] = await target.readEntries([key]);
  if (!written) throw new Error(`internal: the copy document ${key} was not there right after it was written`);
  return written.modifyIndex;
}

/**
 * `defaults.unmapped: error`: a key outside every rule stops `migrate copy`
 * (and its dry-run) before anything is written, as it blocks the audit and
 * the plan. (The dual-run's re-baselines do not check: a key an application
 * adds outside the rules must not stop the replication.)
 */
export async function refuseUnmapped(source: SourceReader, mapping: Mapping): Promise<void> {
  if (mapping.defaults.unmapped !== 'error' || mapping.rules.some((r) => r.fromBytes.length === 0)) return;
  const { revision } = await source.status();
  // The whole keyspace less every rule's prefix: the keys outside every rule.
  const unmapped = await countRuleKeys(source, mapping, { fromBytes: Buffer.alloc(0) }, revision);
  if (unmapped === 0) return;
  throw new RefusedError('copy_unmapped_keys', `${unmapped} etcd key(s) at revision ${revision} are outside every rule, and defaults.unmapped is error: nothing was copied or written.`, {
    hint: 'Decide where they go: add copy or keep rules for them (`migrate plan` lists them), or set defaults.unmapped: skip to leave them on etcd.',
    details: { unmappedKeys: unmapped, revision },
  });
}

interface CopyPass {
  state: CopyState;
  engine: CopyEngine;
  stats: RuleCopyStats[];
  services: ServiceRuleStats[];
}

interface RuleTotal {
  name: string;
  keys: number;
}

/** The keys of each rule at `revision`. */
function countRules(deps: CopyDeps, copyRules: readonly RuleConfig[], revision: number): Promise<RuleTotal[]> {
  return Promise.all(copyRules.map(async (rule) => ({ name: rule.name, keys: await countRuleKeys(deps.source, deps.mapping, { fromBytes: Buffer.from(rule.from) }, revision) })));
}

/** Every rule once at `revision` (`totals`: each rule's keys there): KV rules, then service rules; resolves when every write has landed. */
async function copyPass(deps: CopyDeps, options: CopyOptions, copyRules: RuleConfig[], engine: CopyEngine, sessions: LeaseSessions, at: { revision: number; staleSince: number | undefined }, totals: RuleTotal[]): Promise<CopyPass> {
  const { source, target } = deps;
  const { revision, staleSince } = at;
  options.onProgress?.({ type: 'start', revision, rules: totals });
  const stats: RuleCopyStats[] = [];
  const services: ServiceRuleStats[] = [];
  const serviceRules = deps.mapping.serviceRules;
  for (const rule of copyRules) {
    if (options.signal.aborted) break;
    const ruleStats = await copyRule(rule, deps, engine, sessions, { revision, staleSince }, totals.find((t) => t.name === rule.name)!.keys, options);
    stats.push(ruleStats);
    options.onProgress?.({ type: 'rule-done', rule: rule.name });
  }
  // The last batches land (up to twice the concurrency of txns, seconds under --rate): progress goes on meanwhile.
  const last = stats.at(-1);
  const ticker = last ? setInterval(() => options.onProgress?.({ type: 'progress', rule: last.name, keysDone: Math.max(0, last.sourceKeys - engine.unlanded(last.name)), bytes: last.bytesWritten, retries: engine.retries }), PROGRESS_EVERY_MS) : undefined;
  try {
    await engine.drain();
  } finally {
    clearInterval(ticker);
  }
  // Every write has landed: the bytes of each rule's last batches (and single PUTs) count only now.
  if (!options.signal.aborted) for (const s of stats) options.onProgress?.({ type: 'progress', rule: s.name, keysDone: s.sourceKeys, bytes: s.bytesWritten, retries: engine.retries });
  // Service rules after the KV rules: the catalog is read once, on the agent the tool registers on.
  const existing = !options.signal.aborted ? await target.listServiceInstances(deps.config.id, 'agent', options.signal) : [];
  for (const rule of serviceRules) {
    if (options.signal.aborted) break;
    services.push(await syncServiceRule(rule, { source, target, mapping: deps.mapping, migrationId: deps.config.id }, revision, existing, options));
    options.onProgress?.({ type: 'rule-done', rule: rule.name });
  }
  if (!options.signal.aborted) await retireOrphanInstances(existing, serviceRules, target, options);
  return { state: engine.state, engine, stats, services };
}

/**
 * The migration's instances on the agent whose rule is no longer a service rule of the mapping (removed
 * from migration.yaml, as the README's cut-over of a service rule ends): nothing keeps them in step any
 * more, and a leased one stays critical, an unleased one passing, for ever. Said; deregistered with
 * --delete-extraneous (more than 10 only with --allow-mass-delete too).
 */
async function retireOrphanInstances(existing: readonly ServiceInstance[], serviceRules: readonly RuleConfig[], target: TargetStore, options: CopyOptions): Promise<void> {
  const names = new Set(serviceRules.map((r) => r.name));
  const orphans = existing.filter((i) => !names.has(i.meta[META_RULE] ?? ''));
  if (orphans.length === 0) return;
  const rules = [...new Set(orphans.map((i) => i.meta[META_RULE] ?? '?'))].join(', ');
  const what = `${orphans.length} instance(s) of service rule(s) ${rules}, no longer in migration.yaml, are registered on the agent`;
  if (!options.deleteExtraneous || (deleteGuardTrips(orphans.length, orphans.length) && !options.allowMassDelete)) {
    const how = options.deleteExtraneous ? 'pass --allow-mass-delete too to deregister them' : '`migrate copy --delete-extraneous` deregisters them';
    options.onProgress?.({ type: 'warning', message: `${what}; nothing keeps them in step with etcd any more (${how})` });
    return;
  }
  for (const instance of orphans) await target.deregisterService(instance.id);
  options.onProgress?.({ type: 'warning', message: `${what}: deregistered them (--delete-extraneous)` });
}

export interface CopyDeps {
  source: SourceReader;
  target: TargetStore;
  config: MigrationConfig;
  mapping: Mapping;
}

/**
 * Whether Consul holds the key a mapped route gives: a leased key under
 * `leases: skip` never is, so a Consul key of it (written before the key got
 * its lease) is extraneous, and a re-baseline deletes it as the replication does.
 */
function heldInConsul(entry: SourceEntry, route: Extract<PlannedRoute, { kind: 'mapped' }>): boolean {
  return entry.lease === '0' || route.leases !== 'skip';
}

function ownRanges(mapping: Mapping, rule: RuleConfig): KeyRange[] {
  return ruleRanges(mapping, { fromBytes: Buffer.from(rule.from) });
}

/**
 * `--delete-extraneous` without `--allow-mass-delete`: the delete guard of every
 * rule, before anything is written. Extraneous keys are known only once a rule's
 * whole range is read, so the copy itself would find a tripped guard after it
 * wrote that rule and earlier ones (and deleted their extraneous keys). This
 * pass reads the keys alone (etcd keys-only at the copy's revision, Consul's
 * key list) and refuses, exit 4, before the first write. Value sizes are not
 * read, so a key whose value is too large counts as mapped here; the copy
 * checks each rule's guard again before its deletes.
 */
async function refuseMassDeletes(deps: CopyDeps, copyRules: RuleConfig[], revision: number, sessions: LeaseSessions, options: CopyOptions): Promise<void> {
  for (const rule of copyRules) {
    const targetKeys = new ListedKeys(await deps.target.listKeys(rule.to, options.signal));
    if (!deleteGuardTrips(targetKeys.size, targetKeys.size)) continue;
    for await (const page of readRanges(deps.source, ownRanges(deps.mapping, rule), { revision, pageKeys: options.pageKeys, keysOnly: true, signal: options.signal })) {
      for (const entry of page.entries) {
        const route = routeForCopy(deps.mapping, rule.name, entry.key, 0);
        if (route.kind === 'mapped' && heldInConsul(entry, route)) targetKeys.take(route.target);
      }
    }
    if (options.signal.aborted) return;
    const counted = await guardCount(deps, [...targetKeys.leftovers()], targetKeys.size, sessions, options.signal);
    if (counted !== undefined) throw deleteGuardError(rule.name, counted, targetKeys.size, 'nothing was written or deleted');
  }
}

/**
 * The deletes of `extraneous` (of a rule's `targetKeys` Consul keys) that trip the delete guard, or
 * undefined when it holds; not counting the keys held by a session of this migration whose etcd
 * lease has ended: etcd deleted those itself, with the lease, and Consul deletes them with the
 * session. A rule of leased registrations sheds many at once on ordinary churn (a re-baseline after
 * a stop and a compaction tripped on them), and that is no mass delete of the tool's making.
 */
async function guardCount(deps: Pick<CopyDeps, 'source' | 'target'>, extraneous: string[], targetKeys: number, sessions: LeaseSessions, signal: AbortSignal): Promise<number | undefined> {
  if (!deleteGuardTrips(extraneous.length, targetKeys)) return undefined;
  const leaseOf = new Map(sessions.records().map((r) => [r.sessionId, r.leaseId]));
  if (leaseOf.size === 0) return extraneous.length;
  const ended = new Map<string, Promise<boolean>>();
  let gone = 0;
  for (let i = 0; i < extraneous.length; i += READ_CHUNK_KEYS) {
    for (const entry of await deps.target.readEntries(extraneous.slice(i, i + READ_CHUNK_KEYS), signal)) {
      const lease = entry.session ? leaseOf.get(entry.session) : undefined;
      if (!lease) continue;
      let answer = ended.get(lease);
      if (!answer) ended.set(lease, (answer = deps.source.readLease(lease).then((l) => l.ttl < 0)));
      if (await answer) gone++;
    }
  }
  return deleteGuardTrips(extraneous.length - gone, targetKeys) ? extraneous.length - gone : undefined;
}

export function deleteGuardError(rule: string, deletes: number, targetKeys: number, outcome: string): RefusedError {
  return new RefusedError('delete_guard', `Deleting ${deletes} extraneous keys would remove ${shareText(deletes, targetKeys)} of rule ${rule}'s ${targetKeys} target keys; ${outcome}.`, {
    hint: 'Check the rule\'s from/to first (`migrate plan`); if the deletes are intended, pass --allow-mass-delete.',
    details: { rule, deletes, targetKeys },
  });
}

async function copyRule(
  rule: RuleConfig,
  deps: { source: SourceReader; target: TargetStore; mapping: Mapping },
  engine: CopyEngine,
  sessions: LeaseSessions,
  at: { revision: number; staleSince: number | undefined },
  sourceKeys: number,
  options: CopyOptions,
): Promise<RuleCopyStats> {
  const { revision } = at;
  const stats: RuleCopyStats = {
    name: rule.name, from: rule.from, to: rule.to, sourceKeys, created: 0, updated: 0, unchanged: 0, bytesWritten: 0,
    skipped: {}, skippedExamples: [], extraneous: 0, extraneousExamples: [], deleted: 0, extraneousHeld: 0, deletedStale: 0, resumedBelow: 0, conflicts: { overwritten: 0, skipped: 0 }, singlePuts: 0,
  };
  const ruleState = engine.state.rules[rule.name]!;
  // Taken out as source keys map to them: what is left has no source key (the extraneous keys).
  const targetKeys = new ListedKeys(await deps.target.listKeys(rule.to, options.signal));
  // The keys the rule owns: its `from` less the prefixes of rules nested in it (theirs, and counted as theirs).
  const ranges = ownRanges(deps.mapping, rule);
  let keysDone = 0;
  // A resumed rule: what lies below the low-water mark is written already. A keys-only
  // pass over it still tells which target keys have a source key, for the extraneous check.
  const [written, toWrite] = ruleState.done
    ? [ranges, []]
    : ruleState.lowWater
      ? splitRanges(ranges, Buffer.concat([Buffer.from(ruleState.lowWater, 'base64'), Buffer.from([0])]))
      : [[], ranges];
  if (written.length > 0) {
    for await (const page of readRanges(deps.source, written, { revision, pageKeys: options.pageKeys, keysOnly: true, signal: options.signal })) {
      for (const entry of page.entries) {
        const route = routeForCopy(deps.mapping, rule.name, entry.key, 0);
        if (route.kind !== 'mapped') continue;
        if (heldInConsul(entry, route)) targetKeys.take(route.target);
        stats.resumedBelow++;
      }
      keysDone += page.entries.length;
    }
  }
  const tracker = engine.trackRule(rule.name);
  let progressAt = Date.now();

  if (!ruleState.done) {
    for await (const page of readAhead(readRanges(deps.source, toWrite, { revision, pageKeys: options.pageKeys, signal: options.signal }), 2)) {
      if (options.signal.aborted) break;
      const routes = new Map<SourceEntry, PlannedRoute>();
      const wanted: string[] = [];
      const wantedBytes: number[] = [];
      const leases = new Set<string>();
      for (const entry of page.entries) {
        const route = routeForCopy(deps.mapping, rule.name, entry.key, entry.value.length);
        routes.set(entry, route);
        if (route.kind !== 'mapped') continue;
        if (heldInConsul(entry, route) && targetKeys.take(route.target)) {
          wanted.push(route.target);
          wantedBytes.push(entry.value.length);
        }
        if (entry.lease !== '0' && route.leases === 'session') leases.add(entry.lease);
      }
      const existing = new Map<string, TargetEntry>();
      if (wanted.length > 0) for (const e of await deps.target.readEntries(wanted, options.signal, { listed: targetKeys.keys, valueBytes: wantedBytes })) existing.set(e.key, e);
      const sessionOf = await sessions.ensureAll(leases);
      const plan = planPage({ entries: page.entries, route: (e) => routes.get(e)!, existing, sessionFor: (l) => sessionOf.get(l), ownSessions: sessions.own });
      stats.unchanged += plan.unchanged;
      for (const skip of plan.skips) recordSkip(stats, skip);
      const pageId = tracker.openPage(page.entries.at(-1)!.key);
      for (const [i, write] of plan.writes.entries()) {
        // The first Ctrl-C stops between batches, not at the end of the page; the page stays
        // open, so the low-water mark stays below it and --resume plans what is left of it.
        if (options.signal.aborted) break;
        await engine.write(write, pageId, stats);
        // A page can take long to write (a large page, --rate): progress moves within it, its keys
        // counted in proportion to the writes sent, less those not landed yet (batched, queued or in
        // flight: up to twice the concurrency of txns), at most every PROGRESS_EVERY_MS.
        if (Date.now() - progressAt >= PROGRESS_EVERY_MS) {
          progressAt = Date.now();
          options.onProgress?.({ type: 'progress', rule: rule.name, keysDone: Math.max(0, keysDone + Math.floor((page.entries.length * (i + 1)) / plan.writes.length) - engine.unlanded(rule.name)), bytes: stats.bytesWritten, retries: engine.retries });
        }
      }
      if (options.signal.aborted) break;
      tracker.closePage(pageId);
      keysDone += page.entries.length;
      options.onProgress?.({ type: 'progress', rule: rule.name, keysDone: Math.max(0, keysDone - engine.unlanded(rule.name)), bytes: stats.bytesWritten, retries: engine.retries });
    }
    await engine.flush();
    if (!options.signal.aborted) tracker.finish();
  }

  // What is left in the target range was produced by no source key (an interrupted pass has not seen every key).
  if (!options.signal.aborted) {
    const initialTargetKeys = targetKeys.size;
    if (at.staleSince !== undefined && targetKeys.remaining > 0) {
      // Written by this copy at a compacted revision, and deleted in etcd since: nothing else
      // would remove them (a dual-run starts after the deletes). A tool-derived delete, so guarded.
      const stale = await engine.ownWrites([...targetKeys.leftovers()], at.staleSince, sessions.own);
      if (stale.length > 0 && deleteGuardTrips(stale.length, initialTargetKeys) && !options.allowMassDelete) {
        options.onProgress?.({ type: 'warning', message: `rule ${rule.name}: ${stale.length} keys this copy wrote were deleted in etcd before the revision it copied again at; deleting them would remove ${shareText(stale.length, initialTargetKeys)} of the rule's target keys, so they are left and counted as extraneous (pass --allow-mass-delete to remove them)` });
      } else if (stale.length > 0) {
        stats.deletedStale = await engine.deleteEntries(stale);
        for (const entry of stale) targetKeys.take(entry.key);
      }
    }
    const extraneous = targetKeys.remaining;
    stats.extraneous = extraneous;
    for (const key of targetKeys.leftovers()) {
      if (stats.extraneousExamples.length >= EXAMPLES) break;
      stats.extraneousExamples.push(key);
    }
    if (options.deleteExtraneous && extraneous > 0) {
      const counted = options.allowMassDelete ? undefined : await guardCount(deps, [...targetKeys.leftovers()], initialTargetKeys, sessions, options.signal);
      if (counted !== undefined) throw deleteGuardError(rule.name, counted, initialTargetKeys, 'none of them was deleted');
      stats.deleted = await engine.deleteKeys([...targetKeys.leftovers()], sessions.own, stats);
    }
  }
  return stats;
}

function recordSkip(stats: RuleCopyStats, skip: PlannedSkip): void {
  stats.skipped[skip.reason] = (stats.skipped[skip.reason] ?? 0) + 1;
  if (stats.skippedExamples.length < EXAMPLES) stats.skippedExamples.push({ key: formatKey(skip.sourceKey), reason: skip.reason, detail: skip.detail });
}

/**
 * Sends writes in txn batches with bounded concurrency and keeps the copy
 * checkpoint moving: every data txn also carries the `copy` document with the
 * low-water marks of what is fully written at the time it is sent.
 */
class CopyEngine {
  txns = 0;
  retries = 0;
  /** Per rule, writes handed to the engine that have not landed yet (batched, queued or in flight). */
  private readonly unlandedByRule = new Map<string, number>();
  private readonly limit: ReturnType<typeof pLimit>;
  private readonly inflight = new Set<Promise<void>>();
  private readonly batcher: TxnBatcher;
  private batchWrites: { write: PlannedWrite; pageId: number; stats: RuleCopyStats }[] = [];
  private readonly trackers = new Map<string, RuleTracker>();
  private failure: unknown;
  private readonly reservedBytes: number;
  private readonly reservedOps: number;
  private tokens: number;
  private lastRefill = Date.now();
  /** The txns waiting for tokens, in turn. */
  private throttled: Promise<void> = Promise.resolve();

  constructor(private readonly target: TargetStore, private readonly limits: TargetLimits, private readonly paths: StatePaths, readonly state: CopyState, private readonly options: CopyOptions, private readonly fence: readonly TxnOp[]) {
    this.limit = pLimit(options.concurrency);
    // Room in every txn for the copy document: rule names, done flags, and one low-water key
    // (rules run one after the other) of at most LOW_WATER_KEY_MAX bytes, base64 twice over; and for the lock's check.
    this.reservedBytes = Math.ceil((4 / 3) * (512 + Object.keys(state.rules).reduce((n, name) => n + name.length + 48, 0) + (4 / 3) * LOW_WATER_KEY_MAX)) + fence.reduce((n, op) => n + wireOpBytes(op), 0);
    this.reservedOps = 1 + fence.length;
    // Under --rate a txn holds about one second's worth of writes (a write is up to 3 ops): a full txn at --rate 20
    // waited 6 s for its tokens, nothing written and no progress meanwhile.
    const txnMaxOps = options.rate > 0 ? Math.min(limits.txnMaxOps, this.reservedOps + Math.max(3, Math.ceil(options.rate))) : limits.txnMaxOps;
    this.batcher = new TxnBatcher({ ...limits, txnMaxOps }, { reservedOps: this.reservedOps, reservedBytes: this.reservedBytes });
    this.tokens = options.rate;
  }

  /** The rule's writes not landed yet. */
  unlanded(rule: string): number {
    return this.unlandedByRule.get(rule) ?? 0;
  }

  private landing(rule: string, delta: number): void {
    this.unlandedByRule.set(rule, this.unlanded(rule) + delta);
  }

  trackRule(name: string): RuleTracker {
    const rule = this.state.rules[name]!;
    const tracker = new RuleTracker(
      // A longer key keeps the previous mark: resuming re-checks a little more, and the document stays within its reserved room.
      (key) => key.length <= LOW_WATER_KEY_MAX && (rule.lowWater = key.toString('base64')),
      () => {
        rule.done = true;
        delete rule.lowWater;
      },
    );
    this.trackers.set(name, tracker);
    return tracker;
  }

  async write(write: PlannedWrite, pageId: number, stats: RuleCopyStats): Promise<void> {
    const ops = writeOps(write);
    const tracker = this.trackers.get(write.rule)!;
    if (!groupFitsInTxn(ops, this.limits, { reservedOps: this.reservedOps, reservedBytes: this.reservedBytes })) {
      // Too large for any txn: a single PUT (release of the old session, acquire of the lease's), sent at once.
      tracker.hold(pageId);
      this.landing(write.rule, 1);
      await this.dispatch(async () => {
        await this.throttle(1);
        // Stopped while it waited: left unwritten and its page open, so --resume plans it.
        if (this.options.signal.aborted) return;
        const ok = await putLarge(this.target, write.key, write.value, { release: write.releaseSession, acquire: write.session, cas: write.expectIndex });
        if (!ok) await this.resolveConflicts([{ write, pageId, stats }]);
        else this.count(write, stats, true);
        tracker.release(pageId);
        this.landing(write.rule, -1);
      });
      return;
    }
    // The ops of one write (index check, release, lock) always travel in one txn.
    if (!this.batcher.wouldFit(ops)) await this.flush();
    for (const op of ops) {
      if (this.batcher.add(op)) throw new Error('internal: the batcher closed a batch in the middle of one write');
    }
    tracker.hold(pageId);
    this.landing(write.rule, 1);
    this.batchWrites.push({ write, pageId, stats });
  }

  /** Sends the open batch (with the copy document) without waiting for it to land. */
  async flush(): Promise<void> {
    const ops = this.batcher.flush();
    if (!ops) return;
    const writes = this.batchWrites;
    this.batchWrites = [];
    await this.dispatch(() => this.sendBatch(ops, writes));
  }

  /** Waits until every sent batch has settled, landed or not; the open batch is dropped unsent. */
  async settle(): Promise<void> {
    this.batcher.flush();
    this.batchWrites = [];
    await Promise.allSettled([...this.inflight]);
  }

  /** Waits until every sent batch has landed, then surfaces the first failure. */
  async drain(): Promise<void> {
    await this.flush();
    await Promise.all([...this.inflight]);
    if (this.failure) throw this.failure;
  }

  private async dispatch(task: () => Promise<void>): Promise<void> {
    if (this.failure) throw this.failure;
    // Keep at most twice the concurrency queued: memory stays bounded by batch size.
    while (this.inflight.size >= this.options.concurrency * 2) await Promise.race(this.inflight);
    const promise: Promise<void> = this.limit(task).catch((err) => {
      this.failure ??= err;
    }).finally(() => this.inflight.delete(promise));
    this.inflight.add(promise);
    if (this.failure) throw this.failure;
  }

  private async sendBatch(ops: TxnOp[], writes: { write: PlannedWrite; pageId: number; stats: RuleCopyStats }[], depth = 0): Promise<void> {
    await this.throttle(ops.length);
    // The first Ctrl-C: batches queued but not sent stay unsent, their pages open (below the low-water mark's reach).
    if (this.options.signal.aborted) return;
    const withState = [...ops, { verb: 'set', key: this.paths.copy, value: Buffer.from(JSON.stringify(this.state)) } as TxnOp, ...this.fence];
    try {
      await this.target.applyTxn(withState);
      this.txns++;
      for (const w of writes) this.count(w.write, w.stats, false);
    } catch (caught) {
      const err = lockLost(caught, withState, this.fence);
      if (err instanceof TxnFailedError) {
        await this.resolveConflicts(writes);
      } else if (err instanceof ConsulTooLargeError && writes.length > 1 && depth < SPLIT_RETRY_LIMIT) {
        // Our size math disagreed with the server's: split the batch in two and send each half.
        this.retries++;
        for (const half of splitBatch(writes)) await this.sendBatch(half.flatMap((w) => writeOps(w.write)), half, depth + 1);
        return;
      } else if (err instanceof ConsulTooLargeError && writes.length === 1) {
        // One write alone: the key to name, the value the servers' limits refuse.
        const { write } = writes[0]!;
        throw new ConsulTooLargeError(err.code, err.status, `Consul refused the write of ${formatKey(write.key)} (etcd key ${formatKey(write.sourceKey)}, a value of ${write.value.length} bytes) as too large: ${err.responseBody || err.message}.`, err.responseBody, TOO_LARGE_HINT);
      } else {
        throw err;
      }
    }
    for (const w of writes) this.trackers.get(w.write.rule)!.release(w.pageId);
    for (const w of writes) this.landing(w.write.rule, -1);
  }

  /**
   * A key changed in Consul after it was planned: re-plan those writes from a
   * fresh read and apply the conflict policy (DESIGN: never overwrite blindly).
   */
  private async resolveConflicts(writes: { write: PlannedWrite; pageId: number; stats: RuleCopyStats }[]): Promise<void> {
    this.retries++;
    const current = new Map((await this.target.readEntries(writes.map((w) => w.write.key))).map((e) => [e.key, e]));
    for (const { write, stats } of writes) {
      const now = current.get(write.key);
      const changed = (now?.modifyIndex ?? 0) !== write.expectIndex;
      if (!changed) {
        // Not this key's fault (another op of the batch conflicted): send it again as planned.
        await this.applyOne(write, stats);
        continue;
      }
      if (now && now.value.equals(write.value) && now.session === write.session) {
        stats.unchanged++;
        continue;
      }
      if (this.options.onConflict === 'fail') {
        throw new RefusedError('copy_conflict', `${formatKey(write.key)} changed in Consul after the copy planned it (rule ${write.rule}); stopped with --on-conflict fail.`, {
          hint: 'Find who writes under the rule\'s target prefix in Consul; rerun with --on-conflict overwrite or skip, or --resume after fixing it.',
          details: { key: formatKey(write.key), rule: write.rule },
        });
      }
      if (this.options.onConflict === 'skip') {
        stats.conflicts.skipped++;
        this.options.onProgress?.({ type: 'warning', message: `conflict: ${formatKey(write.key)} changed in Consul after planning; skipped (--on-conflict skip)` });
        continue;
      }
      stats.conflicts.overwritten++;
      this.options.onProgress?.({ type: 'warning', message: `conflict: ${formatKey(write.key)} changed in Consul after planning; overwritten with etcd's value (--on-conflict overwrite)` });
      const releaseSession = now?.session && now.session !== write.session ? now.session : undefined;
      await this.applyOne({ ...write, kind: now ? 'update' : 'create', expectIndex: now?.modifyIndex ?? 0, ...(releaseSession ? { releaseSession } : {}) }, stats);
    }
  }

  private async applyOne(write: PlannedWrite, stats: RuleCopyStats, attempt = 0, lockDelayUntil = 0): Promise<void> {
    try {
      const ops = writeOps(write);
      const inTxn = groupFitsInTxn(ops, this.limits, { reservedOps: this.fence.length, reservedBytes: this.fence.reduce((n, op) => n + wireOpBytes(op), 0) });
      if (inTxn) {
        await applyFenced(this.target, ops, this.fence);
        this.txns++;
      } else if (!(await putLarge(this.target, write.key, write.value, { release: write.releaseSession, acquire: write.session, cas: write.expectIndex }))) {
        throw new TxnFailedError([{ opIndex: 0, what: `single PUT of ${formatKey(write.key)} lost a race` }]);
      }
      this.count(write, stats, !inTxn);
    } catch (err) {
      if (!(err instanceof TxnFailedError)) throw err;
      // A key a session held until it ended: Consul refuses other sessions' locks on it for that
      // session's lock delay (15 s by default, at most 60 s; reference §F). Wait it out.
      if (write.session && err.errors.some((e) => /due to lock delay/i.test(e.what))) {
        const until = lockDelayUntil || Date.now() + LOCK_DELAY_WAIT_MS;
        if (Date.now() < until && !this.options.signal.aborted) {
          if (!lockDelayUntil) this.options.onProgress?.({ type: 'warning', message: `${formatKey(write.key)} was held by a session that ended; Consul keeps other sessions from locking it for that session's lock delay (15 s by default): waiting` });
          await sleep(LOCK_DELAY_POLL_MS, this.options.signal);
          return this.applyOne(write, stats, attempt, until);
        }
      }
      if (attempt >= 3) throw err;
      const [now] = await this.target.readEntries([write.key]);
      await this.applyOne({ ...write, expectIndex: now?.modifyIndex ?? 0 }, stats, attempt + 1, lockDelayUntil);
    }
  }

  private count(write: PlannedWrite, stats: RuleCopyStats, singlePut: boolean): void {
    if (write.kind === 'create') stats.created++;
    else stats.updated++;
    stats.bytesWritten += write.value.length;
    if (singlePut) stats.singlePuts++;
  }

  /**
   * Deletes extraneous keys with a compare on the index just read, in txn batches.
   * A key held by one of the migration's own sessions (its etcd key is gone, its
   * lease maybe too) is deleted like any other; one held by another session is
   * left, and counted.
   */
  async deleteKeys(keys: string[], own: ReadonlySet<string>, stats: RuleCopyStats): Promise<number> {
    let deleted = 0;
    for (let i = 0; i < keys.length; i += this.limits.txnMaxOps) {
      const entries = await this.target.readEntries(keys.slice(i, i + this.limits.txnMaxOps));
      const deletable = entries.filter((e) => !e.session || own.has(e.session));
      stats.extraneousHeld += entries.length - deletable.length;
      deleted += await this.deleteEntries(deletable);
    }
    return deleted;
  }

  /** Of `keys`, those written since Consul index `since`, unheld or held by one of `sessions`, as read now. */
  async ownWrites(keys: string[], since: number, sessions: ReadonlySet<string>): Promise<TargetEntry[]> {
    const own: TargetEntry[] = [];
    for (let i = 0; i < keys.length; i += this.limits.txnMaxOps) {
      for (const e of await this.target.readEntries(keys.slice(i, i + this.limits.txnMaxOps))) {
        if (e.modifyIndex > since && (!e.session || sessions.has(e.session))) own.push(e);
      }
    }
    return own;
  }

  /** Deletes each entry if it is still at the index it was read at, in txn batches. */
  async deleteEntries(entries: TargetEntry[]): Promise<number> {
    for (let i = 0; i < entries.length; i += this.limits.txnMaxOps) {
      const ops: TxnOp[] = entries.slice(i, i + this.limits.txnMaxOps).map((e) => ({ verb: 'delete-cas', key: e.key, index: e.modifyIndex }));
      await this.throttle(ops.length);
      await this.target.applyTxn(ops);
      this.txns++;
    }
    return entries.length;
  }

  /**
   * A token bucket over ops per second (`--rate`), holding one second's worth:
   * a txn waits until the bucket holds all its ops, in turn (a small txn must
   * not empty the bucket a large one fills). It went out once the bucket held
   * `rate`, leaving a debt the next txn paid: the last txn never paid, and a
   * copy of 12 ops at `--rate 1` took 2 s.
   */
  private throttle(ops: number): Promise<void> {
    const rate = this.options.rate;
    if (rate <= 0) return Promise.resolve();
    const turn = this.throttled.then(() => this.takeTokens(ops, rate));
    this.throttled = turn.catch(() => undefined);
    return turn;
  }

  private async takeTokens(ops: number, rate: number): Promise<void> {
    for (;;) {
      const now = Date.now();
      this.tokens = Math.min(Math.max(rate, ops), this.tokens + ((now - this.lastRefill) / 1000) * rate);
      this.lastRefill = now;
      if (this.tokens >= ops) {
        this.tokens -= ops;
        return;
      }
      if (this.options.signal.aborted) return;
      await sleep(Math.ceil(((ops - this.tokens) / rate) * 1000), this.options.signal);
    }
  }
}

/**
 * The low-water mark of one rule: pages are numbered in key order; a page is
 * done when every write planned from it has landed. The mark is the last key
 * of the highest page below which every page is done, whatever the order in
 * which concurrent batches finish.
 */
export class RuleTracker {
  private next = 0;
  private done = 0;
  private finished = false;
  private readonly pages = new Map<number, { lastKey: Buffer; pending: number; closed: boolean }>();

  constructor(private readonly onLowWater: (key: Buffer) => void, private readonly onFinish: () => void) {}

  openPage(lastKey: Buffer): number {
    const id = this.next++;
    this.pages.set(id, { lastKey, pending: 0, closed: false });
    return id;
  }

  hold(page: number): void {
    this.pages.get(page)!.pending++;
  }

  release(page: number): void {
    this.pages.get(page)!.pending--;
    this.advance();
  }

  closePage(page: number): void {
    this.pages.get(page)!.closed = true;
    this.advance();
  }

  /** No more pages: the rule is done once every page has landed (not when the last batch is sent). */
  finish(): void {
    this.finished = true;
    this.advance();
  }

  private advance(): void {
    let last: Buffer | undefined;
    for (;;) {
      const page = this.pages.get(this.done);
      if (!page || !page.closed || page.pending > 0) break;
      last = page.lastKey;
      this.pages.delete(this.done);
      this.done++;
    }
    if (last) this.onLowWater(last);
    if (this.finished && this.pages.size === 0) {
      this.finished = false;
      this.onFinish();
    }
  }
}

