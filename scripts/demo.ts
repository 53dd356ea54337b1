/**
 * `npm run demo`: starts a real etcd and a real Consul on loopback, loads the
 * demo keyspace (fixtures/demo), and runs the tool's main job against them,
 * step by step, as a user would type it. Stops both servers at the end.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { demoKeys, loadDemoKeyspace } from '../fixtures/demo/keyspace.js';
import { repoRoot, startConsul, startEtcd } from './local-servers.js';

interface Step {
  args: string[];
  /** Exit codes this step may end with on the demo data (audit reports blockers on purpose). */
  expect: number[];
  why: string;
}

const STEPS: Step[] = [
  { args: ['doctor'], expect: [0], why: 'check both servers, the txn limit, ACLs and the credentials' },
  { args: ['copy', '--dry-run'], expect: [0], why: 'the exact operations, computed by reading Consul too; writes nothing' },
  { args: ['copy'], expect: [0], why: 'copy every copy rule at one pinned etcd revision' },
  { args: ['copy', '--dry-run'], expect: [0], why: 'a second plan has nothing left to do' },
];

const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
const client = new Etcd3({ hosts: etcd.endpoint });
let failed = false;
try {
  const keys = demoKeys();
  const loaded = await loadDemoKeyspace(client, keys);
  process.stderr.write(`demo: etcd ${etcd.endpoint}, Consul ${consul.version} ${consul.address}; loaded ${keys.length} demo keys (${loaded.leases.size} leases kept alive)\n\n`);
  const workdir = mkdtempSync(join(tmpdir(), 'migrate-demo-'));
  copyFileSync(join(repoRoot, 'fixtures', 'demo', 'migration.yaml'), join(workdir, 'migration.yaml'));
  const env = { ...process.env, ETCDCTL_ENDPOINTS: etcd.endpoint, CONSUL_HTTP_ADDR: consul.address, CI: process.env.CI ?? '' };
  for (const step of STEPS) {
    process.stdout.write(`\n$ migrate ${step.args.join(' ')}      # ${step.why}\n`);
    const run = spawnSync(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), ...step.args], { cwd: workdir, env, stdio: ['ignore', 'inherit', 'inherit'] });
    const code = run.status ?? 1;
    process.stdout.write(`(exit ${code})\n`);
    if (!step.expect.includes(code)) {
      process.stderr.write(`demo: \`migrate ${step.args.join(' ')}\` exited ${code}, expected ${step.expect.join(' or ')}\n`);
      failed = true;
      break;
    }
  }
  await loaded.stop();
} finally {
  client.close();
  await Promise.all([etcd.stop(), consul.stop()]);
}
process.exitCode = failed ? 1 : 0;
