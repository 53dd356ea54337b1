import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { freePort } from '../../scripts/local-servers.js';
import type { ConsulTarget } from '../../src/stores/consul.js';
import type { Etcd3 } from 'etcd3';
import { repoRoot, serverEnv } from './harness.js';

export interface DualRunProcess {
  child: ChildProcess;
  metricsPort: number;
  stderr: () => string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL, no cleanup. */
  kill(): Promise<void>;
  metrics(): Promise<string>;
}

/** Starts `migrate dualrun` in the background in `dir` (which holds migration.yaml). */
export async function startDualRun(dir: string, args: string[] = [], env: Record<string, string> = {}): Promise<DualRunProcess> {
  const metricsPort = await freePort();
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'dualrun', '--metrics-addr', `127.0.0.1:${metricsPort}`, ...args], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv(), ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // The metrics endpoint answers once the process handles signals (and before it leads).
  let gone = false;
  void exited.then(() => (gone = true));
  const deadline = Date.now() + 20_000;
  while (!gone && Date.now() < deadline) {
    const up = await fetch(`http://127.0.0.1:${metricsPort}/healthz`).then(() => true, () => false);
    if (up) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    metricsPort,
    stderr: () => stderr,
    async stop() {
      child.kill('SIGTERM');
      // Bounded: a dual-run that does not stop fails the test with its log, not as the test's own timeout.
      let timer: NodeJS.Timeout | undefined;
      const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), 20_000)));
      const outcome = await Promise.race([exited, hung]);
      clearTimeout(timer);
      if (outcome === 'hung') child.kill('SIGKILL');
      const code = outcome === 'hung' ? -1 : outcome;
      // A failed stop shows why in the test's output (CI keeps nothing else of the process).
      if (code !== 0) process.stderr.write(`dual-run ${code === -1 ? 'did not stop within 20 s of SIGTERM (killed)' : `exited ${code}`}; its stderr ended with:\n${stderr.slice(-4000)}\n`);
      return code;
    },
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
    async metrics() {
      const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
      return response.text();
    },
  };
}

/** A counter or gauge from Prometheus text. */
export function metric(text: string, name: string): number {
  const match = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return match ? Number(match[1]) : NaN;
}

/** Waits until the dual-run's checkpoint has reached etcd's current revision. */
export async function waitCaughtUp(etcd: Etcd3, target: ConsulTarget, migrationId: string, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  const revision = Number((await etcd.maintenance.status()).header.revision);
  while (Date.now() < deadline) {
    const entry = await target.readKey(`_migrate/${migrationId}/checkpoint`).catch(() => undefined);
    const checkpoint = entry ? (JSON.parse(entry.value.toString()) as { revision: number }).revision : 0;
    if (checkpoint >= revision) return checkpoint;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the dual-run did not reach etcd revision ${revision} within ${timeoutMs} ms`);
}

/** Waits until `check` holds (polling), or fails with `what`. */
export async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for: ${what}`);
}
