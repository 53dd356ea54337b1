import type { Connections } from '../config/connections.js';
import type { MigrationConfig } from '../config/load.js';
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
