import { SERVICE_DEFAULTS } from '../config/load.js';
import { formatKey } from '../report/keys.js';
import type { SourceEntry } from '../stores/types.js';
import { base64Length, wireOpBytes } from '../stores/txn-batcher.js';
import {
  AGE_BOUNDS,
  BoundedMap,
  GROUP_OPS_BOUNDS,
  Histogram,
  KEYS_PER_LEASE_BOUNDS,
  TopN,
  TTL_BOUNDS,
  VALUE_SIZE_BOUNDS,
  VERSION_BOUNDS,
  type HistogramBucket,
} from './aggregate.js';
import {
  FindingCollector,
  SESSION_TTL_MAX,
  SESSION_TTL_MIN,
  kubernetesSeverity,
  lockSeverity,
  makeFinding,
  reasonCode,
  unmappableSeverity,
  unmappedSeverity,
  type AuditMode,
  type Finding,
  type FindingExample,
} from './findings.js';
import { PatternCounter, detectKubernetes, detectLock, detectRegistration, isFolderKey, leaseHex, parentFolder, proposeServiceRule, serviceNameOf, type PatternPrefix } from './patterns.js';
import { PrefixTreeBuilder, findSlashes, mergePrefixTrees, type PrefixNode } from './prefix-tree.js';
import { RevisionGroupCounter, type RevisionGroup, type RevisionGroupOptions } from './revision-groups.js';
import type { KeyRouter, Routed } from './router.js';
import { HANDLING_BIT, RuleTallies, handlingOf, registrationProblemText, type RuleTally } from './tally.js';
import { DUALRUN_TXN_RESERVE } from '../dualrun/reserve.js';

export type { RuleTally } from './tally.js';

/**
 * The per-key half of the audit: one `consume` per key read, feeding only
 * bounded structures (prefix trees, histograms, top-N heaps, capped example
 * lists, a bounded lease table, and the revision-group counter that spills to
 * disk). The summaries at the end are pure functions of what was gathered.
 */

const SET_OP_OVERHEAD = wireOpBytes({ verb: 'set', key: '', value: Buffer.alloc(0) });

/** The room one Consul txn leaves for a revision's data (DESIGN §3). */
export interface TxnCapacity {
  ops: number;
  bytes: number;
}

export function txnCapacity(limits: { txnMaxOps: number; txnMaxBytes: number }): TxnCapacity {
  return { ops: Math.max(1, limits.txnMaxOps - DUALRUN_TXN_RESERVE.reservedOps), bytes: Math.max(1, limits.txnMaxBytes - 2 - DUALRUN_TXN_RESERVE.reservedBytes) };
}

/** Estimated bytes one key takes in a `/v1/txn` body (the source key length stands in for the mapped one). */
export function estimateOpBytes(keyBytes: number, valueBytes: number): number {
  return SET_OP_OVERHEAD + keyBytes + base64Length(valueBytes);
}

export interface InventoryOptions {
  mode: AuditMode;
  router: KeyRouter;
  /** The audited (pinned) revision, for the age of keys. */
  revision: number;
  depth: number;
  top: number;
  /** Top-level prefixes kept (default 100). */
  rootTop?: number;
  capacity: TxnCapacity;
  maxValueBytes: number;
  /** Number of ordered key streams (one prefix tree each). */
  streams?: number;
  /** Distinct leases tracked (default 100,000); keys of further leases are counted, not tracked. */
  leaseCap?: number;
  /** Distinct leases per rule counted exactly for sessions (default 100,000). */
  sessionCap?: number;
  /** The migration's id, as service rules' instances carry it (mapping mode). */
  migrationId?: string;
  groups?: RevisionGroupOptions;
}

export interface LeaseAcc {
  id: string;
  keys: number;
  hex: string;
  handling: number;
  example: string;
  rules: string[];
  /** The rules where the lease becomes a session, and a key of theirs: what the TTL clamp findings name. */
  sessionRules: string[];
  sessionExample: string | undefined;
}

/** What `readLease` said about one lease. */
export interface LeaseLookup {
  id: string;
  ttl: number;
  grantedTtl: number;
}

export interface LeaseSummary {
  /** Distinct leases seen on keys (a lower bound when `untrackedKeys` > 0). */
  count: number;
  /** Leased keys whose lease was not tracked (over the lease cap). */
  untrackedKeys: number;
  leasedKeys: number;
  /** Leases tracked individually (the rest only counted). */
  tracked: number;
  /** Leases looked up with `readLease`. */
  lookedUp: number;
  /** Leases that had expired by the time they were looked up. */
  expired: number;
  /** Granted TTLs in seconds. */
  ttl: HistogramBucket[];
  keysPerLease: HistogramBucket[];
  belowSessionMin: number;
  aboveSessionMax: number;
  /** The leases holding most keys. */
  largest: { lease: string; keys: number; ttl: number | null; example: string }[];
}

export interface GroupSummary {
  /** Revisions with at least one key a copy writes. */
  revisions: number;
  /** Revisions holding two or more such keys (etcd transactions). */
  multiKey: number;
  /** Ops per revision. */
  histogram: HistogramBucket[];
  overOps64: number;
  overOps128: number;
  overBytes: number;
  /** Groups that need more than one Consul txn at the target's limits. */
  splitAtTarget: number;
  largest: { revision: number; ops: number; bytes: number; key: string | null }[];
  /** Runs spilled to disk while counting (an implementation figure). */
  spilledRuns: number;
}

export interface InventoryTotals {
  keys: number;
  keyBytes: number;
  valueBytes: number;
  leasedKeys: number;
}

export interface InventorySnapshot {
  totals: InventoryTotals;
  prefixes: PrefixNode;
  values: { histogram: HistogramBucket[]; largest: { key: string; size: number }[] };
  churn: { versions: HistogramBucket[]; ages: HistogramBucket[]; mostWritten: { key: string; version: number }[] };
  patterns: { kubernetes: PatternPrefix[]; locks: PatternPrefix[]; registrations: PatternPrefix[] };
  rules: RuleTally[];
  unmapped: { keys: number; valueBytes: number } | null;
  copy: { keys: number; valueBytes: number; keyBytes: number; singlePutKeys: number; singlePutBytes: number; sessions: number };
}

export class Inventory {
  readonly totals: InventoryTotals = { keys: 0, keyBytes: 0, valueBytes: 0, leasedKeys: 0 };
  readonly findings = new FindingCollector();
  private readonly trees: PrefixTreeBuilder[];
  private readonly slashes = new Int32Array(128);
  private readonly valueSizes = new Histogram(VALUE_SIZE_BOUNDS);
  private readonly versions = new Histogram(VERSION_BOUNDS);
  private readonly ages = new Histogram(AGE_BOUNDS);
  private readonly largestValues: TopN<{ key: string; size: number }>;
  private readonly mostWritten: TopN<{ key: string; version: number }>;
  private readonly kubernetes = new PatternCounter(100);
  private readonly locks = new PatternCounter(200);
  private readonly registrations = new PatternCounter(200);
  readonly leases: BoundedMap<LeaseAcc>;
  private untrackedLeaseKeys = 0;
  readonly rules: RuleTallies;
  private unmappedKeys = 0;
  private unmappedBytes = 0;
  private copyKeys = 0;
  private copyValueBytes = 0;
  private copyKeyBytes = 0;
  private singlePutKeys = 0;
  private singlePutBytes = 0;
  readonly groups: RevisionGroupCounter;

  constructor(private readonly options: InventoryOptions) {
    const treeOptions = { depth: options.depth, top: options.top, rootTop: options.rootTop ?? 100 };
    this.trees = Array.from({ length: options.streams ?? 1 }, () => new PrefixTreeBuilder(treeOptions));
    this.largestValues = new TopN(options.top);
    this.mostWritten = new TopN(options.top);
    this.leases = new BoundedMap(options.leaseCap ?? 100_000);
    this.rules = new RuleTallies(options.router.rules, options.sessionCap, options.migrationId);
    this.groups = new RevisionGroupCounter(options.groups);
  }

  /** Takes one key (in key order within its stream). */
  consume(entry: SourceEntry, routed: Routed, stream = 0): void {
    const { key, value } = entry;
    const valueBytes = value.length;
    const leased = entry.lease !== '0';
    const slashes = this.slashes;
    const count = findSlashes(key, slashes);
    const totals = this.totals;
    totals.keys++;
    totals.keyBytes += key.length;
    totals.valueBytes += valueBytes;
    if (leased) totals.leasedKeys++;
    this.trees[stream]!.add(key, slashes, count, valueBytes, leased, entry.version, entry.modRevision);
    this.valueSizes.add(valueBytes);
    this.versions.add(entry.version);
    this.ages.add(this.options.revision - entry.modRevision);
    if (this.largestValues.accepts(valueBytes)) this.largestValues.add(valueBytes, () => ({ key: formatKey(key), size: valueBytes }));
    if (entry.version > 1 && this.mostWritten.accepts(entry.version)) this.mostWritten.add(entry.version, () => ({ key: formatKey(key), version: entry.version }));

    const handling = handlingOf(routed, leased);
    const ruleName = routed.kind === 'unmapped' ? '(unmapped)' : routed.rule.name;
    const copied = handling === 'copy' || handling === 'session' || handling === 'persist';

    let lease: LeaseAcc | undefined;
    if (leased) {
      lease = this.leases.get(entry.lease, () => ({ id: entry.lease, keys: 0, hex: leaseHex(entry.lease), handling: 0, example: formatKey(key), rules: [], sessionRules: [], sessionExample: undefined }));
      if (lease) {
        lease.keys++;
        lease.handling |= HANDLING_BIT[handling];
        if (!lease.rules.includes(ruleName)) lease.rules.push(ruleName);
        if (handling === 'session') {
          if (!lease.sessionRules.includes(ruleName)) lease.sessionRules.push(ruleName);
          lease.sessionExample ??= formatKey(key);
        }
      } else this.untrackedLeaseKeys++;
    }

    const opBytes = estimateOpBytes(key.length, valueBytes);
    const singlePut = copied && opBytes > this.options.capacity.bytes;
    const registration = this.rules.add(routed, entry, handling, singlePut);

    switch (routed.kind) {
      case 'mapped':
        if (routed.escaped && copied) this.findings.note('key_escaped', 'info', () => ({ key: formatKey(key), rule: routed.rule.name }), routed.rule.name);
        break;
      case 'unmappable':
        if (handling === 'rejected') {
          const code = reasonCode(routed.reason);
          this.findings.note(code, unmappableSeverity(this.options.mode, routed.reason), () => exampleOf(key, routed, valueBytes), routed.rule.name);
        }
        break;
      case 'unmapped':
        this.unmappedKeys++;
        this.unmappedBytes += valueBytes;
        this.findings.note('unmapped_keys', unmappedSeverity(this.options.router.unmapped), () => ({ key: formatKey(key) }));
        break;
      case 'service':
        if (registration && !registration.ok) this.findings.note('service_key_invalid', 'warning', () => ({ key: registration.key, rule: routed.rule.name, detail: registrationProblemText(registration) }), routed.rule.name);
        break;
      case 'keep':
        break;
    }

    if (copied) {
      this.copyKeys++;
      this.copyValueBytes += valueBytes;
      this.copyKeyBytes += key.length;
      this.groups.add(entry.modRevision, opBytes, singlePut, key);
      if (singlePut) {
        this.singlePutKeys++;
        this.singlePutBytes += valueBytes;
        this.findings.note('value_single_put', 'info', () => ({ key: formatKey(key), size: valueBytes, rule: ruleName }), ruleName);
      }
      if (handling === 'persist') this.findings.note('lease_persisted', 'info', () => ({ key: formatKey(key), lease: entry.lease, rule: ruleName }), ruleName);
      if (valueBytes > 0 && isFolderKey(key)) this.findings.note('folder_key_with_value', 'info', () => ({ key: formatKey(key), size: valueBytes, rule: ruleName }), ruleName);
    }

    if (count > 0) {
      const k8s = detectKubernetes(key, value, slashes, count);
      if (k8s !== -1) this.kubernetes.add(key, k8s, leased, ruleName, handling);
      else {
        const lock = detectLock(key, slashes, count, lease?.hex ?? (leased ? leaseHex(entry.lease) : undefined));
        if (lock !== -1) this.locks.add(key, lock, leased, ruleName, handling);
        else if (leased) {
          const match = detectRegistration(key, value, slashes, count);
          if (match) this.registrations.add(key, match.end, leased, ruleName, handling, match.shape);
        }
      }
    }
  }

  /** Two source keys that land on one target key (found by the scan's join). */
  noteCollision(first: Buffer, second: Buffer, rule: string): void {
    const severity = this.options.mode === 'mapping' ? 'blocker' : 'warning';
    this.findings.note('key_collision', severity, () => ({ key: formatKey(first), detail: `lands on the same Consul key as ${formatKey(second)}`, rule }), rule);
  }

  /** Everything but leases and revision groups, which need I/O to finish. */
  snapshot(): InventorySnapshot {
    const rules = this.rules.list();
    return {
      totals: { ...this.totals },
      prefixes: mergePrefixTrees(this.trees.map((t) => t.finish()), this.options.rootTop ?? 100),
      values: { histogram: this.valueSizes.buckets(), largest: this.largestValues.sorted().map((e) => e.item) },
      churn: { versions: this.versions.buckets(), ages: this.ages.buckets(), mostWritten: this.mostWritten.sorted().map((e) => e.item) },
      patterns: { kubernetes: this.kubernetes.list(), locks: this.locks.list(), registrations: this.registrations.list() },
      rules,
      unmapped: this.options.router.mode === 'mapping' ? { keys: this.unmappedKeys, valueBytes: this.unmappedBytes } : null,
      copy: {
        keys: this.copyKeys,
        valueBytes: this.copyValueBytes,
        keyBytes: this.copyKeyBytes,
        singlePutKeys: this.singlePutKeys,
        singlePutBytes: this.singlePutBytes,
        // One session per lease, whatever rules its keys fall in.
        sessions: this.rules.sessionsOf(rules.map((r) => r.rule)).sessions,
      },
    };
  }

  /** Leases to look up with `readLease`: the tracked ones holding most keys first, at most `cap`. */
  leasesToLookUp(cap: number): string[] {
    return [...this.leases.map.values()].sort((a, b) => b.keys - a.keys).slice(0, cap).map((l) => l.id);
  }

  get untrackedLeasedKeys(): number {
    return this.untrackedLeaseKeys;
  }

  close(): void {
    this.groups.close();
  }
}

function exampleOf(key: Buffer, routed: Routed & { kind: 'unmappable' }, valueBytes: number): FindingExample {
  return routed.reason === 'value-too-large'
    ? { key: formatKey(key), size: valueBytes, rule: routed.rule.name }
    : { key: formatKey(key), rule: routed.rule.name, detail: routed.detail };
}

/** Lease table and lookups → the lease report and its findings (pure). */
export function summarizeLeases(leases: Iterable<LeaseAcc>, untrackedKeys: number, lookups: ReadonlyMap<string, LeaseLookup>, top: number): { summary: LeaseSummary; findings: Finding[] } {
  const ttl = new Histogram(TTL_BOUNDS);
  const keysPerLease = new Histogram(KEYS_PER_LEASE_BOUNDS);
  const largest = new TopN<LeaseAcc>(top);
  const below: FindingExample[] = [];
  const above: FindingExample[] = [];
  const belowRules = new Set<string>();
  const aboveRules = new Set<string>();
  let belowCount = 0;
  let aboveCount = 0;
  let tracked = 0;
  let leasedKeys = untrackedKeys;
  let expired = 0;
  let belowMin = 0;
  let aboveMax = 0;
  for (const lease of leases) {
    tracked++;
    leasedKeys += lease.keys;
    keysPerLease.add(lease.keys);
    largest.add(lease.keys, () => lease);
    const lookup = lookups.get(lease.id);
    if (!lookup) continue;
    if (lookup.ttl < 0) {
      expired++;
      continue;
    }
    ttl.add(lookup.grantedTtl);
    // Only leases that become sessions are clamped; skipped, kept or persisted ones are not. The findings
    // name the rules where it becomes one, and a key of theirs.
    const becomesSession = (lease.handling & HANDLING_BIT.session) !== 0;
    if (lookup.grantedTtl < SESSION_TTL_MIN) {
      belowMin++;
      if (becomesSession) {
        belowCount++;
        lease.sessionRules.forEach((r) => belowRules.add(r));
        below.push({ lease: lease.id, count: lease.keys, key: lease.sessionExample ?? lease.example, detail: `TTL ${lookup.grantedTtl} s → session TTL 10 s` });
      }
    } else if (lookup.grantedTtl > SESSION_TTL_MAX) {
      aboveMax++;
      if (becomesSession) {
        aboveCount++;
        lease.sessionRules.forEach((r) => aboveRules.add(r));
        above.push({ lease: lease.id, count: lease.keys, key: lease.sessionExample ?? lease.example, detail: `TTL ${lookup.grantedTtl} s → session TTL 86400 s` });
      }
    }
  }
  const findings: Finding[] = [];
  const byKeys = (a: FindingExample, b: FindingExample) => (b.count ?? 0) - (a.count ?? 0) || String(a.key).localeCompare(String(b.key));
  if (belowCount > 0) findings.push(makeFinding('lease_ttl_below_min', 'warning', belowCount, below.sort(byKeys), [...belowRules]));
  if (aboveCount > 0) findings.push(makeFinding('lease_ttl_above_max', 'warning', aboveCount, above.sort(byKeys), [...aboveRules]));
  return {
    summary: {
      count: tracked,
      untrackedKeys,
      leasedKeys,
      tracked,
      lookedUp: lookups.size,
      expired,
      ttl: ttl.buckets(),
      keysPerLease: keysPerLease.buckets(),
      belowSessionMin: belowMin,
      aboveSessionMax: aboveMax,
      largest: largest.sorted().map(({ item }) => {
        const lookup = lookups.get(item.id);
        return { lease: item.id, keys: item.keys, ttl: lookup && lookup.ttl >= 0 ? lookup.grantedTtl : null, example: item.example };
      }),
    },
    findings,
  };
}

/** Revision groups → the atomic-group report and its finding (pure over the merged groups). */
export function summarizeGroups(groups: Iterable<RevisionGroup>, capacity: TxnCapacity, top: number, spilledRuns: number): { summary: GroupSummary; findings: Finding[] } {
  const histogram = new Histogram(GROUP_OPS_BOUNDS);
  const largest = new TopN<RevisionGroup>(top);
  const oversize = new TopN<RevisionGroup>(10);
  let revisions = 0;
  let multiKey = 0;
  let overOps64 = 0;
  let overOps128 = 0;
  let overBytes = 0;
  let split = 0;
  for (const group of groups) {
    revisions++;
    histogram.add(group.ops);
    if (group.ops < 2) continue;
    multiKey++;
    if (group.ops > 64) overOps64++;
    if (group.ops > 128) overOps128++;
    if (group.bytes > capacity.bytes) overBytes++;
    if (group.ops > capacity.ops || group.bytes > capacity.bytes || group.singlePut) {
      split++;
      oversize.add(group.ops, () => group);
    }
    largest.add(group.ops, () => group);
  }
  const show = (g: RevisionGroup) => ({ revision: g.revision, ops: g.ops, bytes: g.bytes, key: g.key ? formatKey(g.key) : null });
  const findings: Finding[] = [];
  if (split > 0) {
    findings.push(makeFinding('atomic_group_oversize', 'warning', split, oversize.sorted().map(({ item }) => ({
      revision: item.revision,
      count: item.ops,
      size: item.bytes,
      ...(item.key ? { key: formatKey(item.key) } : {}),
      detail: `${item.ops} ops, ~${item.bytes} bytes; one txn holds ${capacity.ops} ops / ${capacity.bytes} bytes${item.singlePut ? '; holds a value that needs a single PUT' : ''}`,
    }))));
  }
  return {
    summary: { revisions, multiKey, histogram: histogram.buckets(), overOps64, overOps128, overBytes, splitAtTarget: split, largest: largest.sorted().map(({ item }) => show(item)), spilledRuns },
    findings,
  };
}

/** Recognised prefixes → findings, judged by how the rules handle their keys (pure). */
export function patternFindings(patterns: InventorySnapshot['patterns'], mode: AuditMode, prefixes?: PrefixNode): Finding[] {
  const findings: Finding[] = [];
  const bySeverity = <T extends PatternPrefix>(list: T[], severity: (p: T) => 'blocker' | 'warning' | 'info') => {
    const groups = new Map<string, T[]>();
    for (const p of list) {
      const s = severity(p);
      groups.set(s, [...(groups.get(s) ?? []), p]);
    }
    return groups;
  };
  const example = (p: PatternPrefix): FindingExample => ({ prefix: p.prefix, count: p.keys, key: p.example, detail: `${p.keys} ${p.keys === 1 ? 'key' : 'keys'}, ${p.leasedKeys} leased; handled by ${p.rules.join(', ')} as ${p.handling.join(', ')}` });
  for (const [severity, list] of bySeverity(patterns.kubernetes, (p) => kubernetesSeverity(mode, p.handling))) {
    findings.push(makeFinding('kubernetes_prefix', severity as 'blocker', list.length, list.map(example), unique(list.flatMap((p) => p.rules))));
  }
  for (const [severity, list] of bySeverity(patterns.locks, (p) => lockSeverity(p.handling, p.leasedKeys))) {
    findings.push(makeFinding('lock_election_prefix', severity as 'warning', list.length, list.map(example), unique(list.flatMap((p) => p.rules))));
  }
  if (patterns.registrations.length > 0) {
    const list = patterns.registrations;
    const withFormats = (p: PatternPrefix): FindingExample => {
      const e = example(p);
      return p.formats?.length ? { ...e, detail: `${e.detail}; values: ${p.formats.join(', ')}` } : e;
    };
    findings.push(makeFinding('service_registration_prefix', 'info', list.length, list.map(withFormats), unique(list.flatMap((p) => p.rules)), registrationHint(list, prefixes ? (prefix) => keysUnder(prefixes, prefix) : undefined)));
  }
  return findings;
}

/**
 * The hint of `service_registration_prefix`: the `action: service` rule to
 * write for the largest registration folder not registered yet, in the format
 * its values have: over its parent folder (so `{1}` names the service), unless
 * `keysUnder` (the prefix tree's count) says the parent holds other keys too:
 * then over the folder itself (`/orders/workers/`, not `/orders/`, whose
 * `/orders/state/` a rule would have taken into the catalog).
 */
export function registrationHint(registrations: readonly PatternPrefix[], keysUnder?: (prefix: string) => number | undefined): string {
  const pending = registrations.filter((p) => p.handling.some((h) => h !== 'service'));
  if (pending.length === 0) {
    const rules = unique(registrations.flatMap((p) => p.rules));
    return `Nothing to do: ${rules.length === 1 ? 'rule' : 'rules'} ${rules.join(', ')} register${rules.length === 1 ? 's' : ''} them in Consul's catalog (\`action: service\`); \`service_key_invalid\` lists keys that make no instance.`;
  }
  const first = pending[0]!;
  const parent = parentFolder(first.prefix);
  const pendingUnder = (prefix: string) => pending.filter((p) => p.prefix.startsWith(prefix));
  // The parent only when it holds nothing but registrations, as far as the prefix tree tells.
  const parentKeys = keysUnder?.(parent);
  const onlyRegistrations = parentKeys === undefined || parentKeys === pendingUnder(parent).reduce((n, p) => n + p.keys, 0);
  const from = parent.replace(/^\/+/, '') === '' || !onlyRegistrations ? first.prefix : parent;
  const proposal = proposeServiceRule(from, pendingUnder(from));
  if (!proposal) {
    return `Their values carry a URL scheme (scheme://host:port), which no \`service.format\` reads: write them as host:port to register them in Consul's catalog with an \`action: service\` rule; meanwhile \`leases: session\` mirrors them as keys with their lifetime.`;
  }
  const block = [`format: ${proposal.format}`];
  if (proposal.fields) block.push(`fields: { address: ${JSON.stringify(proposal.fields.address)}, port: ${JSON.stringify(proposal.fields.port)} }`);
  if (proposal.name !== SERVICE_DEFAULTS.name || proposal.id !== SERVICE_DEFAULTS.id) block.push(`name: ${JSON.stringify(proposal.name)}`, `id: ${JSON.stringify(proposal.id)}`);
  const rule = `- { name: ${JSON.stringify(serviceNameOf(from))}, from: ${JSON.stringify(from)}, action: service, service: { ${block.join(', ')} } }`;
  return `Register them in Consul's service catalog (health checks, DNS) with an \`action: service\` rule, e.g. \`${rule}\`${proposal.notes.length ? ` (${proposal.notes.join('; ')})` : ''}; \`migrate init\` drafts one per prefix. Meanwhile \`leases: session\` mirrors them as keys with their lifetime.`;
}

/** The keys under `prefix` by the prefix tree, or undefined where the tree does not reach (its depth, its top children). */
function keysUnder(node: PrefixNode, prefix: string): number | undefined {
  if (node.prefix === prefix) return node.keys;
  const child = node.children.find((c) => prefix.startsWith(c.prefix) && c.prefix !== node.prefix);
  return child ? keysUnder(child, prefix) : undefined;
}

function unique(values: string[]): string[] {
  return [...new Set(values)];
}
