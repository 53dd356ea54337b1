import type { MigrationConfig } from '../config/load.js';
import { datacenterNames, datacentersOf, namesDatacenters } from '../mapping/datacenters.js';
import type { RuleTallies, RuleTally } from './tally.js';

/**
 * What one Consul datacenter gets written when the configuration names
 * datacenters (issue 11): the copy rules copied there and their totals.
 * Shared by the audit and the plan, which read etcd only: each datacenter's
 * figures are the sums of its rules' tallies (a rule not copied to a
 * datacenter is a keep rule there, so its keys never fall to another rule),
 * and its sessions the distinct leases of its rules.
 */
export interface DatacenterTally {
  /** The datacenter's name; null for the primary when it is not known offline (no `target.datacenter` in migration.yaml). */
  datacenter: string | null;
  /** The datacenter rules without `datacenters:` go to (and service rules register in). */
  primary: boolean;
  /** The copy rules written there, in the order of the file. */
  rules: string[];
  copyKeys: number;
  copyValueBytes: number;
  sessions: number;
  /** True when a rule there had more distinct leases than the exact count tracks. */
  sessionsAtLeast: boolean;
  singlePutKeys: number;
  /** The primary only: catalog instances the service rules register (they have no `datacenters:`). */
  instances: number;
}

/**
 * The datacenters written, the primary first (as `datacenterNames` orders
 * them), with what each gets; `undefined` when no rule names datacenters, so
 * reports of such configurations keep their shape. `primary` is the primary's
 * name when known offline.
 */
export function tallyDatacenters(config: MigrationConfig, rules: readonly RuleTally[], primary: string | undefined, sessionsOf: RuleTallies['sessionsOf']): DatacenterTally[] | undefined {
  if (!namesDatacenters(config)) return undefined;
  // '' is never a datacenter name (rules' datacenters must match NAME), so it can stand for an unnamed primary.
  const key = primary ?? '';
  const byName = new Map(rules.map((r) => [r.rule, r]));
  return datacenterNames(config, key).map((dc) => {
    const copied = config.rules.filter((r) => r.action === 'copy' && datacentersOf(r, key).includes(dc)).map((r) => r.name);
    const tallies = copied.map((name) => byName.get(name)).filter((t): t is RuleTally => t !== undefined);
    const sum = (f: (t: RuleTally) => number) => tallies.reduce((n, t) => n + f(t), 0);
    const isPrimary = dc === key;
    const sessions = sessionsOf(copied);
    return {
      datacenter: dc === '' ? null : dc,
      primary: isPrimary,
      rules: copied,
      copyKeys: sum((t) => t.copyKeys),
      copyValueBytes: sum((t) => t.copyValueBytes),
      sessions: sessions.sessions,
      sessionsAtLeast: sessions.atLeast,
      singlePutKeys: sum((t) => t.singlePutKeys),
      instances: isPrimary ? rules.filter((r) => r.action === 'service').reduce((n, r) => n + r.instances, 0) : 0,
    };
  });
}

/** How a report names a datacenter: its name, `(primary)` after the primary's, or the primary unnamed. */
export function datacenterLabel(dc: Pick<DatacenterTally, 'datacenter' | 'primary'>): string {
  if (dc.datacenter === null) return 'the target\'s datacenter';
  return dc.primary ? `${dc.datacenter} (primary)` : dc.datacenter;
}

/**
 * When the primary is not named, one of the named datacenters may be it: then
 * the two rows are one datacenter. Said once under the rows; undefined when
 * there is nothing to say.
 */
export function unnamedPrimaryNote(datacenters: readonly DatacenterTally[]): string | undefined {
  if (!datacenters.some((d) => d.datacenter === null)) return undefined;
  const named = datacenters.map((d) => d.datacenter).filter((d): d is string => d !== null);
  return `the target's datacenter is not named (set target.datacenter in migration.yaml)${named.length ? `; if it is ${named.length === 1 ? named[0] : `one of ${named.join(', ')}`}, that datacenter gets the rules of both rows` : ''}.`;
}
