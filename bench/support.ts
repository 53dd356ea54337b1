/**
 * Shared pieces of the benchmarks: real servers, loading a generated keyspace
 * into etcd fast, running the CLI as a child process with its peak RSS, and
 * printing one JSON line per case with the command that reproduces it.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { repoRoot } from '../scripts/local-servers.js';

export function report(result: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...result, at: new Date().toISOString() })}\n`);
}

/** Writes `count` keys of `valueBytes` random bytes under `prefix`, 1,000 per etcd txn, 4 txns in flight. */
export async function loadKeys(client: Etcd3, prefix: string, count: number, valueBytes: number): Promise<void> {
  const value = () => randomBytes(valueBytes);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const start = next;
      next += 1000;
      if (start >= count) return;
      const puts = Array.from({ length: Math.min(1000, count - start) }, (_, j) => client.put(`${prefix}${String(start + j).padStart(8, '0')}`).value(value()));
      await client.if(`${prefix}00000000`, 'Mod', '>', -1).then(...puts).commit();
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

export interface ChildRun {
  code: number | null;
  ms: number;
  maxRssMb: number;
  stdout: string;
  stderr: string;
}

/** Runs `bin/migrate.js` with `args`, timing the whole process and reading its peak RSS. */
export function runMigrate(args: string[], options: { cwd: string; env: Record<string, string> }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, ['--import', join(repoRoot, 'bench', 'rss-reporter.mjs'), join(repoRoot, 'bin', 'migrate.js'), ...args], {
      cwd: options.cwd,
      env: { PATH: process.env.PATH ?? '', CI: 'true', ...options.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const rss = /maxRSS=(\d+)/.exec(stderr);
      resolve({ code, ms, maxRssMb: rss ? Number(rss[1]) / 1024 : NaN, stdout, stderr });
    });
  });
}

export function uniqueId(label: string): string {
  return `${label}-${randomBytes(3).toString('hex')}`;
}
