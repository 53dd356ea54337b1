import type { LeasePolicy } from '../config/load.js';
import { isServableKey, strictKeyRefusal, type UnmappableReason } from '../mapping/escape.js';
import type { CompiledRule, Mapping } from '../mapping/mapping.js';
import { routeKey, routeTargetKey } from '../mapping/route.js';
import type { ValueHasher } from '../report/hash.js';
import { formatKey } from '../report/keys.js';
import type { SourceEntry, TargetEntry } from '../stores/types.js';
import type { KeyLookup } from '../stores/listed-keys.js';
import type { RuleOwner } from '../cutover/phase.js';

/**
 * The comparison core of `migrate verify` (pure: no I/O, no clock). The
 * service feeds it one etcd page at a time with the Consul entries read for
 * the same target keys; it says which keys differ and how. Values are only
 * ever compared and digested (size + keyed hash), never copied into results.
 */

/**
 * How a Consul key differs from what etcd at the cut says it should be:
 * - `missing`: etcd has a mapped key, Consul has nothing at its target;
 * - `extra`: Consul has a key under a rule's `to` that no etcd key (at the cut) puts there,
 *   or that etcd holds under `leases: skip`;
 * - `value`: both exist, the bytes differ;
 * - `session`: the lease ↔ session mirror is wrong (see {@link SessionProblem});
 * - `not-servable`: a Consul key applications cannot read through `GET /v1/kv/<key>`
 *   (a stranded key: leading `/`, `//`, `.`/`..` segments, …).
 *
 * And for a `service` rule's catalog instances (`compare-services.ts`):
 * - `missing`: an etcd key makes an instance, the catalog has none with its id;
 * - `extra`: an instance of the rule that no etcd key makes, or a second one of an id on another node;
 * - `instance`: both exist, fields differ (the reason names them: `address,port`, …);
 * - `check`: the etcd key is leased and the instance has no TTL check, or the reverse;
 * - `check-critical`: the instance's TTL check is critical while its etcd lease is alive.
 */
export type DifferenceKind = 'missing' | 'extra' | 'value' | 'session' | 'not-servable' | 'instance' | 'check' | 'check-critical';

export const DIFFERENCE_KINDS: readonly DifferenceKind[] = ['missing', 'extra', 'value', 'session', 'not-servable', 'instance', 'check', 'check-critical'];

/** The sub-reasons of a `session` difference. */
export type SessionProblem =
  /** etcd holds the key under a lease, the rule mirrors leases, the Consul key has no session. */
  | 'no-session'
  /** The Consul key is held by a session other than the one recorded for the etcd lease. */
  | 'wrong-session'
  /** The session recorded for the etcd lease no longer exists in Consul (its keys are deleted with it). */
  | 'session-gone'
  /** No session is recorded for the etcd lease: the copy or the dual-run never mirrored it. */
  | 'no-recorded-session'
  /** The Consul key is held by a session, but the etcd key has no lease (or the rule says `leases: persist`). */
  | 'unexpected-session';

/** Why an `extra` key is extra. */
export type ExtraReason =
  /** An etcd key would map here, but it does not exist at the cut. */
  | 'no-etcd-key'
  /** No etcd key can map here (written by someone else, or a non-canonical escape). */
  | 'foreign'
  /** The etcd key exists but is leased under `leases: skip`, which is never copied. */
  | 'lease-skip';

/** `size` in bytes and a short keyed hash (HMAC-SHA-256 with the run's key): equal values match inside one report. */
export interface ValueDigest {
  size: number;
  hash: string;
}

/** One difference, as reports show it: keys (escaped by `formatKey`), sizes and keyed hashes; never a value. */
export interface Difference {
  rule: string;
  /** The Consul key, through `formatKey`; for a service rule, the instance id (`<id>@<node>` for a second instance of an id). */
  key: string;
  kind: DifferenceKind;
  /**
   * The sub-reason: a {@link SessionProblem}, an {@link ExtraReason}, a servability reason, `absent`, `bytes`,
   * `foreign-session` (the values differ, and a session this migration does not own holds the Consul key: copy leaves it) or `read-back-failed`;
   * for a service rule `no-instance`, `no-etcd-key`, `duplicate`, the differing fields (`address,port`), `no-check`, `unexpected-check` or `critical`.
   */
  reason: string;
  /** One sentence for people; ids and sizes, never values. */
  detail: string;
  /** The etcd key it comes from, through `formatKey`, when there is one. */
  sourceKey: string | null;
  /** The etcd side at the cut; null when etcd has no such key. For a service rule, the fields of the instance the key makes. */
  etcd: ValueDigest | null;
  /** The Consul side; null when Consul has no such key. For a service rule, the instance's fields in the catalog. */
  consul: ValueDigest | null;
  /** The Consul datacenter it was found in, when the migration writes to several (issue 11). */
  datacenter?: string;
}

/**
 * A difference plus what the service needs to re-check it in a later round:
 * the raw Consul key and the raw etcd key (when one maps there).
 */
export interface Finding {
  difference: Difference;
  target: string;
  source: Buffer | undefined;
  /** The difference came from reading the key back through `GET /v1/kv`, so a re-check reads it back again. */
  readBack: boolean;
}

/** What etcd at the cut says one Consul key should be. */
export interface Expectation {
  target: string;
  source: SourceEntry;
  /** `present`: Consul must hold the value; `absent`: the key is leased under `leases: skip` and must not be in Consul. */
  presence: 'present' | 'absent';
  /** The etcd lease whose session must hold the key, when the rule mirrors leases as sessions. */
  sessionLease: string | undefined;
}

/** A key of one etcd page, from the point of view of one rule. */
export type VerifyRoute =
  | { kind: 'expect'; expectation: Expectation }
  | { kind: 'unmappable'; reason: UnmappableReason }
  /** Another rule's key (a nested `from`), a kept key, or no rule at all: not this rule's business. */
  | { kind: 'other' };

/** Routes an etcd entry as the verify of `rule` sees it (the copy's view: `routeForCopy`). */
export function routeForVerify(mapping: Mapping, rule: Pick<CompiledRule, 'name' | 'leases'>, entry: SourceEntry): VerifyRoute {
  const route = routeKey(mapping, entry.key, { valueBytes: entry.value.length, maxValueBytes: mapping.maxValueBytes });
  if (route.kind === 'keep' || route.kind === 'service' || route.kind === 'unmapped' || route.rule.name !== rule.name) return { kind: 'other' };
  if (route.kind === 'unmappable') return { kind: 'unmappable', reason: route.reason };
  return { kind: 'expect', expectation: expectationFor(route.target, entry, rule.leases) };
}

/** What a mapped etcd entry requires of Consul under the rule's lease policy (DESIGN §3). */
export function expectationFor(target: string, source: SourceEntry, leases: LeasePolicy): Expectation {
  const leased = source.lease !== '0';
  if (leased && leases === 'skip') return { target, source, presence: 'absent', sessionLease: undefined };
  return { target, source, presence: 'present', sessionLease: leased && leases === 'session' ? source.lease : undefined };
}

/** One etcd page split against the rule's Consul key list. */
export interface PageSplit {
  /** Every key of the page this rule owns, in key order. */
  expectations: Expectation[];
  /** The expectations' targets that the key list holds (removed from it): the Consul values to read. */
  toRead: string[];
  /** The etcd value size of each of `toRead`: what its Consul value should weigh. */
  toReadBytes: number[];
  unmappable: Partial<Record<UnmappableReason, number>>;
  /** Keys leased under `leases: skip` (expected absent). */
  leaseSkipped: number;
}

/**
 * Routes one etcd page for `rule` and takes each target it produces out of
 * `listed` (the rule's Consul key list, strings only). What is left in
 * `listed` after the last page has no etcd key: the extra keys. The escape
 * codec does not preserve order, so this is a lookup, not a sorted merge.
 */
export function splitPage(mapping: Mapping, rule: Pick<CompiledRule, 'name' | 'leases'>, entries: readonly SourceEntry[], listed: KeyLookup): PageSplit {
  const split: PageSplit = { expectations: [], toRead: [], toReadBytes: [], unmappable: {}, leaseSkipped: 0 };
  for (const entry of entries) {
    const route = routeForVerify(mapping, rule, entry);
    if (route.kind === 'other') continue;
    if (route.kind === 'unmappable') {
      split.unmappable[route.reason] = (split.unmappable[route.reason] ?? 0) + 1;
      continue;
    }
    const { expectation } = route;
    if (expectation.presence === 'absent') split.leaseSkipped++;
    split.expectations.push(expectation);
    if (listed.take(expectation.target)) {
      split.toRead.push(expectation.target);
      split.toReadBytes.push(entry.value.length);
    }
  }
  return split;
}

/**
 * The Consul entry of each expectation's target (undefined where Consul has
 * none), from the entries read for them. Those come back in the page's order
 * as a rule (key order, and the identity of most mappings keeps it), so each
 * is matched where the last one ended; a Map of them is made only for a
 * target found out of that order, or not at all (a missing key): a read of
 * 100,000 keys spent 20 ms filling a Map it then looked every key up in.
 */
export function alignEntries(expectations: readonly Expectation[], entries: readonly TargetEntry[]): (TargetEntry | undefined)[] {
  let next = 0;
  let byKey: Map<string, TargetEntry> | undefined;
  return expectations.map(({ target }) => {
    if (entries[next]?.key === target) return entries[next++];
    byKey ??= new Map(entries.map((e) => [e.key, e]));
    return byKey.get(target);
  });
}

/** What the service knows about sessions when it compares (prefetched, so the core stays synchronous). */
export interface SessionView {
  /** The session recorded under `sessions/<lease id>`, if any. */
  recorded(leaseId: string): string | undefined;
  /** Whether the session exists in Consul (the service reads every session it asks about first). */
  alive(sessionId: string): boolean;
  /** Whether it is a session recorded for an etcd lease (one the tool made), not an application's own. */
  isMirror(sessionId: string): boolean;
}

/** The outcome of reading a key back through `GET /v1/kv/<key>`. */
export type ReadBack = { ok: true } | { ok: false; detail: string };

export interface CompareInput {
  rule: string;
  /** The Consul key. */
  target: string;
  /** What etcd says; undefined for a Consul key no etcd key maps to (a leftover of the key list, a stranded key). */
  expectation: Expectation | undefined;
  /** The Consul entry; undefined when Consul has no such key. */
  consul: TargetEntry | undefined;
  sessions: SessionView;
  hash: ValueHasher;
  mapping: Mapping;
  /** Set when the key was read back through the KV endpoint. */
  readBack?: ReadBack;
  /** The rule's owner: after its cutover Consul, where applications may hold its keys with sessions of their own. */
  owner?: RuleOwner;
}

/**
 * Compares one Consul key with what etcd at the cut says (pure). Returns the
 * difference, or undefined when the key is as it should be. One difference
 * per key; the first failing check wins: not servable, missing/extra, value,
 * session. A session that is gone wins over `missing` (Consul deleted the
 * keys with it; the lost session is the cause to fix).
 */
export function compareKey(input: CompareInput): Finding | undefined {
  const { expectation, consul, target, rule } = input;
  // The common case first, allocating nothing: a plain key, present on both sides, the same bytes.
  if (expectation?.presence === 'present' && expectation.sessionLease === undefined && consul && !consul.session && input.readBack?.ok !== false && consul.value.equals(expectation.source.value)) {
    return undefined;
  }
  // Digests (an HMAC each) only for keys that differ: most keys match, and hashing them all would cost more than the reads.
  const found = (kind: DifferenceKind, reason: string, detail: string, source: Buffer | undefined = expectation?.source.key, readBack = false): Finding => ({
    difference: {
      rule,
      key: formatKey(target),
      kind,
      reason,
      detail,
      sourceKey: source ? formatKey(source) : null,
      etcd: expectation ? digest(expectation.source.value, input.hash) : null,
      consul: consul ? digest(consul.value, input.hash) : null,
    },
    target,
    // A copy: the key is a view of its etcd page, which a finding kept for the re-checks would otherwise keep whole.
    source: source ? Buffer.from(source) : undefined,
    readBack,
  });

  if (!expectation) {
    if (!consul) return undefined;
    const servable = isServableKey(target);
    const refused = servable.ok ? (input.mapping.strictKeys ? strictKeyRefusal(target) : undefined) : servable;
    if (refused) return found('not-servable', refused.reason, `Consul holds a key that GET /v1/kv/<key> cannot serve: ${refused.detail}`);
    const owner = routeTargetKey(input.mapping, target);
    if (owner.kind === 'owned') {
      // The usual cause: a leased key whose lease expired in etcd while no dual-run ran to delete it in Consul.
      const held = !consul.session ? '' : input.sessions.isMirror(consul.session)
        ? `; the Consul key is held by session ${consul.session}: a session the tool made for an etcd lease deletes it when it ends (a running dual-run deletes it at once)`
        : `; the Consul key is held by session ${consul.session}, which this migration does not own: copy --delete-extraneous leaves it; its holder releases it, or delete it in Consul`;
      return found('extra', 'no-etcd-key', `etcd has no key ${formatKey(owner.source)} at the cut${held}`, owner.source);
    }
    const why = owner.kind === 'foreign' ? owner.detail : 'no copy rule maps to it';
    return found('extra', 'foreign', `no etcd key maps to it: ${why}`);
  }

  if (input.readBack && !input.readBack.ok && consul) {
    return found('not-servable', 'read-back-failed', `GET /v1/kv/<key> does not serve it: ${input.readBack.detail}`, expectation.source.key, true);
  }

  if (expectation.presence === 'absent') {
    if (!consul) return undefined;
    return found('extra', 'lease-skip', `the etcd key is leased (lease ${expectation.source.lease}) under leases: skip, which is never copied`);
  }

  const lease = expectation.sessionLease;
  if (lease !== undefined) {
    const recorded = input.sessions.recorded(lease);
    if (!recorded) {
      return found('session', 'no-recorded-session', `etcd lease ${lease} has no session recorded under the state prefix: it was never mirrored${consul ? '' : ' (and the key is missing)'}`);
    }
    if (!input.sessions.alive(recorded)) {
      return found('session', 'session-gone', `session ${recorded}, recorded for etcd lease ${lease}, no longer exists in Consul${consul ? '' : '; Consul deleted its keys with it'}`);
    }
  }

  if (!consul) return found('missing', 'absent', 'etcd has the key; Consul has nothing at its target');
  if (!consul.value.equals(expectation.source.value)) {
    // An application's lock (its own session) on a key etcd still owns: copy skips such a key (foreign-session), so it would not mend it.
    const sizes = consul.value.length === expectation.source.value.length ? `same size, ${consul.value.length} B` : `etcd ${expectation.source.value.length} B, Consul ${consul.value.length} B`;
    if (consul.session && lease === undefined && input.owner !== 'consul' && !input.sessions.isMirror(consul.session)) {
      return found('value', 'foreign-session', `the values differ (${sizes}); the Consul key is held by session ${consul.session}, which this migration does not own: copy leaves such a key as it is (the dual-run still writes etcd's next change of it); its holder releases it (or delete it in Consul), then copy`);
    }
    return found('value', 'bytes', `the values differ (${sizes})`);
  }

  if (lease !== undefined) {
    const recorded = input.sessions.recorded(lease)!;
    if (!consul.session) return found('session', 'no-session', `etcd holds the key under lease ${lease}, mirrored by session ${recorded}, but the Consul key has no session and will never expire`);
    if (consul.session !== recorded) return found('session', 'wrong-session', `held by session ${consul.session}, but etcd lease ${lease} is mirrored by session ${recorded}`);
    return undefined;
  }
  if (consul.session) {
    // After the cutover, a lock an application takes in Consul with its own session is Consul's business (etcd has no
    // such thing to mirror it to); only the sessions the tool made for etcd leases must follow etcd.
    if (input.owner === 'consul' && !input.sessions.isMirror(consul.session)) return undefined;
    const why = expectation.source.lease === '0' ? 'the etcd key has no lease' : `the rule says leases: persist (etcd lease ${expectation.source.lease})`;
    return found('session', 'unexpected-session', `held by session ${consul.session}, but ${why}: when that session ends, Consul deletes the key (Behavior delete) or releases it`);
  }
  return undefined;
}

/** A value as reports show it: its size and its keyed hash. */
export function digest(value: Buffer, hash: ValueHasher): ValueDigest {
  return { size: value.length, hash: hash(value) };
}

/** A rule's verdict: no persistent difference, some within its `--allow` budget, or drift. */
export type RuleStatus = 'parity' | 'within-budget' | 'drift';

/** The verdict of a rule from its persistent differences and its `--allow` budget (undefined: none). */
export function ruleStatus(differences: number, budget: number | undefined): RuleStatus {
  if (differences === 0) return 'parity';
  return budget !== undefined && differences <= budget ? 'within-budget' : 'drift';
}

/** Adds `more` into `into`, per key. */
export function addCounts<K extends string>(into: Partial<Record<K, number>>, more: Partial<Record<K, number>>): void {
  for (const [key, n] of Object.entries(more) as [K, number][]) into[key] = (into[key] ?? 0) + n;
}

/** Differences counted per kind, every kind present (zeros included) so reports keep one shape. */
export function countByKind(differences: Iterable<Pick<Difference, 'kind'>>, extra: Partial<Record<DifferenceKind, number>> = {}): Record<DifferenceKind, number> {
  const counts = Object.fromEntries(DIFFERENCE_KINDS.map((k) => [k, extra[k] ?? 0])) as Record<DifferenceKind, number>;
  for (const d of differences) counts[d.kind]++;
  return counts;
}

/** Orders differences for reports: rule order of the mapping, then key. */
export function sortFindings(findings: Finding[], ruleOrder: ReadonlyMap<string, number>): Finding[] {
  return findings.sort((a, b) => (ruleOrder.get(a.difference.rule) ?? 0) - (ruleOrder.get(b.difference.rule) ?? 0) || (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));
}
