import type { UnmappableReason } from '../mapping/escape.js';
import { STRICT_CHARSET_TEXT } from '../mapping/escape.js';
import type { UnmappedPolicy } from '../config/load.js';

/**
 * The audit's findings: stable codes, how severe each is in context, and the
 * bounded collector the streaming pass fills. Everything here is pure.
 *
 * Severity: `blocker` means the migration cannot proceed as configured (the
 * audit exits 1 with a mapping file), `warning` needs a decision, `info` is
 * for the record.
 */
export type Severity = 'blocker' | 'warning' | 'info';

export type FindingCode =
  | 'key_leading_slash'
  | 'key_empty_segment'
  | 'key_dot_segment'
  | 'key_invalid_utf8'
  | 'key_control_character'
  | 'key_trailing_space'
  | 'key_too_long'
  | 'key_charset'
  | 'key_empty'
  | 'key_collision'
  | 'key_escaped'
  | 'value_too_large'
  | 'value_single_put'
  | 'folder_key_with_value'
  | 'lease_ttl_below_min'
  | 'lease_ttl_above_max'
  | 'lease_persisted'
  | 'atomic_group_oversize'
  | 'kubernetes_prefix'
  | 'lock_election_prefix'
  | 'service_registration_prefix'
  | 'service_key_invalid'
  | 'write_rate_high'
  | 'rule_from_without_slash'
  | 'unmapped_keys'
  | 'range_unreadable';

export type FindingUnit = 'keys' | 'leases' | 'groups' | 'prefixes' | 'rules' | 'ranges';

/** One thing a finding is about. Keys and prefixes are shown with `formatKey`; values never. */
export interface FindingExample {
  key?: string;
  prefix?: string;
  lease?: string;
  rule?: string;
  revision?: number;
  /** Bytes (value size, or a txn body for groups). */
  size?: number;
  count?: number;
  detail?: string;
}

export interface Finding {
  code: FindingCode;
  severity: Severity;
  /** One line saying what was found. */
  title: string;
  /** How many {@link unit}s the finding covers. */
  count: number;
  unit: FindingUnit;
  /** What to do about it. */
  hint: string;
  /** Rules whose keys are concerned (mapping mode). */
  rules: string[];
  /** At most {@link EXAMPLES_CAP} examples; `count` says how many there are in all. */
  examples: FindingExample[];
}

export const EXAMPLES_CAP = 10;

interface CodeInfo {
  unit: FindingUnit;
  title: string;
  hint: string;
}

/** The catalogue of codes (README's table is generated from the same words). */
export const FINDING_CATALOGUE: Record<FindingCode, CodeInfo> = {
  key_leading_slash: { unit: 'keys', title: 'keys that would start with "/" in Consul', hint: 'Map the prefix with a rule whose `to` has no leading "/" (e.g. from: /app/ → to: app/), or set `keys: escape`.' },
  key_empty_segment: { unit: 'keys', title: 'keys with an empty segment ("//")', hint: 'Set `keys: escape` on the rule (a reversible encoding), or rename the keys in etcd.' },
  key_dot_segment: { unit: 'keys', title: 'keys with a "." or ".." segment', hint: 'Set `keys: escape` on the rule, or rename the keys in etcd.' },
  key_invalid_utf8: { unit: 'keys', title: 'keys that are not valid UTF-8 (binary keys)', hint: 'Set `keys: escape` on the rule, or keep the prefix on etcd (`action: keep`).' },
  key_control_character: { unit: 'keys', title: 'keys with control or non-printable characters', hint: 'Set `keys: escape` on the rule, or rename the keys in etcd.' },
  key_trailing_space: { unit: 'keys', title: 'keys with a leading or trailing space (refused by Consul 1.21.6+)', hint: 'Set `keys: escape` on the rule, or rename the keys in etcd.' },
  key_charset: { unit: 'keys', title: `keys outside the characters this Consul agent serves on /v1/kv (Consul 1.21.5: ${STRICT_CHARSET_TEXT}, no "..")`, hint: 'Upgrade the Consul agents to 1.21.6 or later (1.21.5 alone has this rule), or rename the keys in etcd; `keys: escape` cannot help (its escapes use "~").' },
  key_too_long: { unit: 'keys', title: 'keys over 256 KiB: Consul could not serve them back through GET /v1/kv/<key> (HTTP 431) or hold them in a txn op', hint: 'Rename the keys in etcd, or keep them on etcd with a `keep` rule; escaping cannot shorten them.' },
  key_empty: { unit: 'keys', title: 'keys that would be empty in Consul', hint: 'Give the rule a `to` prefix, or set `keys: escape`.' },
  key_collision: { unit: 'keys', title: 'Consul keys that two source keys would both land on (one would overwrite the other)', hint: 'Map the colliding prefixes to different Consul prefixes (e.g. /app/ → app/ and app/ → app-plain/).' },
  key_escaped: { unit: 'keys', title: 'keys the rules will escape (reversibly) to servable Consul keys', hint: 'Applications reading them from Consul must use the escaped names (`~HH`); `migrate` decodes them for verify.' },
  value_too_large: { unit: 'keys', title: "values larger than the target's kv_max_value_size", hint: 'Shrink or split these values in etcd, keep the prefix on etcd, or raise limits.kv_max_value_size on the Consul servers (raft stability risk): the tool reads it from the agent (target.limits.maxValueBytes only where the token lacks agent:read).' },
  value_single_put: { unit: 'keys', title: 'values too large for any txn (written with a single PUT, outside their revision\'s txn)', hint: 'Nothing to do for the copy; during the dual-run a revision holding such a value is not applied atomically.' },
  folder_key_with_value: { unit: 'keys', title: 'keys ending in "/" that hold a value (Consul tools show them as folders)', hint: 'They copy 1:1; UIs and `consul kv get -recurse` tools may hide the value.' },
  lease_ttl_below_min: { unit: 'leases', title: 'leases with a TTL under 10 s (Consul sessions are widened to 10 s)', hint: 'Keys expire up to 2×10 s after the owner dies instead of the etcd TTL; use `leases: skip` for locks the application recreates.' },
  lease_ttl_above_max: { unit: 'leases', title: 'leases with a TTL over 24 h (Consul sessions are capped at 24 h)', hint: 'The dual-run renews the session while the etcd lease lives; after cutover the owner must renew within 24 h.' },
  lease_persisted: { unit: 'keys', title: 'leased keys copied without their lease (`leases: persist`): they will never expire in Consul', hint: 'Use `leases: session` if the keys must disappear with their owner.' },
  atomic_group_oversize: { unit: 'groups', title: "etcd transactions (keys sharing a revision) larger than one Consul txn", hint: 'The dual-run splits them into several Consul txns and counts them as non-atomic; readers may briefly see a partial update.' },
  kubernetes_prefix: { unit: 'prefixes', title: 'prefixes that look like a Kubernetes control plane', hint: 'Keep them on etcd with a rule `action: keep`; Kubernetes cannot use Consul and its secrets must not be copied.' },
  lock_election_prefix: { unit: 'prefixes', title: 'prefixes that look like locks or leader elections', hint: 'Use `leases: skip` for them: applications recreate locks against Consul (sessions) after moving.' },
  service_registration_prefix: { unit: 'prefixes', title: 'leased keys that look like service registrations (host:port or address/port JSON)', hint: "Register them in Consul's service catalog (health checks, DNS) with an `action: service` rule (`migrate init` drafts one); meanwhile `leases: session` mirrors them as keys with their lifetime." },
  service_key_invalid: { unit: 'keys', title: 'keys of `action: service` rules that make no catalog instance (the value or the key does not fit the rule)', hint: "Fit the rule's `service:` block to these keys (`format`, `fields`, the `name` and `id` templates) or fix the registrations in etcd; the copy registers the rule's other keys and reports these." },
  write_rate_high: { unit: 'prefixes', title: 'prefixes written faster than single-key Consul writes sustain (~1,100/s)', hint: 'The dual-run batches one etcd revision per txn; sustained higher rates will lag. Consider keeping the prefix on etcd or reducing its write rate.' },
  rule_from_without_slash: { unit: 'rules', title: 'rules whose `from` does not end in "/" (prefix matching is plain byte matching)', hint: 'End `from` with "/" unless you mean it: `/app` also matches `/apple`.' },
  unmapped_keys: { unit: 'keys', title: 'keys outside every rule', hint: 'Add rules for them (or a `keep` rule), or set `defaults.unmapped: skip` to leave them on etcd on purpose.' },
  range_unreadable: { unit: 'ranges', title: 'key ranges the etcd credentials may not read', hint: "Grant the etcd user read on these ranges (`migrate acl` prints the role), or audit with credentials that can; the report covers only what was readable." },
};

const REASON_CODES: Record<UnmappableReason, FindingCode> = {
  'leading-slash': 'key_leading_slash',
  'empty-segment': 'key_empty_segment',
  'dot-segment': 'key_dot_segment',
  'invalid-utf8': 'key_invalid_utf8',
  'control-character': 'key_control_character',
  'trailing-space': 'key_trailing_space',
  'key-too-long': 'key_too_long',
  'key-charset': 'key_charset',
  'empty-key': 'key_empty',
  'collision': 'key_collision',
  'value-too-large': 'value_too_large',
};

/** The finding code of a reason the mapping gives for an unmappable key. */
export function reasonCode(reason: UnmappableReason): FindingCode {
  return REASON_CODES[reason];
}

export type AuditMode = 'mapping' | 'identity';

/**
 * A key Consul could not take. With a mapping file the rule decides, so every
 * such key is a blocker (escape or keep fixes key shapes). Without one, key
 * shapes are warnings because a rule can still fix them; a value over the
 * limit is a blocker in every mapping that copies it.
 */
export function unmappableSeverity(mode: AuditMode, reason: UnmappableReason): Severity {
  // No rule fixes these: escaping makes a key longer.
  if (reason === 'value-too-large' || reason === 'key-too-long') return 'blocker';
  return mode === 'mapping' ? 'blocker' : 'warning';
}

export function unmappedSeverity(policy: UnmappedPolicy): Severity {
  return policy === 'error' ? 'blocker' : 'info';
}

/** How the keys of a recognised prefix would be handled. */
export type Handling = 'copy' | 'session' | 'persist' | 'skip' | 'keep' | 'service' | 'unmapped' | 'rejected';

const COPIED: ReadonlySet<Handling> = new Set(['copy', 'session', 'persist']);

export function isCopied(handling: readonly string[]): boolean {
  return handling.some((h) => COPIED.has(h as Handling));
}

/** A Kubernetes control plane copied by a rule is a blocker; kept (or unmapped) it is for the record. */
export function kubernetesSeverity(mode: AuditMode, handling: readonly string[]): Severity {
  if (!isCopied(handling)) return 'info';
  return mode === 'mapping' ? 'blocker' : 'warning';
}

/**
 * Locks copied as live sessions (or worse, persisted forever) need a decision; skipped or kept ones do not,
 * nor a folder named like a lock whose keys hold no lease (`leasedKeys` 0): that is data, copied as such.
 */
export function lockSeverity(handling: readonly string[], leasedKeys = 1): Severity {
  if (leasedKeys === 0) return 'info';
  return handling.includes('session') || handling.includes('persist') || handling.includes('copy') ? 'warning' : 'info';
}

/** An unreadable range is a blocker when a rule copies from it (the copy would fail). */
export function unreadableSeverity(mode: AuditMode, copiedByRule: boolean): Severity {
  return mode === 'mapping' && copiedByRule ? 'blocker' : 'warning';
}

/** Consul's single-key write throughput on the reference machine (DESIGN §7). */
export const SINGLE_KEY_WRITES_PER_SECOND = 1100;

/** Consul's session TTL range, seconds. */
export const SESSION_TTL_MIN = 10;
export const SESSION_TTL_MAX = 86400;

interface Acc {
  code: FindingCode;
  severity: Severity;
  count: number;
  examples: FindingExample[];
  rules: Set<string>;
}

/** Collects findings with bounded examples while the pass runs. */
export class FindingCollector {
  private readonly accs = new Map<string, Acc>();

  constructor(private readonly examplesCap = EXAMPLES_CAP) {}

  /** Counts `times` more for (code, severity); `example` is built only while examples are needed. */
  note(code: FindingCode, severity: Severity, example: (() => FindingExample) | undefined, rule?: string, times = 1): void {
    const id = `${code}\u0000${severity}`;
    let acc = this.accs.get(id);
    if (!acc) {
      acc = { code, severity, count: 0, examples: [], rules: new Set() };
      this.accs.set(id, acc);
    }
    acc.count += times;
    if (rule !== undefined) acc.rules.add(rule);
    if (example && acc.examples.length < this.examplesCap) acc.examples.push(example());
  }

  findings(): Finding[] {
    return sortFindings([...this.accs.values()].map((acc) => makeFinding(acc.code, acc.severity, acc.count, acc.examples, [...acc.rules])));
  }
}

export function makeFinding(code: FindingCode, severity: Severity, count: number, examples: FindingExample[], rules: string[] = [], hint?: string): Finding {
  const info = FINDING_CATALOGUE[code];
  return { code, severity, title: info.title, count, unit: info.unit, hint: hint ?? info.hint, rules: [...rules].sort(), examples: examples.slice(0, EXAMPLES_CAP) };
}

const SEVERITY_ORDER: Record<Severity, number> = { blocker: 0, warning: 1, info: 2 };

export function sortFindings(findings: Finding[]): Finding[] {
  return findings.sort((a, b) => SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity] || (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
}

/** The status the audit reports: `findings` when any blocker remains. */
export function blockerCount(findings: readonly Finding[]): number {
  return findings.filter((f) => f.severity === 'blocker').length;
}
