import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { checkParity, type ParityReport } from './support/parity.js';
import { configDir, consulTarget, rawEtcd, repoRoot, runCli, serverEnv } from './support/harness.js';
import { startDualRun, waitCaughtUp } from './support/dualrun.js';

/**
 * Randomised kill-and-resume loops (issue 8): SIGKILL at a random moment, then
 * resume or restart, with an independent parity check after every iteration.
 * Small keyspaces, so the loops fit the CI budget on both Consul versions.
 */
const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

const COPY_ITERATIONS = 10;
const DUALRUN_ITERATIONS = 10;

function scenario(label: string) {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: app, from: ${root}/app/, to: ${id}/app/ }\n  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }\n`;
  return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
}

function lost(parity: ParityReport): number {
  return parity.missing.length + parity.extra.length + parity.wrongValue.length + parity.wrongSession.length + parity.notServable.length;
}

/** `migrate copy` SIGKILLed after `killAfterMs` unless it finished first. */
function copyUntilKilled(dir: string, args: string[], killAfterMs: number): Promise<{ code: number | null; killed: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'copy', '--progress', 'none', ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '', CI: 'true', ...serverEnv() }, stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, killed: signal === 'SIGKILL' });
    });
  });
}

describe('randomised kill-and-resume loops (real servers)', () => {
  it(`copy: ${COPY_ITERATIONS} iterations of SIGKILL at a random moment, then --resume; parity after each`, async () => {
    let kills = 0;
    let partial = 0;
    let keysLost = 0;
    const started = Date.now();
    for (let iteration = 0; iteration < COPY_ITERATIONS; iteration++) {
      const s = scenario(`kloop-copy${iteration}`);
      const keys = 1000 + randomInt(500);
      for (let i = 0; i < keys; i += 500) {
        const puts = Array.from({ length: Math.min(500, keys - i) }, (_, j) => etcd.put(`${s.root}/app/${String(i + j).padStart(5, '0')}`).value(randomBytes(1 + randomInt(64))));
        await etcd.if(`${s.root}/app/00000`, 'Mod', '>', -1).then(...puts).commit();
      }
      const lease = etcd.lease(120);
      const leaseId = await lease.grant();
      for (let i = 0; i < 5; i++) await etcd.put(`${s.root}/services/s${i}`).value(`svc-${i}`).lease(leaseId);
      try {
        // --rate stretches the copy over four to six seconds (with its first second's burst), so the kill lands in it:
        // at 500 ops/s, 7 of 10 copies of the 1.13 run finished before their kill.
        const first = await copyUntilKilled(s.dir, ['--rate', '250'], 700 + randomInt(1200));
        if (first.killed) {
          kills++;
          const written = (await target.listKeys(`${s.id}/app/`)).length;
          if (written > 0 && written < keys) partial++;
        } else expect(first.code).toBe(0);
        const resumed = await runCli(first.killed ? ['copy', '--resume'] : ['copy'], { cwd: s.dir, env: serverEnv() });
        expect(resumed.code, resumed.stderr).toBe(0);
        const parity = await checkParity(etcd, target, s.mapping, s.id);
        expect(parity.checked).toBe(keys + 5);
        keysLost += lost(parity);
        expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
      } finally {
        lease.release();
      }
    }
    process.stderr.write(`kill-loops (copy): ${COPY_ITERATIONS} iterations, ${kills} SIGKILLs (${partial} with the copy part-written), keys lost ${keysLost}, ${Date.now() - started} ms\n`);
    // Under load a kill can land before the first write; most must land mid-copy.
    expect(partial).toBeGreaterThanOrEqual(COPY_ITERATIONS / 3);
  }, 150_000);

  it(`dual-run: ${DUALRUN_ITERATIONS} iterations of SIGKILL at a random moment under a writer, then restart; parity after each`, async () => {
    const s = scenario('kloop-dualrun');
    for (let i = 0; i < 50; i++) await etcd.put(`${s.root}/app/k${i}`).value('0');
    const lease = etcd.lease(60);
    const leaseId = await lease.grant();
    for (let i = 0; i < 5; i++) await etcd.put(`${s.root}/services/s${i}`).value(`svc-${i}`).lease(leaseId);
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    let writes = 0;
    let keysLost = 0;
    const started = Date.now();
    /** Writes at random for `ms`: puts, deletes, two-key transactions, leased keys. */
    const write = async (ms: number) => {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const i = randomInt(100);
        const dice = randomInt(20);
        if (dice < 2) await etcd.delete().key(`${s.root}/app/k${i}`);
        else if (dice < 4) await etcd.if(`${s.root}/app/k0`, 'Mod', '>', -1).then(etcd.put(`${s.root}/app/k${i}`).value(`t${writes}`), etcd.put(`${s.root}/app/k${(i + 1) % 100}`).value(`t${writes}`)).commit();
        else if (dice === 4) await etcd.put(`${s.root}/services/s${i % 10}`).value(`svc-${writes}`).lease(leaseId);
        else await etcd.put(`${s.root}/app/k${i}`).value(`w${writes}`);
        writes++;
        await new Promise((r) => setTimeout(r, 3));
      }
    };
    let dualrun = await startDualRun(s.dir);
    try {
      for (let iteration = 0; iteration < DUALRUN_ITERATIONS; iteration++) {
        // Kill while the writer is mid-burst, restart, let it write on, then check at a quiet moment.
        const killAt = 100 + randomInt(900);
        await Promise.all([write(killAt + 300), new Promise((r) => setTimeout(r, killAt)).then(() => dualrun.kill())]);
        dualrun = await startDualRun(s.dir);
        await write(200 + randomInt(300));
        await waitCaughtUp(etcd, target, s.id);
        const parity = await checkParity(etcd, target, s.mapping, s.id);
        keysLost += lost(parity);
        expect(parity, `iteration ${iteration}`).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
      }
    } finally {
      expect(await dualrun.stop()).toBe(0);
      lease.release();
    }
    process.stderr.write(`kill-loops (dual-run): ${DUALRUN_ITERATIONS} SIGKILLs during ${writes} etcd writes, parity after each restart, keys lost ${keysLost}, ${Date.now() - started} ms\n`);
  }, 150_000);
});
