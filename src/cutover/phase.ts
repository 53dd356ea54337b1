import type { CheckpointState, CopyState } from '../copy/copy.js';
import type { StatePaths } from '../state/state.js';
import { readCheckpointState } from '../verify/cut.js';
import type { VerifyLastState } from '../verify/verify.js';

/**
 * Per-rule phases of a migration (DESIGN §4 `rules/<name>`), pure.
 *
 * planned → copied → mirroring → verified → cutover → finalized, and
 * rolledback (from cutover). The first four are derived from the state the
 * other stages already leave (the copy document, the dual-run's checkpoint,
 * `verify/last`) as long as no transition was written; the transitions that
 * move ownership (cutover, rollback, finalize) are written, with a
 * check-and-set, to `rules/<name>` and to the `owners` fence document the
 * dual-run follows.
 */

export type RulePhase = 'planned' | 'copied' | 'mirroring' | 'verified' | 'cutover' | 'finalized' | 'rolledback';
export type RuleOwner = 'etcd' | 'consul';

export const RULE_PHASES: readonly RulePhase[] = ['planned', 'copied', 'mirroring', 'verified', 'cutover', 'finalized', 'rolledback'];

/** What a transition carries as proof: never values. */
export interface PhaseEvidence {
  /** The verify/last summary the transition relied on. */
  verify?: { at: string; ageSeconds: number; clean: boolean; status: string; differences: number; revision: number };
  /** The dual-run checkpoint and etcd's revision when the transition was decided. */
  checkpoint?: number;
  etcdRevision?: number;
  /** The rule's Consul keys exported as the rollback point (`consul kv import` JSON). */
  rollbackFile?: string;
  rollbackKeys?: number;
  snapshotFile?: string;
  /** finalize: the etcd export and how many etcd keys were deleted. */
  etcdExportFile?: string;
  etcdDeleted?: number;
  /** Late writes or guard trips the operator acknowledged with this transition. */
  acknowledgedTrips?: number;
  /** cutover: the rule's prefixes and key and lease policies then; Consul's data of the rule is under that `to` (see {@link cutOverMappingChanges}). */
  mapping?: RuleRouting;
  note?: string;
}

export interface PhaseHistoryEntry {
  phase: RulePhase;
  at: string;
  /** user@host */
  by: string;
  evidence?: PhaseEvidence;
}

/**
 * `rules/<name>`: the contract applications (and the Node client) read.
 * `owner` is the store applications must write to.
 */
export interface RulePhaseDoc {
  schemaVersion: 1;
  rule: string;
  phase: RulePhase;
  owner: RuleOwner;
  updated: string;
  history: PhaseHistoryEntry[];
  /**
   * Set by `cutover` and `rollback` while they move ownership: applications
   * (the Node client) hold their writes to the rule until the document
   * changes again, so no write is in flight to the old owner at the flip.
   * Reads go on. Cleared by the flip itself, or by the command when it stops.
   */
  writesPaused?: WritesPause;
}

/** One ownership change, at the etcd revision read just before it was written. */
export interface OwnershipChange {
  /** etcd events after this revision belong to `owner`. */
  revision: number;
  owner: RuleOwner;
  phase: RulePhase;
  at: string;
}

/**
 * `owners`: one document that every ownership change rewrites in the same
 * txn as the rule's phase document. The dual-run fences each of its apply
 * txns with a `check-index` on it, so no etcd → Consul write planned under an
 * old owner can land after a cutover.
 */
export interface OwnersDoc {
  schemaVersion: 1;
  updated: string;
  rules: Record<string, { phase: RulePhase; changes: OwnershipChange[] }>;
}

/** Ownership changes kept per rule (the dual-run replays at most from its checkpoint). */
const CHANGES_KEPT = 50;

export function ownersKey(paths: StatePaths): string {
  return `${paths.root}owners`;
}

export function tripsPrefix(paths: StatePaths): string {
  return `${paths.root}trips/`;
}

export function tripsKey(paths: StatePaths, rule: string): string {
  return `${tripsPrefix(paths)}${rule}`;
}

export function ownerOf(phase: RulePhase): RuleOwner {
  return phase === 'cutover' || phase === 'finalized' ? 'consul' : 'etcd';
}

/** Who owned `rule` at etcd revision `revision`: the last change strictly before it, else etcd. */
/** Who owns `rule` now, as the owners document says (etcd when it does not name the rule). */
export function currentOwner(owners: OwnersDoc | undefined, rule: string): RuleOwner {
  const phase = owners?.rules[rule]?.phase;
  return phase ? ownerOf(phase) : 'etcd';
}

export function ownerAt(owners: OwnersDoc | undefined, rule: string, revision: number): { owner: RuleOwner; phase: RulePhase | undefined } {
  const changes = owners?.rules[rule]?.changes ?? [];
  let current: OwnershipChange | undefined;
  for (const change of changes) if (change.revision < revision && (!current || change.revision >= current.revision)) current = change;
  return current ? { owner: current.owner, phase: current.phase } : { owner: 'etcd', phase: undefined };
}

/** The owners document after a transition of `rule` at etcd revision `revision`. */
export function withOwnershipChange(owners: OwnersDoc | undefined, rule: string, phase: RulePhase, revision: number, at: string): OwnersDoc {
  const rules = { ...(owners?.rules ?? {}) };
  const changes = [...(rules[rule]?.changes ?? []), { revision, owner: ownerOf(phase), phase, at }].slice(-CHANGES_KEPT);
  rules[rule] = { phase, changes };
  return { schemaVersion: 1, updated: at, rules };
}

export interface WritesPause {
  since: string;
  by: string;
  /** The move in progress. */
  for: 'cutover' | 'rollback';
}

/** The note of a first document's first history entry: the phase it started from was derived, not written by a transition. */
export const DERIVED_NOTE = 'derived from the copy, checkpoint and verify state';

/** The phase document with writes paused (a first document starts with the derived phase), or resumed (pure). */
export function withWritesPaused(doc: RulePhaseDoc | undefined, rule: string, derived: RulePhase, pause: WritesPause | undefined): RulePhaseDoc {
  const at = pause?.since ?? new Date().toISOString();
  const base: RulePhaseDoc = doc ?? { schemaVersion: 1, rule, phase: derived, owner: ownerOf(derived), updated: at, history: [{ phase: derived, at, by: pause?.by ?? 'migrate', evidence: { note: DERIVED_NOTE } }] };
  const { writesPaused: _old, ...rest } = base;
  return pause ? { ...rest, writesPaused: pause } : rest;
}

/** The phase document after a transition (history appended; a first document starts with the derived phase). */
export function withTransition(doc: RulePhaseDoc | undefined, rule: string, derived: RulePhase, to: RulePhase, entry: Omit<PhaseHistoryEntry, 'phase'>): RulePhaseDoc {
  const history = doc ? [...doc.history] : [{ phase: derived, at: entry.at, by: entry.by, evidence: { note: DERIVED_NOTE } }];
  history.push({ phase: to, ...entry });
  return { schemaVersion: 1, rule, phase: to, owner: ownerOf(to), updated: entry.at, history };
}

/** Trips recorded for a rule by the dual-run (late writes, delete guard) until an operator acknowledges them. */
export interface TripsDoc {
  schemaVersion: 1;
  rule: string;
  lateWrites: { count: number; firstAt?: string; lastAt?: string; lastRevision?: number; keys: string[] };
  guardTrips: { count: number; lastAt?: string; detail?: string };
}

export const TRIP_KEYS_KEPT = 50;

export function emptyTrips(rule: string): TripsDoc {
  return { schemaVersion: 1, rule, lateWrites: { count: 0, keys: [] }, guardTrips: { count: 0 } };
}

export function openTrips(doc: TripsDoc | undefined): number {
  return doc ? doc.lateWrites.count + doc.guardTrips.count : 0;
}

/** What the derivation needs from the state documents. */
export interface PhaseInputs {
  doc: RulePhaseDoc | undefined;
  copy: CopyState | undefined;
  checkpoint: CheckpointState | undefined;
  verify: VerifyLastState | undefined;
  nowMs: number;
}

/** Whether a dual-run is running, by its checkpoint heartbeat (verify's rule). */
export function dualRunRunning(checkpoint: CheckpointState | undefined, nowMs: number): boolean {
  return readCheckpointState(checkpoint, undefined, nowMs).running;
}

/** The phase of a copy rule: the written one, else derived from the other stages' state. */
export function derivePhase(rule: string, input: PhaseInputs): RulePhase {
  if (input.doc) return input.doc.phase;
  // A rule the copy did not copy (added to migration.yaml since) is not copied because the copy completed.
  const copied = Boolean(input.copy?.rules[rule]?.done || (input.copy?.completed && input.copy.rules[rule]));
  if (!copied) return 'planned';
  if (!dualRunRunning(input.checkpoint, input.nowMs)) return 'copied';
  const verified = input.verify?.rules[rule];
  // Parity, not a verify within its --allow budgets: a cutover needs parity.
  if (verified && verified.status === 'parity' && Date.parse(input.verify!.at) >= Date.parse(input.copy?.started ?? '1970-01-01')) return 'verified';
  return 'mirroring';
}

const resolveTolerated = (n: number) => `resolve the ${n} difference(s) the last verify tolerated (--allow): a cutover needs parity; then migrate verify`;

/** What the operator does next, for `status`. */
export function nextStep(rule: string, phase: RulePhase, facts: { running: boolean; verifyClean: boolean | undefined; verifyAgeMs: number | undefined; maxVerifyAgeMs: number; trips: number; guardTrips?: number; copyInterrupted?: boolean; copyRunning?: string; rebaselining?: string; dualRunCheckpoint?: boolean; tolerated?: number; mappingChanged?: boolean; etcdWentBack?: boolean }): string {
  // etcd restored from a backup: the dual-run refuses to start, whatever the rule's phase, until a copy puts the checkpoint back.
  if (facts.etcdWentBack && ownerOf(phase) === 'etcd') return 'decide which store holds the data to keep (etcd went back in time): migrate copy --delete-extraneous makes Consul match etcd, then start migrate dualrun';
  if (facts.trips > 0 && phase === 'cutover') {
    // Acknowledging clears the record; it does not carry the deletes the guard held back to etcd.
    const held = facts.guardTrips ? `; if the deletes the reverse mirror's delete guard held back are intended, restart the dual-run with --allow-mass-delete first (its first pass mirrors them to etcd)` : '';
    return `investigate ${facts.trips} trip(s) (late writes to etcd / delete guard) in the dual-run log${held}, then migrate cutover --rule ${rule} --acknowledge-trips (the rule stays cut over)`;
  }
  if (facts.trips > 0 && phase === 'finalized') return `investigate ${facts.trips} late write(s) to etcd in the dual-run log (an application still writing etcd), then migrate cutover --rule ${rule} --acknowledge-trips (the rule stays finalized)`;
  if (facts.trips > 0 && phase === 'rolledback') return `investigate ${facts.trips} trip(s) (late writes to etcd / delete guard) in the dual-run log, then acknowledge them with --acknowledge-trips`;
  switch (phase) {
    case 'planned':
      if (facts.copyRunning) return `wait for the copy running on ${facts.copyRunning} to finish, then migrate dualrun (keep it running)`;
      // The copy a dual-run makes again after a compaction or a mapping change (it holds the leader lock, not the copy lock).
      if (facts.copyInterrupted && facts.rebaselining) return `wait for the dual-run ${facts.rebaselining} to finish copying the rules again (re-baselining; its log says when), then migrate verify`;
      if (facts.copyInterrupted && facts.dualRunCheckpoint) return 'start migrate dualrun (a re-baseline stopped part way: it copies the rules again, then replicates)';
      if (facts.copyInterrupted) return 'migrate copy --resume (a copy started and has not finished)';
      // A rule added since the migration recorded its mapping: copy and dualrun refuse the change unless told to take it.
      return facts.mappingChanged ? 'review the change with migrate plan, then migrate copy --accept-mapping-change (or start migrate dualrun --accept-mapping-change: it copies the rule)' : 'migrate copy';
    case 'copied':
      return facts.mappingChanged ? 'migrate dualrun --accept-mapping-change (keep it running; review the change with migrate plan first)' : 'migrate dualrun (keep it running)';
    case 'mirroring':
      if (!facts.running) return 'start migrate dualrun, then migrate verify';
      return facts.tolerated ? resolveTolerated(facts.tolerated) : 'migrate verify';
    case 'verified':
    case 'rolledback':
      if (!facts.running) return 'start migrate dualrun';
      if (facts.tolerated) return resolveTolerated(facts.tolerated);
      if (facts.verifyClean !== true) return 'migrate verify (the last one drifted or is missing)';
      if (facts.verifyAgeMs !== undefined && facts.verifyAgeMs > facts.maxVerifyAgeMs) return `migrate cutover --rule ${rule} --verify-now (the last verify is stale)`;
      return `migrate cutover --rule ${rule}`;
    case 'cutover':
      return `switch the application's writers to Consul; then migrate finalize --rule ${rule} (or migrate rollback --rule ${rule})`;
    case 'finalized':
      return 'done';
  }
}

/** One precondition as `cutover`, `rollback` and `finalize` report it. */
export interface PreconditionCheck {
  name: string;
  ok: boolean;
  detail: string;
}

/** The verify/last summary of one rule as evidence, or undefined. */
export function verifyEvidence(verify: VerifyLastState | undefined, rule: string, nowMs: number): PhaseEvidence['verify'] | undefined {
  const r = verify?.rules[rule];
  if (!verify || !r) return undefined;
  return { at: verify.at, ageSeconds: Math.max(0, Math.round((nowMs - Date.parse(verify.at)) / 1000)), clean: r.status === 'parity', status: r.status, differences: r.differences, revision: verify.revision };
}

/** Checks the verify precondition: a clean verify of `rule`, no older than `maxAgeMs`. */
export function checkVerify(verify: VerifyLastState | undefined, rule: string, nowMs: number, maxAgeMs: number): PreconditionCheck {
  const ev = verifyEvidence(verify, rule, nowMs);
  if (!ev) return { name: 'verify', ok: false, detail: `no verify of rule ${rule} is recorded (run \`migrate verify\`, or pass --verify-now)` };
  if (ev.status === 'within-budget') return { name: 'verify', ok: false, detail: `the last verify (${formatAge(ev.ageSeconds * 1000)} ago) found ${ev.differences} difference(s) in rule ${rule}, within its --allow budget: a cutover needs parity (resolve them, then verify again, or pass --verify-now)` };
  if (!ev.clean) return { name: 'verify', ok: false, detail: `the last verify (${formatAge(ev.ageSeconds * 1000)} ago) found ${ev.differences} difference(s) in rule ${rule}` };
  const ageMs = nowMs - Date.parse(ev.at);
  if (!(ageMs <= maxAgeMs)) return { name: 'verify', ok: false, detail: `the last clean verify is ${formatAge(ageMs)} old, older than --max-verify-age ${formatAge(maxAgeMs)} (pass --verify-now to run one)` };
  // Not drift, but applications that switch to Consul will not find them there.
  const unmappable = Object.entries(verify!.rules[rule]!.unmappable ?? {}).filter(([, n]) => (n ?? 0) > 0);
  const absent = unmappable.reduce((total, [, n]) => total + n!, 0);
  const note = absent > 0 ? `; ${absent} etcd key(s) of the rule are not in Consul, by the mapping (${unmappable.map(([reason, n]) => `${reason} ${n}`).join(', ')}): applications reading Consul will not find them (\`migrate audit\` lists them)` : '';
  return { name: 'verify', ok: true, detail: `clean verify ${formatAge(ev.ageSeconds * 1000)} ago at etcd revision ${ev.revision} (${ev.status})${note}` };
}

export function formatAge(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

/** Whether Consul owns the rule's data: cut over (Consul is the owner) or finalized. */
export function ownedByConsul(doc: RulePhaseDoc): boolean {
  return doc.owner === 'consul' || doc.phase === 'finalized';
}

/** What decides where a rule's keys are in Consul and how they are held: recorded at its cutover. */
export interface RuleRouting {
  from: string;
  to: string;
  /** Absent in the history of rules cut over by earlier releases. */
  keys?: string;
  leases?: string;
}

/**
 * Rules Consul owns (cut over, or finalized) that migration.yaml now routes
 * otherwise than at their cutover, as a `--accept-mapping-change` would take it:
 * - a cut-over rule with another `from`, `to`, `keys:` or `leases:`: the
 *   reverse mirror of the new routing would find the data elsewhere (the new
 *   `to` empty: it would delete the rule's keys from etcd) or map Consul's keys
 *   back to other etcd keys; dropped, its writes in Consul no longer reach etcd;
 * - a finalized rule with another routing (a finalized rule may be dropped: its
 *   data stays in Consul, nothing replicates it);
 * - another copy rule (a renamed one) whose `to` covers an owned rule's data, or
 *   lies under it: copied from etcd, it would overwrite and delete what
 *   applications wrote in Consul;
 * - what a cut-over rule's `from` holds changed by its nested rules, against
 *   the recorded mapping (`recorded`, meta's rules): a rule added in it takes
 *   keys from the rule (the longest prefix wins), so the reverse mirror no
 *   longer writes the applications' changes of them to etcd; a rule removed
 *   from it hands the rule keys Consul does not hold under its `to`, which
 *   the reverse mirror deletes from etcd. `recorded` null: the recorded rules
 *   are not known (meta written by an earlier release), so no change of a
 *   cut-over rule's nested rules can be ruled out: refused until they are.
 * Rules cut over before the routing was recorded in the history are not known here.
 */
export function cutOverMappingChanges(docs: Iterable<RulePhaseDoc>, rules: readonly (RuleRouting & { name: string; action: string })[], recorded: readonly { name: string; from: string; to?: string; action?: string }[] | null = []): string[] {
  const changed: string[] = [];
  const described = (r: RuleRouting) => `${r.from} → ${r.to}`;
  for (const doc of docs) {
    if (!ownedByConsul(doc)) continue;
    const state = doc.phase === 'finalized' ? 'finalized' : 'cut over';
    // A history without it (a document rebuilt from the owners document after it was deleted by hand, or written by an
    // earlier release): the rule as the migration recorded it, which no accepted change can have moved while Consul owns it.
    const old = recorded?.find((r) => r.name === doc.rule && r.action === 'copy' && r.to !== undefined);
    const then = [...doc.history].reverse().find((h) => h.phase === 'cutover')?.evidence?.mapping ?? (old ? { from: old.from, to: old.to! } : undefined);
    const named = rules.find((r) => r.name === doc.rule);
    const now = named?.action === 'copy' ? named : undefined;
    if (!now) {
      if (doc.phase !== 'finalized') changed.push(`rule ${doc.rule} (cut over${then ? ` as ${described(then)}` : ''}, no longer copied here)`);
    } else if (then) {
      const differs = [
        then.from !== now.from || then.to !== now.to ? `now ${described(now)}` : '',
        then.keys !== undefined && then.keys !== now.keys ? `keys: ${then.keys}, now ${now.keys}` : '',
        then.leases !== undefined && then.leases !== now.leases ? `leases: ${then.leases}, now ${now.leases}` : '',
      ].filter(Boolean);
      if (differs.length > 0) changed.push(`rule ${doc.rule} (${state} as ${described(then)}, ${differs.join(', ')})`);
    }
    if (!then) continue;
    for (const other of rules) {
      if (other.name !== doc.rule && other.action === 'copy' && (other.to.startsWith(then.to) || then.to.startsWith(other.to))) {
        changed.push(`rule ${other.name} (its to: ${other.to} overlaps ${then.to}, where Consul owns the data of rule ${doc.rule}, ${state})`);
      }
    }
    if (doc.phase === 'finalized') continue;
    if (!recorded) {
      changed.push(`rule ${doc.rule} (cut over with ${then.from}: the migration's state, recorded by an earlier release of migrate, does not list its rules, so whether this change adds or removes a rule nested in ${then.from} cannot be checked; put migration.yaml back as the migration recorded it and run \`migrate dualrun\` once: it records the rules; then change it again)`);
      continue;
    }
    const nestedIn = (r: { name: string; from: string }) => r.name !== doc.rule && r.from !== then.from && r.from.startsWith(then.from);
    for (const added of rules.filter((r) => nestedIn(r) && !recorded.some((old) => old.from === r.from))) {
      if (takerOf(added.from, rules.filter((r) => r !== added)) === doc.rule) {
        changed.push(`rule ${added.name} (its from: ${added.from} lies in ${then.from}, which rule ${doc.rule} is cut over with: it would take those keys from its reverse mirror)`);
      }
    }
    for (const removed of recorded.filter((old) => nestedIn(old) && !rules.some((r) => r.from === old.from))) {
      if (takerOf(removed.from, rules) === doc.rule) {
        changed.push(`rule ${removed.name} (its from: ${removed.from} lay in ${then.from}, which rule ${doc.rule} is cut over with, and is gone: those keys would fall to its reverse mirror, which finds them missing in Consul and deletes them from etcd)`);
      }
    }
  }
  return changed;
}

/** The rule whose `from` is the longest prefix of `from`: the one whose keys those are. */
function takerOf(from: string, rules: readonly { name: string; from: string }[]): string | undefined {
  let taker: { name: string; from: string } | undefined;
  for (const r of rules) if (from.startsWith(r.from) && (!taker || r.from.length > taker.from.length)) taker = r;
  return taker?.name;
}
