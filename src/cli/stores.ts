import type { Connections } from '../config/connections.js';
import type { LoadedConfig, MigrationConfig } from '../config/load.js';
import { UsageError } from '../errors.js';
import { datacenterViews, namesDatacenters, type DatacenterView } from '../mapping/datacenters.js';
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
  // through, a lowered one holds them back as unmappable), unless migration.yaml sets one. One agent serves
  // every lane, so a datacenter that is down does not hold the others up.
  if (loaded.config.target.limits?.maxValueBytes !== undefined) return lanes;
  const { maxValueBytes } = await target.agentLimits();
  if (maxValueBytes === undefined) return lanes;
  return lanes.map((lane) => (maxValueBytes === lane.mapping.maxValueBytes ? lane : { ...lane, mapping: Object.freeze({ ...lane.mapping, maxValueBytes }) }));
}

async function datacenterLanes(loaded: LoadedConfig, target: ConsulTarget, only: string | undefined): Promise<DatacenterLane[]> {
  if (!namesDatacenters(loaded.config)) {
    const primary = (await target.info()).datacenter;
    return datacenterViews(loaded, primary).map((view) => ({ ...view, target }));
  }
  const agent = target.forDatacenter(undefined);
  const primary = loaded.config.target.datacenter ?? (await agent.info()).datacenter;
  const views = datacenterViews(loaded, primary);
  const known = await agent.datacenters();
  const unknown = views.filter((v) => !known.includes(v.datacenter)).map((v) => v.datacenter);
  if (unknown.length > 0) {
    // Who names it: the rules' datacenters: lists, or target.datacenter (the primary).
    const namers = unknown.flatMap((dc) => [
      ...(loaded.config.target.datacenter === dc ? [`target.datacenter ${dc}`] : []),
      ...loaded.config.rules.filter((r) => r.datacenters?.includes(dc)).map((r) => `rule ${r.name} (datacenters: ${dc})`),
    ]);
    throw new UsageError('datacenter_unknown', `${loaded.file ?? 'migration.yaml'} names datacenter ${unknown.join(', ')} (${namers.join('; ')}), which the Consul agent at ${target.address} does not know (it knows ${known.join(', ')}).`, {
      hint: 'Fix the datacenters: list of the rules, or join that datacenter\'s servers to the WAN federation (`consul join -wan`).',
      details: { unknown, known },
    });
  }
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

/** `--datacenter` when given as a flag (not `target.datacenter` of the file): the one datacenter to work on. */
export function datacenterFlag(connections: Connections): string | undefined {
  return connections.origins['consul.datacenter'] === 'flag' ? connections.target.datacenter : undefined;
}
