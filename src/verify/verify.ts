import { getMaxListeners, setMaxListeners } from 'node:events';
import pLimit from 'p-limit';
import type { CheckpointState, CopyState } from '../copy/copy.js';
import { runningCopy } from '../copy/lock.js';
import { readOwnership } from '../cutover/state-io.js';
import { lockHolder } from '../dualrun/leader.js';
import type { KeyPolicy, LeasePolicy, MigrationConfig } from '../config/load.js';
import { InterruptedError, RefusedError, UsageError, isMigrateError } from '../errors.js';
import type { UnmappableReason } from '../mapping/escape.js';
import { ruleArgument } from '../mapping/datacenters.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { countRuleKeys, ruleRanges } from '../mapping/route.js';
import type { ValueHasher } from '../report/hash.js';
import { formatKey } from '../report/keys.js';
import { META_RULE, type RegistrationProblem } from '../services/registration.js';
import { desiredInstances } from '../services/sync.js';
import type { SessionRecord } from '../sessions/lease-sessions.js';
import { checkIdentity, mappingHash, parseStateDocument, readState, statePaths, STATE_SCHEMA_VERSION, type StateMeta, type StatePaths } from '../state/state.js';
import { ConsulResponseError, TxnFailedError, sleep as defaultSleep } from '../stores/consul-http.js';
import { readAgainAtFreshRevision } from '../stores/etcd.js';
import { readRanges } from '../stores/key-range.js';
import { readAhead } from '../stores/read-ahead.js';
import type { ServiceInstance, SourceEntry, SourceReader, TargetEntry, TargetStore } from '../stores/types.js';
import {
  addCounts,
  alignEntries,
  compareKey,
  countByKind,
  routeForVerify,
  ruleStatus,
  sortFindings,
  splitPage,
  type Difference,
  type DifferenceKind,
  type Expectation,
  type Finding,
  type PageSplit,
  type ReadBack,
  type RuleStatus,
  type SessionView,
} from './compare.js';
import { compareInstances, criticalLeases } from './compare-services.js';
import { DUALRUN_HEARTBEAT_MS, readCheckpointState, type CutReason } from './cut.js';
import { ListedKeys } from '../stores/listed-keys.js';
import { ownerAt, tripsKey, type RuleOwner, type TripsDoc } from '../cutover/phase.js';

/**
 * `migrate verify`: parity of etcd and Consul at a consistent cut, in both
 * directions, per copy rule and per service rule, over several rounds so
 * that writes in flight settle (DESIGN §3 "Verification"). Reads only; the
 * one write is the `verify/last` summary (skipped with `record: false`).
 *
 * ## The cut
 * Round 1 reads a fresh etcd revision R. When a dual-run is running (see
 * `cut.ts`) it waits, up to `waitTimeoutMs`, until the dual-run's checkpoint
 * has reached R, then reads Consul: everything etcd did up to R is in Consul
 * by then. Without a dual-run it reads Consul at once, so any change made in
 * etcd since the copy is drift. A checkpoint that does not reach R in time is
 * refused with `verify_cut_timeout` (exit 4).
 *
 * ## Rounds
 * Keys that differ in round 1 are read again, on both sides, in each later
 * round: etcd at a new revision (with a new wait for the checkpoint), Consul
 * after a pause that lets the dual-run catch up. A difference counts only if
 * it is still there in the last round; the others are reported as settled.
 *
 * ## Memory
 * Per rule: the Consul key list under `to` (strings only), then etcd pages
 * pinned at R, each routed through the mapping; its targets are looked up in
 * (and deleted from) a Set of the key list, and only those values are read
 * from Consul, in txn chunks. What is left in the Set has no etcd key: the
 * extra keys. The escape codec does not keep key order, so a sorted merge of
 * the two sides would not line up; the Set lookup does. Values are held for
 * a few pages at a time, never for the keyspace. Differences kept for
 * re-checks are capped ({@link RECHECK_LIMIT}); beyond it they are counted.
 *
 * ## Service rules
 * A service rule's keys are registrations, not KV keys: at the same cut, the
 * instances they make (`desiredInstances`) are compared with the rule's
 * instances in Consul's catalog, every node (`compare-services.ts`). The
 * catalog is read once per round for all service rules. A catalog is
 * thousands of instances, not millions of keys, so a re-check reads the whole
 * rule again on both sides and keeps the instances that still differ. Keys
 * that make no instance are counted per problem, like unmappable keys.
 */

/** Differences kept for re-checks and the report; more are counted (as persistent) without being re-checked or listed. */
export const RECHECK_LIMIT = 100_000;
/** etcd pages whose Consul values are read at the same time (each page's reads run in txn chunks). */
const PAGES_IN_FLIGHT = 2;
/** Consul keys per re-check read, and etcd point reads in flight. */
const RECHECK_CHUNK = 1_000;
const POINT_READS = 16;
const READ_BACKS = 8;
const SESSION_READS = 8;
/** Sessions a page asks about from which one list of all sessions is cheaper than reading each. */
const SESSION_LIST_FROM = 32;
const CHECKPOINT_POLL_MS = 200;

/** A Consul target plus, for the real adapter, the txn `get-tree` read that reaches keys with a leading `/`. */
export type VerifyTarget = TargetStore & { readTree?: (prefix: string, signal?: AbortSignal) => Promise<TargetEntry[]> };

export interface VerifyDeps {
  source: SourceReader;
  target: VerifyTarget;
  config: MigrationConfig;
  mapping: Mapping;
  /** With rules in several datacenters: the one `target` addresses, named in every difference. */
  datacenter?: string;
}

export interface VerifyOptions {
  /** Rounds in all (≥ 1); round 1 compares everything, later rounds re-check what differed. */
  rounds: number;
  /** Pause before each later round. */
  roundPauseMs: number;
  /** Longest wait, per round, for a running dual-run's checkpoint to reach the etcd revision. */
  waitTimeoutMs: number;
  /** Differences listed in the result (all are counted). */
  maxDiffs: number;
  /** `--allow rule=N`: persistent differences tolerated per rule. */
  budgets: Readonly<Record<string, number>>;
  /** Write the `verify/last` summary. */
  record: boolean;
  /** Keys also read back through `GET /v1/kv/<key>`, in all ({@link readBackShares}); `'all'` for every key. */
  readBack: number | 'all';
  pageKeys: number;
  signal: AbortSignal;
  now: () => Date;
  hasher: ValueHasher;
  toolVersion: string;
  /** Injected so tests can run rounds without waiting. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  pollMs?: number;
  onProgress?: (event: VerifyProgressEvent) => void;
}

export type VerifyProgressEvent =
  | { type: 'start'; revision: number; rules: { name: string; keys: number }[] }
  | { type: 'progress'; rule: string; keysDone: number }
  | { type: 'waiting'; revision: number; checkpoint: number | null }
  | { type: 'round'; round: number; pending: number }
  | { type: 'warning'; message: string };

export type CutKind = 'checkpoint' | 'immediate';

/** Which consistent cut a round used. */
export interface VerifyCut {
  cut: CutKind;
  /** The etcd revision R the round read. */
  revision: number;
  /** The checkpoint revision when Consul was read; null without a checkpoint document. */
  checkpoint: number | null;
  checkpointBy: 'copy' | 'dualrun' | null;
  reason: CutReason;
  /** Time spent waiting for the checkpoint to reach R. */
  waitedMs: number;
}

export interface VerifyRound extends VerifyCut {
  round: number;
  /** Keys and service instances compared (round 1: every one; later rounds: the ones that differed). */
  checked: number;
  /** Differences after this round. */
  differences: number;
  /** Differences of the previous round that this round found gone. */
  settled: number;
  durationMs: number;
}

export interface RuleVerify {
  name: string;
  /** `copy`: KV keys under `to`; `service`: instances in Consul's catalog. */
  action: 'copy' | 'service';
  from: string;
  /** Null for a service rule (it writes no KV keys), as are `keys` and `leases`: a lease there is a TTL check. */
  to: string | null;
  keys: KeyPolicy | null;
  leases: LeasePolicy | null;
  status: RuleStatus;
  /** etcd keys at the cut that this rule owns (mapped or unmappable). */
  sourceKeys: number;
  /** Mapped keys compared with Consul (including `leases: skip` keys, expected absent); for a service rule, the instances its keys make. */
  compared: number;
  /** Consul keys listed under `to`; for a service rule, its instances in the catalog. */
  targetKeys: number;
  /** Persistent differences (after the last round). */
  differences: number;
  byKind: Record<DifferenceKind, number>;
  /** Differences of round 1 that later rounds found gone (writes in flight). */
  settled: number;
  /** `--allow` budget, or null. */
  budget: number | null;
  /** Source keys the rule rejects (not copied by design), or that make no service instance: counted per reason, not drift. */
  unmappable: Partial<Record<UnmappableReason | RegistrationProblem, number>>;
  /** Leased keys under `leases: skip`: checked to be absent from Consul. */
  leaseSkipped: number;
  /** Keys read back through `GET /v1/kv/<key>`, and how many Consul would not serve (still, after the last round). */
  readBack: { checked: number; failed: number };
  /** Differences over {@link RECHECK_LIMIT}: counted as persistent, not re-checked or listed. */
  unchecked: number;
  /** The store applications write this rule to (`consul` after a cutover: etcd is then the mirror). */
  owner: RuleOwner;
  /** Late writes the dual-run recorded (etcd writes under a cut-over rule): drift until acknowledged. */
  lateWrites: number;
  /**
   * Keys of a cut-over rule that an application locks in Consul with its own session (not drift): the reverse
   * mirror writes them to etcd without a lease, so after a rollback etcd holds them until they are deleted.
   * `examples`: their etcd keys.
   */
  appLocks: { keys: number; examples: string[] };
}

export interface VerifyResult {
  migration: string;
  /** No rule drifts (every rule at parity or within its budget): exit 0. */
  clean: boolean;
  /** The cut of round 1. */
  cut: VerifyCut;
  rounds: VerifyRound[];
  rules: RuleVerify[];
  totals: { sourceKeys: number; compared: number; differences: number; settled: number; withinBudget: number; unmappable: number };
  /** Persistent differences, at most `maxDiffs` of them, in rule then key order. */
  differences: Difference[];
  /** Every persistent difference, listed or not; equals the sum of the rules' `differences`. */
  differencesTotal: number;
  /** Fewer differences are listed than there are. */
  truncated: boolean;
  maxDiffs: number;
  /** Whether the `verify/last` summary was written. */
  recorded: boolean;
  /** Why it was not: `--no-record`, no copy has run (no state), or another mapping than the recorded one. */
  notRecorded: 'no-record' | 'no-state' | 'mapping-changed' | null;
  source: { clusterId: string; version: string };
  target: { datacenter: string; version: string };
  warnings: string[];
  durationMs: number;
}

/** The `verify/last` state document: the summary the cutover gates on. */
export interface VerifyLastState {
  schemaVersion: number;
  at: string;
  revision: number;
  cut: CutKind;
  checkpoint: number | null;
  clean: boolean;
  rounds: number;
  toolVersion: string;
  /** `byKind` is partial: a summary an older release recorded lacks the kinds added since (the service rules' ones). */
  rules: Record<string, { status: RuleStatus; differences: number; compared: number; settled: number; budget: number | null; byKind: Partial<Record<DifferenceKind, number>>; unmappable?: Partial<Record<string, number>> }>;
}

interface RuleRun {
  rule: CompiledRule;
  stats: RuleVerify;
  findings: Finding[];
  /** Counted beyond the re-check limit, per kind. */
  unchecked: Partial<Record<DifferenceKind, number>>;
}

/** Runs verify (see the module comment). Never prints or exits; the CLI renders the result. */
export async function runVerify(deps: VerifyDeps, options: VerifyOptions): Promise<VerifyResult> {
  const started = Date.now();
  const { source, target, config, mapping } = deps;
  // Every request in flight listens on the signal (pages × txn chunks × read-backs): more than Node's default 10.
  setMaxListeners(Math.max(getMaxListeners(options.signal), 256), options.signal);
  const sleep = options.sleep ?? defaultSleep;
  const paths = statePaths(mapping.statePrefix, config.id);
  const warnings: string[] = [];
  const warn = (message: string) => {
    warnings.push(message);
    options.onProgress?.({ type: 'warning', message });
  };
  // Copy and service rules, in the order of the file.
  const verified = [...mapping.copyRules, ...mapping.serviceRules].sort((a, b) => a.index - b.index);
  for (const name of Object.keys(options.budgets)) {
    if (!verified.some((r) => r.name === name)) {
      throw new UsageError('verify_budget_unknown_rule', `--allow names rule "${name}", which is not a copy or service rule of migration "${config.id}".`, {
        hint: `Use one of: ${verified.map((r) => r.name).join(', ') || '(no copy or service rules)'}.`,
      });
    }
  }

  // Independent reads, at once: each is a round trip before any key is compared.
  const [status, info, meta, copyState, { owners: { doc: owners } }] = await Promise.all([
    source.status(),
    target.info(),
    readState<StateMeta>(target, paths.meta),
    readState<CopyState>(target, paths.copy),
    // With the rule documents, as every command reads it: one deleted by hand is rebuilt, one edited to disagree refused.
    readOwnership(target, paths),
  ]);
  const verdict = checkIdentity(meta, { id: config.id, etcdClusterId: status.clusterId, datacenter: info.datacenter, mappingHash: mappingHash(config) }, { acceptMappingChange: true });
  // Recorded, the summary of another mapping would stand for the migration's own (status, the cutover's gate).
  if (verdict === 'mapping-changed') warn(`the mapping changed since migration "${config.id}" was recorded; verify compares against the current mapping and records nothing (verify/last stays that of the recorded mapping; a dual-run started with --accept-mapping-change adopts the new one)`);
  if (verdict === 'new') warn(`migration "${config.id}" has no state in Consul yet (no copy has run); this verify is not recorded`);
  if (copyState && !copyState.completed) {
    // Running (it holds the copy lock) or stopped part way: what it has not written yet is reported as missing or different.
    const [copying, leader, checkpoint] = await Promise.all([runningCopy(target, config), target.readKey(paths.leader), readState<CheckpointState>(target, paths.checkpoint())]);
    // A dual-run copies the rules again itself (a re-baseline): it holds the leader lock, not the copy lock.
    warn(copying
      ? `a copy of migration "${config.id}" is running (${copying}, at revision ${copyState.revision}): what it has not written yet is reported as missing or different; verify once it has finished`
      : leader?.session
        ? `the dual-run of migration "${config.id}" (${lockHolder(leader.value) ?? 'holder unknown'}) is copying the rules again (re-baselining, at revision ${copyState.revision}): what it has not written yet is reported as missing or different; verify once its log says re-baselined`
        : checkpoint?.by === 'dualrun'
          ? `a re-baseline of migration "${config.id}" stopped part way (at revision ${copyState.revision}); start \`migrate dualrun\` (it copies the rules again) and verify once it has`
          : `the copy of migration "${config.id}" has not completed (interrupted at revision ${copyState.revision}); run \`migrate copy --resume\` first`);
  }

  const cutter = new CutTaker(source, target, paths, options, sleep);
  const firstCut = await cutter.take();
  if (firstCut.reason === 'dualrun-stopped') {
    warn(cutter.stoppedAt !== undefined
      ? `the dual-run stopped at ${cutter.stoppedAt} (checkpoint revision ${firstCut.checkpoint}): nothing replicates, so every change since it counts as drift`
      : `the dual-run's checkpoint (revision ${firstCut.checkpoint}) has not moved for more than ${(2 * DUALRUN_HEARTBEAT_MS) / 1000} s: treated as stopped, so every change since it counts as drift`);
  }

  // Rules cut over are compared with Consul as the owner; finalized rules are no longer mirrored, so not compared.
  const current = (name: string) => ownerAt(owners, name, Number.MAX_SAFE_INTEGER);
  const late = new Map<string, number>();
  for (const rule of verified) {
    if (current(rule.name).phase === 'finalized') {
      warn(`rule ${rule.name} is finalized: no longer mirrored, not compared`);
      continue;
    }
    const trips = await readState<TripsDoc>(target, tripsKey(paths, rule.name));
    if (trips && trips.lateWrites.count > 0) {
      late.set(rule.name, trips.lateWrites.count);
      warn(`rule ${rule.name}: the dual-run recorded ${trips.lateWrites.count} late write(s) to etcd after its cutover (e.g. ${trips.lateWrites.keys.slice(0, 3).join(', ')}); an application still writes to etcd. Switch it, then \`migrate cutover --rule ${ruleArgument(config, rule.name, deps.datacenter)} --acknowledge-trips\` (the rule stays cut over), or roll it back with --acknowledge-trips`);
    }
  }
  const freshRuns = (): RuleRun[] => verified.filter((rule) => current(rule.name).phase !== 'finalized').map((rule) => ({
    rule,
    findings: [],
    unchecked: {},
    stats: {
      name: rule.name, from: rule.from, ...(rule.action === 'service' ? { action: 'service', to: null, keys: null, leases: null } as const : { action: 'copy', to: rule.to, keys: rule.keys, leases: rule.leases } as const),
      status: 'parity', sourceKeys: 0, compared: 0, targetKeys: 0, differences: 0,
      byKind: countByKind([]), settled: 0, budget: options.budgets[rule.name] ?? null, unmappable: {}, leaseSkipped: 0, readBack: { checked: 0, failed: 0 }, unchecked: 0,
      owner: current(rule.name).owner, lateWrites: late.get(rule.name) ?? 0, appLocks: { keys: 0, examples: [] },
    },
  }));
  let runs = freshRuns();
  const store = { kept: 0, limit: Math.max(RECHECK_LIMIT, options.maxDiffs) };
  const keep = (run: RuleRun, finding: Finding) => {
    if (store.kept < store.limit) {
      run.findings.push(finding);
      store.kept++;
    } else {
      run.unchecked[finding.difference.kind] = (run.unchecked[finding.difference.kind] ?? 0) + 1;
    }
  };

  const sessions = new Sessions(target, paths);
  await sessions.load();

  // Round 1: everything, at one cut; a cut etcd compacts while it is read is taken again.
  const roundStarted = Date.now();
  let cut = firstCut;
  let checked = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      // Counted while the first rule lists its Consul keys; the counts come before any progress.
      const totals = Promise.all(runs.map(async (run) => ({ name: run.rule.name, keys: await countRuleKeys(source, mapping, run.rule, cut.revision) }))).then((rules) => {
        options.onProgress?.({ type: 'start', revision: cut.revision, rules });
        return rules;
      });
      totals.catch(() => undefined);
      const copyRuleNames = new Set(runs.filter((r) => r.rule.action !== 'service').map((r) => r.rule.name));
      const shares = totals.then((rules) => readBackShares(options.readBack, rules.filter((t) => copyRuleNames.has(t.name))));
      shares.catch(() => undefined);
      const catalog = catalogOf(target, config.id, options.signal);
      for (const run of runs) {
        checkAborted(options.signal);
        if (run.rule.action === 'service') {
          await totals;
          checked += await compareServiceRule(run, { ...deps, options, revision: cut.revision, catalog, keep });
          continue;
        }
        const expected = Promise.all([totals, shares]).then(([rules, share]) => ({ keys: rules.find((t) => t.name === run.rule.name)!.keys, readBacks: share.get(run.rule.name) ?? 0 }));
        expected.catch(() => undefined);
        checked += await compareRule(run, { ...deps, options, cut, sessions, keep, expected, warn });
      }
      break;
    } catch (err) {
      if (!readAgainAtFreshRevision(err, attempt)) throw err;
      warn(`etcd compacted revision ${cut.revision} while verify read it; round 1 starts again at a fresh revision`);
      runs = freshRuns();
      store.kept = 0;
      checked = 0;
      cut = await cutter.take();
    }
  }
  const rounds: VerifyRound[] = [{ round: 1, ...cut, checked, differences: count(runs), settled: 0, durationMs: Date.now() - roundStarted }];

  // Later rounds: what differed, read again on both sides.
  for (let round = 2; round <= options.rounds; round++) {
    const pending = runs.reduce((n, r) => n + r.findings.length, 0);
    if (pending === 0) break;
    options.onProgress?.({ type: 'round', round, pending });
    await sleep(options.roundPauseMs, options.signal);
    checkAborted(options.signal);
    const began = Date.now();
    let roundCut = await cutter.take();
    let settled = 0;
    for (let attempt = 1; ; attempt++) {
      try {
        await sessions.load();
        // Findings are replaced only once every rule was re-checked, so a compacted retry starts from the same set.
        const still = new Map<RuleRun, Finding[]>();
        const catalog = catalogOf(target, config.id, options.signal);
        for (const run of runs) {
          if (run.findings.length === 0) continue;
          const context = { ...deps, options, revision: roundCut.revision, appliedUpTo: () => cutter.appliedUpTo(roundCut) };
          still.set(run, run.rule.action === 'service' ? await recheckServices(run, { ...context, catalog }) : await recheck(run, { ...context, sessions }));
        }
        for (const [run, findings] of still) {
          run.stats.settled += run.findings.length - findings.length;
          settled += run.findings.length - findings.length;
          run.findings = findings;
        }
        break;
      } catch (err) {
        if (!readAgainAtFreshRevision(err, attempt)) throw err;
        warn(`etcd compacted revision ${roundCut.revision} while verify re-read it; round ${round} starts again at a fresh revision`);
        roundCut = await cutter.take();
      }
    }
    rounds.push({ round, ...roundCut, checked: pending, differences: count(runs), settled, durationMs: Date.now() - began });
  }

  // Persistent differences, budgets, verdict.
  const order = new Map(verified.map((r, i) => [r.name, i]));
  const listed: Difference[] = [];
  let differencesTotal = 0;
  for (const run of runs) {
    const s = run.stats;
    s.byKind = countByKind(run.findings.map((f) => f.difference), run.unchecked);
    // Read-backs that failed and still fail: one failing in round 1 only was a key written or deleted meanwhile.
    if (rounds.length > 1) s.readBack.failed = run.findings.filter((f) => f.readBack).length;
    s.unchecked = Object.values(run.unchecked).reduce((n, v) => n + (v ?? 0), 0);
    s.differences = run.findings.length + s.unchecked;
    s.status = s.lateWrites > 0 ? 'drift' : ruleStatus(s.differences, options.budgets[s.name]);
    differencesTotal += s.differences;
    if (s.owner === 'consul') for (const f of run.findings) f.difference.detail = `${f.difference.detail} (Consul owns this rule since its cutover; etcd is the mirror${f.difference.kind === 'missing' ? ': etcd holds a key Consul does not' : f.difference.kind === 'extra' ? ': the reverse mirror has not written it to etcd' : ''})`;
  }
  for (const finding of sortFindings(runs.flatMap((r) => r.findings), order)) {
    if (listed.length >= options.maxDiffs) break;
    listed.push(deps.datacenter ? { ...finding.difference, datacenter: deps.datacenter } : finding.difference);
  }
  const stats = runs.map((r) => r.stats);
  const clean = stats.every((s) => s.status !== 'drift');
  const result: VerifyResult = {
    migration: config.id,
    clean,
    cut,
    rounds,
    rules: stats,
    totals: {
      sourceKeys: sum(stats.map((s) => s.sourceKeys)),
      compared: sum(stats.map((s) => s.compared)),
      differences: differencesTotal,
      settled: sum(stats.map((s) => s.settled)),
      withinBudget: sum(stats.filter((s) => s.status === 'within-budget').map((s) => s.differences)),
      unmappable: sum(stats.map((s) => sum(Object.values(s.unmappable) as number[]))),
    },
    differences: listed,
    differencesTotal,
    truncated: listed.length < differencesTotal,
    maxDiffs: options.maxDiffs,
    recorded: false,
    notRecorded: !options.record ? 'no-record' : verdict === 'new' ? 'no-state' : verdict === 'mapping-changed' ? 'mapping-changed' : null,
    source: { clusterId: status.clusterId, version: status.version },
    target: { datacenter: info.datacenter, version: info.version },
    warnings,
    durationMs: 0,
  };

  // No copy has run (no meta): nothing to record it against, and a lone verify/last would be an orphan in the state.
  // Another mapping's summary is not the migration's (see the warning above).
  if (result.notRecorded === null) {
    await target.applyTxn([{ verb: 'set', key: paths.verifyLast, value: Buffer.from(JSON.stringify(verifyLastDocument(result, options))) }]);
    result.recorded = true;
  }
  result.durationMs = Date.now() - started;
  return result;
}

/** The `verify/last` document for a result. */
export function verifyLastDocument(result: VerifyResult, options: Pick<VerifyOptions, 'now' | 'toolVersion'>): VerifyLastState {
  return {
    schemaVersion: STATE_SCHEMA_VERSION,
    at: options.now().toISOString(),
    revision: result.cut.revision,
    cut: result.cut.cut,
    checkpoint: result.cut.checkpoint,
    clean: result.clean,
    rounds: result.rounds.length,
    toolVersion: options.toolVersion,
    rules: Object.fromEntries(result.rules.map((r) => [r.name, { status: r.status, differences: r.differences, compared: r.compared, settled: r.settled, budget: r.budget, byKind: r.byKind, unmappable: r.unmappable }])),
  };
}

function count(runs: RuleRun[]): number {
  return runs.reduce((n, r) => n + r.findings.length + sum(Object.values(r.unchecked) as number[]), 0);
}

function sum(values: number[]): number {
  return values.reduce((n, v) => n + v, 0);
}

function checkAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new InterruptedError('verify was interrupted; nothing was recorded.', { hint: 'Run `migrate verify` again.' });
}

/**
 * Takes a consistent cut: a fresh etcd revision and, when a dual-run is
 * running, a wait until its checkpoint reaches it. Remembers the last
 * checkpoint it read, so a checkpoint that moves between rounds counts as a
 * running dual-run whatever the clocks say.
 */
class CutTaker {
  private last: CheckpointState | undefined;

  constructor(
    private readonly source: SourceReader,
    private readonly target: TargetStore,
    private readonly paths: StatePaths,
    private readonly options: VerifyOptions,
    private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>,
  ) {}

  /** When the last checkpoint read was marked stopped by the dual-run's clean stop. */
  get stoppedAt(): string | undefined {
    return this.last?.stopped;
  }

  /** The etcd revision Consul holds at least, now: the checkpoint of a running dual-run, else the cut's own revision. */
  async appliedUpTo(cut: VerifyCut): Promise<number> {
    if (cut.cut !== 'checkpoint') return cut.revision;
    return (await readState<CheckpointState>(this.target, this.paths.checkpoint()))?.revision ?? cut.revision;
  }

  async take(): Promise<VerifyCut> {
    const key = this.paths.checkpoint();
    let doc = await readState<CheckpointState>(this.target, key);
    const revision = (await this.source.status()).revision;
    const reading = readCheckpointState(doc, this.last, this.options.now().getTime());
    const base = { revision, checkpointBy: doc?.by ?? null };
    if (!reading.running || !doc) {
      this.last = doc;
      return { ...base, cut: 'immediate', checkpoint: doc?.revision ?? null, reason: reading.reason, waitedMs: 0 };
    }
    // The clock is the injected one, so tests can run the wait without waiting.
    const clock = () => this.options.now().getTime();
    const began = clock();
    const deadline = began + this.options.waitTimeoutMs;
    while (doc && doc.revision < revision) {
      this.options.onProgress?.({ type: 'waiting', revision, checkpoint: doc.revision });
      if (clock() >= deadline) {
        const ageMs = readCheckpointState(doc, doc, clock()).ageMs ?? 0;
        const still = ageMs > 2 * DUALRUN_HEARTBEAT_MS;
        throw new RefusedError('verify_cut_timeout', `The dual-run's checkpoint stayed at etcd revision ${doc.revision}, behind revision ${revision}, for ${Math.round(this.options.waitTimeoutMs / 1000)} s${still ? `, and was last written ${Math.round(ageMs / 1000)} s ago: the dual-run stalled (a frozen process, or a server that does not answer) or died` : ''}: verify found no consistent cut.`, {
          hint: still
            ? 'Check the dual-run: its /healthz (stalled?) and its logs; start it again if it died (it resumes from its checkpoint), then verify.'
            : 'Check that the dual-run is running and keeping up (its logs; migrate_dualrun_lag_seconds on its /metrics); after a burst of writes, pass a longer --wait-timeout.',
          details: { revision, checkpoint: doc.revision, waitTimeoutMs: this.options.waitTimeoutMs, ...(still ? { checkpointAgeMs: ageMs } : {}) },
        });
      }
      await this.sleep(Math.min(this.options.pollMs ?? CHECKPOINT_POLL_MS, Math.max(1, deadline - clock())), this.options.signal);
      checkAborted(this.options.signal);
      const previous = doc;
      doc = await readState<CheckpointState>(this.target, key);
      // The dual-run stopped cleanly (its checkpoint says so) or is gone while it was waited for: nothing
      // more will be replicated, so compared at once, and what etcd changed since is drift. A checkpoint
      // that only stopped moving is waited for to the end: a dual-run frozen for a while (SIGSTOP, a
      // stalled server) still has etcd's changes in flight, not drift (verify_cut_timeout then, exit 4).
      const now = readCheckpointState(doc, previous, clock());
      if (!now.running && (doc?.by !== 'dualrun' || doc.stopped !== undefined)) {
        this.last = doc;
        return { ...base, cut: 'immediate', checkpoint: doc?.revision ?? null, reason: now.reason, waitedMs: clock() - began };
      }
    }
    this.last = doc;
    return { ...base, checkpointBy: doc?.by ?? null, cut: 'checkpoint', checkpoint: doc?.revision ?? null, reason: 'dualrun-running', waitedMs: clock() - began };
  }
}

/**
 * Which etcd lease is mirrored by which session (the `sessions/` records),
 * and which of those sessions still exist. Read fresh every round: the
 * dual-run re-creates lost sessions.
 */
class Sessions implements SessionView {
  private byLease = new Map<string, string>();
  private mirrors = new Set<string>();
  private readonly exists = new Map<string, boolean>();
  /** This round's list of the datacenter's sessions, read once a page asks for many. */
  private listed: Promise<Set<string>> | undefined;

  constructor(private readonly target: TargetStore, private readonly paths: StatePaths) {}

  async load(): Promise<void> {
    this.byLease = new Map();
    this.exists.clear();
    this.listed = undefined;
    const keys = await this.target.listKeys(this.paths.sessions);
    for (let i = 0; i < keys.length; i += RECHECK_CHUNK) {
      for (const entry of await this.target.readEntries(keys.slice(i, i + RECHECK_CHUNK), undefined, { listed: keys })) {
        const record = parseStateDocument<SessionRecord>(entry.key, entry.value);
        this.byLease.set(record.leaseId, record.sessionId);
      }
    }
    this.mirrors = new Set(this.byLease.values());
  }

  recorded(leaseId: string): string | undefined {
    return this.byLease.get(leaseId);
  }

  isMirror(sessionId: string): boolean {
    return this.mirrors.has(sessionId);
  }

  alive(sessionId: string): boolean {
    return this.exists.get(sessionId) ?? false;
  }

  /** Reads whether each recorded session of these leases exists, once per session per round. */
  async prefetch(expectations: Iterable<Expectation>): Promise<void> {
    const wanted = new Set<string>();
    for (const e of expectations) {
      const session = e.sessionLease === undefined ? undefined : this.byLease.get(e.sessionLease);
      if (session && !this.exists.has(session)) wanted.add(session);
    }
    if (wanted.size === 0) return;
    if (wanted.size >= SESSION_LIST_FROM) {
      // One list instead of a read each; the list may leave out sessions (ACLs), so those are read one by one.
      this.listed ??= this.target.listSessions().then((sessions) => new Set(sessions.map((s) => s.id)), (err: unknown) => {
        // A token that may read sessions only by id: read each.
        if (isMigrateError(err) && err.code === 'consul_permission_denied') return new Set<string>();
        throw err;
      });
      const listed = await this.listed;
      for (const id of wanted) {
        if (!listed.has(id)) continue;
        this.exists.set(id, true);
        wanted.delete(id);
      }
    }
    const limit = pLimit(SESSION_READS);
    await Promise.all([...wanted].map((id) => limit(async () => this.exists.set(id, (await this.target.readSession(id)) !== undefined))));
  }
}

interface CompareContext extends VerifyDeps {
  options: VerifyOptions;
  cut: VerifyCut;
  sessions: Sessions;
  keep: (run: RuleRun, finding: Finding) => void;
  /** etcd keys in the rule's range at the cut, and how many of them to read back (spread over them); counted while Consul lists its keys. */
  expected: Promise<{ keys: number; readBacks: number }>;
  warn: (message: string) => void;
}

/**
 * The keys each copy rule reads back through `GET /v1/kv/<key>`, as applications read them:
 * `--read-back n` is n in all (each key a request: 100 per rule made 25,000 of a verify of 250
 * rules), spread over the rules by their etcd keys, and at least one for each rule that has keys,
 * since its `to` decides what Consul serves; `all`, every key.
 */
export function readBackShares(readBack: number | 'all', rules: readonly { name: string; keys: number }[]): Map<string, number> {
  const total = rules.reduce((n, r) => n + r.keys, 0);
  return new Map(rules.map((r) => [r.name, readBack === 'all' ? r.keys : r.keys === 0 || readBack <= 0 ? 0 : Math.max(1, Math.round((readBack * r.keys) / total))]));
}

/** Round 1 for one rule: the streaming comparison of the module comment. Returns the number of keys compared. */
async function compareRule(run: RuleRun, ctx: CompareContext): Promise<number> {
  const { rule, stats } = run;
  const { source, target, options, mapping } = ctx;
  // The first etcd pages are read while Consul lists its keys; only the rule's own keys (not those of rules nested in it).
  const pages = readAhead(readRanges(source, ruleRanges(mapping, rule), { revision: ctx.cut.revision, pageKeys: options.pageKeys, signal: options.signal }), 2);
  const first = pages.next();
  first.catch(() => undefined);
  let listed: ListedKeys | undefined;
  const outcomes: Promise<Finding[]>[] = [];
  const settle = async (outcome: Promise<Finding[]>) => {
    for (const finding of await outcome) ctx.keep(run, finding);
  };
  try {
    listed = new ListedKeys(await target.listKeys(rule.to, options.signal));
    stats.targetKeys = listed.size;
    const { keys: expectedKeys, readBacks: readBackMax } = await ctx.expected;
    const readBackEvery = readBackMax <= 0 ? Infinity : Math.max(1, Math.floor(expectedKeys / readBackMax));
    let routed = 0;
    let keysDone = 0;
    for (let next = await first; !next.done; next = await pages.next()) {
      const page = next.value;
      checkAborted(options.signal);
      const split = splitPage(mapping, rule, page.entries, listed);
      stats.sourceKeys += split.expectations.length + sum(Object.values(split.unmappable) as number[]);
      stats.compared += split.expectations.length;
      stats.leaseSkipped += split.leaseSkipped;
      addCounts(stats.unmappable, split.unmappable);
      const readBack = new Set<string>();
      for (const e of split.expectations) {
        if (e.presence === 'present' && routed % readBackEvery === 0 && stats.readBack.checked + readBack.size < readBackMax) readBack.add(e.target);
        routed++;
      }
      const outcome = comparePage(run, split, listed.keys, readBack, ctx);
      // Handled when its turn comes; until then a failure must not count as unhandled.
      outcome.catch(() => undefined);
      outcomes.push(outcome);
      if (outcomes.length >= PAGES_IN_FLIGHT) await settle(outcomes.shift()!);
      keysDone += page.entries.length;
      options.onProgress?.({ type: 'progress', rule: rule.name, keysDone });
    }
  } finally {
    // Closes the etcd read when the loop stopped early (an error, an interrupt); a no-op after the last page.
    await pages.return(undefined);
  }
  while (outcomes.length > 0) await settle(outcomes.shift()!);

  // Left in the key list: Consul keys no etcd key of this rule put there.
  const extras = listed.remaining;
  const compareChunk = async (chunk: string[]) => {
    checkAborted(options.signal);
    const entries = new Map((await target.readEntries(chunk, options.signal, { listed: listed!.keys })).map((e) => [e.key, e]));
    for (const key of chunk) {
      const finding = compareKey({ rule: rule.name, target: key, expectation: undefined, consul: entries.get(key), sessions: ctx.sessions, hash: options.hasher, mapping });
      if (finding) ctx.keep(run, finding);
    }
  };
  let chunk: string[] = [];
  for (const key of listed.leftovers()) {
    chunk.push(key);
    if (chunk.length >= RECHECK_CHUNK) {
      await compareChunk(chunk);
      chunk = [];
    }
  }
  if (chunk.length > 0) await compareChunk(chunk);
  listed = undefined;

  // Keys with a leading "/" sit outside `to` and outside what ?keys can list under it; only a txn reaches them.
  let stranded = 0;
  if (target.readTree) {
    try {
      for (const entry of await target.readTree(`/${rule.to}`, options.signal)) {
        stranded++;
        const finding = compareKey({ rule: rule.name, target: entry.key, expectation: undefined, consul: entry, sessions: ctx.sessions, hash: options.hasher, mapping });
        if (finding) ctx.keep(run, finding);
      }
    } catch (err) {
      // Newer releases refuse a leading "/" even in a read txn; a token may lack read there: say so, compare the rest.
      if (!(err instanceof TxnFailedError || (err instanceof ConsulResponseError && (err.status === 400 || err.status === 403)))) throw err;
      ctx.warn(`rule ${rule.name}: Consul refused to list keys under "/${rule.to}" through a txn (${err.message}); keys with a leading "/" were not looked for`);
    }
  }
  return stats.compared + extras + stranded;
}

/** Reads one page's Consul side (values, sessions, read-backs) and compares it. */
async function comparePage(run: RuleRun, split: PageSplit, listed: readonly string[], readBack: Set<string>, ctx: CompareContext): Promise<Finding[]> {
  const { target, options, mapping } = ctx;
  const { expectations, toRead } = split;
  const entries = toRead.length > 0 ? await target.readEntries(toRead, options.signal, { listed, valueBytes: split.toReadBytes }) : [];
  const consul = alignEntries(expectations, entries);
  await ctx.sessions.prefetch(expectations);
  const readBacks = await readBackKeys(target, expectations.filter((e, i) => consul[i] && readBack.has(e.target)).map((e) => e.target));
  run.stats.readBack.checked += readBacks.size;
  const findings: Finding[] = [];
  for (let i = 0; i < expectations.length; i++) {
    const expectation = expectations[i]!;
    const back = readBacks.get(expectation.target);
    if (back && !back.ok) run.stats.readBack.failed++;
    const finding = compareKey({ rule: run.rule.name, target: expectation.target, expectation, consul: consul[i], sessions: ctx.sessions, hash: options.hasher, mapping, readBack: back, owner: run.stats.owner });
    if (finding) findings.push(finding);
    else if (run.stats.owner === 'consul' && consul[i]?.session && !ctx.sessions.isMirror(consul[i]!.session!)) {
      const locks = run.stats.appLocks;
      // The etcd keys: where the operator acts on them after a rollback.
      if (locks.examples.length < 3) locks.examples.push(formatKey(expectation.source.key));
      locks.keys++;
    }
  }
  return findings;
}

/** Reads keys back through `GET /v1/kv/<key>`, the way applications read them. */
async function readBackKeys(target: TargetStore, keys: string[]): Promise<Map<string, ReadBack>> {
  const out = new Map<string, ReadBack>();
  if (keys.length === 0) return out;
  const limit = pLimit(READ_BACKS);
  await Promise.all(keys.map((key) => limit(async () => out.set(key, await readBackKey(target, key)))));
  return out;
}

async function readBackKey(target: TargetStore, key: string): Promise<ReadBack> {
  try {
    const entry = await target.readKey(key);
    if (!entry) return { ok: false, detail: 'HTTP 404: Consul answers that no such key exists, though a txn read finds it' };
    if (entry.key !== key) return { ok: false, detail: `Consul answers with another key, ${formatKey(entry.key)}` };
    return { ok: true };
  } catch (err) {
    // Redirects (unclean paths), 1.21.5's 500 "invalid key name", and 400 (non-printable) refuse the key itself.
    if (err instanceof ConsulResponseError && (err.code === 'consul_key_not_servable' || err.status === 400)) {
      return { ok: false, detail: `HTTP ${err.status}${err.responseBody ? `: ${err.responseBody.slice(0, 200)}` : ''}` };
    }
    throw err;
  }
}

/**
 * A later round for one rule: reads the differing keys again (Consul in
 * chunks, then etcd, point reads) and keeps what still differs, with the
 * digests of this round.
 *
 * Writes in flight: the round's cut says Consul holds at least everything up
 * to etcd revision R, but a running dual-run goes on applying while Consul is
 * read, so Consul may show a later version of a key that changes all the time.
 * The checkpoint read after the Consul read (C) bounds what Consul can show:
 * a key matches when Consul equals its etcd state at R, at C, or at any
 * version in between (found by walking back its `mod_revision`s). Drift
 * matches none of them. A rule Consul owns (cut over) is the other way round:
 * etcd follows Consul through the reverse mirror, so Consul's value is looked
 * for in etcd up to etcd's revision after the read.
 */
async function recheck(run: RuleRun, ctx: VerifyDeps & { options: VerifyOptions; revision: number; sessions: Sessions; appliedUpTo: () => Promise<number> }): Promise<Finding[]> {
  const { source, target, options, mapping } = ctx;
  const still: Finding[] = [];
  const limit = pLimit(POINT_READS);
  const mirrored = run.stats.owner === 'consul';
  for (let i = 0; i < run.findings.length; i += RECHECK_CHUNK) {
    checkAborted(options.signal);
    const chunk = run.findings.slice(i, i + RECHECK_CHUNK);
    const consul = new Map((await target.readEntries(chunk.map((f) => f.target), options.signal)).map((e) => [e.key, e]));
    const readBacks = await readBackKeys(target, chunk.filter((f) => f.readBack && consul.has(f.target)).map((f) => f.target));
    /** The findings of `pending` that match no etcd state from the cut up to `upTo`. */
    const differing = async (pending: Finding[], upTo: number): Promise<Finding[]> => {
      const states = await Promise.all(pending.map((f) => (f.source ? limit(() => etcdStates(source, f.source!, ctx.revision, upTo)) : Promise.resolve([undefined]))));
      const candidates = pending.map((f, j) => states[j]!.map((entry) => {
        if (!entry) return undefined;
        const route = routeForVerify(mapping, run.rule, entry);
        return route.kind === 'expect' && route.expectation.target === f.target ? route.expectation : undefined;
      }));
      await ctx.sessions.prefetch(candidates.flat().filter((e): e is Expectation => e !== undefined));
      return pending.flatMap((f, j) => {
        const compare = (expectation: Expectation | undefined) => compareKey({ rule: run.rule.name, target: f.target, expectation, consul: consul.get(f.target), sessions: ctx.sessions, hash: options.hasher, mapping, readBack: readBacks.get(f.target), owner: run.stats.owner });
        const findings = candidates[j]!.map(compare);
        // The newest etcd state is the one reported when nothing matches.
        return findings.every((finding) => finding !== undefined) ? [findings[0]!] : [];
      });
    };
    if (!mirrored) {
      still.push(...(await differing(chunk, Math.max(ctx.revision, await ctx.appliedUpTo()))));
      continue;
    }
    // Consul owns the rule and etcd is the mirror: Consul's value, read first, reaches etcd after it, once the
    // reverse mirror applies it. It matches when etcd has it at any version from the cut to etcd's revision now;
    // one not there yet is looked for again a few times, a moment apart (a key an application writes all the
    // time in Consul is always a little ahead of etcd).
    let pending = chunk;
    for (let wait = 0; pending.length > 0; wait++) {
      pending = await differing(pending, (await source.status()).revision);
      if (wait === MIRROR_WAITS) break;
      if (pending.length > 0) await (options.sleep ?? defaultSleep)(MIRROR_WAIT_MS, options.signal);
    }
    still.push(...pending);
  }
  return still;
}

/** Times a re-check looks again in etcd for Consul's value of a cut-over rule, {@link MIRROR_WAIT_MS} apart. */
const MIRROR_WAITS = 4;
const MIRROR_WAIT_MS = 250;

/** Versions of a key walked back per re-check, at most (a key rewritten faster than that within one read is reported). */
const IN_FLIGHT_VERSIONS = 32;

/**
 * The states of one etcd key from revision `upTo` back to `from`, newest
 * first: its value at `upTo`, then each earlier version still at or after
 * `from` (undefined where the key did not exist), and its state at `from`.
 */
async function etcdStates(source: SourceReader, key: Buffer, from: number, upTo: number): Promise<(SourceEntry | undefined)[]> {
  const states: (SourceEntry | undefined)[] = [];
  let entry = await readOne(source, key, upTo);
  states.push(entry);
  for (let step = 0; entry && entry.modRevision > from && step < IN_FLIGHT_VERSIONS; step++) {
    entry = await readOne(source, key, entry.modRevision - 1);
    states.push(entry);
  }
  if (upTo > from && (!entry || entry.modRevision > from)) states.push(await readOne(source, key, from));
  return states;
}

/** One etcd key at a revision, or undefined. */
async function readOne(source: SourceReader, key: Buffer, revision: number): Promise<SourceEntry | undefined> {
  for await (const page of source.readPages({ start: key, end: Buffer.concat([key, Buffer.from([0])]) }, { revision, pageKeys: 1 })) {
    return page.entries.find((e) => e.key.equals(key));
  }
  return undefined;
}

/** The migration's service instances in the catalog, read once per round, when a service rule first asks. */
function catalogOf(target: TargetStore, migrationId: string, signal: AbortSignal): () => Promise<ServiceInstance[]> {
  let read: Promise<ServiceInstance[]> | undefined;
  return () => (read ??= target.listServiceInstances(migrationId, 'catalog', signal));
}

interface ServiceContext extends VerifyDeps {
  options: VerifyOptions;
  /** The etcd revision of the round's cut. */
  revision: number;
  catalog: () => Promise<ServiceInstance[]>;
}

/** Round 1 for one service rule: the instances its keys make at the cut against its catalog instances. Returns the number compared. */
async function compareServiceRule(run: RuleRun, ctx: ServiceContext & { keep: (run: RuleRun, finding: Finding) => void }): Promise<number> {
  const { rule, stats } = run;
  const { source, options } = ctx;
  const desired = await desiredInstances(ctx.mapping, rule, source, ctx.revision, ctx.config.id, { pageKeys: options.pageKeys, signal: options.signal });
  stats.sourceKeys = desired.sourceKeys;
  stats.compared = desired.registrations.size;
  for (const { problem } of desired.problems) stats.unmappable[problem] = (stats.unmappable[problem] ?? 0) + 1;
  const instances = (await ctx.catalog()).filter((i) => i.meta[META_RULE] === rule.name);
  stats.targetKeys = instances.length;
  const leaseAlive = await aliveLeases(source, criticalLeases(desired.registrations, instances));
  const { findings, extras } = compareInstances({ rule: rule.name, desired: desired.registrations, instances, leaseAlive, hash: options.hasher });
  for (const finding of findings) ctx.keep(run, finding);
  options.onProgress?.({ type: 'progress', rule: rule.name, keysDone: desired.sourceKeys });
  return stats.compared + extras;
}

/**
 * A later round for one service rule: the whole rule read again on both
 * sides, keeping the instances that differed and still do. As for keys
 * (see {@link recheck}), a running dual-run may have registered a later etcd
 * state by the time the catalog is read: an instance matches when it agrees
 * with etcd at the round's cut or at the checkpoint read after the catalog.
 */
async function recheckServices(run: RuleRun, ctx: ServiceContext & { appliedUpTo: () => Promise<number> }): Promise<Finding[]> {
  const { rule } = run;
  const { source, options } = ctx;
  const pending = new Set(run.findings.map((f) => f.target));
  const instances = (await ctx.catalog()).filter((i) => i.meta[META_RULE] === rule.name);
  const upTo = Math.max(ctx.revision, await ctx.appliedUpTo());
  const outcomes: Map<string, Finding>[] = [];
  for (const revision of upTo > ctx.revision ? [upTo, ctx.revision] : [ctx.revision]) {
    checkAborted(options.signal);
    const desired = await desiredInstances(ctx.mapping, rule, source, revision, ctx.config.id, { pageKeys: options.pageKeys, signal: options.signal });
    const leaseAlive = await aliveLeases(source, criticalLeases(desired.registrations, instances));
    const { findings } = compareInstances({ rule: rule.name, desired: desired.registrations, instances, leaseAlive, hash: options.hasher });
    outcomes.push(new Map(findings.filter((f) => pending.has(f.target)).map((f) => [f.target, f])));
  }
  // The newest etcd state is the one reported when none matches.
  return [...outcomes[0]!.values()].filter((f) => outcomes.every((o) => o.has(f.target)));
}

/** Which of these etcd leases are alive now (read one by one: only leases of instances whose check is critical). */
async function aliveLeases(source: SourceReader, leases: Set<string>): Promise<(lease: string) => boolean> {
  const alive = new Set<string>();
  const limit = pLimit(POINT_READS);
  await Promise.all([...leases].map((id) => limit(async () => {
    if ((await source.readLease(id)).ttl > 0) alive.add(id);
  })));
  return (lease) => alive.has(lease);
}
