import type { MigrationConfig, ServiceFormat, ServiceSpec } from '../config/load.js';
import type { Mapping } from '../mapping/mapping.js';
import type { UnmappableReason } from '../mapping/route.js';
import { formatKey } from '../report/keys.js';
import { DEFAULT_PAGE_KEYS, type SourceReader, type TargetStore } from '../stores/types.js';
import { CappedList } from '../audit/aggregate.js';
import { txnCapacity, estimateOpBytes } from '../audit/inventory.js';
import { FINDING_CATALOGUE } from '../audit/findings.js';
import { detectKubernetes } from '../audit/patterns.js';
import { findSlashes } from '../audit/prefix-tree.js';
import { resolveTargetLimits } from '../audit/limits.js';
import { mappingRouter } from '../audit/router.js';
import { describeRange, disjointPrefixRanges, prefixWarnings, intersectRange, requireSomethingReadable, scanWithRuleFallback, wholeKeyspace } from '../audit/scan.js';
import { RuleTallies, handlingOf, registrationProblemText, type RuleTally } from '../audit/tally.js';
import { tallyDatacenters, type DatacenterTally } from '../audit/datacenters.js';
import { META_RULE, type RegistrationProblem } from '../services/registration.js';
import { prefixEnd } from '../stores/key-range.js';
import { cutOverMappingChanges, ownedByConsul as ownedByConsulDoc, type RulePhaseDoc } from '../cutover/phase.js';
import { OWNED_MAPPING_HINT, readRuleDocs } from '../cutover/state-io.js';
import { OVERLAP_HINT, otherMigrations, targetOverlaps } from '../state/migrations.js';
import { leftBehind, mappingHash, readState, statePaths, type StateMeta } from '../state/state.js';

/**
 * `migrate plan`: the mapping resolved against the live keyspace at one
 * pinned revision. Per rule: keys and bytes to copy, sessions to create,
 * keys kept on etcd, catalog instances a service rule registers; then the
 * keys outside every rule and every key Consul cannot take (a capped list
 * with the total). Blockers make it exit 1.
 * One streamed pass, memory bounded by the page and the caps.
 */
export const PLAN_SCHEMA_VERSION = 1;

export interface PlanKey {
  key: string;
  rule: string;
  reason: UnmappableReason;
  detail: string;
  /** The value's size, for `value-too-large`. */
  size?: number;
}

export interface PlanBlocker {
  code: 'unmappable_keys' | 'unmapped_keys' | 'range_unreadable' | 'mapping_change_refused' | 'migration_overlap' | 'kubernetes_prefix';
  count: number;
  message: string;
  hint: string;
}

/** A service rule as the plan shows it: what it registers, its TTL check, and the keys that make no instance. */
export interface PlanServiceRule {
  rule: string;
  from: string;
  format: ServiceFormat;
  /** `format: json`: where the value holds the address, port, tags and meta; null otherwise. */
  fields: ServiceSpec['fields'] | null;
  /** The service name and instance id templates. */
  name: string;
  id: string;
  tags: string[];
  check: { ttlSeconds: number; failuresBeforeCritical: number; successBeforePassing: number; deregisterCriticalAfterSeconds: number | null };
  /** Keys that make no instance, by problem (the counts are exact). */
  problems: Partial<Record<RegistrationProblem, number>>;
  /** The first of them (up to {@link SERVICE_EXAMPLES}): key and problem, never the value. */
  examples: { key: string; problem: RegistrationProblem; detail: string }[];
}

/** Keys without an instance listed per service rule. */
export const SERVICE_EXAMPLES = 20;

export interface PlanResult {
  schemaVersion: typeof PLAN_SCHEMA_VERSION;
  configFile: string;
  migrationId: string;
  source: { endpoint: string; version: string; clusterId: string; revision: number };
  scope: { ranges: string[]; unreadable: string[]; rulesOnly: boolean; interrupted: boolean };
  maxValueBytes: number;
  /** Where maxValueBytes comes from: migration.yaml, the agent, or Consul's default when the agent could not be asked. */
  limitsBasis: string;
  rules: RuleTally[];
  /** Copy rules cut over or finalized (Consul owns their data): copy leaves them, so the totals leave them out. */
  ownedByConsul: { rule: string; phase: 'cutover' | 'finalized' }[];
  totals: { copyKeys: number; copyValueBytes: number; sessions: number; keptKeys: number; skippedLeasedKeys: number; unmappedKeys: number; unmappableKeys: number; escapedKeys: number; instances: number; noInstanceKeys: number };
  /** The `action: service` rules, in the order of the file (their counts are in `rules`). */
  services: PlanServiceRule[];
  /** Keys outside every rule (`null` when only the rules' prefixes could be read). */
  unmapped: { keys: number; valueBytes: number; policy: 'skip' | 'error'; examples: string[] } | null;
  unmappable: { total: number; byReason: Partial<Record<UnmappableReason, number>>; keys: PlanKey[] };
  blockers: PlanBlocker[];
  /** Only when a rule names `datacenters:` (issue 11): what each datacenter gets written, the primary first. */
  datacenters?: DatacenterTally[];
  /**
   * Only when migration.yaml is not the mapping the migration recorded: what the change
   * leaves in Consul that nothing replicates any more (`leftBehind` null when the
   * state predates recorded rules; `consulKeys` null when Consul could not list them).
   */
  mappingChange?: {
    leftBehind: { rule: string; to: string; why: string; consulKeys: number | null }[] | null;
    /** Service rules recorded and no longer in the mapping whose instances are still registered on the agent (copy --delete-extraneous deregisters them). */
    servicesLeft?: { rule: string; instances: number }[];
    refused: string[];
  };
}

export interface PlanInput {
  source: SourceReader;
  config: MigrationConfig;
  configFile: string;
  mapping: Mapping;
  /** The target, asked for its limits and the migration's state (recorded mapping, rules' phases); optional: without it, or when it does not answer, Consul's defaults and no state. */
  target?: Pick<TargetStore, 'info' | 'readKey' | 'listKeys' | 'listFolders' | 'readEntries' | 'listServiceInstances'>;
  /** The target's datacenter when known without asking Consul (`target.datacenter` of migration.yaml, as the copy takes it): names the primary in the per-datacenter figures. */
  primaryDatacenter?: string;
  /** Plan only these prefixes (default: the whole keyspace, to find unmapped keys). */
  prefixes?: readonly string[];
  pageKeys?: number;
  /** Unmappable keys listed at most (default 1,000); the total is always exact. */
  listCap?: number;
  signal?: AbortSignal;
  onProgress?: (keys: number, total: number | undefined) => void;
  /** Something the operator should know that does not change the plan (a --prefix no key starts with). */
  onWarning?: (message: string) => void;
}

/** What to do about the unmappable keys, for the reasons there are (a value over the limit was told to set `keys: escape`). */
function unmappableHint(byReason: Partial<Record<UnmappableReason, number>>): string {
  const fixes: string[] = [];
  if (Object.keys(byReason).some((r) => r !== 'value-too-large' && r !== 'key-too-long')) fixes.push('set `keys: escape` on the rules for the key shapes');
  if (byReason['key-too-long']) fixes.push('rename the keys over 256 KiB');
  if (byReason['value-too-large']) fixes.push('move or shrink the values over the limit');
  return `${fixes.join(', ').replace(/^./, (c) => c.toUpperCase())}, or keep them on etcd (\`action: keep\`). Or, if the application can do without them in Consul, go on as they are: \`migrate copy\` leaves them out and lists them, and verify does not count them as drift.`;
}

export async function runPlan(input: PlanInput): Promise<PlanResult> {
  const status = await input.source.status();
  const revision = status.revision;
  // The agent's kv_max_value_size decides what the copy holds back, so the plan judges by it too.
  const limits = await resolveTargetLimits(input.config, input.target);
  const maxValueBytes = limits.maxValueBytes;
  const router = mappingRouter(input.mapping, maxValueBytes, limits.strictKeys);
  const capacity = txnCapacity(limits);
  const tallies = new RuleTallies(router.rules, undefined, input.config.id);
  const services = new Map(input.mapping.serviceRules.map((rule) => [rule.name, planServiceRule(rule.name, rule.from, rule.service!)]));
  const unmappable = new CappedList<PlanKey>(input.listCap ?? 1000);
  const byReason: Partial<Record<UnmappableReason, number>> = {};
  const unmappedExamples = new CappedList<string>(100);
  let unmappedKeys = 0;
  let unmappedBytes = 0;
  /** Keys that look like a Kubernetes control plane, by the rule that copies them. */
  const kubernetes = new Map<string, number>();
  const slashes = new Int32Array(64);
  const explicit = Boolean(input.prefixes?.length);
  const scope = explicit ? disjointPrefixRanges(input.prefixes!) : [wholeKeyspace()];
  let total: number | undefined;
  try {
    total = 0;
    for (const range of scope) total += await input.source.count(range, revision);
  } catch {
    total = undefined;
  }
  const { outcome, ranges, rulesOnly } = await scanWithRuleFallback(scope, explicit, router.rules.map((r) => r.from), {
    source: input.source,
    revision,
    pageKeys: input.pageKeys ?? DEFAULT_PAGE_KEYS,
    signal: input.signal,
    onPage: (keys) => input.onProgress?.(keys, total),
  }, (entry) => {
    const routed = router.route(entry.key, entry.value.length);
    const leased = entry.lease !== '0';
    const handling = handlingOf(routed, leased);
    const copied = handling === 'copy' || handling === 'session' || handling === 'persist';
    // A Kubernetes control plane copied: the blocker audit reports for the same mapping.
    if (copied && routed.kind !== 'unmapped' && detectKubernetes(entry.key, entry.value, slashes, findSlashes(entry.key, slashes)) >= 0) {
      kubernetes.set(routed.rule.name, (kubernetes.get(routed.rule.name) ?? 0) + 1);
    }
    const registration = tallies.add(routed, entry, handling, copied && estimateOpBytes(entry.key.length, entry.value.length) > capacity.bytes);
    if (registration && !registration.ok) {
      const service = services.get(registration.rule)!;
      service.problems[registration.problem] = (service.problems[registration.problem] ?? 0) + 1;
      if (service.examples.length < SERVICE_EXAMPLES) service.examples.push({ key: registration.key, problem: registration.problem, detail: registrationProblemText(registration) });
    }
    if (routed.kind === 'unmapped') {
      unmappedKeys++;
      unmappedBytes += entry.value.length;
      unmappedExamples.add(() => formatKey(entry.key));
    } else if (routed.kind === 'unmappable' && handling === 'rejected') {
      byReason[routed.reason] = (byReason[routed.reason] ?? 0) + 1;
      unmappable.add(() => ({ key: formatKey(entry.key), rule: routed.rule.name, reason: routed.reason, detail: routed.detail, ...(routed.reason === 'value-too-large' ? { size: entry.value.length } : {}) }));
    }
  });
  requireSomethingReadable(outcome, 'plan');
  for (const message of await prefixWarnings(input.source, input.prefixes ?? [], revision)) input.onWarning?.(message);

  const rules = tallies.list();
  const state = await migrationState(input);
  // A from: with a typo makes a rule that matches nothing, and a verify of it passes with nothing compared.
  if (!explicit && !outcome.interrupted) {
    // A finalized rule's etcd keys may be gone on purpose (finalize --delete-etcd).
    const finalized = new Set(state.docs.filter((d) => d.phase === 'finalized').map((d) => d.rule));
    for (const r of rules) if (r.keys === 0 && !finalized.has(r.rule)) input.onWarning?.(`rule ${r.rule} (from: ${r.from}) matches no etcd key: check its from: (a rule with a typo copies nothing, and verify passes it with nothing compared)`);
  }
  const datacenters = tallyDatacenters(input.config, rules, input.primaryDatacenter, (names) => tallies.sessionsOf(names));
  const ownedByConsul = state.docs.filter(ownedByConsulDoc).map((d) => ({ rule: d.rule, phase: d.phase === 'finalized' ? 'finalized' as const : 'cutover' as const }));
  const copied = rules.filter((r) => !ownedByConsul.some((o) => o.rule === r.rule));
  const sum = (f: (r: RuleTally) => number, of = rules) => of.reduce((n, r) => n + f(r), 0);
  const totals = {
    copyKeys: sum((r) => r.copyKeys, copied),
    copyValueBytes: sum((r) => r.copyValueBytes, copied),
    // One session per lease, whatever rules its keys fall in.
    sessions: tallies.sessionsOf(copied.map((r) => r.rule)).sessions,
    keptKeys: sum((r) => r.keptKeys),
    skippedLeasedKeys: sum((r) => r.skippedKeys),
    unmappedKeys,
    unmappableKeys: unmappable.total,
    escapedKeys: sum((r) => r.escapedKeys),
    instances: sum((r) => r.instances),
    noInstanceKeys: sum((r) => r.noInstanceKeys),
  };
  const blockers: PlanBlocker[] = [];
  if (unmappable.total > 0) {
    blockers.push({ code: 'unmappable_keys', count: unmappable.total, message: `${unmappable.total} keys under copy rules cannot be written to Consul (${Object.entries(byReason).map(([r, n]) => `${r}: ${n}`).join(', ')})`, hint: unmappableHint(byReason) });
  }
  if (!rulesOnly && unmappedKeys > 0 && router.unmapped === 'error') {
    blockers.push({ code: 'unmapped_keys', count: unmappedKeys, message: `${unmappedKeys} keys are outside every rule and defaults.unmapped is error`, hint: 'Add rules (or keep rules) for them, or set defaults.unmapped: skip to leave them on etcd.' });
  }
  const writingRules = router.rules.filter((r) => r.action !== 'keep');
  const unreadableCopied = outcome.unreadable.filter((range) => writingRules.some((r) => intersectRange(range, Buffer.from(r.from), prefixEnd(Buffer.from(r.from)))));
  const mappingChange = await mappingChangeOf(input, state);
  if (mappingChange?.refused.length) {
    blockers.push({ code: 'mapping_change_refused', count: mappingChange.refused.length, message: `copy and dualrun refuse this mapping change (mapping_changed_cut_over): ${mappingChange.refused.join('; ')}`, hint: OWNED_MAPPING_HINT });
  }
  const others = input.target ? (await otherMigrations(input.target, input.config.state.prefix, input.config.id, (text) => input.onWarning?.(text)).catch(() => ({ others: [] }))).others : [];
  const overlaps = targetOverlaps(input.config.rules, others);
  if (overlaps.length > 0) {
    blockers.push({ code: 'migration_overlap', count: overlaps.length, message: `copy and dualrun refuse rules that write where another migration writes (migration_overlap): ${overlaps.join('; ')}`, hint: OVERLAP_HINT });
  }
  if (kubernetes.size > 0) {
    const count = [...kubernetes.values()].reduce((n, k) => n + k, 0);
    blockers.push({ code: 'kubernetes_prefix', count, message: `${count} keys that look like a Kubernetes control plane are copied (${[...kubernetes].map(([rule, n]) => `rule ${rule}: ${n}`).join(', ')})`, hint: FINDING_CATALOGUE.kubernetes_prefix.hint });
  }
  if (unreadableCopied.length > 0) {
    blockers.push({ code: 'range_unreadable', count: unreadableCopied.length, message: `etcd refused to read ${unreadableCopied.map(describeRange).join(', ')}, which copy or service rules cover`, hint: 'Grant the etcd user read on every rule range (`migrate acl` prints the role).' });
  }
  return {
    schemaVersion: PLAN_SCHEMA_VERSION,
    configFile: input.configFile,
    migrationId: input.config.id,
    source: { endpoint: status.endpoint, version: status.version, clusterId: status.clusterId, revision },
    scope: { ranges: ranges.map(describeRange), unreadable: outcome.unreadable.map(describeRange), rulesOnly, interrupted: outcome.interrupted },
    maxValueBytes,
    limitsBasis: limits.basis,
    rules,
    ownedByConsul,
    totals,
    unmapped: rulesOnly ? null : { keys: unmappedKeys, valueBytes: unmappedBytes, policy: router.unmapped, examples: unmappedExamples.items },
    unmappable: { total: unmappable.total, byReason, keys: unmappable.items },
    services: [...services.values()],
    blockers,
    ...(datacenters ? { datacenters } : {}),
    ...(mappingChange ? { mappingChange } : {}),
  };
}

/** The migration's state in Consul the plan judges by: its recorded mapping and the rules' phases; none when Consul is not given or does not answer. */
async function migrationState(input: PlanInput): Promise<{ meta?: StateMeta; docs: RulePhaseDoc[] }> {
  if (!input.target) return { docs: [] };
  const paths = statePaths(input.config.state.prefix, input.config.id);
  try {
    const [meta, docs] = await Promise.all([readState<StateMeta>(input.target, paths.meta), readRuleDocs(input.target, paths)]);
    return { meta, docs: [...docs.values()].map((d) => d.doc) };
  } catch {
    return { docs: [] };
  }
}

/**
 * When migration.yaml is not the recorded mapping: what the change leaves in Consul that nothing
 * replicates any more (not the data of rules Consul owns: the applications' own), and what copy
 * and dualrun refuse of it (see {@link PlanResult.mappingChange}).
 */
async function mappingChangeOf(input: PlanInput, state: { meta?: StateMeta; docs: RulePhaseDoc[] }): Promise<PlanResult['mappingChange']> {
  const { meta, docs } = state;
  if (!input.target || !meta || meta.mappingHash === mappingHash(input.config)) return undefined;
  const target = input.target;
  const refused = cutOverMappingChanges(docs, input.mapping.rules, meta.rules ?? null);
  if (!meta.rules) return { leftBehind: null, refused };
  const owned = new Set(docs.filter(ownedByConsulDoc).map((d) => d.rule));
  const left = await Promise.all(leftBehind(meta.rules, input.config, owned).map(async (l) => ({ ...l, consulKeys: await target.listKeys(l.to).then((keys) => keys.length, () => null) })));
  // A service rule removed: its instances stay registered, kept in step no more (copy says so and deregisters them with --delete-extraneous).
  const services = new Set(input.mapping.serviceRules.map((r) => r.name));
  const instances = await target.listServiceInstances(input.config.id, 'agent').catch(() => []);
  const servicesLeft = meta.rules.filter((r) => r.action === 'service' && !services.has(r.name))
    .map((r) => ({ rule: r.name, instances: instances.filter((i) => i.meta[META_RULE] === r.name).length }))
    .filter((r) => r.instances > 0);
  return { leftBehind: left, ...(servicesLeft.length > 0 ? { servicesLeft } : {}), refused };
}

function planServiceRule(rule: string, from: string, spec: ServiceSpec): PlanServiceRule {
  const { check } = spec;
  return {
    rule,
    from,
    format: spec.format,
    fields: spec.format === 'json' ? spec.fields : null,
    name: spec.name,
    id: spec.id,
    tags: spec.tags,
    check: { ttlSeconds: check.ttlSeconds, failuresBeforeCritical: check.failuresBeforeCritical, successBeforePassing: check.successBeforePassing, deregisterCriticalAfterSeconds: check.deregisterCriticalAfterSeconds ?? null },
    problems: {},
    examples: [],
  };
}
