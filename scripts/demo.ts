/**
 * `npm run demo`: starts a real etcd and a real Consul on loopback, loads the
 * demo keyspace (fixtures/demo), and runs the tool's main job against them,
 * step by step, as a user would type it. Stops both servers at the end.
 * With `--serve` it only starts the servers and loads the keyspace (see serve()).
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
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

/**
 * `npm run demo -- --serve`: the servers with the demo keyspace loaded (leases
 * kept alive), for following the README's walkthrough by hand. Prints the
 * connection variables and runs until Ctrl-C, then stops both servers.
 */
async function serve(): Promise<never> {
  const loaded = await loadDemoKeyspace(client, demoKeys());
  process.stdout.write(`export ETCDCTL_ENDPOINTS=${etcd.endpoint} CONSUL_HTTP_ADDR=${consul.address}\n`);
  process.stderr.write(`demo: etcd ${etcd.endpoint} and Consul ${consul.version} ${consul.address} with ${loaded.keys.length} demo keys (${loaded.leases.size} leases kept alive); paste the line above into another terminal; Ctrl-C stops both servers\n`);
  return new Promise<never>(() => {
    const stop = async () => {
      await loaded.stop();
      client.close();
      await Promise.all([etcd.stop(), consul.stop()]);
      process.exit(0);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

const STEPS: Step[] = [
  { args: ['doctor'], expect: [0], why: 'check both servers, the txn limit, ACLs and the credentials' },
  // The demo keyspace holds a 700 KB value on purpose: a blocker, so audit and plan exit 1.
  { args: ['audit'], expect: [1], why: 'what is in etcd and what will not map 1:1, before anything is written' },
  { args: ['plan'], expect: [1], why: 'what each rule of migration.yaml copies, keeps and rejects' },
  { args: ['copy', '--dry-run'], expect: [0], why: 'the exact operations, computed by reading Consul too; writes nothing' },
  { args: ['copy'], expect: [0], why: 'copy every copy rule at one pinned etcd revision' },
  { args: ['copy', '--dry-run'], expect: [0], why: 'a second plan has nothing left to do' },
  { args: ['verify'], expect: [0], why: 'parity, both directions, per rule; unmappable keys counted apart' },
];

/** After the dual-run: what it replicated is checked the same way. */
const AFTER_DUALRUN: Step[] = [
  { args: ['verify'], expect: [0], why: 'still at parity after the live changes the dual-run mirrored' },
  { args: ['status'], expect: [0], why: 'each rule: its phase, keys, the last verify and the next step' },
];

/**
 * The dual-run, live: started in the background, it mirrors a config change and
 * a service registration whose lease is revoked, then stops cleanly on SIGTERM.
 */
async function dualRunStep(workdir: string, env: NodeJS.ProcessEnv, _keys: number): Promise<boolean> {
  process.stdout.write('\n$ migrate dualrun &      # replicate every etcd change into Consul until stopped\n');
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'dualrun'], { cwd: workdir, env, stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const kv = async (key: string) => {
    const response = await fetch(`${consul.address}/v1/kv/${key}?raw`);
    return response.status === 200 ? response.text() : '(absent)';
  };
  const waitFor = async (key: string, want: string) => {
    for (let i = 0; i < 100 && (await kv(key)) !== want; i++) await new Promise((r) => setTimeout(r, 100));
    return kv(key);
  };
  await new Promise((r) => setTimeout(r, 1500));
  await client.put('/platform/config/billing_service/timeout').value('45s');
  // Values are never printed, the demo's own included: it says whether Consul holds the value written.
  const replicated = (await waitFor('platform/config/billing_service/timeout', '45s')) === '45s';
  process.stdout.write(`  etcd: put /platform/config/billing_service/timeout → Consul platform/config/billing_service/timeout ${replicated ? 'holds the new value' : 'does NOT hold the new value'}\n`);
  const [instance] = (await client.getAll().prefix('/services/redis_grpc_service/').keys());
  const lease = (await client.get(instance!).exec()).kvs[0]!.lease;
  await client.leaseClient.leaseRevoke({ ID: lease });
  const target = `services/redis_grpc_service/${instance!.split('/').pop()}`;
  process.stdout.write(`  etcd: lease of ${instance} revoked → Consul ${target} ${await waitFor(target, '(absent)')}\n`);
  child.kill('SIGTERM');
  const code = await exited;
  process.stdout.write(`(dual-run stopped, exit ${code})\n`);
  return code === 0;
}

const [etcd, consul] = await Promise.all([startEtcd(), startConsul()]);
const client = new Etcd3({ hosts: etcd.endpoint });
if (process.argv.includes('--serve')) await serve();
let failed = false as boolean;
let workdir: string | undefined;
try {
  const keys = demoKeys();
  const loaded = await loadDemoKeyspace(client, keys);
  process.stderr.write(`demo: etcd ${etcd.endpoint}, Consul ${consul.version} ${consul.address}; loaded ${keys.length} demo keys (${loaded.leases.size} leases kept alive)\n\n`);
  workdir = mkdtempSync(join(tmpdir(), 'migrate-demo-'));
  copyFileSync(join(repoRoot, 'fixtures', 'demo', 'migration.yaml'), join(workdir, 'migration.yaml'));
  const env = { ...process.env, ETCDCTL_ENDPOINTS: etcd.endpoint, CONSUL_HTTP_ADDR: consul.address, CI: process.env.CI ?? '' };
  const runSteps = (steps: Step[]): boolean => {
    for (const step of steps) {
      process.stdout.write(`\n$ migrate ${step.args.join(' ')}      # ${step.why}\n`);
      const run = spawnSync(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), ...step.args], { cwd: workdir, env, stdio: ['ignore', 'inherit', 'inherit'] });
      const code = run.status ?? 1;
      process.stdout.write(`(exit ${code})\n`);
      if (!step.expect.includes(code)) {
        process.stderr.write(`demo: \`migrate ${step.args.join(' ')}\` exited ${code}, expected ${step.expect.join(' or ')}\n`);
        return false;
      }
    }
    return true;
  };
  failed = !runSteps(STEPS) || !(await dualRunStep(workdir, env, keys.length)) || !runSteps(AFTER_DUALRUN);
  await loaded.stop();
} finally {
  client.close();
  await Promise.all([etcd.stop(), consul.stop()]);
  // The working folder holds what the steps wrote (rollback points hold values): gone with the servers.
  if (workdir) rmSync(workdir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
