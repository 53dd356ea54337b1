import { rmdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationConfig } from '../config/load.js';
import { InterruptedError, isMigrateError, RefusedError, UsageError } from '../errors.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { checkIdentity, mappingHash, parseStateDocument, readState, statePaths, type StateMeta, type StatePaths } from '../state/state.js';
import type { ConsulHttp } from '../stores/consul-http.js';
import type { SourceWriter } from '../stores/etcd-writer.js';
import { deleteUnchangedSince } from '../stores/etcd-writer.js';
import { formatKey } from '../report/keys.js';
import { readRanges } from '../stores/key-range.js';
import { ListedKeys } from '../stores/listed-keys.js';
import { countRuleKeys, routeKey, ruleRanges } from '../mapping/route.js';
import type { CheckpointState } from '../copy/copy.js';
import type { KeyRange, SourceReader, TargetStore } from '../stores/types.js';
import { SourceCompactedError } from '../stores/etcd.js';
import type { VerifyResult } from '../verify/verify.js';
import type { SessionRecord } from '../sessions/lease-sessions.js';
import { WholeFile } from '../export/whole-file.js';
import { exportConsulRule, readEtcdRule } from './files.js';
import {
  checkVerify,
  derivePhase,
  dualRunRunning,
  formatAge,
  openTrips,
  ownerOf,
  ownersKey,
  withWritesPaused,
  DERIVED_NOTE,
  verifyEvidence,
  type PhaseEvidence,
  type PreconditionCheck,
  type RulePhase,
  type RulePhaseDoc,
  type OwnersDoc,
  type WritesPause,
} from './phase.js';
import { acknowledgeTrips, readCutoverState, setWritesPaused, writeTransitions, type CutoverState, type Transition } from './state-io.js';
import { migrationsCopyingTheSame, otherMigrations } from '../state/migrations.js';
import { LEADER_TTL_SECONDS, lockHolder } from '../dualrun/leader.js';

/**
 * `migrate cutover`, `rollback` and `finalize`: the gated, recorded,
 * reversible ownership moves of gh-ost's postponed cut-over and the dskit
 * multi-KV playbook (reference/peers.md §1.8, §1.12). Each checks its
 * preconditions one by one and reports every one; any failure refuses the
 * whole command before anything is written. The flip itself is one Consul
 * txn (rule documents and the owners fence, each by check-and-set).
 */

export type CutoverAction = 'cutover' | 'rollback' | 'finalize';

export interface CutoverDeps {
  source: SourceReader;
  target: TargetStore & { http?: ConsulHttp };
  config: MigrationConfig;
  mapping: Mapping;
  /** etcd writes (finalize --delete-etcd), and the write probe for the reverse mirror. */
  writer: SourceWriter;
}

export interface CommonOptions {
  rules: string[];
  now: () => Date;
  /** user@host for the history. */
  by: string;
  cwd: string;
  /** How long to wait for the dual-run's checkpoint to reach etcd's current revision. */
  catchUpTimeoutMs: number;
  /** Clear recorded late writes / guard trips of these rules with the transition (recorded in the history). */
  acknowledgeTrips: boolean;
  /**
   * Asked once every precondition passed, before anything is written (the terminal prompt), with
   * the checks (a rule's named `<rule>: <check>`) for the operator to read first; false refuses.
   */
  confirm?: (rules: string[], checks: PreconditionCheck[]) => Promise<boolean>;
  /** Rules in several datacenters (issue 11): the check of a rule's phase in the other datacenters it is copied to. */
  elsewhere?: (rule: string) => Promise<PreconditionCheck | undefined>;
  sleep: (ms: number) => Promise<void>;
  /** The operator's interrupt (Ctrl-C): checked before each step that changes something, so that once it comes nothing more changes. */
  signal?: AbortSignal;
}

/** What an interrupted transition says: it stopped before its flip (the point of no return), and undid what it had prepared. */
function interrupted(action: CutoverAction): InterruptedError {
  return new InterruptedError(`${action} was interrupted before it moved any rule: nothing was changed (writes are not paused, no rollback point or export was kept).`, { hint: `Run \`migrate ${action}\` again when ready.` });
}

/** Stops a transition the operator interrupted, before its next change. */
function stopIfInterrupted(options: CommonOptions, action: CutoverAction): void {
  if (options.signal?.aborted) throw interrupted(action);
}

/** A verify the transition runs, interrupted: the transition's interrupt (verify's own message names verify). */
async function transitionVerify<T>(action: CutoverAction, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw err instanceof InterruptedError ? interrupted(action) : err;
  }
}

/** cutover and rollback move ownership behind a write fence. */
export interface FenceOptions {
  /**
   * How long applications' writes stay paused before the flip (`writesPaused`
   * in the phase document), so that writes in flight to the old owner land and
   * are mirrored first.
   */
  drainMs: number;
  /** A one-rule verify (not recorded): the flip is gated on parity of the rule, with writes paused. */
  verifyRule: (rule: string) => Promise<VerifyResult>;
}

export interface CutoverOptions extends CommonOptions, FenceOptions {
  maxVerifyAgeMs: number;
  /** `--verify-now`: runs a verify (which records verify/last) before the checks. */
  verifyNow?: () => Promise<VerifyResult>;
  /** `--rollback-file` (one rule only); default `migrate-rollback/<id>-<rule>-<time>-<pid>.json` under cwd. */
  rollbackFile?: string;
  /** `--snapshot <file>`: a Consul snapshot (GET /v1/snapshot) before the flip. */
  snapshotFile?: string;
  /** Other migrations the token's ACLs hid from the checks. */
  onWarning: (message: string) => void;
}

export type RollbackOptions = CommonOptions & FenceOptions;

export interface FinalizeOptions extends CommonOptions {
  exportEtcd?: string;
  deleteEtcd: boolean;
  /** etcd compacted the revision the export read; it read again. */
  onWarning: (message: string) => void;
}

export interface RuleOutcome {
  rule: string;
  from: RulePhase | 'keep' | 'service' | 'unknown';
  to: RulePhase;
  checks: PreconditionCheck[];
  ok: boolean;
  rollbackFile?: string;
  rollbackKeys?: number;
  etcdExportFile?: string;
  etcdDeleted?: number;
  /** `--delete-etcd`: keys etcd changed after the read (late writes), left in etcd. */
  etcdKeptChanged?: number;
  /** `--delete-etcd`: nothing deleted, the dual-run not having said that its reverse mirror of the rule stopped. */
  etcdDeleteHeldBack?: true;
}

export interface CutoverResult {
  action: CutoverAction;
  migration: string;
  /** Some precondition failed (or the confirmation was declined): nothing was written. */
  refused: boolean;
  /** Global checks (dual-run, catch-up) followed by the per-rule ones. */
  checks: PreconditionCheck[];
  rules: RuleOutcome[];
  etcdRevision: number;
  checkpoint: number | null;
  snapshotFile?: string;
  /** The phase documents as written. */
  written: RulePhaseDoc[];
  /** `cutover --acknowledge-trips` of rules already cut over: trips cleared, nothing moved. */
  acknowledgedOnly?: true;
  /** `rollback` of rules a cutover paused and never flipped (it was killed), or the reverse: the pause lifted, nothing moved. */
  abandoned?: true;
}

/** Keep rules stay on etcd for good. */
const KEEP_NOT_CUT = (name: string) => `rule ${name} is a keep rule: its keys stay on etcd; there is nothing to cut over, roll back or finalize`;

/** Service rules have no owner to flip: the registering agents move to Consul themselves. */
const SERVICE_NOT_CUT = (name: string) => `rule ${name} is a service rule: its registrations follow etcd into the catalog while the dual-run runs; there is nothing to cut over, roll back or finalize. Switch the agents that register (for example Registrator's consul:// backend), then remove the rule`;

function ruleNamed(mapping: Mapping, name: string): CompiledRule {
  const rule = mapping.rules.find((r) => r.name === name);
  if (!rule) {
    throw new UsageError('rule_unknown', `--rule ${name} names no rule of migration.yaml.`, { hint: `Use one of: ${mapping.copyRules.map((r) => r.name).join(', ') || '(no copy rules)'}.` });
  }
  return rule;
}

/** Every rule named is one of migration.yaml's (of any kind: a keep or service rule is refused with its reason later). */
export function checkRuleNames(mapping: Mapping, names: string[]): void {
  if (names.length === 0) throw new UsageError('rule_missing', 'Name at least one rule with --rule <name>.', { hint: `Rules: ${mapping.copyRules.map((r) => r.name).join(', ')}.` });
  for (const name of names) ruleNamed(mapping, name);
}

async function identity(deps: CutoverDeps, paths: StatePaths): Promise<void> {
  const status = await deps.source.status();
  const info = await deps.target.info();
  const meta = await readState<StateMeta>(deps.target, paths.meta);
  if (!meta) {
    // An id or state prefix edited since the copy reads as no copy at all: the migration whose rules these are is named.
    const same = (await migrationsCopyingTheSame(deps.target, deps.config)).map((id) => `"${id}"`);
    throw new RefusedError('cutover_no_state', `Migration "${deps.config.id}" has no state in Consul under ${paths.root}: no copy has run with this id and state prefix${same.length > 0 ? ` (migration ${same.join(', ')} there copies the same etcd prefixes)` : ''}.`, {
      hint: same.length > 0
        ? `If migration.yaml's id was changed since the copy, put it back (${same.join(', ')}); otherwise run \`migrate copy\` and \`migrate dualrun\` first (see \`migrate status\`).`
        : 'Run `migrate copy` and `migrate dualrun` first (see `migrate status`). If migration.yaml\'s id or state.prefix changed since the copy, put them back as they were.',
    });
  }
  checkIdentity(meta, { id: deps.config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(deps.config) });
}

/**
 * The copy rules of other migrations (under the same state prefix) that are cut over: each has a reverse
 * mirror writing Consul's changes back to etcd under its `from` (finalized rules no longer do).
 */
async function cutOverByOtherMigrations(target: TargetStore, config: MigrationConfig, warn: (message: string) => void): Promise<{ migration: string; rule: string; from: string }[]> {
  const { others } = await otherMigrations(target, config.state.prefix, config.id, warn);
  const mirrored: { migration: string; rule: string; from: string }[] = [];
  // Their owners documents in one read.
  const keys = others.map((other) => ownersKey(statePaths(config.state.prefix, other.id)));
  const entries = new Map((keys.length > 0 ? await target.readEntries(keys) : []).map((e) => [e.key, e]));
  for (const [i, other] of others.entries()) {
    const entry = entries.get(keys[i]!);
    const owners = entry ? parseStateDocument<OwnersDoc>(entry.key, entry.value) : undefined;
    for (const theirs of other.rules) {
      if (theirs.action === 'copy' && owners?.rules[theirs.name]?.phase === 'cutover') mirrored.push({ migration: other.id, rule: theirs.name, from: theirs.from });
    }
  }
  return mirrored;
}

/** The dual-run checks: running (leader lock held, heartbeat fresh) and caught up with etcd's revision within the bound. */
async function dualRunChecks(deps: CutoverDeps, paths: StatePaths, state: CutoverState, options: CommonOptions, action: CutoverAction): Promise<{ checks: PreconditionCheck[]; etcdRevision: number; checkpoint: number | null }> {
  const checks: PreconditionCheck[] = [];
  const leader = await deps.target.readKey(paths.leader);
  const running = Boolean(leader?.session) && dualRunRunning(state.checkpoint, options.now().getTime());
  const etcdRevision = (await deps.source.status()).revision;
  if (!running) {
    const still = formatAge(options.now().getTime() - Date.parse(state.checkpoint?.updated ?? '1970-01-01'));
    checks.push({
      name: 'dual-run', ok: false,
      detail: !leader?.session
        ? 'the dual-run is not running (no dual-run holds the leader lock): start `migrate dualrun`'
        // Alive (its session holds the lock) and writing no checkpoint: a re-baseline copies the rules again first.
        : `the dual-run ${lockHolder(leader.value) ?? '(holder unknown)'} holds the leader lock but its checkpoint has not moved for ${still}: it is re-baselining (after an etcd compaction or a mapping change), or etcd or Consul does not answer it (its log and /healthz say which); run this again once its checkpoint moves`,
    });
    checks.push({ name: 'caught up', ok: false, detail: `not checked: no dual-run to catch up with etcd revision ${etcdRevision}` });
    return { checks, etcdRevision, checkpoint: state.checkpoint?.revision ?? null };
  }
  checks.push({ name: 'dual-run', ok: true, detail: `running (leader lock held, checkpoint updated ${formatAge(Math.max(0, options.now().getTime() - Date.parse(state.checkpoint!.updated)))} ago)` });
  const deadline = Date.now() + options.catchUpTimeoutMs;
  let checkpoint = state.checkpoint!.revision;
  while (checkpoint < etcdRevision && Date.now() < deadline) {
    await options.sleep(200);
    stopIfInterrupted(options, action);
    checkpoint = (await readState<CheckpointState>(deps.target, paths.checkpoint()))?.revision ?? checkpoint;
  }
  checks.push(checkpoint >= etcdRevision
    ? { name: 'caught up', ok: true, detail: `checkpoint ${checkpoint} reached etcd revision ${etcdRevision}` }
    : { name: 'caught up', ok: false, detail: `checkpoint ${checkpoint} is ${etcdRevision - checkpoint} revision(s) behind etcd revision ${etcdRevision} after ${formatAge(options.catchUpTimeoutMs)} (--catch-up-timeout); the dual-run is lagging` });
  return { checks, etcdRevision, checkpoint };
}

/**
 * Sets `writesPaused` on the rules' phase documents; `resume` clears it again
 * (when the command stops before its flip, which clears it by itself).
 */
async function pauseWrites(deps: CutoverDeps, paths: StatePaths, outcomes: RuleOutcome[], move: 'cutover' | 'rollback', options: CommonOptions & FenceOptions): Promise<{ resume: () => Promise<void>; refuseIfLifted: (state: CutoverState) => void }> {
  const state = await readCutoverState(deps.target, paths);
  const rules = outcomes.map((o) => ({ rule: o.rule, derived: o.from as RulePhase, created: !state.docs.has(o.rule) }));
  const pause: WritesPause = { since: options.now().toISOString(), by: options.by, for: move };
  await setWritesPaused(deps.target, paths, state, rules, pause);
  return {
    async resume() {
      // Only documents still paused by this command: another operator's move since then is theirs to keep.
      const now = await readCutoverState(deps.target, paths);
      const ours = rules.filter((r) => JSON.stringify(now.docs.get(r.rule)?.doc.writesPaused) === JSON.stringify(pause));
      if (ours.length > 0) await setWritesPaused(deps.target, paths, now, ours, undefined);
    },
    /** Refuses the flip once the pause is not this command's any more (a rollback abandoned the move as unfinished). */
    refuseIfLifted(now: CutoverState) {
      const lifted = rules.filter((r) => JSON.stringify(now.docs.get(r.rule)?.doc.writesPaused) !== JSON.stringify(pause));
      if (lifted.length === 0) return;
      throw new RefusedError('phase_contended', `Writes to ${lifted.map((r) => `rule ${r.rule}`).join(', ')} are no longer paused by this ${move} (another command lifted the pause, or moved the rule): applications may be writing to the old owner, so nothing was flipped.`, {
        hint: 'Run `migrate status` to see the current phase, then run the command again if it is still needed.',
      });
    },
  };
}

/**
 * Before the flip (after a cutover's or rollback's drain, after a finalize's export), each rule must
 * still be in a phase the move starts from: two operators moving the same rule both pass the first
 * checks (and the fence: the later pause replaces the earlier). Without this the one that flipped
 * second wrote the same move again (cutover → cutover) and exited 0, and a finalize that outlasted a
 * rollback deleted etcd's keys, the owner's data again.
 */
function refuseIfMoved(state: CutoverState, outcomes: RuleOutcome[], from: readonly RulePhase[], now: Date): void {
  const moved = outcomes.filter((o) => !from.includes(phaseOf(state, o.rule, now)));
  if (moved.length === 0) return;
  throw new RefusedError('phase_contended', `The phase of ${moved.map((o) => `rule ${o.rule} (now ${phaseOf(state, o.rule, now)})`).join(', ')} changed while this command ran (another operator moved it); nothing was written or deleted.`, {
    hint: 'Run `migrate status` to see the current phase, then run the command again if it is still needed.',
  });
}

/**
 * A rollback (or cutover) that paused the rule's writes and has not flipped it yet: finalize waits for it. It
 * won the race before (finalized and deleted etcd's keys while the rollback, started first, held the writes).
 */
function pauseCheck(state: CutoverState, rule: string): PreconditionCheck[] {
  const pause = state.docs.get(rule)?.doc.writesPaused;
  if (!pause) return [];
  const undo = pause.for === 'cutover' ? 'rollback' : 'cutover';
  return [{ name: 'writes paused', ok: false, detail: `a ${pause.for} started by ${pause.by} at ${pause.since} paused applications' writes to rule ${rule} and has not finished: let it finish; if it no longer runs, \`migrate ${pause.for} --rule ${rule}\` finishes it and \`migrate ${undo} --rule ${rule}\` abandons it` }];
}

/** The same, read again just before the flip: a pause set since the checks refuses the transition. */
function refuseIfPaused(state: CutoverState, outcomes: RuleOutcome[]): void {
  const paused = outcomes.filter((o) => pauseCheck(state, o.rule).length > 0);
  if (paused.length === 0) return;
  throw new RefusedError('phase_contended', `${paused.map((o) => `rule ${o.rule}`).join(', ')}: another operator's ${paused.map((o) => state.docs.get(o.rule)!.doc.writesPaused!.for).join(', ')} paused its writes while this command ran; nothing was written or deleted.`, {
    hint: 'Run `migrate status` to see the move in progress, then run the command again if it is still needed.',
  });
}

function tripCheck(state: CutoverState, rule: string, acknowledge: boolean, cleared = 'cleared once this transition is made'): PreconditionCheck {
  const trips = state.trips.get(rule)?.doc;
  const open = openTrips(trips);
  if (open === 0) return { name: 'trips', ok: true, detail: 'no late writes or guard trips recorded' };
  const what = `${trips!.lateWrites.count} late write(s) to etcd${trips!.lateWrites.keys.length ? ` (e.g. ${trips!.lateWrites.keys.slice(0, 3).join(', ')})` : ''} and ${trips!.guardTrips.count} guard trip(s)`;
  if (acknowledge) return { name: 'trips', ok: true, detail: `${what}: acknowledged with --acknowledge-trips (${cleared})` };
  return { name: 'trips', ok: false, detail: `${what} are open: investigate (dual-run log, \`migrate verify\`), then pass --acknowledge-trips` };
}

function phaseOf(state: CutoverState, rule: string, now: Date): RulePhase {
  return derivePhase(rule, { doc: state.docs.get(rule)?.doc, copy: state.copy, checkpoint: state.checkpoint, verify: state.verify, nowMs: now.getTime() });
}

/** The operator's answer (true without a prompt), given every precondition passed. */
async function confirmed(options: Pick<CommonOptions, 'confirm' | 'rules'>, global: PreconditionCheck[], outcomes: RuleOutcome[]): Promise<boolean> {
  return !options.confirm || options.confirm(options.rules, [...global, ...outcomes.flatMap((o) => o.checks.map((c) => ({ ...c, name: `${o.rule}: ${c.name}` })))]);
}

function refusedResult(action: CutoverAction, deps: CutoverDeps, checks: PreconditionCheck[], rules: RuleOutcome[], etcdRevision: number, checkpoint: number | null): CutoverResult {
  return { action, migration: deps.config.id, refused: true, checks, rules, etcdRevision, checkpoint, written: [] };
}

/** The time in a default file name, to the millisecond (with the process id after it, two operators' cutovers started together get two files). */
function stamp(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '');
}

async function otherDatacenterChecks(options: CommonOptions): Promise<Map<string, PreconditionCheck | undefined>> {
  const { elsewhere } = options;
  if (!elsewhere) return new Map();
  return new Map(await Promise.all(options.rules.map(async (rule) => [rule, await elsewhere(rule)] as const)));
}

/**
 * `cutover --acknowledge-trips` of rules that are cut over already: an
 * application wrote to etcd after the cutover (the dual-run recorded it,
 * and verify fails on it until acknowledged); once it is switched, this
 * clears the record without moving the rules, recorded in their history.
 */
async function acknowledgeCutOver(deps: CutoverDeps, paths: StatePaths, state: CutoverState, options: CutoverOptions): Promise<CutoverResult> {
  const rules = options.rules.map((rule) => ({ rule, trips: openTrips(state.trips.get(rule)?.doc) }));
  const outcomes: RuleOutcome[] = rules.map(({ rule, trips }) => {
    // Late writes to etcd after a finalize are recorded too (applications still writing the old store).
    const phase = phaseOf(state, rule, options.now());
    return {
      rule, from: phase, to: phase, ok: trips > 0,
      checks: [
        { name: 'phase', ok: true, detail: `${phase} already: owned by Consul, and stays so` },
        trips > 0 ? tripCheck(state, rule, true, `cleared; the rule stays ${phase === 'finalized' ? 'finalized' : 'cut over'}`) : { name: 'trips', ok: false, detail: 'no late writes or guard trips recorded: nothing to acknowledge' },
      ],
    };
  });
  const checkpoint = state.checkpoint?.revision ?? null;
  const etcdRevision = (await deps.source.status()).revision;
  if (!outcomes.every((o) => o.ok) || !(await confirmed(options, [], outcomes))) return refusedResult('cutover', deps, [], outcomes, etcdRevision, checkpoint);
  const written = await acknowledgeTrips(deps.target, paths, state, rules, { at: options.now().toISOString(), by: options.by });
  return { action: 'cutover', migration: deps.config.id, refused: false, checks: [], rules: outcomes, etcdRevision, checkpoint, written: [...written.values()], acknowledgedOnly: true };
}

/** The move of a finalize: what it exported and deletes, and the trips it acknowledges. */
function finalizeTransition(o: RuleOutcome, state: CutoverState, toDelete: ReadonlyMap<string, { keys: Buffer[] }>, etcdRevision: number, at: Date, by: string): Transition {
  const evidence: PhaseEvidence = { etcdRevision, checkpoint: state.checkpoint?.revision };
  if (o.etcdExportFile) evidence.etcdExportFile = o.etcdExportFile;
  if (toDelete.has(o.rule)) evidence.etcdDeleted = toDelete.get(o.rule)!.keys.length;
  const trips = openTrips(state.trips.get(o.rule)?.doc);
  if (trips) evidence.acknowledgedTrips = trips;
  return { rule: o.rule, from: 'cutover', to: 'finalized', etcdRevision, entry: { at: at.toISOString(), by, evidence } };
}

function rmEmptyDir(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // Not empty (earlier rollback points), or not there.
  }
}

/** The phases a cutover starts from. */
const CUTOVER_FROM: readonly RulePhase[] = ['verified', 'mirroring', 'rolledback', 'copied'];

/** `migrate cutover --rule <name>…` */
export async function runCutover(deps: CutoverDeps, options: CutoverOptions): Promise<CutoverResult> {
  const { config, mapping, target } = deps;
  checkRuleNames(mapping, options.rules);
  if (options.rollbackFile && options.rules.length > 1) {
    throw new UsageError('flag_invalid', '--rollback-file names one file, but several --rule were given.', { hint: 'Leave --rollback-file out: each rule gets its own file under migrate-rollback/.' });
  }
  // Files named on the command line that exist refuse at once, before any wait (never overwritten).
  const rollbackOut = options.rollbackFile ? new WholeFile(options.rollbackFile, { replace: false, flag: '--rollback-file' }) : undefined;
  const snapshotOut = options.snapshotFile ? new WholeFile(options.snapshotFile, { replace: false, flag: '--snapshot' }) : undefined;
  const paths = statePaths(mapping.statePrefix, config.id);
  await identity(deps, paths);
  let state = await readCutoverState(target, paths);
  if (unfinishedMoves(state, options.rules, options.now(), 'rollback').length === options.rules.length) return abandonMoves(deps, paths, state, options, 'cutover');
  // Rules already cut over, with --acknowledge-trips: their late writes are acknowledged, nothing moves.
  if (options.acknowledgeTrips && options.rules.every((name) => ruleNamed(mapping, name).action === 'copy' && ['cutover', 'finalized'].includes(phaseOf(state, name, options.now())))) {
    return acknowledgeCutOver(deps, paths, state, options);
  }
  if (options.verifyNow) await transitionVerify('cutover', options.verifyNow);
  const global = await dualRunChecks(deps, paths, state, options, 'cutover');
  // Re-read after the wait: the indexes the flip checks against are those of what was checked.
  state = await readCutoverState(target, paths);
  const now = options.now();
  const elsewhere = await otherDatacenterChecks(options);
  const mirroredElsewhere = await cutOverByOtherMigrations(target, config, options.onWarning);
  const outcomes: RuleOutcome[] = options.rules.map((name) => {
    const rule = ruleNamed(mapping, name);
    if (rule.action === 'keep') return { rule: name, from: 'keep', to: 'cutover', ok: false, checks: [{ name: 'action', ok: false, detail: KEEP_NOT_CUT(name) }] };
    if (rule.action === 'service') return { rule: name, from: 'service', to: 'cutover', ok: false, checks: [{ name: 'action', ok: false, detail: SERVICE_NOT_CUT(name) }] };
    const from = phaseOf(state, name, now);
    const checks: PreconditionCheck[] = [{ name: 'rule', ok: true, detail: `copy rule ${rule.from} → ${rule.to}` }];
    const phaseOk = CUTOVER_FROM.includes(from);
    checks.push({ name: 'phase', ok: phaseOk, detail: phaseOk ? `${from}` : from === 'planned' ? 'phase planned: the rule was never copied (run `migrate copy`)' : `phase ${from}: already owned by Consul` });
    checks.push(checkVerify(state.verify, name, now.getTime(), options.maxVerifyAgeMs));
    checks.push(tripCheck(state, name, options.acknowledgeTrips));
    if (elsewhere.get(name)) checks.push(elsewhere.get(name)!);
    const overlapping = mirroredElsewhere.filter((theirs) => theirs.from.startsWith(rule.from) || rule.from.startsWith(theirs.from));
    if (overlapping.length > 0) {
      checks.push({ name: 'other migrations', ok: false, detail: `${overlapping.map((t) => `rule ${t.rule} of migration ${t.migration} (from: ${t.from})`).join(', ')} is cut over, and its from overlaps ${rule.from}: two reverse mirrors would write the same etcd keys, each undoing what the other's applications write in Consul. Roll that rule back first, or move the keys into one migration` });
    }
    return { rule: name, from, to: 'cutover', checks, ok: checks.every((c) => c.ok) };
  });
  await checkEtcdWrites(deps, outcomes, 'after the cutover the reverse mirror writes Consul\'s changes back there');
  if (!global.checks.every((c) => c.ok) || !outcomes.every((o) => o.ok) || !(await confirmed(options, global.checks, outcomes))) {
    return refusedResult('cutover', deps, global.checks, outcomes, global.etcdRevision, global.checkpoint);
  }
  stopIfInterrupted(options, 'cutover');

  // The rollback point, then (optionally) a snapshot, then the flip.
  for (const outcome of outcomes) {
    const rule = ruleNamed(mapping, outcome.rule);
    const out = rollbackOut ?? new WholeFile(join(options.cwd, 'migrate-rollback', `${config.id}-${rule.name}-${stamp(now)}-${process.pid}.json`), { replace: false, flag: '--rollback-file', makeDir: true });
    const exported = await exportConsulRule(target, rule, out);
    outcome.rollbackFile = out.file;
    outcome.rollbackKeys = exported.keys;
  }
  if (snapshotOut) {
    if (!target.http) throw new UsageError('snapshot_unsupported', 'This Consul target cannot take snapshots.', {});
    const response = await target.http.request({ method: 'GET', path: '/v1/snapshot', timeoutMs: 300_000 });
    try {
      await snapshotOut.open().write(response.body);
      await snapshotOut.commit();
    } finally {
      await snapshotOut.drop();
    }
  }
  const snapshotFile = snapshotOut?.file;
  // The write fence: applications hold their writes to the rules; writes already in flight land in
  // etcd during the drain, and the dual-run must have applied them before Consul becomes the owner.
  // Refused from here on: the rollback points and snapshot written for this cutover go too ("nothing was changed").
  const discardExports = () => {
    for (const file of [...outcomes.map((o) => o.rollbackFile), snapshotFile]) if (file) rmSync(file, { force: true });
    // The default folder too, when nothing else is in it.
    if (!rollbackOut) rmEmptyDir(join(options.cwd, 'migrate-rollback'));
  };
  if (options.signal?.aborted) {
    discardExports();
    throw interrupted('cutover');
  }
  const fence = await pauseWrites(deps, paths, outcomes, 'cutover', options).catch((err: unknown) => {
    // Refused, interrupted (a request the interrupt aborted), or the token may not write the state (Consul applied
    // none of the txn): nothing was paused, nor flipped, so no rollback point is left (it holds values).
    if (err instanceof RefusedError || options.signal?.aborted || (isMigrateError(err) && err.code === 'consul_permission_denied')) discardExports();
    throw err;
  });
  let written: Map<string, RulePhaseDoc>;
  let etcdRevision: number;
  let caughtUp: Awaited<ReturnType<typeof dualRunChecks>>;
  try {
    await options.sleep(options.drainMs);
    stopIfInterrupted(options, 'cutover');
    caughtUp = await dualRunChecks(deps, paths, await readCutoverState(target, paths), options, 'cutover');
    if (!caughtUp.checks.every((c) => c.ok)) {
      await fence.resume();
      discardExports();
      return refusedResult('cutover', deps, caughtUp.checks.map((c) => ({ ...c, name: `${c.name} (after the drain)` })), outcomes, caughtUp.etcdRevision, caughtUp.checkpoint);
    }
    // Read once for both: a change during the parity check fails the flip's check-and-set instead.
    state = await readCutoverState(target, paths);
    const at = options.now();
    refuseIfMoved(state, outcomes, CUTOVER_FROM, at);
    fence.refuseIfLifted(state);
    if (!(await transitionVerify('cutover', () => parityWithWritesPaused(options, outcomes, fence, 'cutover')))) {
      discardExports();
      return refusedResult('cutover', deps, global.checks, outcomes, caughtUp.etcdRevision, caughtUp.checkpoint);
    }
    etcdRevision = (await deps.source.status()).revision;
    const transitions: Transition[] = outcomes.map((o) => {
    const rule = ruleNamed(mapping, o.rule);
    const evidence: PhaseEvidence = { checkpoint: caughtUp.checkpoint ?? undefined, etcdRevision, rollbackFile: o.rollbackFile, rollbackKeys: o.rollbackKeys, mapping: { from: rule.from, to: rule.to, keys: rule.keys, leases: rule.leases } };
    const verify = verifyEvidence(state.verify, o.rule, at.getTime());
    if (verify) evidence.verify = verify;
    if (snapshotFile) evidence.snapshotFile = snapshotFile;
    const trips = openTrips(state.trips.get(o.rule)?.doc);
    if (trips) evidence.acknowledgedTrips = trips;
    return { rule: o.rule, from: o.from as RulePhase, to: 'cutover', etcdRevision, entry: { at: at.toISOString(), by: options.by, evidence } };
    });
    // The flip writes documents without `writesPaused`: applications resume, on Consul.
    stopIfInterrupted(options, 'cutover');
    written = await writeTransitions(target, paths, state, transitions, options.acknowledgeTrips ? options.rules : []);
  } catch (err) {
    await fence.resume();
    // Refused (another operator moved the rule, or the token may not write the state: Consul applied none of the txn) or
    // interrupted: nothing was flipped. Any other failure may have come after the flip: the files stay.
    if (err instanceof RefusedError || err instanceof InterruptedError || (isMigrateError(err) && err.code === 'consul_permission_denied')) discardExports();
    throw err;
  }
  return { action: 'cutover', migration: config.id, refused: false, checks: global.checks, rules: outcomes, etcdRevision, checkpoint: caughtUp.checkpoint, ...(snapshotFile ? { snapshotFile } : {}), written: [...written.values()] };
}

/**
 * Parity of each rule, checked with writes paused and the dual-run caught up, just before the flip (data
 * only: recorded late writes are the trips check's business). While applications write, the mirror is
 * always a little behind; and the last clean verify a cutover relies on may be minutes old: a value
 * changed or a key deleted in Consul since then would become the new owner's data, the reverse mirror
 * writing it over etcd's at once. On a difference, writes resume where they were and the check says why.
 */
async function parityWithWritesPaused(options: FenceOptions, outcomes: RuleOutcome[], fence: { resume(): Promise<void> }, action: 'cutover' | 'rollback'): Promise<boolean> {
  const [owner, next] = action === 'cutover' ? ['etcd', 'Consul'] : ['Consul', 'etcd'];
  // Every rule, so one refusal names every rule that differs.
  for (const outcome of outcomes) {
    const result = await options.verifyRule(outcome.rule);
    const r = result.rules.find((x) => x.name === outcome.rule);
    if (r && r.differences === 0) {
      outcome.checks.push({ name: 'parity', ok: true, detail: `etcd and Consul agree on ${r.compared} key(s) of rule ${outcome.rule} with writes paused (verify at etcd revision ${result.cut.revision}, not recorded)${action === 'rollback' ? appLocksAfterRollback(r.appLocks) : ''}` });
      continue;
    }
    const kinds = r ? Object.entries(r.byKind).filter(([, n]) => n > 0).map(([kind, n]) => `${n} ${kind}`).join(', ') : '';
    // Consul keys no etcd key of the rule maps to: no mirror ever writes them to etcd.
    const foreign = result.differences.filter((d) => d.rule === outcome.rule && d.kind === 'extra' && d.reason === 'foreign').map((d) => d.key);
    const unmirrored = action === 'rollback' && foreign.length > 0 ? ` ${foreign.length} Consul key(s) of the rule map back to no etcd key (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}), so no mirror writes them to etcd: delete or rename them in Consul, then roll back again.` : '';
    outcome.checks.push({ name: 'parity', ok: false, detail: `etcd and Consul differ on ${r?.differences ?? '?'} key(s) of rule ${outcome.rule} with writes paused${kinds ? ` (verify: ${kinds})` : ''}: ${next} does not hold what ${owner} holds, so ${action === 'cutover' ? 'cutting over' : 'rolling back'} now would lose or bring back data (run \`migrate verify\` for the list); writes resumed on ${owner}${action === 'rollback' ? `.${unmirrored} A late write stays in etcd until Consul's value is mirrored over it: restart the dual-run (its first pass mirrors the rule's keys from Consul to etcd, and deletes from etcd a key Consul does not hold: the late write is lost unless it is written in Consul first), then roll back again` : ''}` });
    outcome.ok = false;
  }
  if (outcomes.every((o) => o.ok)) return true;
  await fence.resume();
  return false;
}

/**
 * What a rollback leaves of the locks applications took in Consul with their own sessions: the reverse mirror
 * wrote those keys to etcd without a lease (etcd has no session to give them), so etcd keeps them after the
 * holder lets go, and a lock or election recipe that creates its key only if absent waits on them for ever.
 */
function appLocksAfterRollback(locks: { keys: number; examples: string[] }): string {
  if (locks.keys === 0) return '';
  return `; ${locks.keys} of them (in etcd ${locks.examples.join(', ')}${locks.keys > locks.examples.length ? ', …' : ''}) are locked in Consul by an application's own session: etcd holds them without a lease, so they stay in etcd when that session ends (verify reports them until then). Once the application has let go of them in Consul, delete them in etcd (a lock or election that creates its key only if it is absent waits on them)`;
}

/**
 * The rules whose writes a `move` paused and that it never flipped (it stopped, killed, before its flip):
 * their owner is still the one the move started from.
 */
function unfinishedMoves(state: CutoverState, rules: readonly string[], now: Date, move: 'cutover' | 'rollback'): string[] {
  const owner = move === 'cutover' ? 'etcd' : 'consul';
  return rules.filter((rule) => state.docs.get(rule)?.doc.writesPaused?.for === move && ownerOf(phaseOf(state, rule, now)) === owner);
}

/**
 * `rollback` of rules a cutover paused and never flipped, or `cutover` of rules a rollback paused and
 * never flipped: the unfinished move is abandoned, and writes resume on the owner, which it never changed.
 * Without it, the only way to lift the pause was to finish the move, with the applications' writes failing
 * meanwhile.
 */
async function abandonMoves(deps: CutoverDeps, paths: StatePaths, state: CutoverState, options: CommonOptions, action: 'cutover' | 'rollback'): Promise<CutoverResult> {
  const now = options.now();
  const move = action === 'rollback' ? 'cutover' : 'rollback';
  const outcomes: RuleOutcome[] = options.rules.map((rule) => {
    const pause = state.docs.get(rule)!.doc.writesPaused!;
    const phase = phaseOf(state, rule, now);
    return { rule, from: phase, to: phase, ok: true, checks: [{ name: 'unfinished', ok: true, detail: `writes paused since ${pause.since} by a ${move} (${pause.by}) that never flipped rule ${rule}: abandoned, ${ownerOf(phase) === 'etcd' ? 'etcd' : 'Consul'} stays the owner` }] };
  });
  const etcdRevision = (await deps.source.status()).revision;
  if (!(await confirmed(options, [], outcomes))) return refusedResult(action, deps, [], outcomes, etcdRevision, state.checkpoint?.revision ?? null);
  stopIfInterrupted(options, action);
  // A document the pause created (its only history the derived phase) goes with it, as when the cutover resumes writes itself.
  const derivedOnly = (doc: RulePhaseDoc) => doc.history.length === 1 && doc.history[0]!.evidence?.note === DERIVED_NOTE;
  await setWritesPaused(deps.target, paths, state, options.rules.map((rule) => ({ rule, derived: phaseOf(state, rule, now), created: derivedOnly(state.docs.get(rule)!.doc) })), undefined);
  const after = await readCutoverState(deps.target, paths);
  const written = options.rules.map((rule) => after.docs.get(rule)?.doc ?? withWritesPaused(undefined, rule, phaseOf(after, rule, now), undefined));
  return { action, migration: deps.config.id, refused: false, checks: [], rules: outcomes, etcdRevision, checkpoint: after.checkpoint?.revision ?? null, written, abandoned: true };
}

/** `migrate rollback --rule <name>…`: back to etcd, gated on parity of the rule. */
export async function runRollback(deps: CutoverDeps, options: RollbackOptions): Promise<CutoverResult> {
  const { config, mapping, target } = deps;
  checkRuleNames(mapping, options.rules);
  const paths = statePaths(mapping.statePrefix, config.id);
  await identity(deps, paths);
  let state = await readCutoverState(target, paths);
  if (unfinishedMoves(state, options.rules, options.now(), 'cutover').length === options.rules.length) return abandonMoves(deps, paths, state, options, 'rollback');
  const global = await dualRunChecks(deps, paths, state, options, 'rollback');
  const now = options.now();
  const outcomes: RuleOutcome[] = [];
  for (const name of options.rules) {
    const rule = ruleNamed(mapping, name);
    const from = rule.action === 'keep' || rule.action === 'service' ? rule.action : phaseOf(state, name, now);
    const checks: PreconditionCheck[] = [];
    if (from === 'service' || from === 'keep') {
      checks.push({ name: 'action', ok: false, detail: from === 'keep' ? KEEP_NOT_CUT(name) : SERVICE_NOT_CUT(name) });
    } else if (from !== 'cutover') {
      checks.push({ name: 'phase', ok: false, detail: from === 'finalized' ? `rule ${name} is finalized: it can no longer be rolled back` : `rule ${name} is in phase ${from}, not cut over: nothing to roll back` });
    } else {
      checks.push({ name: 'phase', ok: true, detail: 'cutover' });
      checks.push(tripCheck(state, name, options.acknowledgeTrips));
    }
    outcomes.push({ rule: name, from, to: 'rolledback', checks, ok: checks.every((c) => c.ok) });
  }
  if (!global.checks.every((c) => c.ok) || !outcomes.every((o) => o.ok) || !(await confirmed(options, global.checks, outcomes))) {
    return refusedResult('rollback', deps, global.checks, outcomes, global.etcdRevision, global.checkpoint);
  }
  stopIfInterrupted(options, 'rollback');
  // The write fence: applications hold their writes to Consul; writes in flight land during the drain,
  // and the reverse mirror must have carried them to etcd (parity again) before etcd is the owner.
  const fence = await pauseWrites(deps, paths, outcomes, 'rollback', options);
  let written: Map<string, RulePhaseDoc>;
  let etcdRevision: number;
  try {
    await options.sleep(options.drainMs);
    stopIfInterrupted(options, 'rollback');
    // As for a cutover: the dual-run must still run (and have caught up) after the drain, or etcd would get no mirror of the rule.
    const caughtUp = await dualRunChecks(deps, paths, await readCutoverState(target, paths), options, 'rollback');
    if (!caughtUp.checks.every((c) => c.ok)) {
      await fence.resume();
      return refusedResult('rollback', deps, caughtUp.checks.map((c) => ({ ...c, name: `${c.name} (after the drain)` })), outcomes, caughtUp.etcdRevision, caughtUp.checkpoint);
    }
    // Read once for both: a change during the parity check fails the flip's check-and-set instead.
    state = await readCutoverState(target, paths);
    const at = options.now();
    refuseIfMoved(state, outcomes, ['cutover'], at);
    fence.refuseIfLifted(state);
    if (!(await transitionVerify('rollback', () => parityWithWritesPaused(options, outcomes, fence, 'rollback')))) return refusedResult('rollback', deps, global.checks, outcomes, global.etcdRevision, global.checkpoint);
    etcdRevision = (await deps.source.status()).revision;
    const transitions: Transition[] = outcomes.map((o) => ({
      rule: o.rule, from: 'cutover', to: 'rolledback', etcdRevision,
      entry: { at: at.toISOString(), by: options.by, evidence: { checkpoint: global.checkpoint ?? undefined, etcdRevision, ...(openTrips(state.trips.get(o.rule)?.doc) ? { acknowledgedTrips: openTrips(state.trips.get(o.rule)?.doc) } : {}) } },
    }));
    stopIfInterrupted(options, 'rollback');
    written = await writeTransitions(target, paths, state, transitions, options.acknowledgeTrips ? options.rules : []);
  } catch (err) {
    await fence.resume();
    throw err;
  }
  return { action: 'rollback', migration: config.id, refused: false, checks: global.checks, rules: outcomes, etcdRevision, checkpoint: global.checkpoint, written: [...written.values()] };
}

/**
 * For `finalize --delete-etcd`: Consul holds every etcd key of the rule that
 * the migration copies (deleted from etcd, the key has no other copy), and
 * the keys it never copies (unmappable, too large, leased under `leases:
 * skip`) are deleted only with `--export-etcd`, which keeps them on disk.
 * Consul emptied by hand or by an application, and a late write to etcd
 * after the cutover, fail it. Once the rule is finalized (a re-run for the
 * keys an earlier one left), Consul has owned the data since: a key it lacks
 * is one an application deleted there (or a late write), and etcd's is a
 * stale copy, deleted with `--export-etcd` (which keeps it on disk).
 */
async function consulHoldsRule(deps: CutoverDeps, rule: CompiledRule, exported: boolean, finalized: boolean): Promise<PreconditionCheck> {
  const { mapping } = deps;
  const listed = new ListedKeys(await deps.target.listKeys(rule.to));
  let keys = 0;
  let neverCopied = 0;
  const missing: Buffer[] = [];
  for await (const page of readRanges(deps.source, ruleRanges(mapping, rule), {})) {
    for (const entry of page.entries) {
      keys++;
      const route = routeKey(mapping, entry.key, { valueBytes: entry.value.length, maxValueBytes: mapping.maxValueBytes });
      if (route.kind !== 'mapped' || (entry.lease !== '0' && rule.leases === 'skip')) neverCopied++;
      else if (!listed.take(route.target)) missing.push(entry.key);
    }
  }
  const examples = (list: Buffer[]) => `${list.slice(0, 3).map(formatKey).join(', ')}${list.length > 3 ? ', …' : ''}`;
  if (missing.length > 0 && finalized && !exported) {
    return { name: 'consul holds the keys', ok: false, detail: `Consul lacks ${missing.length} of the ${keys} etcd key(s) left of finalized rule ${rule.name} (${examples(missing)}): deleted there since the cutover (by an application, or late writes to etcd; \`migrate status\` shows trips). Pass --export-etcd <file> to keep etcd's copies on disk before they are deleted; nothing was deleted` };
  }
  if (missing.length > 0 && !finalized) {
    return { name: 'consul holds the keys', ok: false, detail: `Consul lacks ${missing.length} of the ${keys} etcd key(s) of rule ${rule.name} (${examples(missing)}): deleted from etcd, they would have no copy left. Run \`migrate verify\` to see why (a late write to etcd, keys deleted in Consul); nothing was deleted` };
  }
  if (neverCopied > 0 && !exported) {
    return { name: 'consul holds the keys', ok: false, detail: `${neverCopied} of the ${keys} etcd key(s) of rule ${rule.name} were never copied to Consul (unmappable, too large, or leased under leases: skip): pass --export-etcd <file> to keep them on disk before they are deleted` };
  }
  if (keys === 0) return { name: 'consul holds the keys', ok: true, detail: `etcd holds no key of rule ${rule.name}: nothing to delete` };
  const held = keys - neverCopied - missing.length;
  const onDiskOnly = [...(neverCopied > 0 ? [`${neverCopied} never copied`] : []), ...(missing.length > 0 ? [`${missing.length} deleted in Consul since the cutover`] : [])];
  return { name: 'consul holds the keys', ok: true, detail: `${missing.length > 0 ? '' : 'all '}${held} etcd key(s) of rule ${rule.name} that the migration copies are in Consul${onDiskOnly.length > 0 ? `; ${onDiskOnly.join(' and ')} go to the export file only` : ''}` };
}

/**
 * For `finalize --delete-etcd` of a rule cut over: the dual-run has judged every etcd key's last write (its
 * checkpoint is at or past the key's revision): its reverse mirror's own, or a late write, recorded as a trip.
 * With no dual-run running, a write past the checkpoint (an application still on etcd) was deleted with no
 * trace, verify's drift notwithstanding. A running dual-run is waited for (--catch-up-timeout), then its trips
 * are read again. `--export-etcd` keeps such keys on disk, so they may go.
 */
async function etcdChangesJudged(deps: CutoverDeps, paths: StatePaths, rule: CompiledRule, exported: boolean, finalized: boolean, options: FinalizeOptions): Promise<PreconditionCheck> {
  const name = 'etcd changes judged';
  const replicated = async () => (await readState<CheckpointState>(deps.target, paths.checkpoint()))?.revision ?? 0;
  const checkpoint = await replicated();
  const head = (await deps.source.status()).revision;
  // Deletes too (a late delete leaves no key to find), but not on a finalized rule: deleting its etcd keys is the
  // retirement an earlier finalize --delete-etcd did.
  const found = await changesSince(deps.source, ruleRanges(deps.mapping, rule), checkpoint, head, checkpoint > 0 && !finalized);
  const { newest, examples, deleted, deletesSeen } = found;
  const unseen = found.changed + deleted;
  if (unseen === 0) {
    // Read after the checkpoint: a dual-run records a late write's trip before its checkpoint passes it.
    const trips = tripCheck(await readCutoverState(deps.target, paths), rule.name, options.acknowledgeTrips);
    const compacted = deletesSeen ? '' : ` (etcd compacted revision ${checkpoint}: keys deleted since are not known here; \`migrate verify\` reports them as extra)`;
    return trips.ok ? { name, ok: true, detail: `the dual-run replicated every write to the rule's etcd keys (checkpoint ${checkpoint})${compacted}` } : trips;
  }
  const changed = `${unseen} etcd key(s) of rule ${rule.name} changed or deleted after revision ${checkpoint}, the last the dual-run replicated (${examples.map(formatKey).join(', ')}${unseen > 3 ? ', …' : ''})`;
  const deadline = Date.now() + options.catchUpTimeoutMs;
  while ((await deps.target.readKey(paths.leader))?.session) {
    const now = await replicated();
    if (now >= newest) {
      const trips = tripCheck(await readCutoverState(deps.target, paths), rule.name, options.acknowledgeTrips);
      return trips.ok ? { name, ok: true, detail: `${changed}; the running dual-run has replicated past them (revision ${now})` } : trips;
    }
    if (Date.now() >= deadline) return { name, ok: false, detail: `${changed}; the dual-run holding the leader lock did not reach revision ${newest} within ${formatAge(options.catchUpTimeoutMs)} (--catch-up-timeout) to judge them (if it died, its lock expires within ${2 * LEADER_TTL_SECONDS} s). Run finalize again once a dual-run runs and has caught up (\`migrate status\`); nothing was deleted` };
    await options.sleep(200);
  }
  // A deleted key leaves nothing to export: the dual-run judges it (a late delete is a trip, acknowledged with --acknowledge-trips).
  if (exported && deleted === 0) return { name, ok: true, detail: `${changed}, and no dual-run runs to judge them (a late write?): they go to the export file before they are deleted` };
  return { name, ok: false, detail: `${changed}, and no dual-run runs to judge them: a write by an application still on etcd (a late write) would be lost with no trace. Start \`migrate dualrun\` and let it catch up (it records a late write as a trip: \`migrate status\`), then run finalize again${deleted > 0 ? '' : ', or pass --export-etcd <file> to keep etcd\'s copies on disk'}; nothing was deleted` };
}

/**
 * The keys of `ranges` at `head` last written after `since`, and (with `withDeletes`) the keys they held at `since`
 * and hold no more: one keys-only pass over each revision, merged in key order. A compacted `since` leaves the
 * deletes unknown (`deletesSeen` false).
 */
async function changesSince(source: SourceReader, ranges: KeyRange[], since: number, head: number, withDeletes: boolean): Promise<{ changed: number; deleted: number; newest: number; examples: Buffer[]; deletesSeen: boolean }> {
  const found = { changed: 0, deleted: 0, newest: 0, examples: [] as Buffer[], deletesSeen: true };
  const note = (key: Buffer) => found.examples.length < 3 && found.examples.push(key);
  const before = withDeletes ? readRanges(source, ranges, { keysOnly: true, revision: since })[Symbol.asyncIterator]() : undefined;
  let page: Buffer[] = [];
  let at = 0;
  let ended = !before;
  /** The next key held at `since`, undefined at the end. */
  const peek = async (): Promise<Buffer | undefined> => {
    while (at >= page.length && !ended) {
      try {
        const next = await before!.next();
        if (next.done) ended = true;
        else [page, at] = [next.value.entries.map((e) => e.key), 0];
      } catch (err) {
        if (!(err instanceof SourceCompactedError)) throw err;
        [ended, found.deletesSeen] = [true, false];
      }
    }
    return at < page.length ? page[at] : undefined;
  };
  /** Takes the keys held at `since` up to `key` (all, without one): those before it are deleted since. */
  const passTo = async (key?: Buffer) => {
    for (let old = await peek(); old && (!key || Buffer.compare(old, key) <= 0); old = await peek()) {
      at++;
      if (key && old.equals(key)) return;
      found.deleted++;
      note(old);
    }
  };
  for await (const current of readRanges(source, ranges, { keysOnly: true, revision: head })) {
    for (const entry of current.entries) {
      await passTo(entry.key);
      if (entry.modRevision <= since) continue;
      found.changed++;
      found.newest = Math.max(found.newest, entry.modRevision);
      note(entry.key);
    }
  }
  await passTo();
  if (found.deleted > 0) found.newest = Math.max(found.newest, head);
  return found;
}

/**
 * The etcd user may write each rule's range (asked without writing). A user
 * that may only read, cut over, left the reverse mirror retrying a refused
 * write while readers still on etcd saw stale data, with only the dual-run's
 * log saying so; and a `finalize --delete-etcd` failed after its flip.
 */
async function checkEtcdWrites(deps: CutoverDeps, outcomes: RuleOutcome[], why: string): Promise<void> {
  for (const outcome of outcomes.filter((o) => o.ok)) {
    const from = ruleNamed(deps.mapping, outcome.rule).fromBytes;
    let check: PreconditionCheck = { name: 'etcd write', ok: true, detail: `the etcd user may write ${formatKey(from)} (${why})` };
    try {
      await deps.writer.probeWrite(from);
    } catch (err) {
      if (!isMigrateError(err) || err.code !== 'etcd_permission_denied') throw err;
      check = { name: 'etcd write', ok: false, detail: `the etcd user may not write ${formatKey(from)}, and ${why}: grant its role readwrite on the rule's range (\`migrate acl\` prints the grant), then run this again` };
    }
    outcome.checks.push(check);
    outcome.ok = check.ok;
  }
}

/**
 * For `finalize`: the rule's Consul keys still held by the sessions that mirror etcd leases. Finalized,
 * the rule is mirrored no more, but those keys stay tied to their etcd lease: Consul deletes them
 * when the lease ends, or once no dual-run renews the sessions (stopping it at the end of a
 * migration). Said, not changed: an application that owns them writes them with a session of its own.
 */
async function leaseHeldNote(deps: CutoverDeps, paths: StatePaths, rule: CompiledRule): Promise<PreconditionCheck | undefined> {
  const recordKeys = await deps.target.listKeys(paths.sessions);
  if (recordKeys.length === 0) return undefined;
  const mirrors = new Set<string>();
  for (let i = 0; i < recordKeys.length; i += NOTE_READ_CHUNK) {
    for (const e of await deps.target.readEntries(recordKeys.slice(i, i + NOTE_READ_CHUNK), undefined, { listed: recordKeys })) mirrors.add(parseStateDocument<SessionRecord>(e.key, e.value).sessionId);
  }
  const keys = await deps.target.listKeys(rule.to);
  let held = 0;
  for (let i = 0; i < keys.length; i += NOTE_READ_CHUNK) {
    for (const e of await deps.target.readEntries(keys.slice(i, i + NOTE_READ_CHUNK), undefined, { listed: keys })) if (e.session && mirrors.has(e.session)) held++;
  }
  if (held === 0) return undefined;
  return { name: 'leased keys', ok: true, detail: `${held} Consul key(s) of rule ${rule.name} are held by sessions that mirror etcd leases: finalized, they still go when their etcd lease ends, or within twice the session TTL once no dual-run renews those sessions (after you stop it). An application that owns such a key should write it with a Consul session of its own (or without one, to keep it)` };
}

/** Keys read at once by {@link leaseHeldNote}. */
const NOTE_READ_CHUNK = 1000;

/**
 * For `finalize --delete-etcd`, after its flip: waits (up to --catch-up-timeout) for the running dual-run
 * to record in its checkpoint that its reverse mirrors run as the owners document now says, so that the
 * mirror of a finalized rule stopped and its last write landed. A write it had in flight at the flip
 * landed after the delete, and the rule's keys came back in etcd. Undefined when etcd may be deleted
 * (stopped, or no dual-run), else why not.
 */
async function mirrorsStopped(deps: CutoverDeps, paths: StatePaths, options: FinalizeOptions): Promise<string | undefined> {
  const flip = (await deps.target.readKey(ownersKey(paths)))?.modifyIndex ?? 0;
  const deadline = Date.now() + options.catchUpTimeoutMs;
  for (;;) {
    // No dual-run holds the lock: none writes to etcd (one started later reads the new ownership first).
    if (!(await deps.target.readKey(paths.leader))?.session) return undefined;
    const checkpoint = await readState<CheckpointState>(deps.target, paths.checkpoint());
    if ((checkpoint?.owners ?? 0) >= flip) return undefined;
    if (Date.now() >= deadline) return `the dual-run holding the leader lock (if it died, the lock expires within ${2 * LEADER_TTL_SECONDS} s) did not confirm within ${formatAge(options.catchUpTimeoutMs)} (--catch-up-timeout) that its reverse mirror stopped (its checkpoint records ownership index ${checkpoint?.owners ?? 'none'}, the flip made ${flip}; a dual-run older than this release records none)`;
    await options.sleep(200);
  }
}

/** `migrate finalize --rule <name>…`: stops mirroring for good; optionally exports and deletes the rule's etcd keys. */
export async function runFinalize(deps: CutoverDeps, options: FinalizeOptions): Promise<CutoverResult> {
  const { config, mapping, target } = deps;
  checkRuleNames(mapping, options.rules);
  if (options.exportEtcd && options.rules.length > 1) {
    throw new UsageError('flag_invalid', '--export-etcd names one file, but several --rule were given.', { hint: 'Finalize one rule at a time when exporting its etcd keys.' });
  }
  const etcdOut = options.exportEtcd ? new WholeFile(options.exportEtcd, { replace: false, flag: '--export-etcd' }) : undefined;
  const paths = statePaths(mapping.statePrefix, config.id);
  await identity(deps, paths);
  let state = await readCutoverState(target, paths);
  const now = options.now();
  const etcdRevisionBefore = (await deps.source.status()).revision;
  const elsewhere = await otherDatacenterChecks(options);
  const outcomes: RuleOutcome[] = options.rules.map((name) => {
    const rule = ruleNamed(mapping, name);
    if (rule.action === 'keep') return { rule: name, from: 'keep', to: 'finalized', ok: false, checks: [{ name: 'action', ok: false, detail: KEEP_NOT_CUT(name) }] };
    if (rule.action === 'service') return { rule: name, from: 'service', to: 'finalized', ok: false, checks: [{ name: 'action', ok: false, detail: SERVICE_NOT_CUT(name) }] };
    const from = phaseOf(state, name, now);
    // Finalized by a run whose delete was held back (or left keys): --delete-etcd again deletes what is left.
    const deleteLeft = from === 'finalized' && options.deleteEtcd;
    const checks: PreconditionCheck[] = [
      from === 'cutover' ? { name: 'phase', ok: true, detail: 'cutover' }
      : deleteLeft ? { name: 'phase', ok: true, detail: `finalized already: deletes the etcd keys of rule ${name} that are left` }
      : { name: 'phase', ok: false, detail: from === 'finalized' ? `rule ${name} is already finalized` : `rule ${name} is in phase ${from}: cut it over first (\`migrate cutover --rule ${name}\`)` },
      tripCheck(state, name, options.acknowledgeTrips),
      ...(elsewhere.get(name) ? [elsewhere.get(name)!] : []),
      ...pauseCheck(state, name),
    ];
    return { rule: name, from, to: 'finalized', checks, ok: checks.every((c) => c.ok) };
  });
  for (const outcome of outcomes.filter((o) => o.ok)) {
    const note = await leaseHeldNote(deps, paths, ruleNamed(mapping, outcome.rule));
    if (note) outcome.checks.push(note);
  }
  if (options.deleteEtcd) {
    await checkEtcdWrites(deps, outcomes, '--delete-etcd deletes the rule\'s keys there');
    for (const outcome of outcomes.filter((o) => o.ok)) {
      const check = await consulHoldsRule(deps, ruleNamed(mapping, outcome.rule), Boolean(etcdOut), outcome.from === 'finalized');
      outcome.checks.push(check);
      outcome.ok = check.ok;
      // A finalized rule too: a plain finalize flips it with no look at etcd's keys, and a late write made meanwhile
      // (no dual-run running) went with the later --delete-etcd, unjudged.
      if (!outcome.ok) continue;
      const judged = await etcdChangesJudged(deps, paths, ruleNamed(mapping, outcome.rule), Boolean(etcdOut), outcome.from === 'finalized', options);
      outcome.checks.push(judged);
      outcome.ok = judged.ok;
    }
  }
  if (!outcomes.every((o) => o.ok) || !(await confirmed(options, [], outcomes))) {
    return refusedResult('finalize', deps, [], outcomes, etcdRevisionBefore, state.checkpoint?.revision ?? null);
  }
  stopIfInterrupted(options, 'finalize');
  // Read (and export) the etcd keys before the flip: the export is the record of what is deleted.
  const toDelete = new Map<string, { keys: Buffer[]; revision: number }>();
  for (const outcome of outcomes) {
    if (!etcdOut && !options.deleteEtcd) continue;
    const read = await readEtcdRule(deps.source, mapping, ruleNamed(mapping, outcome.rule), etcdOut, options.onWarning);
    if (etcdOut) outcome.etcdExportFile = etcdOut.file;
    if (options.deleteEtcd) toDelete.set(outcome.rule, read);
  }
  state = await readCutoverState(target, paths);
  const at = options.now();
  let written: Map<string, RulePhaseDoc>;
  let etcdRevision: number;
  try {
    // Another operator rolled back (or finalized) meanwhile: etcd's keys are the owner's data again.
    const flipping = outcomes.filter((o) => o.from === 'cutover');
    refuseIfMoved(state, flipping, ['cutover'], at);
    refuseIfPaused(state, flipping);
    refuseIfMoved(state, outcomes.filter((o) => o.from === 'finalized'), ['finalized'], at);
    etcdRevision = (await deps.source.status()).revision;
    const transitions: Transition[] = flipping.map((o) => finalizeTransition(o, state, toDelete, etcdRevision, at, options.by));
    stopIfInterrupted(options, 'finalize');
    written = transitions.length > 0 ? await writeTransitions(target, paths, state, transitions, options.acknowledgeTrips ? options.rules : []) : new Map();
  } catch (err) {
    // Refused or interrupted: nothing moved, nothing deleted; the export made for it goes too.
    if ((err instanceof RefusedError || err instanceof InterruptedError) && etcdOut) rmSync(etcdOut.file, { force: true });
    throw err;
  }
  // The dual-run's reverse mirrors of these rules must have stopped, their last writes landed, before etcd's keys go.
  const mirrors = toDelete.size > 0 ? await mirrorsStopped(deps, paths, options) : undefined;
  for (const outcome of outcomes) {
    const read = toDelete.get(outcome.rule);
    if (!read) continue;
    if (mirrors) {
      outcome.etcdDeleteHeldBack = true;
      options.onWarning(`nothing was deleted from etcd for rule ${outcome.rule}: ${mirrors}; the rule is finalized. Run \`migrate finalize --rule ${outcome.rule} --delete-etcd\` again once the dual-run runs and has caught up (\`migrate status\`)`);
      continue;
    }
    const kept = await deleteUnchangedSince(deps.writer, read.keys, read.revision);
    outcome.etcdDeleted = read.keys.length - kept.length;
    if (kept.length > 0) {
      outcome.etcdKeptChanged = kept.length;
      options.onWarning(`${kept.length} etcd key(s) of rule ${outcome.rule} changed after revision ${read.revision}, which was read${outcome.etcdExportFile ? ' and exported' : ''}: written by the reverse mirror before it saw the flip (an application's Consul write), or by a late writer; left in etcd and not deleted (${kept.slice(0, 5).map(formatKey).join(', ')}${kept.length > 5 ? ', …' : ''}). \`migrate finalize --rule ${outcome.rule} --delete-etcd\` again deletes them`);
    }
    // Keys created after the read (the reverse mirror, until it saw the flip, or a late writer) were neither read nor deleted.
    const left = (await countRuleKeys(deps.source, mapping, ruleNamed(mapping, outcome.rule), (await deps.source.status()).revision)) - kept.length;
    if (left > 0) options.onWarning(`${left} etcd key(s) of rule ${outcome.rule} were created after revision ${read.revision}, which was read${outcome.etcdExportFile ? ' and exported' : ''} (by the reverse mirror before it stopped, or a late writer): left in etcd, not exported; Consul holds the rule's data. \`migrate finalize --rule ${outcome.rule} --delete-etcd\` again deletes them`);
  }
  return { action: 'finalize', migration: config.id, refused: false, checks: [], rules: outcomes, etcdRevision, checkpoint: state.checkpoint?.revision ?? null, written: [...written.values()] };
}
