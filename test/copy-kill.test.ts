import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { checkParity } from './support/parity.js';
import { configDir, consulTarget, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';
import { eventually } from './support/dualrun.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

const KEYS = 50_000;

/** Runs `migrate copy` and SIGKILLs it after `killAfterMs` (if it is still running). */
function copyUntilKilled(dir: string, args: string[], killAfterMs: number): Promise<{ code: number | null; killed: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv() }, stdio: 'ignore' });
    let killed = false;
    const timer = setTimeout(() => {
      killed = child.kill('SIGKILL');
    }, killAfterMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, killed: killed && code === null });
    });
  });
}

/** A migration of one rule over `keys` one-byte keys under a fresh prefix. */
async function bulk(label: string, keys: number): Promise<{ id: string; dir: string }> {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: bulk, from: ${root}/bulk/, to: ${id}/bulk/ }\n`);
  for (let i = 0; i < keys; i += 1000) {
    const puts = Array.from({ length: 1000 }, (_, j) => etcd.put(`${root}/bulk/${String(i + j).padStart(6, '0')}`).value('v'));
    await etcd.if(`${root}/bulk/000000`, 'Mod', '>', -1).then(...puts).commit();
  }
  return { id, dir };
}

/** `migrate copy` with `args`, its output collected as it comes. */
function startCopy(dir: string, args: string[]) {
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (c: Buffer) => (out.stdout += c));
  child.stderr.on('data', (c: Buffer) => (out.stderr += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  return { child, out, exited };
}

describe('copy survives SIGKILL and --resume completes it (real servers)', () => {
  it(`kills a ${KEYS}-key copy with a 500 KB value and leased keys at several points, then resumes to parity`, async () => {
    const id = `kill-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: bulk, from: ${root}/bulk/, to: ${id}/bulk/ }\n  - { name: leased, from: ${root}/leased/, to: ${id}/leased/, leases: session }\n`;
    const dir = configDir(yaml);
    const lease = etcd.lease(120);
    const leaseId = await lease.grant();
    try {
      for (let i = 0; i < KEYS; i += 1000) {
        const puts = Array.from({ length: Math.min(1000, KEYS - i) }, (_, j) => etcd.put(`${root}/bulk/${String(i + j).padStart(6, '0')}`).value(randomBytes(48).toString('base64')));
        await etcd.if(`${root}/bulk/000000`, 'Mod', '>', -1).then(...puts).commit();
      }
      await etcd.put(`${root}/bulk/025000-big`).value(Buffer.alloc(500_000, 0x5a));
      for (let i = 0; i < 20; i++) await etcd.put(`${root}/leased/k${i}`).value(`leased-${i}`).lease(leaseId);

      const kills: number[] = [];
      let done = false;
      const delays = [400, 900, 1500, 700, 2500];
      for (let attempt = 0; attempt < 12 && !done; attempt++) {
        const delay = delays[attempt] ?? 10_000;
        const run = await copyUntilKilled(dir, attempt === 0 ? [] : ['--resume'], delay);
        if (run.killed) kills.push(delay);
        else {
          expect(run.code).toBe(0);
          done = true;
        }
      }
      process.stderr.write(`copy-kill: ${kills.length} SIGKILLs (after ${kills.join(", ")} ms), then a resumed copy completed\n`);
      expect(done).toBe(true);
      // The test means something only if copies really died half-way.
      expect(kills.length).toBeGreaterThanOrEqual(2);
      const state = JSON.parse((await target.readKey(`_migrate/${id}/copy`))!.value.toString());
      expect(state.completed).toBeTruthy();

      const mapping = parseConfig(yaml, 'migration.yaml').mapping;
      const parity = await checkParity(etcd, target, mapping, id, { revision: state.revision });
      expect(parity.checked).toBe(KEYS + 1 + 20);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
    } finally {
      lease.release();
    }
  }, 300_000);

  it('Ctrl-C stops between batches, records progress, reports what was written and exits 130; --resume finishes', async () => {
    const { id, dir } = await bulk('sigint', 30_000);
    const { child, out, exited } = startCopy(dir, ['--progress', 'none', '--concurrency', '1', '--rate', '10000', '--page-keys', '2000']);
    // Once a whole page (2,000 keys) is written, so that its low-water mark is recorded; a fixed
    // wait is not enough on a loaded machine, where starting alone can take most of a second.
    await eventually('the copy wrote its first page', async () => (await target.listKeys(`${id}/bulk/`)).length >= 4000, 30_000);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(out.stderr).toContain('interrupt received');
    expect(out.stdout).toMatch(/INTERRUPTED, progress recorded; run again with --resume/);
    const written = Number(/bulk\s+\d+\s+(\d+)/.exec(out.stdout)?.[1]);
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(30_000);
    expect(await target.listKeys(`${id}/bulk/`)).toHaveLength(written);
    const state = JSON.parse((await target.readKey(`_migrate/${id}/copy`))!.value.toString());
    expect(state.completed).toBeUndefined();
    expect(state.rules.bulk.lowWater).toBeTruthy();
    const resumed = await runCli(['copy', '--resume', '--format', 'json'], { cwd: dir, env: serverEnv() });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).rules[0].created).toBe(30_000 - written);
    expect(await target.listKeys(`${id}/bulk/`)).toHaveLength(30_000);
  }, 120_000);

  it('throttled (--rate): progress moves within a page, and Ctrl-C leaves the batches still waiting for their turn unsent, exiting at once', async () => {
    // One page of 5,000 keys at 150 writes/s (about 33 s); 4 txns in flight and 8 queued, each waiting its turn.
    const { id, dir } = await bulk('sigint-rate', 5_000);
    const { child, out, exited } = startCopy(dir, ['--progress', 'json', '--concurrency', '4', '--rate', '150', '--page-keys', '5000']);
    const done = () => out.stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { event: string; done?: number }).filter((e) => e.event === 'progress').map((e) => e.done!);
    await eventually('progress within the page', async () => done().filter((d) => d > 0).length >= 2, 20_000);
    expect(done().at(-1)!).toBeLessThan(5_000);
    expect(done().at(-1)!).toBeGreaterThan(done().find((d) => d > 0)!);
    const interrupted = Date.now();
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    // Without the stop, the queued txns would each wait their turn: about 10 s more.
    expect(Date.now() - interrupted).toBeLessThan(3_000);
    // --progress json: stderr stays NDJSON through the interrupt, its notice included.
    const lines = out.stderr.trim().split('\n').map((l) => JSON.parse(l) as { event: string });
    expect(lines.filter((l) => l.event === 'interrupt')).toHaveLength(1);
    const written = Number(/bulk\s+\d+\s+(\d+)/.exec(out.stdout)?.[1]);
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(5_000);
    expect(await target.listKeys(`${id}/bulk/`)).toHaveLength(written);
    const resumed = await runCli(['copy', '--resume', '--format', 'json'], { cwd: dir, env: serverEnv() });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout).rules[0]).toMatchObject({ created: 5_000 - written, unchanged: written });
  }, 120_000);

  it('Ctrl-C inside a large page stops between batches, not at the end of the page; --resume plans the rest of it', async () => {
    // Pages of up to 20,000 keys at 2,000 writes/s: about 10 s to write them all.
    const { id, dir } = await bulk('sigint-page', 20_000);
    const { child, out, exited } = startCopy(dir, ['--progress', 'none', '--concurrency', '1', '--rate', '2000', '--page-keys', '20000']);
    await eventually('the copy wrote some keys', async () => (await target.listKeys(`${id}/bulk/`)).length > 0, 30_000);
    const interrupted = Date.now();
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(Date.now() - interrupted).toBeLessThan(5_000);
    const written = Number(/bulk\s+\d+\s+(\d+)/.exec(out.stdout)?.[1]);
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(15_000);
    expect(await target.listKeys(`${id}/bulk/`)).toHaveLength(written);
    // The page it stopped in was not finished: the low-water mark (if the first, smaller pages were done: they
    // grow from 500 keys) is below what was written, and --resume re-plans the rest and writes only what is missing.
    const resumed = await runCli(['copy', '--resume', '--format', 'json'], { cwd: dir, env: serverEnv() });
    expect(resumed.code, resumed.stderr).toBe(0);
    const rule = JSON.parse(resumed.stdout).rules[0] as { created: number; unchanged: number; resumedBelow: number };
    expect(rule.resumedBelow).toBeLessThan(written);
    expect(rule).toMatchObject({ created: 20_000 - written, unchanged: written - rule.resumedBelow });
    expect(await target.listKeys(`${id}/bulk/`)).toHaveLength(20_000);
  }, 120_000);
});
