import type { Etcd3 } from 'etcd3';
import type { Mapping } from '../../src/mapping/mapping.js';
import { routeKey } from '../../src/mapping/route.js';
import type { ConsulTarget } from '../../src/stores/consul.js';
import { statePaths } from '../../src/state/state.js';
import { parseStateDocument } from '../../src/state/state.js';

export interface ParityReport {
  checked: number;
  missing: string[];
  extra: string[];
  wrongValue: string[];
  wrongSession: string[];
  notServable: string[];
}

/**
 * A plain, independent parity check for tests: every mapped etcd key (read
 * with the raw etcd3 client) must be in Consul with the same bytes, read back
 * through `GET /v1/kv/<key>` the way applications read it, held by the session
 * recorded for its lease when the rule mirrors leases; and no other key may
 * exist under the copy rules' target prefixes.
 */
export async function checkParity(etcd: Etcd3, target: ConsulTarget, mapping: Mapping, migrationId: string, options: { revision?: number } = {}): Promise<ParityReport> {
  const report: ParityReport = { checked: 0, missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] };
  const paths = statePaths(mapping.statePrefix, migrationId);
  const sessionByLease = new Map<string, string>();
  for (const entry of await target.readEntries(await target.listKeys(paths.sessions))) {
    const record = parseStateDocument<{ schemaVersion: number; leaseId: string; sessionId: string }>(entry.key, entry.value);
    sessionByLease.set(record.leaseId, record.sessionId);
  }
  const expected = new Map<string, { value: Buffer; session?: string }>();
  for (const rule of mapping.copyRules) {
    let builder = etcd.getAll().prefix(rule.from);
    if (options.revision) builder = builder.revision(options.revision);
    const response = await builder.exec();
    for (const kv of response.kvs) {
      const route = routeKey(mapping, kv.key, { valueBytes: kv.value.length });
      if (route.kind !== 'mapped' || route.rule.name !== rule.name) continue;
      const leased = kv.lease !== '0';
      if (leased && rule.leases === 'skip') continue;
      expected.set(route.target, { value: kv.value, ...(leased && rule.leases === 'session' ? { session: sessionByLease.get(kv.lease) ?? `(no session for lease ${kv.lease})` } : {}) });
    }
  }
  for (const [key, want] of expected) {
    report.checked++;
    let got;
    try {
      got = await target.readKey(key);
    } catch {
      report.notServable.push(key);
      continue;
    }
    if (!got) report.missing.push(key);
    else if (!got.value.equals(want.value)) report.wrongValue.push(key);
    else if ((got.session ?? undefined) !== want.session) report.wrongSession.push(key);
  }
  for (const rule of mapping.copyRules) {
    for (const key of await target.listKeys(rule.to)) if (!expected.has(key)) report.extra.push(key);
  }
  return report;
}
