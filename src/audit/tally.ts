import type { SourceEntry } from '../stores/types.js';
import type { Handling } from './findings.js';
import type { Routed, RuleRef } from './router.js';

/**
 * Per-rule totals of a pass: what a copy would do with each rule's keys.
 * Shared by the audit and the plan, so both count the same way.
 */
/** Per-rule totals: what a copy would do with the rule's keys. */
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
}

interface RuleAcc extends RuleTally {
  leaseSet: Set<string>;
}

interface RuleAcc extends RuleTally {
  leaseSet: Set<string>;
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

  /** `sessionCap`: distinct leases per rule counted exactly (default 100,000). */
  constructor(rules: readonly RuleRef[], private readonly sessionCap = 100_000) {
    for (const rule of rules) this.acc(rule);
  }

  private acc(rule: RuleRef): RuleAcc {
    let acc = this.rules.get(rule.name);
    if (!acc) {
      acc = {
        rule: rule.name, from: rule.from, to: rule.to, action: rule.action, keysPolicy: rule.keys, leasesPolicy: rule.leases,
        keys: 0, valueBytes: 0, copyKeys: 0, copyValueBytes: 0, escapedKeys: 0, unmappableKeys: 0, leasedKeys: 0,
        sessions: 0, sessionsAtLeast: false, persistedKeys: 0, skippedKeys: 0, keptKeys: 0, singlePutKeys: 0, leaseSet: new Set(),
      };
      this.rules.set(rule.name, acc);
    }
    return acc;
  }

  add(routed: Routed, entry: SourceEntry, handling: Handling, singlePut: boolean): void {
    if (routed.kind === 'unmapped') return;
    const acc = this.rules.get(routed.rule.name) ?? this.acc(routed.rule);
    acc.keys++;
    acc.valueBytes += entry.value.length;
    if (entry.lease !== '0') acc.leasedKeys++;
    switch (handling) {
      case 'keep':
        acc.keptKeys++;
        return;
      case 'service':
        return;
      case 'rejected':
        acc.unmappableKeys++;
        return;
      case 'skip':
        acc.skippedKeys++;
        return;
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
    if (singlePut) acc.singlePutKeys++;
  }

  list(): RuleTally[] {
    return [...this.rules.values()].map(({ leaseSet: _leaseSet, ...tally }) => tally);
  }
}
