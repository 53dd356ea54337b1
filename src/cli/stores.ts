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
 * The datacenters a command works on (issue 11): without `datacenters:` in
 * any rule, the configured target alone; otherwise one lane per datacenter,
 * each addressed through the same agent with `?dc=`. A datacenter the WAN
 * federation does not know is a configuration error (exit 2), so a typo is
 * not retried forever as an unreachable datacenter.
 */
export async function openDatacenters(loaded: LoadedConfig, target: ConsulTarget): Promise<DatacenterLane[]> {
  const primary = (await target.info()).datacenter;
  const views = datacenterViews(loaded, primary);
  if (!namesDatacenters(loaded.config)) return views.map((view) => ({ ...view, target }));
  const known = await target.datacenters();
  const unknown = views.filter((v) => !known.includes(v.datacenter)).map((v) => v.datacenter);
  if (unknown.length > 0) {
    throw new UsageError('datacenter_unknown', `migration.yaml names datacenter ${unknown.join(', ')}, which the Consul agent at ${target.address} does not know (it knows ${known.join(', ')}).`, {
      hint: 'Fix the datacenters: list of the rules, or join the datacenter\'s servers to the WAN federation (`consul join -wan`).',
      details: { unknown, known },
    });
  }
  return views.map((view) => ({ ...view, target: view.primary ? target : target.forDatacenter(view.datacenter) }));
}
