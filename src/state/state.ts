import { createHash } from 'node:crypto';
import { RefusedError, UsageError } from '../errors.js';
import { TxnFailedError } from '../stores/consul-http.js';
import type { TargetStore } from '../stores/types.js';
import type { MigrationConfig } from '../config/load.js';

/**
 * The tool's state in Consul, under `state.prefix` + `<id>/` (DESIGN §4).
 * Every document is JSON and carries `schemaVersion`; a newer one than this
 * build understands is refused (exit 2) instead of being misread.
 */
export const STATE_SCHEMA_VERSION = 1;

export interface StatePaths {
  root: string;
  meta: string;
  copy: string;
  checkpoint: (datacenter?: string) => string;
  leader: string;
  session: (leaseId: string) => string;
  sessions: string;
  rule: (name: string) => string;
  verifyLast: string;
  scratch: string;
  /** The dual-run's writes to etcd, announced before they are made (see OwnWrites). */
  ownWrites: string;
}

export function statePaths(prefix: string, id: string): StatePaths {
  const root = `${prefix}${id}/`;
  return {
    root,
    meta: `${root}meta`,
    copy: `${root}copy`,
    checkpoint: (datacenter) => (datacenter ? `${root}checkpoint/${datacenter}` : `${root}checkpoint`),
    leader: `${root}leader`,
    sessions: `${root}sessions/`,
    session: (leaseId) => `${root}sessions/${leaseId}`,
    rule: (name) => `${root}rules/${name}`,
    verifyLast: `${root}verify/last`,
    scratch: `${root}scratch/`,
    ownWrites: `${root}own-writes/`,
  };
}

/** The identity of a migration: which etcd cluster, which datacenter(s), which mapping. */
export interface StateMeta {
  schemaVersion: number;
  id: string;
  etcdClusterId: string;
  /** Empty while unknown: a token without agent:read cannot tell the agent's datacenter (it is recorded once one can). */
  datacenters: string[];
  mappingHash: string;
  /** The rules the hash is of (absent in state written before they were recorded): what a mapping change leaves behind is told from them. */
  rules?: RecordedRule[];
  created: string;
  toolVersion: string;
}

/** A rule as `meta` records it with the mapping. */
export interface RecordedRule {
  name: string;
  action: string;
  from: string;
  to: string;
}

export function recordedRules(config: Pick<MigrationConfig, 'rules'>): RecordedRule[] {
  return config.rules.map((r) => ({ name: r.name, action: r.action, from: r.from, to: r.to }));
}

/**
 * What a new mapping leaves in Consul that nothing replicates any more: the
 * keys under the `to` of each recorded copy rule that is gone, no longer a copy
 * rule, or copies to another `to` now (unless another copy rule takes that
 * prefix). Nothing deletes them (target keys outside every rule are never
 * touched); the operator removes them once no application reads them. Not
 * the data of rules Consul owns (`owned`: cut over or finalized): that is the
 * applications' own (a finalized rule removed from migration.yaml).
 */
export function leftBehind(recorded: readonly RecordedRule[] | undefined, config: Pick<MigrationConfig, 'rules'>, owned: ReadonlySet<string>): { rule: string; to: string; why: string }[] {
  const copies = config.rules.filter((r) => r.action === 'copy');
  const out: { rule: string; to: string; why: string }[] = [];
  for (const old of recorded ?? []) {
    if (old.action !== 'copy' || owned.has(old.name)) continue;
    if (copies.some((r) => old.to.startsWith(r.to))) continue;
    const now = config.rules.find((r) => r.name === old.name);
    out.push({ rule: old.name, to: old.to, why: !now ? 'the rule was removed' : now.action !== 'copy' ? `the rule is now a ${now.action} rule` : `the rule copies to ${now.to} now` });
  }
  return out;
}

export interface CurrentIdentity {
  id: string;
  etcdClusterId: string;
  datacenter: string;
  mappingHash: string;
  /** Recorded with the hash when `meta` is written. */
  rules?: RecordedRule[];
}

/**
 * A stable hash of what decides where keys go: the rules, the defaults and
 * the state prefix. Connection settings are not part of it (they change
 * between machines without changing the migration).
 */
export function mappingHash(config: Pick<MigrationConfig, 'rules' | 'defaults' | 'state'>): string {
  const canonical = JSON.stringify({
    state: config.state.prefix,
    defaults: config.defaults,
    rules: config.rules.map((r) => [r.name, r.from, r.to, r.action, r.keys, r.leases]),
  });
  return createHash('sha256').update(canonical).digest('hex').slice(0, 32);
}

/** Parses a state document, refusing one written by a newer version of the tool. */
export function parseStateDocument<T extends { schemaVersion: number }>(key: string, raw: Buffer): T {
  let doc: T;
  try {
    doc = JSON.parse(raw.toString('utf8')) as T;
  } catch {
    throw new RefusedError('state_corrupt', `The state document ${key} in Consul is not valid JSON.`, {
      hint: 'Something other than this tool wrote it. Inspect it with `consul kv get`, and remove or restore it before running again.',
    });
  }
  if (typeof doc?.schemaVersion !== 'number') {
    throw new RefusedError('state_corrupt', `The state document ${key} in Consul has no schemaVersion.`, {
      hint: 'Something other than this tool wrote it. Inspect it with `consul kv get`, and remove or restore it before running again.',
    });
  }
  if (doc.schemaVersion > STATE_SCHEMA_VERSION) {
    throw new UsageError('state_schema_newer', `The state document ${key} has schema version ${doc.schemaVersion}; this version of migrate understands up to ${STATE_SCHEMA_VERSION}.`, {
      hint: 'A newer migrate wrote this state. Upgrade migrate (npm i -g etcd-consul-migrate@latest) before running it against this migration.',
      details: { key, schemaVersion: doc.schemaVersion, supported: STATE_SCHEMA_VERSION },
    });
  }
  return doc;
}

export type IdentityVerdict = 'new' | 'match' | 'mapping-changed';

/**
 * The identity check every writing command runs (pure). Another etcd cluster
 * or datacenter is refused (exit 4); a changed mapping is refused unless the
 * caller accepts it, in which case the verdict says so and the caller
 * re-baselines the changed rules.
 */
export function checkIdentity(existing: StateMeta | undefined, current: CurrentIdentity, options: { acceptMappingChange?: boolean; acceptClusterChange?: boolean } = {}): IdentityVerdict {
  if (!existing) return 'new';
  if (existing.etcdClusterId !== current.etcdClusterId && !options.acceptClusterChange) {
    throw new RefusedError('identity_cluster_mismatch', `Migration "${current.id}" was started from etcd cluster ${existing.etcdClusterId}, but the configured etcd is cluster ${current.etcdClusterId}.`, {
      hint: 'Point --etcd-endpoints / ETCDCTL_ENDPOINTS at the original cluster. If that cluster was rebuilt and its data loaded again (a new cluster id), stop the dual-run and run `migrate copy --accept-cluster-change --delete-extraneous`: it records the new cluster and copies at its revision, from which the dual-run then starts.',
      details: { recorded: existing.etcdClusterId, current: current.etcdClusterId },
    });
  }
  const recorded = knownDatacenters(existing);
  if (current.datacenter && recorded.length > 0 && !recorded.includes(current.datacenter)) {
    throw new RefusedError('identity_datacenter_mismatch', `Migration "${current.id}" targets datacenter ${recorded.join(', ')}, but the configured Consul is datacenter ${current.datacenter}.`, {
      hint: 'Point CONSUL_HTTP_ADDR / --consul-addr at the original datacenter, or give this migration another id.',
      details: { recorded, current: current.datacenter },
    });
  }
  if (existing.mappingHash !== current.mappingHash) {
    if (options.acceptMappingChange) return 'mapping-changed';
    throw new RefusedError('identity_mapping_changed', `The mapping of migration "${current.id}" changed since it was recorded (${existing.mappingHash.slice(0, 12)} → ${current.mappingHash.slice(0, 12)}).`, {
      hint: 'Review the change with `migrate plan`; to go on with the new mapping, run `migrate dualrun --accept-mapping-change` (or `migrate copy --accept-mapping-change`): the changed rules are re-baselined and the new mapping recorded, after which the other commands take it. If this migration.yaml is another application\'s, copied with its id, give it an id of its own instead.',
      details: { recorded: existing.mappingHash, current: current.mappingHash },
    });
  }
  return 'match';
}

/** The datacenters `meta` names; state of an earlier release recorded an unknown one as "". */
function knownDatacenters(meta: StateMeta): string[] {
  return meta.datacenters.filter((dc) => dc !== '');
}

/** Reads a state document; undefined when absent. */
export async function readState<T extends { schemaVersion: number }>(target: Pick<TargetStore, 'readKey'>, key: string): Promise<T | undefined> {
  const entry = await target.readKey(key);
  return entry ? parseStateDocument<T>(key, entry.value) : undefined;
}

/**
 * Reads `meta`, checks the identity, and records `meta` when the migration is
 * new (create-only, so two first runs cannot both claim it). Returns the verdict.
 */
export async function ensureMeta(target: TargetStore, paths: StatePaths, current: CurrentIdentity, toolVersion: string, now: Date, options: { acceptMappingChange?: boolean; deferMappingChange?: boolean; acceptClusterChange?: boolean } = {}): Promise<IdentityVerdict> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const entry = await target.readKey(paths.meta);
    const existing = entry ? parseStateDocument<StateMeta>(paths.meta, entry.value) : undefined;
    const verdict = checkIdentity(existing, current, options);
    // Deferred: recorded by the caller once the new mapping is in force (the dual-run's re-baseline done).
    // A match recorded by an earlier release lists no rules: they are the current ones, recorded now (a later
    // mapping change is checked against them: what it adds to or removes from a cut-over rule's from).
    // So is the datacenter, once known: a first run whose token could not read the agent recorded none.
    const datacenters = existing && knownDatacenters(existing).length > 0 ? knownDatacenters(existing) : current.datacenter ? [current.datacenter] : [];
    const datacenterLearned = existing !== undefined && knownDatacenters(existing).length === 0 && datacenters.length > 0;
    const clusterChanged = existing !== undefined && existing.etcdClusterId !== current.etcdClusterId;
    if (!clusterChanged && ((verdict === 'match' && (existing?.rules || !current.rules) && !datacenterLearned) || (verdict === 'mapping-changed' && options.deferMappingChange))) return verdict;
    const meta: StateMeta = {
      schemaVersion: STATE_SCHEMA_VERSION,
      id: current.id,
      etcdClusterId: current.etcdClusterId,
      datacenters,
      mappingHash: current.mappingHash,
      ...(current.rules ? { rules: current.rules } : {}),
      created: existing?.created ?? now.toISOString(),
      toolVersion,
    };
    try {
      await target.applyTxn([{ verb: 'cas', key: paths.meta, value: Buffer.from(JSON.stringify(meta)), index: entry?.modifyIndex ?? 0 }]);
      return verdict;
    } catch (err) {
      // Someone else recorded or changed meta in between: read it again and re-check.
      if (!(err instanceof TxnFailedError)) throw err;
    }
  }
  throw new RefusedError('state_contended', `The state document ${paths.meta} kept changing while this command tried to record it.`, {
    hint: 'Another migrate process is starting the same migration; let it finish, then run again.',
  });
}
