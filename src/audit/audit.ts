import pLimit from 'p-limit';
import type { MigrationConfig } from '../config/load.js';
import { isMigrateError } from '../errors.js';
import type { Mapping } from '../mapping/mapping.js';
import { formatKey } from '../report/keys.js';
import { statePaths } from '../state/state.js';
import { readAgainAtFreshRevision } from '../stores/etcd.js';
import { prefixEnd } from '../stores/key-range.js';
import { DEFAULT_PAGE_KEYS, type KeyRange, type SourceReader, type TargetStore } from '../stores/types.js';
import { tallyDatacenters, type DatacenterTally } from './datacenters.js';
import { resolveTargetLimits } from './limits.js';
import { estimateCopies, estimateCopy, referenceBasis, type CopyCounts, type CopyEstimate, type EstimateBasis } from './estimate.js';
import {
  blockerCount,
  makeFinding,
  sortFindings,
  unreadableSeverity,
  type AuditMode,
  type Finding,
} from './findings.js';
import {
  Inventory,
  patternFindings,
  summarizeGroups,
  summarizeLeases,
  txnCapacity,
  type GroupSummary,
  type InventorySnapshot,
  type InventoryTotals,
  type LeaseLookup,
  type LeaseSummary,
  type RuleTally,
} from './inventory.js';
import type { PrefixNode } from './prefix-tree.js';
import type { RuleTallies } from './tally.js';
import { probeThroughput, type ProbeResult } from './probe.js';
import type { RevisionGroupOptions } from './revision-groups.js';
import { identityRouter, mappingRouter, type KeyRouter } from './router.js';
import { sampleFindings, sampleWrites, type SampleSummary } from './sample.js';
import { describeRange, disjointPrefixRanges, prefixWarnings, intersectRange, requireSomethingReadable, scanIdentityJoin, scanWithRuleFallback, splitAtSlash, wholeKeyspace, type ScanOutcome } from './scan.js';

/** Version of the audit report's shape (`--format json|yaml`); see `src/audit/REPORT.md`. */
export const AUDIT_SCHEMA_VERSION = 1;

/** What the audit reports. Documented field by field in `src/audit/REPORT.md`. */
export interface AuditResult {
  schemaVersion: typeof AUDIT_SCHEMA_VERSION;
  /** `mapping`: judged against migration.yaml; `identity`: no file, keys judged as they are with one leading `/` stripped. */
  mode: AuditMode;
  configFile: string | null;
  migrationId: string | null;
  source: { endpoint: string; version: string; clusterId: string; revision: number };
  scope: {
    /** The `--prefix` values the audit was limited to (`[]`: the whole keyspace). */
    prefixes: string[];
    /** What was read, e.g. `the whole keyspace` or `prefix /app/`. */
    ranges: string[];
    /** What etcd refused to read. */
    unreadable: string[];
    /** The whole keyspace was refused, so only the rules' ranges were read (unmapped keys are unknown). */
    rulesOnly: boolean;
    /** Ctrl-C stopped the pass: every figure covers only what was read. */
    /** Ctrl-C came before the end: the scan, the lease lookups, the probe or the sample is partial. */
    interrupted: boolean;
  };
  limits: {
    txnMaxOps: number;
    txnMaxBytes: number;
    maxValueBytes: number;
    /** Room one Consul txn leaves for one etcd revision (minus the dual-run's checkpoint and leader check). */
    revisionTxnOps: number;
    revisionTxnBytes: number;
    /** Where the limits come from. */
    basis: string;
  };
  depth: number;
  top: number;
  totals: InventoryTotals;
  prefixes: PrefixNode;
  values: InventorySnapshot['values'];
  churn: InventorySnapshot['churn'];
  leases: LeaseSummary;
  atomicGroups: GroupSummary;
  patterns: InventorySnapshot['patterns'];
  /** Per rule (one `(identity)` row without a mapping file). */
  rules: RuleTally[];
  unmapped: { keys: number; valueBytes: number; policy: 'skip' | 'error' } | null;
  /** Only when a rule names `datacenters:` (issue 11): what each datacenter gets written, the primary first. */
  datacenters?: AuditDatacenter[];
  sample: SampleSummary | null;
  probe: Omit<ProbeResult, 'basis'> | null;
  estimate: CopyEstimate;
  findings: Finding[];
  /** Findings of severity `blocker`; the audit exits 1 when there is any. */
  blockers: number;
  scan: { keys: number; pages: number; durationMs: number; keysPerSecond: number; spilledRuns: number };
}

/** One datacenter of the audit: its rules and totals, and the time its copy takes on the estimate's basis. */
export interface AuditDatacenter extends DatacenterTally {
  estimateSeconds: number;
}

export type AuditProgress =
  /** The revision the inventory reads at; a `--sample` watches the writes after it from now on. */
  | { phase: 'pinned'; revision: number }
  | { phase: 'scan'; keys: number; total: number | undefined }
  | { phase: 'leases'; done: number; total: number }
  | { phase: 'groups' }
  | { phase: 'probe' }
  | { phase: 'sample'; remainingMs: number }
  | { phase: 'warning'; message: string };

export interface AuditInput {
  source: SourceReader;
  /** The target: its version sets the txn op limit, and `--probe` writes to it. Optional. */
  target?: TargetStore;
  config: MigrationConfig;
  /** The target's datacenter when known without asking Consul (`target.datacenter` of migration.yaml, as the copy takes it): names the primary in the per-datacenter figures. */
  primaryDatacenter?: string;
  /** The mapping file; without one the audit judges the identity mapping. */
  configFile?: string;
  mapping?: Mapping;
  /** Audit only these prefixes (default: the whole keyspace). */
  prefixes?: readonly string[];
  depth?: number;
  top?: number;
  pageKeys?: number;
  /** Watch live traffic for this long (`--sample`). */
  sampleMs?: number;
  /** Measure the target's write throughput (`--probe`): writes and deletes scratch keys. */
  probe?: boolean;
  /** Leases looked up with `readLease` at most (default 10,000). */
  leaseLookups?: number;
  signal?: AbortSignal;
  onProgress?: (progress: AuditProgress) => void;
  now?: () => number;
  /** A unique id for this run's probe folder. */
  runId?: string;
  groups?: RevisionGroupOptions;
}

export async function runAudit(input: AuditInput): Promise<AuditResult> {
  const now = input.now ?? (() => performance.now());
  const depth = input.depth ?? 2;
  const top = input.top ?? 10;
  const status = await input.source.status();
  let revision = status.revision;
  const limits = await resolveTargetLimits(input.config, input.target);
  const capacity = txnCapacity(limits);
  const mode: AuditMode = input.configFile && input.mapping ? 'mapping' : 'identity';
  const router: KeyRouter = mode === 'mapping' ? mappingRouter(input.mapping!, limits.maxValueBytes, limits.strictKeys) : identityRouter(limits.maxValueBytes, limits.strictKeys);
  const scope = input.prefixes && input.prefixes.length > 0 ? disjointPrefixRanges(input.prefixes) : [wholeKeyspace()];

  const sample = input.sampleMs && input.sampleMs > 0
    ? sampleWrites({ source: input.source, ranges: scope, fromRevision: revision + 1, durationMs: input.sampleMs, depth, top, router, capacity, signal: input.signal })
    : undefined;
  // Keep a failing sample from becoming an unhandled rejection while the pass runs; it is awaited below.
  sample?.catch(() => undefined);
  input.onProgress?.({ phase: 'pinned', revision });

  const newInventory = (at: number) => new Inventory({ mode, router, revision: at, depth, top, capacity, maxValueBytes: limits.maxValueBytes, streams: mode === 'identity' ? 2 : 1, groups: input.groups, migrationId: input.config.id });
  let inventory = newInventory(revision);
  try {
    let started = now();
    let outcome: ScanOutcome;
    let ranges = scope;
    let rulesOnly = false;
    for (let pass = 1; ; pass++) {
      try {
        const total = await countKeys(input.source, scope, revision);
        const scanOptions = { source: input.source, revision, pageKeys: input.pageKeys ?? DEFAULT_PAGE_KEYS, signal: input.signal, onPage: (keys: number) => input.onProgress?.({ phase: 'scan', keys, total }) };
        if (mode === 'identity') {
          const { slash, other } = splitAtSlash(scope);
          outcome = await scanIdentityJoin(slash, other, scanOptions, (entry, stream) => inventory.consume(entry, router.route(entry.key, entry.value.length), stream), (a, b) => inventory.noteCollision(a, b, router.rules[0]!.name));
        } else {
          const scanned = await scanWithRuleFallback(scope, Boolean(input.prefixes?.length), router.rules.map((r) => r.from), scanOptions, (entry) => inventory.consume(entry, router.route(entry.key, entry.value.length)));
          ({ outcome, ranges, rulesOnly } = scanned);
        }
        break;
      } catch (err) {
        // etcd compacted the revision while it was read (auto-compaction on a busy cluster): read again at the current one.
        if (!readAgainAtFreshRevision(err, pass, input.signal)) throw err;
        const next = (await input.source.status()).revision;
        input.onProgress?.({ phase: 'warning', message: `etcd compacted revision ${revision} while the audit read it; reading again at revision ${next}` });
        inventory.close();
        revision = next;
        inventory = newInventory(revision);
        started = now();
      }
    }
    requireSomethingReadable(outcome, 'audit');
    const scanMs = Math.max(1, now() - started);
    for (const message of await prefixWarnings(input.source, input.prefixes ?? [], revision)) input.onProgress?.({ phase: 'warning', message });

    const snapshot = inventory.snapshot();
    const lookupIds = inventory.leasesToLookUp(input.leaseLookups ?? 10_000);
    const lookups = await lookUpLeases(input.source, lookupIds, input.signal, (done) => input.onProgress?.({ phase: 'leases', done, total: lookupIds.length }));
    const leases = summarizeLeases(inventory.leases.map.values(), inventory.untrackedLeasedKeys, lookups, top);
    input.onProgress?.({ phase: 'groups' });
    const groups = summarizeGroups(inventory.groups.groups(), capacity, top, inventory.groups.spilledRuns);

    let probe: ProbeResult | null = null;
    if (input.probe && input.target && !input.signal?.aborted) {
      input.onProgress?.({ phase: 'probe' });
      const meanValue = snapshot.copy.keys > 0 ? snapshot.copy.valueBytes / snapshot.copy.keys : 256;
      probe = await probeThroughput(input.target, { scratchPrefix: statePaths(input.config.state.prefix, input.config.id).scratch, runId: input.runId ?? String(Date.now()), capacity, valueBytes: meanValue, signal: input.signal });
    }
    const sampled = sample ? await sample : null;

    const unreadable = outcome.unreadable;
    const findings: Finding[] = [
      ...inventory.findings.findings(),
      ...leases.findings,
      ...groups.findings,
      ...patternFindings(snapshot.patterns, mode, snapshot.prefixes),
      ...(mode === 'mapping' ? fromWithoutSlash(input.mapping!) : []),
      ...unreadableFindings(unreadable, rulesOnly, router, mode),
      ...(sampled ? sampleFindings(sampled) : []),
    ];
    sortFindings(findings);
    const basis = probe?.basis ?? referenceBasis();
    const datacenters = mode === 'mapping' ? auditDatacenters(input.config, snapshot.rules, inventory.rules, input.primaryDatacenter, basis) : undefined;
    // Each datacenter is a full copy of its rules, written one after the other.
    const estimate = datacenters ? estimateCopies(datacenters.map((d) => d.copy), basis) : estimateCopy(snapshot.copy, basis);
    const { basis: _basis, ...probeFigures } = probe ?? { basis: undefined };
    return {
      schemaVersion: AUDIT_SCHEMA_VERSION,
      mode,
      configFile: mode === 'mapping' ? input.configFile ?? null : null,
      migrationId: mode === 'mapping' ? input.config.id : null,
      source: { endpoint: status.endpoint, version: status.version, clusterId: status.clusterId, revision },
      scope: { prefixes: (input.prefixes ?? []).map((p) => formatKey(p)), ranges: ranges.map(describeRange), unreadable: unreadable.map(describeRange), rulesOnly, interrupted: outcome.interrupted || Boolean(input.signal?.aborted) },
      limits: { ...limits, revisionTxnOps: capacity.ops, revisionTxnBytes: capacity.bytes },
      depth,
      top,
      totals: snapshot.totals,
      prefixes: snapshot.prefixes,
      values: snapshot.values,
      churn: snapshot.churn,
      leases: leases.summary,
      atomicGroups: groups.summary,
      patterns: snapshot.patterns,
      rules: snapshot.rules,
      unmapped: snapshot.unmapped && !rulesOnly ? { ...snapshot.unmapped, policy: router.unmapped } : null,
      ...(datacenters ? { datacenters: datacenters.map((d) => d.report) } : {}),
      sample: sampled,
      probe: probe ? (probeFigures as Omit<ProbeResult, 'basis'>) : null,
      estimate,
      findings,
      blockers: blockerCount(findings),
      scan: { keys: outcome.keys, pages: outcome.pages, durationMs: Math.round(scanMs), keysPerSecond: Math.round((outcome.keys / scanMs) * 1000), spilledRuns: inventory.groups.spilledRuns },
    };
  } finally {
    inventory.close();
  }
}

/** Per datacenter: the report's row and the counts its copy writes (undefined when no rule names datacenters). */
function auditDatacenters(config: MigrationConfig, rules: readonly RuleTally[], tallies: RuleTallies, primary: string | undefined, basis: EstimateBasis): { report: AuditDatacenter; copy: CopyCounts }[] | undefined {
  const singlePutBytes = tallies.singlePutBytes();
  return tallyDatacenters(config, rules, primary, (names) => tallies.sessionsOf(names))?.map((dc) => {
    const copy: CopyCounts = { keys: dc.copyKeys, valueBytes: dc.copyValueBytes, sessions: dc.sessions, singlePutKeys: dc.singlePutKeys, singlePutBytes: dc.rules.reduce((n, r) => n + (singlePutBytes.get(r) ?? 0), 0) };
    return { report: { ...dc, estimateSeconds: estimateCopy(copy, basis).seconds }, copy };
  });
}

/** Keys in scope, for progress; unknown when etcd refuses the count. */
async function countKeys(source: SourceReader, ranges: readonly KeyRange[], revision: number): Promise<number | undefined> {
  let total = 0;
  for (const range of ranges) {
    try {
      total += await source.count(range, revision);
    } catch (err) {
      if (!isMigrateError(err)) throw err;
      return undefined;
    }
  }
  return total;
}

/** Looks up leases (TTL) with bounded concurrency; a failed lookup leaves the lease out. */
async function lookUpLeases(source: SourceReader, ids: readonly string[], signal: AbortSignal | undefined, onDone: (done: number) => void): Promise<Map<string, LeaseLookup>> {
  const limit = pLimit(16);
  const found = new Map<string, LeaseLookup>();
  let done = 0;
  await Promise.all(ids.map((id) => limit(async () => {
    if (signal?.aborted) return;
    try {
      const info = await source.readLease(id);
      found.set(id, { id, ttl: info.ttl, grantedTtl: info.grantedTtl });
    } catch (err) {
      if (!isMigrateError(err)) throw err;
    }
    done++;
    if (done % 100 === 0 || done === ids.length) onDone(done);
  })));
  return found;
}

function fromWithoutSlash(mapping: Mapping): Finding[] {
  const loose = mapping.warnings.filter((w) => w.code === 'from-without-trailing-slash');
  if (loose.length === 0) return [];
  const rules = mapping.rules.filter((r) => loose.some((w) => w.rule === r.name));
  return [makeFinding('rule_from_without_slash', 'warning', rules.length, rules.map((r) => ({ rule: r.name, prefix: r.from, detail: loose.find((w) => w.rule === r.name)!.message })), rules.map((r) => r.name))];
}

function unreadableFindings(unreadable: readonly KeyRange[], rulesOnly: boolean, router: KeyRouter, mode: AuditMode): Finding[] {
  const findings: Finding[] = [];
  // Service rules read their range too (the copy registers what it holds).
  const writingRules = router.rules.filter((r) => r.action !== 'keep');
  const copied = (range: KeyRange) => mode === 'identity' || writingRules.some((r) => intersectRange(range, Buffer.from(r.from), prefixEnd(Buffer.from(r.from))) !== undefined);
  const blockers = unreadable.filter((r) => unreadableSeverity(mode, copied(r)) === 'blocker');
  const warnings = unreadable.filter((r) => !blockers.includes(r));
  const example = (r: KeyRange) => ({ prefix: describeRange(r), rule: writingRules.find((rule) => intersectRange(r, Buffer.from(rule.from), prefixEnd(Buffer.from(rule.from))))?.name });
  if (blockers.length > 0) findings.push(makeFinding('range_unreadable', 'blocker', blockers.length, blockers.map(example)));
  if (rulesOnly) {
    warnings.push(wholeKeyspace());
  }
  if (warnings.length > 0) {
    const whole = (r: KeyRange) => r.start.length === 1 && r.start[0] === 0 && r.end.length === 0;
    findings.push(makeFinding('range_unreadable', 'warning', warnings.length, warnings.map((r) => (rulesOnly && whole(r) ? { prefix: describeRange(r), detail: 'only the rules\' prefixes were audited: keys outside every rule (unmapped) are unknown' } : example(r)))));
  }
  return findings;
}
