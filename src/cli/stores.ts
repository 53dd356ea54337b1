import type { Connections } from '../config/connections.js';
import type { ConsulConnection } from '../stores/consul-http.js';
import type { LoadedConfig, MigrationConfig } from '../config/load.js';
import { UsageError, isMigrateError } from '../errors.js';
import { datacenterViews, namesDatacenters, type DatacenterView } from '../mapping/datacenters.js';
import { locator } from '../mapping/mapping.js';
import { ConsulTarget } from '../stores/consul.js';
import { EtcdSource } from '../stores/etcd.js';

/** The real adapters for a command, from the resolved connections. */
export function openStores(connections: Connections, config: MigrationConfig): { source: EtcdSource; target: ConsulTarget; close(): void } {
  const source = new EtcdSource(connections.source);
  const target = new ConsulTarget(connections.target, { limits: config.target.limits });
  return {
    source,
    target,
    close() {
      source.close();
      target.close();
    },
  };
}

/** One datacenter of the migration with the target that addresses it. */
export interface DatacenterLane extends DatacenterView {
  target: ConsulTarget;
}

/**
 * The datacenters a command works on (issue 11). Without `datacenters:` in
 * any rule: the configured target alone (`--datacenter` just addresses
 * another datacenter, as always). Otherwise one lane per datacenter, each
 * addressed through the same agent with `?dc=`; the primary one is
 * `target.datacenter` of migration.yaml, else the agent's own; `only` (the
 * `--datacenter` flag) keeps one lane. A datacenter the WAN federation does
 * not know is a configuration error (exit 2), so a typo is not retried
 * forever as an unreachable datacenter.
 */
export async function openDatacenters(loaded: LoadedConfig, target: ConsulTarget, only?: string): Promise<DatacenterLane[]> {
  const lanes = await datacenterLanes(loaded, target, only);
  // Values are judged against the kv_max_value_size the agent enforces (a raised limit lets larger values
  // through, a lowered one holds them back as unmappable), unless migration.yaml sets one; keys against
  // the agent's key rule (Consul 1.21.5's refuses most punctuation). One agent serves every lane, so a
  // datacenter that is down does not hold the others up.
  const enforced = await target.agentLimits();
  const maxValueBytes = loaded.config.target.limits?.maxValueBytes ?? enforced.maxValueBytes;
  const strictKeys = enforced.strictKeys === true;
  return lanes.map((lane) => {
    const { mapping } = lane;
    if ((maxValueBytes ?? mapping.maxValueBytes) === mapping.maxValueBytes && strictKeys === (mapping.strictKeys === true)) return lane;
    return { ...lane, mapping: Object.freeze({ ...mapping, maxValueBytes: maxValueBytes ?? mapping.maxValueBytes, ...(strictKeys ? { strictKeys } : {}) }) };
  });
}

async function datacenterLanes(loaded: LoadedConfig, target: ConsulTarget, only: string | undefined): Promise<DatacenterLane[]> {
  if (!namesDatacenters(loaded.config)) {
    const primary = (await target.info()).datacenter;
    return datacenterViews(loaded, primary).map((view) => ({ ...view, target }));
  }
  const agent = target.forDatacenter(undefined);
  const views = await knownDatacenterViews(loaded, agent);
  const lanes = views.map((view) => ({ ...view, target: agent.forDatacenter(view.datacenter) }));
  if (only === undefined) return lanes;
  const picked = lanes.filter((l) => l.datacenter === only);
  if (picked.length === 0) {
    throw new UsageError('datacenter_unknown', `--datacenter ${only}: migration.yaml writes nothing to that datacenter (its datacenters: ${lanes.map((l) => l.datacenter).join(', ')}).`, {
      hint: 'Name one of those datacenters, or leave --datacenter out to work on all of them.',
      details: { datacenter: only, datacenters: lanes.map((l) => l.datacenter) },
    });
  }
  return picked;
}

/**
 * The datacenter views of a mapping whose rules name datacenters, once the
 * agent's WAN federation is found to know each of them; one it does not know
 * is a configuration error (exit 2) at the place migration.yaml names it.
 */
async function knownDatacenterViews(loaded: LoadedConfig, agent: ConsulTarget): Promise<DatacenterView[]> {
  const primary = loaded.config.target.datacenter ?? (await agent.info()).datacenter;
  const views = datacenterViews(loaded, primary);
  const known = await agent.datacenters();
  const unknown = views.filter((v) => !known.includes(v.datacenter)).map((v) => v.datacenter);
  if (unknown.length === 0) return views;
  // Who names it: the rules' datacenters: lists, or target.datacenter (the primary).
  const namers = unknown.flatMap((dc) => [
    ...(loaded.config.target.datacenter === dc ? [{ what: `target.datacenter ${dc}`, path: ['target', 'datacenter'] }] : []),
    ...loaded.config.rules.flatMap((r, i) => (r.datacenters?.includes(dc) ? [{ what: `rule ${r.name} (datacenters: ${dc})`, path: ['rules', i, 'datacenters', r.datacenters.indexOf(dc)] }] : [])),
  ]);
  const at = namers[0] ? locator(loaded)(namers[0].path) : undefined;
  const file = loaded.file ?? 'migration.yaml';
  throw new UsageError('datacenter_unknown', `${at ? `${file}:${at.line}:${at.col}` : file}: names datacenter ${unknown.join(', ')} (${namers.map((n) => n.what).join('; ')}), which the Consul agent at ${agent.address} does not know (it knows ${known.join(', ')}).`, {
    hint: 'Fix the datacenters: list of the rules, or join that datacenter\'s servers to the WAN federation (`consul join -wan`).',
    details: { unknown, known, ...(at ? { file, line: at.line, column: at.col } : {}) },
  });
}

/**
 * For the commands that read etcd only (audit, plan): the datacenters the
 * rules name are checked against the agent now, not first at the copy. A
 * warning, not a failure: these commands plan a migration, often before the
 * datacenters are joined over the WAN; the copy refuses an unknown one.
 */
export async function checkNamedDatacenters(loaded: LoadedConfig, connection: ConsulConnection, warn: (message: string) => void): Promise<void> {
  if (!namesDatacenters(loaded.config)) return;
  // A short timeout and no retries: a missing Consul costs these commands a few seconds, not minutes.
  const agent = new ConsulTarget({ ...connection, datacenter: undefined, timeoutMs: 3_000 }, { retry: { attempts: 1 } });
  try {
    await knownDatacenterViews(loaded, agent);
  } catch (err) {
    if (!isMigrateError(err)) throw err;
    warn(err.code === 'datacenter_unknown'
      ? `${err.message.replace(/\.$/, '')}: copy and dualrun refuse it until it is joined over the WAN or the rules are fixed`
      : `the datacenters the rules name were not checked against Consul (${err.message}); copy checks them before it writes`);
  } finally {
    agent.close();
  }
}

/** `--datacenter` when given as a flag (not `target.datacenter` of the file): the one datacenter to work on. */
export function datacenterFlag(connections: Connections): string | undefined {
  return connections.origins['consul.datacenter'] === 'flag' ? connections.target.datacenter : undefined;
}
