import type { TestProject } from 'vitest/node';
import { startConsul, startEtcd } from '../../scripts/local-servers.js';

/** Starts one real etcd and one real Consul for the integration project. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
  project.provide('etcdEndpoint', etcd.endpoint);
  project.provide('consulAddress', consul.address);
  project.provide('consulVersion', consul.version);
  project.provide('consulDnsPort', consul.dnsPort);
  process.stderr.write(`integration servers: etcd ${etcd.endpoint} (pid ${etcd.pid}), Consul ${consul.version} ${consul.address} (pid ${consul.pid})\n`);
  return async () => {
    await Promise.all([etcd.stop(), consul.stop()]);
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    etcdEndpoint: string;
    consulAddress: string;
    consulVersion: string;
    /** Consul's DNS port (UDP and TCP on 127.0.0.1), for `<name>.service.consul` lookups. */
    consulDnsPort: number;
  }
}
