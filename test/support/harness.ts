import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { inject } from 'vitest';
import { startConsul, type ConsulServer } from '../../scripts/local-servers.js';
import { ConsulTarget } from '../../src/stores/consul.js';
import { EtcdSource } from '../../src/stores/etcd.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The servers the global setup started. */
export function servers(): { etcdEndpoint: string; consulAddress: string; consulVersion: string; consulDnsPort: number } {
  return { etcdEndpoint: inject('etcdEndpoint'), consulAddress: inject('consulAddress'), consulVersion: inject('consulVersion'), consulDnsPort: inject('consulDnsPort') };
}

/** A prefix no other test uses, so test files can share one server pair. */
export function uniquePrefix(label: string): string {
  return `t-${label}-${randomBytes(4).toString('hex')}/`;
}

/** A raw etcd3 client for setting up data (the tool's own reader is what tests check). */
export function rawEtcd(): Etcd3 {
  return new Etcd3({ hosts: servers().etcdEndpoint, grpcOptions: { 'grpc.max_receive_message_length': 256 * 1024 * 1024 } });
}

export function etcdSource(): EtcdSource {
  return new EtcdSource({ endpoints: [servers().etcdEndpoint] });
}

export function consulTarget(): ConsulTarget {
  return new ConsulTarget({ address: servers().consulAddress });
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the built CLI (`bin/migrate.js`) as a user would, with a clean
 * environment plus `env`, no terminal, and no stdin.
 */
export function runCli(args: string[], options: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', CI: 'true', ...options.env };
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), ...args], { cwd: options.cwd ?? repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

/** A Consul agent of one's own (no other test writes to it), for "nothing was written" checks. */
export async function privateConsul(): Promise<ConsulServer> {
  return startConsul({ version: servers().consulVersion });
}

/** A temp folder holding `migration.yaml` with `text`, for CLI runs. */
export function configDir(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'migrate-it-'));
  writeFileSync(join(dir, 'migration.yaml'), text);
  return dir;
}

/** Environment pointing the CLI at the test servers. */
export function serverEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { ETCDCTL_ENDPOINTS: servers().etcdEndpoint, CONSUL_HTTP_ADDR: servers().consulAddress, ...extra };
}

/**
 * Consul's current KV index, to prove that a command wrote nothing. The shared
 * test agent takes writes from tests running in parallel, so tests that assert
 * on it pass the address of a private agent ({@link privateConsul}).
 */
export async function consulIndex(address = servers().consulAddress): Promise<number> {
  const target = new ConsulTarget({ address });
  try {
    const response = await target.http.request({ method: 'GET', path: '/v1/kv/', query: { keys: true } });
    return Number(response.headers['x-consul-index']);
  } finally {
    target.close();
  }
}
