import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';
import { startDualRun } from './support/dualrun.js';

/** Signals as a CI job's timeout, an operator's Ctrl-C and a closed terminal send them (real servers). */
const etcd = rawEtcd();
afterAll(() => etcd.close());

/** Whether process `pid` catches `signal` (SigCgt in /proc: bit signal-1). */
function catches(pid: number, signal: number): boolean {
  try {
    const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return mask !== undefined && (BigInt(`0x${mask}`) & (1n << BigInt(signal - 1))) !== 0n;
  } catch {
    return false;
  }
}

function scenario() {
  const id = `sig-${randomBytes(3).toString('hex')}`;
  return { id, dir: configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/app/, to: ${id}/app/ }\n`) };
}

describe('signals (real servers)', () => {
  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)('%s while the CLI is still loading: the command stops cleanly (exit 130, its JSON document), not killed with no output', async (name) => {
    const s = scenario();
    await etcd.put(`/${s.id}/app/a`).value('1');
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'verify', '--format', 'json', '--no-record'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    // As soon as the process catches SIGHUP (Node itself catches SIGINT and SIGTERM from its start, to pass them on to
    // JavaScript): bin/migrate.js's first line, before it loads the rest.
    const deadline = Date.now() + 10_000;
    while (!catches(child.pid!, 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    child.kill(name);
    expect(await exited).toBe(130);
    expect(JSON.parse(stdout)).toMatchObject({ command: 'verify', status: 'error', error: { code: 'interrupted' } });
  });

  it('SIGHUP (the terminal closed) stops a dual-run as SIGTERM does: exit 0, its checkpoint marked stopped, the leader lock released', async () => {
    const s = scenario();
    await etcd.put(`/${s.id}/app/a`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir);
    await new Promise((r) => setTimeout(r, 1500));
    dr.child.kill('SIGHUP');
    const code = await new Promise<number | null>((resolve) => (dr.child.exitCode !== null ? resolve(dr.child.exitCode) : dr.child.once('exit', (c) => resolve(c))));
    expect(code, dr.stderr()).toBe(0);
    expect(dr.stderr()).toMatch(/stopped \(signal\)/);
    const status = await runCli(['status', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
    expect(JSON.parse(status.stdout).dualRun).toMatchObject({ running: false, leader: null });
  });
});
