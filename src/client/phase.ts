import { MigrateError, UsageError } from '../errors.js';
import type { RuleOwner, RulePhase as CutoverPhase, RulePhaseDoc } from '../cutover/phase.js';
import { STATE_SCHEMA_VERSION } from '../state/state.js';

/** The phases of a rule (DESIGN §1, issue 7), as `migrate cutover`, `rollback` and `finalize` write them. */
export type Phase = CutoverPhase;

/** Which store the application must use for a rule's keys. */
export type Owner = RuleOwner;

/**
 * The per-rule phase document that `migrate cutover`, `rollback` and
 * `finalize` write at `<state.prefix><id>/rules/<rule>` in Consul. The client
 * acts on `owner` only; the rest is shown in `stats()` and events.
 */
export type PhaseDocument = RulePhaseDoc;

/** Every phase, for validating documents at run time; the check below keeps it equal to the cutover's list. */
export const PHASES = ['planned', 'copied', 'mirroring', 'verified', 'cutover', 'finalized', 'rolledback'] as const satisfies readonly CutoverPhase[];
const everyPhaseListed: Exclude<CutoverPhase, (typeof PHASES)[number]> extends never ? true : never = true;
void everyPhaseListed;

/** What the client knows about one rule's phase. */
export interface RulePhase {
  rule: string;
  owner: Owner;
  /** `undefined` when there is no document yet (the rule is on etcd). */
  phase: Phase | undefined;
  updated: string | undefined;
  /** Consul's ModifyIndex of the document, 0 when there is none. */
  modifyIndex: number;
  /** `cutover` or `rollback` is moving ownership: writes wait until the document changes again. */
  writesPaused: boolean;
  /** Which of them paused the writes. */
  pausedFor?: 'cutover' | 'rollback';
  /**
   * The etcd revision a cutover flipped at (its history's evidence), when
   * recorded: etcd changes after it under the rule are no application's
   * writes to the old owner but the reverse mirror's copies of Consul's.
   */
  flipRevision?: number;
}

/** A phase document the client cannot act on; operations on the rule fail with it until it is fixed. */
export class PhaseDocumentError extends MigrateError {}

/**
 * Parses a phase document read from Consul (pure). A missing document (`raw`
 * undefined) means the rule has not been cut over: owner etcd. Refuses
 * invalid JSON, a document for another rule, an unknown phase or owner, and a
 * `schemaVersion` newer than this build understands.
 */
export function parsePhaseDocument(key: string, rule: string, raw: Buffer | undefined, modifyIndex = 0): RulePhase {
  if (raw === undefined) return { rule, owner: 'etcd', phase: undefined, updated: undefined, modifyIndex: 0, writesPaused: false };
  const corrupt = (what: string): never => {
    throw new PhaseDocumentError('client_phase_invalid', 4, `The phase document ${key} of rule "${rule}" in Consul ${what}.`, {
      hint: 'Only `migrate cutover`, `rollback` and `finalize` write it. Inspect it with `consul kv get`, then restore it (from a Consul snapshot; the owners document beside it names the rule\'s phase). Do not delete it: a rule cut over would then send applications back to etcd while Consul owns its data.',
      details: { key, rule },
    });
  };
  let doc: Partial<Record<keyof PhaseDocument, unknown>>;
  try {
    doc = JSON.parse(raw.toString('utf8')) as Partial<Record<keyof PhaseDocument, unknown>>;
  } catch {
    return corrupt('is not valid JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return corrupt('is not a JSON object');
  if (typeof doc.schemaVersion !== 'number' || !Number.isInteger(doc.schemaVersion) || doc.schemaVersion < 1) return corrupt('has no valid schemaVersion');
  if (doc.schemaVersion > STATE_SCHEMA_VERSION) {
    throw new PhaseDocumentError('client_phase_newer', 2, `The phase document ${key} of rule "${rule}" has schema version ${doc.schemaVersion}; this version of etcd-consul-migrate understands up to ${STATE_SCHEMA_VERSION}.`, {
      hint: 'A newer migrate wrote it. Upgrade the etcd-consul-migrate dependency of this application to the version the migration uses.',
      details: { key, rule, schemaVersion: doc.schemaVersion, supported: STATE_SCHEMA_VERSION },
    });
  }
  if (doc.rule !== rule) return corrupt(`names rule ${JSON.stringify(doc.rule)}`);
  if (!PHASES.includes(doc.phase as Phase)) return corrupt(`has an unknown phase ${JSON.stringify(doc.phase)} (expected one of ${PHASES.join(', ')})`);
  if (doc.owner !== 'etcd' && doc.owner !== 'consul') return corrupt(`has an unknown owner ${JSON.stringify(doc.owner)} (expected "etcd" or "consul")`);
  const last = Array.isArray(doc.history) ? (doc.history.at(-1) as { evidence?: { etcdRevision?: unknown } } | undefined) : undefined;
  const flipRevision = typeof last?.evidence?.etcdRevision === 'number' ? last.evidence.etcdRevision : undefined;
  const pausedFor = (doc.writesPaused as { for?: unknown } | null | undefined)?.for;
  return { rule, owner: doc.owner, phase: doc.phase as Phase, updated: typeof doc.updated === 'string' ? doc.updated : undefined, modifyIndex, writesPaused: doc.writesPaused !== undefined && doc.writesPaused !== null, ...(pausedFor === 'cutover' || pausedFor === 'rollback' ? { pausedFor } : {}), ...(flipRevision !== undefined ? { flipRevision } : {}) };
}

/** The rules an application names, checked against the mapping's rules (pure). */
export function checkClientRules(requested: readonly string[], known: readonly { name: string; action: string }[], file: string | undefined): string[] {
  if (requested.length === 0) {
    throw new UsageError('client_rules_missing', 'createKvClient needs the rule name(s) the application uses (option `rules`).', {
      hint: `Pass the names of the rules in ${file ?? 'migration.yaml'} that hold this application's keys, e.g. rules: ['${known[0]?.name ?? 'app-config'}'].`,
    });
  }
  const names = new Set(known.map((rule) => rule.name));
  const unknown = requested.filter((name) => !names.has(name));
  if (unknown.length > 0) {
    throw new UsageError('client_rule_unknown', `Unknown rule${unknown.length > 1 ? 's' : ''} ${unknown.map((n) => JSON.stringify(n)).join(', ')}: ${file ?? 'the configuration'} defines ${known.length ? known.map((r) => JSON.stringify(r.name)).join(', ') : 'no rules'}.`, {
      hint: 'Use the rule names of migration.yaml (`migrate plan` lists them); the client must load the same migration.yaml as migrate.',
      details: { unknown, known: known.map((r) => r.name) },
    });
  }
  return [...new Set(requested)];
}
