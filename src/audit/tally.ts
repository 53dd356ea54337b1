import { registrationOf, type RegistrationProblem, type RegistrationResult } from '../services/registration.js';
import type { SourceEntry } from '../stores/types.js';
import type { Handling } from './findings.js';
import type { Routed, RuleRef } from './router.js';

/**
 * Per-rule totals of a pass: what a copy would do with each rule's keys.
 * Shared by the audit and the plan, so both count the same way.
 */
export interface RuleTally {
  rule: string;
  from: string;
  to: string;
  action: RuleRef['action'];
  keysPolicy: RuleRef['keys'];
  leasesPolicy: RuleRef['leases'];
  /** Every key the rule matched. */
  keys: number;
  valueBytes: number;
  /** Keys a copy writes, and their value bytes. */
  copyKeys: number;
  copyValueBytes: number;
  escapedKeys: number;
  /** Keys the rule matched that Consul cannot take (rejected, or values over the limit). */
  unmappableKeys: number;
  leasedKeys: number;
  /** Distinct etcd leases becoming Consul sessions (`leases: session`). */
  sessions: number;
  /** True when there were more distinct leases than the exact count tracks. */
  sessionsAtLeast: boolean;
  persistedKeys: number;
  /** Leased keys not copied (`leases: skip`). */
  skippedKeys: number;
  /** Keys a `keep` rule leaves on etcd. */
  keptKeys: number;
  /** Keys whose value only fits a single PUT, not a txn. */
  singlePutKeys: number;
  /** `action: service`: keys that register a catalog instance. */
  instances: number;
  /** Of those, keys without an etcd lease: registered without a TTL check, so nothing ever expires them. */
  instancesWithoutLease: number;
  /** `action: service`: keys whose value or name makes no instance (the copy reports and skips them). */
  noInstanceKeys: number;
}

interface RuleAcc extends RuleTally {
  /** Value bytes of the single-PUT keys: kept out of the report (its shape is fixed), for per-datacenter estimates. */
  singlePutBytes: number;
  leaseSet: Set<string>;
  /** Instance id in lower case → the id and the key that registers it, to find a second key with the same id in any case (as the copy does). */
  instanceIds: Map<string, { id: string; key: string }>;
}

/**
 * A registration problem in words that never carry the value: a fixed text
 * per problem, except where the parser's detail is built from the rule and
 * the key alone (a configured field, a template, an instance id).
 */
const PROBLEM_TEXT: Partial<Record<RegistrationProblem, string>> = {
  'value-not-hostport': 'the value is not host:port or [ipv6]:port',
  'value-not-json': 'the value is not a JSON object',
  'address-invalid': 'the address is neither an IP address nor a host name',
  'port-invalid': 'the port is not a number between 1 and 65535',
  'tags-invalid': 'the tags are not a list of strings',
  'meta-invalid': 'the meta is not what Consul accepts (keys of letters, digits, "_" and "-" not starting with "consul-", values up to 512 characters, at most 64 pairs)',
};

/** Why a service rule's key makes no instance, for reports (`problem: text`). */
export function registrationProblemText(failure: Extract<RegistrationResult, { ok: false }>): string {
  return `${failure.problem}: ${PROBLEM_TEXT[failure.problem] ?? failure.detail}`;
}

export const HANDLING_BIT: Record<Handling, number> = { copy: 1, session: 2, persist: 4, skip: 8, keep: 16, unmapped: 32, rejected: 64, service: 128 };

/** What happens to one key, given its route and whether it has a lease. */
export function handlingOf(routed: Routed, leased: boolean): Handling {
  switch (routed.kind) {
    case 'keep':
      return 'keep';
    case 'service':
      return 'service';
    case 'unmapped':
      return 'unmapped';
    case 'unmappable':
      return leased && routed.rule.leases === 'skip' ? 'skip' : 'rejected';
    case 'mapped':
      return leased ? routed.rule.leases : 'copy';
  }
}

export class RuleTallies {
  private readonly rules = new Map<string, RuleAcc>();

  /**
   * `sessionCap`: distinct leases (and instance ids) per rule tracked exactly
   * (default 100,000); `migrationId` goes into the instances' meta, as the copy writes it.
   */
  constructor(rules: readonly RuleRef[], private readonly sessionCap = 100_000, private readonly migrationId = '') {
    for (const rule of rules) this.acc(rule);
  }

  private acc(rule: RuleRef): RuleAcc {
    let acc = this.rules.get(rule.name);
    if (!acc) {
      acc = {
        rule: rule.name, from: rule.from, to: rule.to, action: rule.action, keysPolicy: rule.keys, leasesPolicy: rule.leases,
        keys: 0, valueBytes: 0, copyKeys: 0, copyValueBytes: 0, escapedKeys: 0, unmappableKeys: 0, leasedKeys: 0,
        sessions: 0, sessionsAtLeast: false, persistedKeys: 0, skippedKeys: 0, keptKeys: 0, singlePutKeys: 0,
        instances: 0, instancesWithoutLease: 0, noInstanceKeys: 0, singlePutBytes: 0, leaseSet: new Set(), instanceIds: new Map(),
      };
      this.rules.set(rule.name, acc);
    }
    return acc;
  }

  /**
   * Counts one key. A service rule's key is parsed with the copy's own
   * `registrationOf`; what it makes (an instance, or why none) is returned so
   * the caller can report it.
   */
  add(routed: Routed, entry: SourceEntry, handling: Handling, singlePut: boolean): RegistrationResult | undefined {
    if (routed.kind === 'unmapped') return undefined;
    const acc = this.rules.get(routed.rule.name) ?? this.acc(routed.rule);
    acc.keys++;
    acc.valueBytes += entry.value.length;
    if (entry.lease !== '0') acc.leasedKeys++;
    switch (handling) {
      case 'keep':
        acc.keptKeys++;
        return undefined;
      case 'service': {
        const outcome = this.registration(acc, routed.rule, entry);
        if (outcome.ok) {
          acc.instances++;
          if (!outcome.registration.lease) acc.instancesWithoutLease++;
        } else acc.noInstanceKeys++;
        return outcome;
      }
      case 'rejected':
        acc.unmappableKeys++;
        return undefined;
      case 'skip':
        acc.skippedKeys++;
        return undefined;
      case 'persist':
        acc.persistedKeys++;
        break;
      case 'session':
        if (!acc.leaseSet.has(entry.lease)) {
          if (acc.leaseSet.size < this.sessionCap) {
            acc.leaseSet.add(entry.lease);
            acc.sessions++;
          } else acc.sessionsAtLeast = true;
        }
        break;
      default:
        break;
    }
    acc.copyKeys++;
    acc.copyValueBytes += entry.value.length;
    if (routed.kind === 'mapped' && routed.escaped) acc.escapedKeys++;
    if (singlePut) {
      acc.singlePutKeys++;
      acc.singlePutBytes += entry.value.length;
    }
    return undefined;
  }

  /** The key's instance; a second key with an id already taken makes none, as in the copy (`desiredInstances`). */
  private registration(acc: RuleAcc, rule: RuleRef, entry: SourceEntry): RegistrationResult {
    const outcome = registrationOf(rule, entry, this.migrationId);
    if (!outcome.ok) return outcome;
    const { id, key } = outcome.registration;
    // In any case: Consul's catalog takes ids that differ only in case as one.
    const earlier = acc.instanceIds.get(id.toLowerCase());
    if (earlier !== undefined) {
      const same = earlier.id === id ? `is also the id of ${earlier.key}` : `differs only in case from "${earlier.id}", the id of ${earlier.key} (Consul's catalog takes them as one)`;
      return { ok: false, rule: rule.name, key, problem: 'id-duplicate', detail: `its instance id "${id}" ${same}; make the id template include more of the key` };
    }
    if (acc.instanceIds.size < this.sessionCap) acc.instanceIds.set(id.toLowerCase(), { id, key });
    return outcome;
  }

  /**
   * Distinct leases that become sessions across `rules`: one session per lease
   * (per datacenter), however many rules its keys fall in. `atLeast` when a
   * rule had more leases than it tracks exactly.
   */
  sessionsOf(rules: readonly string[]): { sessions: number; atLeast: boolean } {
    const leases = new Set<string>();
    let atLeast = false;
    for (const name of rules) {
      const acc = this.rules.get(name);
      if (!acc) continue;
      for (const lease of acc.leaseSet) leases.add(lease);
      atLeast ||= acc.sessionsAtLeast;
    }
    return { sessions: leases.size, atLeast };
  }

  list(): RuleTally[] {
    return [...this.rules.values()].map(({ leaseSet: _leaseSet, instanceIds: _instanceIds, singlePutBytes: _singlePutBytes, ...tally }) => tally);
  }

  /** Value bytes of each rule's single-PUT keys (not in {@link RuleTally}, whose shape the reports fix). */
  singlePutBytes(): Map<string, number> {
    return new Map([...this.rules.values()].map((acc) => [acc.rule, acc.singlePutBytes]));
  }
}
