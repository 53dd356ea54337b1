import { hostname, userInfo } from 'node:os';
import type { CheckpointState, CopyState } from '../copy/copy.js';
import { RefusedError } from '../errors.js';
import { mappingHash, parseStateDocument, readState, type StateMeta, type StatePaths } from '../state/state.js';
import { TxnFailedError } from '../stores/consul-http.js';
import type { TargetStore, TxnOp } from '../stores/types.js';
import type { VerifyLastState } from '../verify/verify.js';
import type { Mapping } from '../mapping/mapping.js';
import type { MigrationConfig } from '../config/load.js';
import { currentOwner, cutOverMappingChanges, emptyTrips, ownerOf, ownersKey, tripsKey, tripsPrefix, withOwnershipChange, withTransition, withWritesPaused, type OwnersDoc, type WritesPause, type PhaseHistoryEntry, type RulePhase, type RulePhaseDoc, type TripsDoc } from './phase.js';

/** The state documents the cutover stage reads, with the Consul indexes its writes check against. */
export interface CutoverState {
  copy: CopyState | undefined;
  checkpoint: CheckpointState | undefined;
  verify: VerifyLastState | undefined;
  docs: Map<string, { doc: RulePhaseDoc; index: number }>;
  owners: { doc: OwnersDoc | undefined; index: number };
  trips: Map<string, { doc: TripsDoc; index: number }>;
}

export async function readCutoverState(target: TargetStore, paths: StatePaths): Promise<CutoverState> {
  const [copy, checkpoint, verify, { owners, docs }] = await Promise.all([
    readState<CopyState>(target, paths.copy),
    readState<CheckpointState>(target, paths.checkpoint()),
    readState<VerifyLastState>(target, paths.verifyLast),
    readOwnership(target, paths),
  ]);
  const trips = new Map<string, { doc: TripsDoc; index: number }>();
  const tripKeys = await target.listKeys(tripsPrefix(paths));
  for (const entry of await target.readEntries(tripKeys, undefined, { listed: tripKeys })) {
    const doc = parseStateDocument<TripsDoc>(entry.key, entry.value);
    trips.set(doc.rule, { doc, index: entry.modifyIndex });
  }
  return {
    copy,
    checkpoint,
    verify,
    docs,
    owners,
    trips,
  };
}

/**
 * The owners document and every rule's phase document, read in one txn: a cutover, rollback or finalize
 * writes them together, so they agree on who owns each rule unless the state was edited by hand. The dual-run
 * follows the owners document, so one that says etcd owns a rule its rule document says Consul owns would have
 * it replicate etcd over what applications write to Consul (and the reverse). An owners document that is
 * missing while rule documents say Consul owns a rule (deleted by hand) is rebuilt from them, in memory
 * (`rebuilt`; index 0, so the next transition creates it); so is a rule document that is missing while the
 * owners document says Consul owns the rule (`rebuiltRules`): taken as missing, the rule would be etcd's
 * again, and a copy would write etcd's stale values over what applications write to Consul. One that
 * disagrees with a rule document is refused (state_inconsistent, exit 4).
 */
export async function readOwnership(target: Pick<TargetStore, 'listKeys' | 'readEntries'>, paths: StatePaths): Promise<{ owners: { doc: OwnersDoc | undefined; index: number }; docs: Map<string, { doc: RulePhaseDoc; index: number }>; rebuilt: boolean; rebuiltRules: string[] }> {
  const key = ownersKey(paths);
  const ruleKeys = await target.listKeys(paths.rule(''));
  const docs = new Map<string, { doc: RulePhaseDoc; index: number }>();
  let owners: { doc: OwnersDoc | undefined; index: number } = { doc: undefined, index: 0 };
  for (const entry of await target.readEntries([key, ...ruleKeys])) {
    if (entry.key === key) {
      owners = { doc: parseStateDocument<OwnersDoc>(key, entry.value), index: entry.modifyIndex };
      continue;
    }
    const doc = parseStateDocument<RulePhaseDoc>(entry.key, entry.value);
    docs.set(doc.rule, { doc, index: entry.modifyIndex });
  }
  const rebuiltRules: string[] = [];
  for (const [rule, owned] of Object.entries(owners.doc?.rules ?? {})) {
    if (docs.has(rule) || ownerOf(owned.phase) !== 'consul') continue;
    docs.set(rule, { doc: ruleDocFromOwners(rule, owned), index: 0 });
    rebuiltRules.push(rule);
  }
  const disagree = [...docs.values()].map((d) => d.doc).filter((doc) => ownerOf(doc.phase) !== currentOwner(owners.doc, doc.rule));
  if (disagree.length === 0) return { owners, docs, rebuilt: false, rebuiltRules };
  if (!owners.doc) return { owners: { doc: ownersFromRuleDocs([...docs.values()].map((d) => d.doc)), index: 0 }, docs, rebuilt: true, rebuiltRules };
  const said = disagree.map((doc) => `rule ${doc.rule}: ${paths.rule(doc.rule)} says ${doc.phase} (owner ${ownerOf(doc.phase)}), ${key} says ${owners.doc?.rules[doc.rule]?.phase ?? 'nothing'} (owner ${currentOwner(owners.doc, doc.rule)})`);
  throw new RefusedError('state_inconsistent', `The migration's state disagrees with itself on who owns ${disagree.length === 1 ? 'a rule' : 'rules'}: ${said.join('; ')}. A cutover, rollback or finalize writes both documents together: one was changed by hand. Nothing was written.`, {
    hint: `If the rule documents are right (\`consul kv get -recurse ${paths.rule('')}\` shows them; their history says how each rule moved), delete ${key}: it is rebuilt from them. Otherwise put back the rule document that was changed (from a Consul snapshot).`,
  });
}

/** The owners document the rule documents' transitions (cutover, rollback, finalize) make, in the order they were made. */
export function ownersFromRuleDocs(docs: readonly RulePhaseDoc[]): OwnersDoc {
  // A move is an entry whose phase differs from the one before it (an acknowledgment of trips repeats the phase).
  const moves = docs.flatMap((doc) => doc.history.filter((h, i) => MOVES.includes(h.phase) && h.phase !== doc.history[i - 1]?.phase).map((h) => ({ rule: doc.rule, entry: h })));
  moves.sort((a, b) => Date.parse(a.entry.at) - Date.parse(b.entry.at));
  let owners: OwnersDoc = { schemaVersion: 1, updated: new Date(0).toISOString(), rules: {} };
  for (const { rule, entry } of moves) owners = withOwnershipChange(owners, rule, entry.phase, entry.evidence?.etcdRevision ?? 0, entry.at);
  return owners;
}

/** The note of a rule document's history rebuilt from the owners document. */
export const REBUILT_NOTE = 'rebuilt from the owners document: the rule document was missing';

/** A rule's phase document as the owners document's changes of it say (its transitions' other evidence is gone). */
function ruleDocFromOwners(rule: string, owned: OwnersDoc['rules'][string]): RulePhaseDoc {
  const history = owned.changes.map((change) => ({ phase: change.phase, at: change.at, by: 'migrate', evidence: { etcdRevision: change.revision, note: REBUILT_NOTE } }));
  return { schemaVersion: 1, rule, phase: owned.phase, owner: ownerOf(owned.phase), updated: history.at(-1)?.at ?? new Date().toISOString(), history };
}

/** The phases a transition moves a rule to (the others are derived, and leave etcd the owner). */
const MOVES: readonly RulePhase[] = ['cutover', 'rolledback', 'finalized'];

/** Every rule's phase document (`rules/<name>`), by rule, with its Consul index, as {@link readOwnership} reads them. */
export async function readRuleDocs(target: Pick<TargetStore, 'listKeys' | 'readEntries'>, paths: StatePaths): Promise<Map<string, { doc: RulePhaseDoc; index: number }>> {
  return (await readOwnership(target, paths)).docs;
}

/**
 * `--accept-mapping-change` (copy, dualrun) of a mapping that changes what
 * Consul owns: refused (mapping_changed_cut_over, exit 4; see
 * {@link cutOverMappingChanges}) before anything is written. `where` names
 * the datacenter when the rules write to several.
 */
export async function refuseOwnedMappingChanges(target: TargetStore, paths: StatePaths, config: MigrationConfig, mapping: Mapping, where = ''): Promise<void> {
  const [docs, meta] = await Promise.all([readRuleDocs(target, paths), readState<StateMeta>(target, paths.meta)]);
  // meta of an earlier release lists no rules: they are the current ones only if the mapping is the recorded one.
  const recorded = meta?.rules ?? (!meta || meta.mappingHash === mappingHash(config) ? mapping.rules : null);
  const changed = cutOverMappingChanges([...docs.values()].map((d) => d.doc), mapping.rules, recorded);
  if (changed.length === 0) return;
  throw new RefusedError('mapping_changed_cut_over', `migration.yaml changes what Consul owns: ${changed.join('; ')}${where}. Consul owns that data under the routing it was cut over with: for a moved rule the reverse mirror would find the new prefix empty and delete the rule's keys from etcd, other keys: or leases: would map Consul's keys back to other etcd keys, a dropped rule's writes in Consul would no longer reach etcd, and another rule over the data would overwrite what applications wrote in Consul with etcd's values. Nothing was written.`, {
    hint: OWNED_MAPPING_HINT,
  });
}

/** What to do about a mapping change that changes what Consul owns (the refusal's hint, and plan's blocker's). */
export const OWNED_MAPPING_HINT = 'Put the rules back as they were cut over; to change a cut-over rule, roll it back first (`migrate rollback --rule <name>`), then change the mapping (and copy and cut over again). A finalized rule stays as it is, or is removed from migration.yaml.';

/** `user@host` for the history. */
export function operator(env: NodeJS.ProcessEnv = process.env): string {
  let user = env.USER ?? env.LOGNAME;
  if (!user) {
    try {
      user = userInfo().username;
    } catch {
      user = 'unknown';
    }
  }
  return `${user}@${hostname()}`;
}

export interface Transition {
  rule: string;
  /** The phase before (derived when no document exists). */
  from: RulePhase;
  to: RulePhase;
  entry: Omit<PhaseHistoryEntry, 'phase'>;
  /** The etcd revision read just before the write: etcd events after it belong to the new owner. */
  etcdRevision: number;
}

/**
 * Writes transitions of one or more rules in one txn: each rule document and
 * the owners fence by `cas` against the indexes read in `state`, and, when
 * trips are acknowledged, their documents deleted by `delete-cas`. Another
 * operator (or a dual-run recording a trip) changing any of them in between
 * rolls the whole txn back: refused (exit 4), nothing written.
 */
export async function writeTransitions(target: TargetStore, paths: StatePaths, state: CutoverState, transitions: Transition[], acknowledgeTrips: string[] = []): Promise<Map<string, RulePhaseDoc>> {
  const written = new Map<string, RulePhaseDoc>();
  let owners = state.owners.doc;
  const ops: TxnOp[] = [];
  for (const t of transitions) {
    const current = state.docs.get(t.rule);
    const doc = withTransition(current?.doc, t.rule, t.from, t.to, t.entry);
    owners = withOwnershipChange(owners, t.rule, t.to, t.etcdRevision, t.entry.at);
    ops.push({ verb: 'cas', key: paths.rule(t.rule), value: Buffer.from(JSON.stringify(doc)), index: current?.index ?? 0 });
    written.set(t.rule, doc);
  }
  ops.push({ verb: 'cas', key: ownersKey(paths), value: Buffer.from(JSON.stringify(owners)), index: state.owners.index });
  for (const rule of acknowledgeTrips) {
    const trips = state.trips.get(rule);
    if (trips) ops.push({ verb: 'delete-cas', key: tripsKey(paths, rule), index: trips.index });
  }
  try {
    await target.applyTxn(ops);
  } catch (err) {
    if (!(err instanceof TxnFailedError)) throw err;
    // Which check failed: a rule's own document, or only the owners document, which every rule's transition rewrites.
    const failed = new Set(err.errors.map((e) => e.opIndex));
    const rules = transitions.filter((_, i) => failed.has(i));
    const what = rules.length > 0 || !failed.has(transitions.length)
      ? `The phase of ${(rules.length > 0 ? rules : transitions).map((t) => `rule ${t.rule}`).join(', ')} changed while this command checked it (another operator, or the dual-run recorded a trip)`
      : 'The owners document (which store owns each rule) changed while this command checked it: another cutover, rollback or finalize, of this rule or another, ran at the same moment';
    throw new RefusedError('phase_contended', `${what}; nothing was written.`, {
      hint: 'Run `migrate status` to see the current phase, then run the command again.',
    });
  }
  return written;
}

/**
 * Clears the recorded trips of rules that stay where they are (cut over, on
 * Consul): their documents deleted by `delete-cas`, and the acknowledgement
 * appended to each rule's history, the phase unchanged, in one txn.
 */
export async function acknowledgeTrips(target: TargetStore, paths: StatePaths, state: CutoverState, rules: { rule: string; trips: number }[], entry: Omit<PhaseHistoryEntry, 'phase' | 'evidence'>): Promise<Map<string, RulePhaseDoc>> {
  const written = new Map<string, RulePhaseDoc>();
  const ops: TxnOp[] = [];
  for (const { rule, trips } of rules) {
    const current = state.docs.get(rule)!;
    const doc: RulePhaseDoc = { ...current.doc, updated: entry.at, history: [...current.doc.history, { phase: current.doc.phase, ...entry, evidence: { acknowledgedTrips: trips } }] };
    ops.push({ verb: 'cas', key: paths.rule(rule), value: Buffer.from(JSON.stringify(doc)), index: current.index });
    const recorded = state.trips.get(rule);
    if (recorded) ops.push({ verb: 'delete-cas', key: tripsKey(paths, rule), index: recorded.index });
    written.set(rule, doc);
  }
  try {
    await target.applyTxn(ops);
  } catch (err) {
    if (!(err instanceof TxnFailedError)) throw err;
    throw new RefusedError('phase_contended', `The phase or trips of ${rules.map((r) => `rule ${r.rule}`).join(', ')} changed while this command checked them (another operator, or the dual-run recorded a trip); nothing was written.`, {
      hint: 'Run `migrate status` to see the current phase and trips, then run the command again.',
    });
  }
  return written;
}

/**
 * Pauses (or resumes, with `pause` undefined) applications' writes to the
 * rules: their phase documents get `writesPaused`, by check-and-set in one
 * txn. A concurrent change refuses (exit 4) with nothing written.
 */
export async function setWritesPaused(target: TargetStore, paths: StatePaths, state: CutoverState, rules: { rule: string; derived: RulePhase; created?: boolean }[], pause: WritesPause | undefined): Promise<void> {
  const ops: TxnOp[] = rules.map(({ rule, derived, created }) => {
    const current = state.docs.get(rule);
    // A document the pause created goes with it: a refused command leaves the state as it found it.
    if (!pause && created && current) return { verb: 'delete-cas', key: paths.rule(rule), index: current.index };
    return { verb: 'cas', key: paths.rule(rule), value: Buffer.from(JSON.stringify(withWritesPaused(current?.doc, rule, derived, pause))), index: current?.index ?? 0 };
  });
  try {
    await target.applyTxn(ops);
  } catch (err) {
    if (!(err instanceof TxnFailedError)) throw err;
    throw new RefusedError('phase_contended', `The phase of ${rules.map((r) => `rule ${r.rule}`).join(', ')} changed while this command checked it (another operator); nothing was written.`, {
      hint: 'Run `migrate status` to see the current phase, then run the command again.',
    });
  }
}

/**
 * Adds late writes or a guard trip to a rule's trips document (read, modify,
 * check-and-set; retried when the document changed in between).
 */
export async function recordTrip(target: TargetStore, paths: StatePaths, rule: string, change: (doc: TripsDoc) => void): Promise<void> {
  const key = tripsKey(paths, rule);
  for (let attempt = 0; attempt < 5; attempt++) {
    const entry = await target.readKey(key);
    const doc = entry ? parseStateDocument<TripsDoc>(key, entry.value) : emptyTrips(rule);
    change(doc);
    try {
      await target.applyTxn([{ verb: 'cas', key, value: Buffer.from(JSON.stringify(doc)), index: entry?.modifyIndex ?? 0 }]);
      return;
    } catch (err) {
      if (!(err instanceof TxnFailedError)) throw err;
    }
  }
}
