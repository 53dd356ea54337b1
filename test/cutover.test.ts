import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configDir, consulTarget, etcdSource, rawEtcd, repoRoot, runCli, serverEnv, servers } from './support/harness.js';
import { FaultProxy } from './support/fault-proxy.js';
import { eventually, metric, startDualRun, waitCaughtUp, type DualRunProcess } from './support/dualrun.js';
import { createKvClient, type PauseEvent, type SwitchEvent } from '../src/client/index.js';
import { Terminal } from './support/terminal.js';
import { parseConfig } from '../src/config/load.js';
import { runCutover, runFinalize } from '../src/cutover/cutover.js';
import type { TxnOp } from '../src/stores/types.js';
import { EtcdWriter } from '../src/stores/etcd-writer.js';
import { LeaderLock } from '../src/dualrun/leader.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

function scenario(label: string) {
  const id = `co-${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1
id: ${id}
rules:
  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - { name: other, from: ${root}/other/, to: ${id}/other/ }
  - { name: k8s, from: ${root}/app/k8s/, action: keep }
`;
  const dir = configDir(yaml);
  const cli = (args: string[]) => runCli(args, { cwd: dir, env: serverEnv() });
  return { id, root, dir, cli };
}

type Scenario = ReturnType<typeof scenario>;

type RuleLine = { phase: string | null; owner: string; next: string; lateWrites: number };

async function phases(s: Scenario): Promise<Record<'app' | 'other' | 'k8s', RuleLine>> {
  const run = await s.cli(['status', '--format', 'json']);
  expect(run.code, run.stderr).toBe(0);
  const doc = JSON.parse(run.stdout) as { command: string; rules: { name: string; phase: string | null; owner: string; next: string; lateWrites: number }[] };
  expect(doc.command).toBe('status');
  return Object.fromEntries(doc.rules.map((r) => [r.name, r])) as unknown as Record<'app' | 'other' | 'k8s', RuleLine>;
}

async function seed(s: Scenario): Promise<void> {
  for (let i = 0; i < 5; i++) await etcd.put(`${s.root}/app/k${i}`).value(`v${i}`);
  await etcd.put(`${s.root}/app/k8s/pod`).value('kept on etcd');
  await etcd.put(`${s.root}/other/x`).value('x');
}

/** Starts the dual-run and waits until its own checkpoint (not the copy's) covers etcd's current revision. */
async function dualRun(s: Scenario): Promise<DualRunProcess> {
  const dr = await startDualRun(s.dir);
  await etcd.put(`${s.root}/outside`).value('tick');
  await waitCaughtUp(etcd, target, s.id);
  return dr;
}

/** Copies the scenario, runs the dual-run to a clean verify and cuts rule app over; the dual-run is stopped again. */
async function cutOverApp(s: Scenario): Promise<void> {
  expect((await s.cli(['copy'])).code).toBe(0);
  const dr = await dualRun(s);
  try {
    expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
    const cut = await s.cli(['cutover', '--rule', 'app', '--yes']);
    expect(cut.code, cut.stdout + cut.stderr).toBe(0);
  } finally {
    expect(await dr.stop()).toBe(0);
  }
}

/** The write pause a cutover or rollback set on rule app's phase document, if any. */
async function writesPaused(s: Scenario): Promise<{ for: string } | undefined> {
  const entry = await target.readKey(`_migrate/${s.id}/rules/app`);
  return entry ? (JSON.parse(entry.value.toString()) as { writesPaused?: { for: string } }).writesPaused : undefined;
}

async function etcdValue(key: string): Promise<string | null> {
  return etcd.get(key).string();
}

/** Everything a refused command must leave alone: the rule's Consul keys, the state but the dual-run's own, etcd under the scenario. */
async function snapshot(s: Scenario): Promise<string> {
  const consul: string[] = [];
  for (const prefix of [`${s.id}/`, `_migrate/${s.id}/`]) {
    const keys = (await target.listKeys(prefix)).filter((k) => !/\/(checkpoint|leader|sessions\/.*)$/.test(k));
    for (const e of await target.readEntries(keys)) consul.push(`${e.key}@${e.modifyIndex}`);
  }
  const kvs = await etcd.getAll().prefix(`${s.root}/`).exec();
  return JSON.stringify({ consul, etcd: kvs.kvs.map((kv) => `${kv.key.toString()}@${kv.mod_revision}`), files: existsSync(join(s.dir, 'migrate-rollback')) });
}

describe('cutover, rollback, finalize and status (real servers)', () => {
  it('a whole migration through the CLI: audit → plan → copy --dry-run → copy → dualrun → verify → cutover → reverse mirror → rollback → cutover → finalize', async () => {
    const s = scenario('flow');
    await seed(s);
    const audit = await s.cli(['audit', '--prefix', `${s.root}/`, '--format', 'json', '--progress', 'none']);
    expect(audit.code, audit.stderr).toBe(0);
    expect(JSON.parse(audit.stdout)).toMatchObject({ command: 'audit', mode: 'mapping' });
    const plan = await s.cli(['plan', '--prefix', `${s.root}/`, '--format', 'json', '--progress', 'none']);
    expect(plan.code, plan.stderr).toBe(0);
    expect(JSON.parse(plan.stdout).totals).toMatchObject({ copyKeys: 6, keptKeys: 1 });
    const dry = await s.cli(['copy', '--dry-run', '--format', 'json']);
    expect(dry.code, dry.stderr).toBe(0);
    expect((await phases(s)).app).toMatchObject({ phase: 'planned', owner: 'etcd', next: 'migrate copy' });
    expect((await phases(s)).k8s).toMatchObject({ phase: null, owner: 'etcd' });
    expect((await s.cli(['copy'])).code).toBe(0);
    expect((await phases(s)).app.phase).toBe('copied');
    const dr = await dualRun(s);
    try {
      expect((await phases(s)).app.phase).toBe('mirroring');
      const verified = await s.cli(['verify', '--progress', 'none']);
      expect(verified.code, verified.stderr).toBe(0);
      expect((await phases(s)).app).toMatchObject({ phase: 'verified', next: 'migrate cutover --rule app' });

      const cut = await s.cli(['cutover', '--rule', 'app', '--yes', '--format', 'json']);
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
      const cutResult = JSON.parse(cut.stdout) as { status: string; rules: { rollbackFile: string; rollbackKeys: number; checks: { ok: boolean }[] }[]; checks: { name: string; ok: boolean }[] };
      expect(cutResult.status).toBe('ok');
      expect(cutResult.checks.map((c) => c.name)).toEqual(['dual-run', 'caught up']);
      // The rollback point: the rule's Consul keys (5 keys; the keep rule's key is not in Consul), mode 0600.
      const rollback = cutResult.rules[0]!;
      expect(rollback.rollbackKeys).toBe(5);
      expect(statSync(rollback.rollbackFile).mode & 0o777).toBe(0o600);
      expect((JSON.parse(readFileSync(rollback.rollbackFile, 'utf8')) as { key: string }[]).map((e) => e.key)).toContain(`${s.id}/app/k0`);
      const doc = JSON.parse((await target.readKey(`_migrate/${s.id}/rules/app`))!.value.toString());
      expect(doc).toMatchObject({ schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'consul' });
      expect(doc.history.map((h: { phase: string }) => h.phase)).toEqual(['verified', 'cutover']);
      expect(doc.history[1].by).toMatch(/.+@.+/);
      expect(doc.history[1].evidence).toMatchObject({ rollbackFile: rollback.rollbackFile, verify: { clean: true } });
      expect(typeof doc.history[1].evidence.checkpoint).toBe('number');
      expect((await phases(s)).app).toMatchObject({ phase: 'cutover', owner: 'consul' });

      // Applications now write to Consul: the reverse mirror carries it to etcd.
      await target.putKey(`${s.id}/app/k1`, Buffer.from('from consul'));
      await target.putKey(`${s.id}/app/new`, Buffer.from('born in consul'));
      await target.deleteKey(`${s.id}/app/k2`);
      await eventually('Consul writes appear in etcd', async () => (await etcdValue(`${s.root}/app/k1`)) === 'from consul' && (await etcdValue(`${s.root}/app/new`)) === 'born in consul' && (await etcdValue(`${s.root}/app/k2`)) === null);
      // Other rules still replicate etcd → Consul; the keep rule is never touched.
      await etcd.put(`${s.root}/other/y`).value('y');
      await eventually('other rule still replicated', async () => (await target.readKey(`${s.id}/other/y`))?.value.toString() === 'y');
      expect(await etcdValue(`${s.root}/app/k8s/pod`)).toBe('kept on etcd');
      expect(metric(await dr.metrics(), 'migrate_dualrun_reverse_rules')).toBe(1);
      expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBeNaN();

      const back = await s.cli(['rollback', '--rule', 'app', '--yes']);
      expect(back.code, back.stdout + back.stderr).toBe(0);
      expect(back.stdout).toContain('phase rolledback, owner etcd');
      expect((await phases(s)).app).toMatchObject({ phase: 'rolledback', owner: 'etcd' });
      await eventually('reverse mirror stopped', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 0);
      // Applications write to etcd again: etcd → Consul resumes.
      await etcd.put(`${s.root}/app/k3`).value('etcd again');
      await etcd.delete().key(`${s.root}/app/new`);
      await eventually('etcd writes appear in Consul again', async () => (await target.readKey(`${s.id}/app/k3`))?.value.toString() === 'etcd again' && (await target.readKey(`${s.id}/app/new`)) === undefined);

      const again = await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now']);
      expect(again.code, again.stdout + again.stderr).toBe(0);
      const fin = await s.cli(['finalize', '--rule', 'app', '--yes', '--export-etcd', 'app-etcd.json', '--delete-etcd', '--format', 'json']);
      expect(fin.code, fin.stdout + fin.stderr).toBe(0);
      expect(JSON.parse(fin.stdout).rules[0]).toMatchObject({ etcdDeleted: 4, etcdExportFile: join(s.dir, 'app-etcd.json') });
      // The nested keep rule's key stays, and is no key "created after the read".
      expect(fin.stderr).not.toContain('created after revision');
      expect((JSON.parse(readFileSync(join(s.dir, 'app-etcd.json'), 'utf8')) as unknown[]).length).toBe(4);
      const left = await etcd.getAll().prefix(`${s.root}/app/`).keys();
      expect(left).toEqual([`${s.root}/app/k8s/pod`]);
      expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(4);
      const final = await phases(s);
      expect(final.app).toMatchObject({ phase: 'finalized', owner: 'consul', next: 'done' });
      const history = JSON.parse((await target.readKey(`_migrate/${s.id}/rules/app`))!.value.toString()).history.map((h: { phase: string }) => h.phase);
      expect(history).toEqual(['verified', 'cutover', 'rolledback', 'cutover', 'finalized']);
      // Finalized: no mirroring in either direction; deleting etcd keys was no late write.
      await target.putKey(`${s.id}/app/after`, Buffer.from('consul only'));
      await etcd.put(`${s.root}/other/z`).value('z');
      await eventually('other rule still replicated', async () => (await target.readKey(`${s.id}/other/z`))?.value.toString() === 'z');
      expect(await etcdValue(`${s.root}/app/after`)).toBeNull();
      expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total'), dr.stderr().split('\n').filter((l) => /late write|owner/.test(l)).join('\n')).toBeNaN();
      const finalVerify = await s.cli(['verify', '--progress', 'none']);
      expect(finalVerify.code, finalVerify.stdout).toBe(0);
      expect(finalVerify.stdout).toContain('rule app is finalized');
      // An application still writing etcd after the finalize: a late write, recorded, and acknowledged where the rule stands.
      await etcd.put(`${s.root}/app/late`).value('late');
      await eventually('late write recorded', async () => (await phases(s)).app.lateWrites === 1);
      expect((await phases(s)).app.next).toContain('migrate cutover --rule app --acknowledge-trips (the rule stays finalized)');
      // Said as what it is: verify compares no finalized rule (it passes), status shows the trip.
      expect(dr.stderr()).toContain('under rule app, which Consul owns; not replicated (the rule is finalized: status shows the trip until acknowledged)');
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const ack = await s.cli(['cutover', '--rule', 'app', '--yes', '--acknowledge-trips']);
      expect(ack.code, ack.stdout + ack.stderr).toBe(0);
      expect(ack.stdout).toContain('Rule app: still finalized (owner consul); its recorded late writes are acknowledged');
      expect((await phases(s)).app).toMatchObject({ phase: 'finalized', lateWrites: 0, next: 'done' });
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 120_000);

  it('refuses without --yes off a terminal (exit 2), with no dual-run, a lagging one, a failed or a stale verify (exit 4); each changes nothing', async () => {
    const s = scenario('refuse');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
    let before = await snapshot(s);

    const noYes = await s.cli(['cutover', '--rule', 'app']);
    expect(noYes.code).toBe(2);
    expect(noYes.stderr).toContain('--yes');
    for (const command of ['rollback', 'finalize']) expect((await s.cli([command, '--rule', 'app'])).code).toBe(2);

    const noDualRun = await s.cli(['cutover', '--rule', 'app', '--yes']);
    expect(noDualRun.code, noDualRun.stderr).toBe(4);
    expect(noDualRun.stdout).toMatch(/FAIL dual-run\s+the dual-run is not running/);
    expect(noDualRun.stderr).toContain('nothing was changed');
    // A dual-run that holds the leader lock and writes no checkpoint (re-baselining) is not called stopped: start it, and dualrun_locked.
    const busy = new LeaderLock(target, `_migrate/${s.id}/leader`, 'rebaselining-host:42');
    expect(await busy.acquire({ wait: false, signal: new AbortController().signal })).toBe(true);
    try {
      const held = await s.cli(['cutover', '--rule', 'app', '--yes']);
      expect(held.code, held.stderr).toBe(4);
      expect(held.stdout.replace(/\s+/g, ' ')).toContain('the dual-run rebaselining-host:42 holds the leader lock but its checkpoint has not moved for');
      expect(held.stdout).not.toContain('start `migrate dualrun`');
      expect((await s.cli(['status'])).stdout.replace(/\s+/g, ' ')).toContain('dual-run rebaselining-host:42 holds the leader lock but writes no checkpoint');
    } finally {
      await busy.release();
    }
    const keep = await s.cli(['cutover', '--rule', 'k8s', '--yes', '--format', 'json']);
    expect(keep.code).toBe(4);
    // Refused as every other refusal is in JSON: with an error naming the failed checks.
    expect(JSON.parse(keep.stdout)).toMatchObject({ status: 'refused', error: { code: 'preconditions_failed', failed: ['dual-run', 'caught up', 'k8s: action'], docs: 'README.md#error-preconditions_failed' } });
    const keepText = await s.cli(['cutover', '--rule', 'k8s', '--yes']);
    expect(keepText.stdout).toMatch(/FAIL k8s: action\s+rule k8s is a keep rule: its keys stay on etcd; there is nothing to cut over, roll back or finalize/);
    // The refusal's error goes to stderr, as every error's does; stdout holds the checks only.
    expect(keepText.stdout).not.toContain('error[');
    expect(keepText.stderr).toContain('error[preconditions_failed]: cutover refused: 3 precondition(s) failed (dual-run, caught up, k8s: action); nothing was changed.');
    // With --progress json, an error event (stderr holds NDJSON only) and one JSON document on stdout.
    const keepEvents = await s.cli(['cutover', '--rule', 'k8s', '--yes', '--format', 'json', '--progress', 'json']);
    expect(keepEvents.code).toBe(4);
    expect(JSON.parse(keepEvents.stdout)).toMatchObject({ status: 'refused' });
    const events = keepEvents.stderr.trim().split('\n').map((line) => JSON.parse(line) as { event: string; code?: string });
    expect(events.filter((e) => e.event === 'error')).toEqual([expect.objectContaining({ code: 'preconditions_failed' })]);
    expect(events.at(-1)).toMatchObject({ event: 'end', exitCode: 4 });
    // Off a terminal and without --yes too: a keep rule is refused as one, not sent to pass --yes first.
    for (const command of ['cutover', 'rollback', 'finalize']) {
      const refused = await s.cli([command, '--rule', 'k8s']);
      expect(refused.code).toBe(4);
      expect(refused.stdout).toContain('rule k8s is a keep rule');
    }
    expect(await snapshot(s)).toBe(before);

    const dr = await dualRun(s);
    try {
      // A failed verify: drift injected in Consul, recorded in verify/last.
      await target.putKey(`${s.id}/app/extra`, Buffer.from('nobody wrote me in etcd'));
      expect((await s.cli(['verify', '--progress', 'none', '--rounds', '1'])).code).toBe(1);
      before = await snapshot(s);
      const failed = await s.cli(['cutover', '--rule', 'app', '--yes']);
      expect(failed.code, failed.stderr).toBe(4);
      expect(failed.stdout).toMatch(/FAIL app: verify\s+the last verify .* found 1 difference/);
      expect(await snapshot(s)).toBe(before);

      await target.deleteKey(`${s.id}/app/extra`);
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      before = await snapshot(s);
      const stale = await s.cli(['cutover', '--rule', 'app', '--yes', '--max-verify-age', '1ms']);
      expect(stale.code).toBe(4);
      expect(stale.stdout).toContain('older than --max-verify-age');
      expect(await snapshot(s)).toBe(before);

      // Drift in Consul after the clean verify: refused at the flip, with writes paused; the reverse mirror
      // would have written Consul's drift over etcd's values (the one copy of the right data left).
      await target.putKey(`${s.id}/app/k1`, Buffer.from('WRONG'));
      await target.deleteKey(`${s.id}/app/k2`);
      before = await snapshot(s);
      const drifted = await s.cli(['cutover', '--rule', 'app', '--yes', '--drain', '100ms']);
      expect(drifted.code, drifted.stdout + drifted.stderr).toBe(4);
      expect(drifted.stdout).toMatch(/FAIL app: parity\s+etcd and Consul differ on 2 key\(s\) of rule app with writes paused \(verify: .*\): Consul does not hold what etcd holds, so cutting over now would lose or bring back data .*; writes resumed on etcd/);
      expect(await etcdValue(`${s.root}/app/k1`)).toBe('v1');
      expect(await etcdValue(`${s.root}/app/k2`)).toBe('v2');
      expect((await phases(s)).app.phase).toBe('verified');
      // The phase document the write fence made went with it, and the rollback point written before the
      // drain with the refusal (and the folder made for it).
      expect(await snapshot(s)).toBe(before);
      await target.putKey(`${s.id}/app/k1`, Buffer.from('v1'));
      await target.putKey(`${s.id}/app/k2`, Buffer.from('v2'));
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      before = await snapshot(s);

      // A file named on the command line that exists: refused at once (exit 2), never overwritten.
      writeFileSync(join(s.dir, 'taken.json'), 'an earlier rollback point');
      for (const flag of [['cutover', '--rollback-file'], ['cutover', '--snapshot'], ['finalize', '--export-etcd']]) {
        const taken = await s.cli([flag[0]!, '--rule', 'app', '--yes', flag[1]!, 'taken.json']);
        expect(taken.code, taken.stdout + taken.stderr).toBe(2);
        expect(taken.stderr).toContain(`error[file_exists]: ${join(s.dir, 'taken.json')} (${flag[1]}) already exists`);
      }
      expect(readFileSync(join(s.dir, 'taken.json'), 'utf8')).toBe('an earlier rollback point');
      expect(existsSync(join(s.dir, 'migrate-rollback'))).toBe(false);
      expect(await snapshot(s)).toBe(before);

      // A lagging dual-run: paused (its heartbeat is still fresh) while etcd moves on.
      dr.child.kill('SIGSTOP');
      try {
        await etcd.put(`${s.root}/other/while-paused`).value('p');
        before = await snapshot(s);
        // Long enough for more polls of the checkpoint than Node allows listeners on the interrupt signal.
        const lagging = await s.cli(['cutover', '--rule', 'app', '--yes', '--catch-up-timeout', '3s']);
        expect(lagging.code, lagging.stderr).toBe(4);
        expect(lagging.stderr).not.toContain('MaxListenersExceededWarning');
        expect(lagging.stdout).toMatch(/FAIL caught up\s+checkpoint \d+ is \d+ revision\(s\) behind/);
        expect(await snapshot(s)).toBe(before);
      } finally {
        dr.child.kill('SIGCONT');
      }
      expect((await phases(s)).app.phase).toBe('verified');
      // Rollback and finalize of a rule that was never cut over: refused too.
      expect((await s.cli(['rollback', '--rule', 'app', '--yes'])).code).toBe(4);
      expect((await s.cli(['finalize', '--rule', 'app', '--yes'])).code).toBe(4);
      expect(await target.readKey(`_migrate/${s.id}/rules/app`)).toBeUndefined();
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('two operators moving the same rule at once: one cutover (and one rollback) wins, the other is refused (exit 4) and writes nothing', async () => {
    const s = scenario('race');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const history = async () => (JSON.parse((await target.readKey(`_migrate/${s.id}/rules/app`))!.value.toString()) as { history: { phase: string }[] }).history.map((h) => h.phase);
      for (const [command, phase] of [['cutover', 'cutover'], ['rollback', 'rolledback']] as const) {
        const runs = await Promise.all([0, 1].map(() => s.cli([command, '--rule', 'app', '--yes', '--drain', '1s'])));
        expect(runs.map((r) => r.code).sort(), runs.map((r) => r.stdout + r.stderr).join('\n')).toEqual([0, 4]);
        const loser = runs.find((r) => r.code === 4)!;
        // Contended at the flip, or (started once the other had flipped, on a busy machine) refused by its phase check.
        expect(loser.stderr + loser.stdout).toMatch(/phase_contended|changed while this command|phase cutover: already owned by Consul|not cut over: nothing to roll back/);
        expect((await history()).filter((p) => p === phase)).toHaveLength(1);
      }
      expect(readdirSync(join(s.dir, 'migrate-rollback'))).toHaveLength(1);
      // Two finalizes: one deletes etcd's keys and keeps its export; the other is refused, its export removed.
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--drain', '200ms'])).code).toBe(0);
      const finals = await Promise.all(['f1.json', 'f2.json'].map((file) => s.cli(['finalize', '--rule', 'app', '--yes', '--export-etcd', file, '--delete-etcd'])));
      expect(finals.map((r) => r.code).sort(), finals.map((r) => r.stdout + r.stderr).join('\n')).toEqual([0, 4]);
      const lost = finals.find((r) => r.code === 4)!;
      expect(lost.stdout + lost.stderr, 'the loser says why').toMatch(/phase_contended|another operator|already finalized/);
      expect(['f1.json', 'f2.json'].filter((file) => existsSync(join(s.dir, file)))).toHaveLength(1);
      expect((await history()).filter((p) => p === 'finalized')).toHaveLength(1);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('a cutover killed during its drain leaves writes paused: status says so and how to finish; running it again completes the move', async () => {
    const s = scenario('killed');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'cutover', '--rule', 'app', '--yes', '--drain', '30s'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', ...serverEnv() }, stdio: 'ignore' });
      const exited = new Promise((resolve) => child.once('exit', resolve));
      await eventually('writes paused', async () => (await writesPaused(s)) !== undefined);
      child.kill('SIGKILL');
      await exited;
      const line = (await phases(s)).app as RuleLine & { writesPaused: { for: string } | null };
      expect(line.writesPaused).toMatchObject({ for: 'cutover' });
      expect(line.next).toMatch(/writes to the rule are PAUSED by a cutover started by \S+ .* ago; if that command no longer runs, run `migrate cutover --rule app` again/);
      const text = await s.cli(['status']);
      expect(text.stdout).toContain('PAUSED by a cutover');
      const finished = await s.cli(['cutover', '--rule', 'app', '--yes', '--drain', '200ms']);
      expect(finished.code, finished.stdout + finished.stderr).toBe(0);
      expect(await writesPaused(s)).toBeUndefined();
      expect((await phases(s)).app).toMatchObject({ phase: 'cutover', writesPaused: null });
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('rollback abandons a cutover that paused writes and never flipped (killed, or still draining): the pause is lifted, etcd stays the owner, and the cutover, if it still runs, does not flip', async () => {
    const s = scenario('abandon');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const phaseBefore = (await phases(s)).app.phase;
      // Still draining: it must not flip once its pause is gone.
      const cutover = s.cli(['cutover', '--rule', 'app', '--yes', '--drain', '8s']);
      await eventually('writes paused', async () => (await writesPaused(s)) !== undefined);
      expect((await phases(s)).app.next).toContain('or `migrate rollback --rule app` to abandon it');
      const abandon = await s.cli(['rollback', '--rule', 'app', '--yes']);
      expect(abandon.code, abandon.stdout + abandon.stderr).toBe(0);
      expect(abandon.stdout).toContain('Rule app: the unfinished cutover is abandoned; applications write the rule to etcd again');
      expect(await writesPaused(s)).toBeUndefined();
      const refused = await cutover;
      expect(refused.code, refused.stdout + refused.stderr).toBe(4);
      expect(refused.stderr).toContain('no longer paused by this cutover');
      expect((await phases(s)).app).toMatchObject({ phase: phaseBefore, owner: 'etcd', writesPaused: null });
      expect(existsSync(join(s.dir, 'migrate-rollback')) ? readdirSync(join(s.dir, 'migrate-rollback')) : []).toEqual([]);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('an interrupt (Ctrl-C) during a cutover\'s drain stops it at once: writes not paused, no rollback point left, the rule not moved (exit 130)', async () => {
    const s = scenario('cutint');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'cutover', '--rule', 'app', '--yes', '--drain', '60s'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', ...serverEnv() }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      await eventually('writes paused', async () => (await writesPaused(s)) !== undefined);
      const interruptedAt = Date.now();
      child.kill('SIGINT');
      expect(await exited, stderr).toBe(130);
      // Not the rest of the 60 s drain.
      expect(Date.now() - interruptedAt).toBeLessThan(15_000);
      expect(stderr).toContain('error[interrupted]: cutover was interrupted before it moved any rule: nothing was changed');
      expect(await writesPaused(s)).toBeUndefined();
      expect(existsSync(join(s.dir, 'migrate-rollback')) ? readdirSync(join(s.dir, 'migrate-rollback')) : []).toEqual([]);
      expect((await phases(s)).app).toMatchObject({ phase: 'verified', writesPaused: null });
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('a rollback whose dual-run stops during the drain is refused (exit 4): etcd would own the rule with nothing mirroring it to Consul', async () => {
    const s = scenario('rbdrain');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    let stopped = false;
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const cut = await s.cli(['cutover', '--rule', 'app', '--yes']);
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
      const rollback = s.cli(['rollback', '--rule', 'app', '--yes', '--drain', '5s']);
      await eventually('writes paused', async () => (await writesPaused(s)) !== undefined);
      expect(await dr.stop()).toBe(0);
      stopped = true;
      const refused = await rollback;
      expect(refused.code, refused.stdout + refused.stderr).toBe(4);
      expect(refused.stdout).toMatch(/FAIL dual-run \(after the drain\)\s+the dual-run is not running/);
      expect(await writesPaused(s)).toBeUndefined();
      expect((await phases(s)).app.phase).toBe('cutover');
    } finally {
      if (!stopped) expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('an interrupt that aborts the write pause\'s request leaves no rollback point behind (it holds values); nothing changed', async () => {
    const s = scenario('pauseint');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const before = await snapshot(s);
      const { config, mapping } = parseConfig(readFileSync(join(s.dir, 'migration.yaml'), 'utf8'), 'migration.yaml');
      const source = etcdSource();
      const controller = new AbortController();
      // Ctrl-C while the pause is being written: its request fails as the interrupt aborted it.
      const aborting = new Proxy(target, {
        get(t, name, receiver) {
          if (name === 'applyTxn') {
            return async (ops: TxnOp[], signal?: AbortSignal) => {
              if (ops.some((op) => op.key.includes('/rules/'))) {
                controller.abort();
                throw Object.assign(new Error('The operation was aborted'), { name: 'AbortError' });
              }
              return t.applyTxn(ops, signal);
            };
          }
          const value: unknown = Reflect.get(t, name, receiver);
          return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(t) : value;
        },
      });
      try {
        const run = runCutover({ source, target: aborting, config, mapping, writer: new EtcdWriter(source) }, {
          rules: ['app'], now: () => new Date(), by: 'test', cwd: s.dir, catchUpTimeoutMs: 10_000, acknowledgeTrips: false, sleep: async () => undefined, signal: controller.signal,
          drainMs: 0, maxVerifyAgeMs: 15 * 60_000, onWarning: () => undefined, verifyRule: () => Promise.reject(new Error('not reached')),
        });
        await expect(run).rejects.toThrow('aborted');
      } finally {
        source.close();
      }
      expect(existsSync(join(s.dir, 'migrate-rollback')) ? readdirSync(join(s.dir, 'migrate-rollback')) : []).toEqual([]);
      expect(await snapshot(s)).toBe(before);
      expect((await phases(s)).app.phase).toBe('verified');
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('an interrupt (Ctrl-C) before finalize --delete-etcd flips stops it: nothing deleted or exported, the rule stays cut over', async () => {
    const s = scenario('finint');
    await seed(s);
    await cutOverApp(s);
    const before = await snapshot(s);
    const { config, mapping } = parseConfig(readFileSync(join(s.dir, 'migration.yaml'), 'utf8'), 'migration.yaml');
    const source = etcdSource();
    const controller = new AbortController();
    try {
      const run = runFinalize({ source, target, config, mapping, writer: new EtcdWriter(source) }, {
        rules: ['app'], now: () => new Date(), by: 'test', cwd: s.dir, catchUpTimeoutMs: 10_000, acknowledgeTrips: false, sleep: async () => undefined,
        deleteEtcd: true, exportEtcd: join(s.dir, 'app-etcd.json'), onWarning: () => undefined, signal: controller.signal,
        // The operator presses Ctrl-C while the command asks for confirmation, and the answer comes anyway.
        confirm: async () => {
          controller.abort();
          return true;
        },
      });
      await expect(run).rejects.toMatchObject({ code: 'interrupted', message: expect.stringContaining('finalize was interrupted before it moved any rule') });
    } finally {
      source.close();
    }
    expect(await snapshot(s)).toBe(before);
    expect(existsSync(join(s.dir, 'app-etcd.json'))).toBe(false);
    expect((await phases(s)).app.phase).toBe('cutover');
  }, 60_000);

  it('an interrupt (Ctrl-C) after finalize flipped changes nothing: it deletes what it read and exits 0, not 130', async () => {
    const s = scenario('finlate');
    await seed(s);
    await cutOverApp(s);
    // etcd behind a proxy that slows every answer: the deletes after the flip take seconds.
    const { proxy, url } = await FaultProxy.forUrl(servers().etcdEndpoint);
    try {
      proxy.delay(400);
      const child = spawn(process.execPath, [join(repoRoot, 'bin', 'migrate.js'), 'finalize', '--rule', 'app', '--yes', '--delete-etcd'], { cwd: s.dir, env: { PATH: process.env.PATH ?? '', ...serverEnv({ ETCDCTL_ENDPOINTS: url }) }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c));
      child.stderr.on('data', (c: Buffer) => (out += c));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      await eventually('flipped', async () => (JSON.parse((await target.readKey(`_migrate/${s.id}/rules/app`))!.value.toString()) as { phase: string }).phase === 'finalized', 30_000);
      child.kill('SIGINT');
      expect(await exited, out).toBe(0);
      expect(out).toContain('interrupt received');
      expect(out).toMatch(/Deleted 5 etcd key/);
      for (let i = 0; i < 5; i++) expect(await etcdValue(`${s.root}/app/k${i}`)).toBeNull();
      expect(await etcdValue(`${s.root}/app/k8s/pod`)).toBe('kept on etcd');
    } finally {
      await proxy.close();
    }
  }, 90_000);

  it('finalize --delete-etcd refuses etcd keys changed past the checkpoint while no dual-run runs (a late write was deleted with no trace), and a rule whose writes a rollback paused', async () => {
    const s = scenario('finunseen');
    await seed(s);
    await cutOverApp(s);
    // A late write and a late delete while no dual-run runs: nothing records them, and verify's drift did not stop the delete.
    await etcd.put(`${s.root}/app/k1`).value('late');
    await etcd.delete().key(`${s.root}/app/k3`);
    const before = await snapshot(s);
    const refused = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd']);
    expect(refused.code, refused.stdout + refused.stderr).toBe(4);
    const text = refused.stdout.replace(/\s+/g, ' ');
    expect(text).toMatch(new RegExp(`FAIL app: etcd changes judged 2 etcd key\\(s\\) of rule app changed or deleted after revision \\d+, the last the dual-run replicated \\(${s.root}/app/k1, ${s.root}/app/k3\\), and no dual-run runs to judge them`));
    // A deleted key leaves nothing to export: --export-etcd does not let it go unjudged.
    const exported = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--export-etcd', join(s.dir, 'app-etcd.json')]);
    expect(exported.code).toBe(4);
    expect(exported.stdout).not.toContain('--export-etcd <file> to keep');
    expect(await etcdValue(`${s.root}/app/k1`)).toBe('late');
    expect(await snapshot(s)).toBe(before);
    // A dual-run judges it: a late write, recorded as a trip, which finalize refuses until acknowledged.
    const dr = await dualRun(s);
    try {
      await eventually('late writes counted', async () => metric(await dr.metrics(), 'migrate_dualrun_late_writes_total') === 2);
      const tripped = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd']);
      expect(tripped.code).toBe(4);
      expect(tripped.stdout).toMatch(/FAIL app: trips\s+2 late write/);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    // A rollback that paused the rule's writes and has not flipped it (stopped, or still running): finalize waits for it.
    const docKey = `_migrate/${s.id}/rules/app`;
    const doc = JSON.parse((await target.readKey(docKey))!.value.toString()) as Record<string, unknown>;
    await target.putKey(docKey, Buffer.from(JSON.stringify({ ...doc, writesPaused: { since: new Date().toISOString(), by: 'ops@other-shell', for: 'rollback' } })));
    const paused = await s.cli(['finalize', '--rule', 'app', '--yes', '--acknowledge-trips']);
    expect(paused.code).toBe(4);
    expect(paused.stdout.replace(/\s+/g, ' ')).toContain('FAIL app: writes paused a rollback started by ops@other-shell at');
    expect(paused.stdout.replace(/\s+/g, ' ')).toContain('`migrate rollback --rule app` finishes it and `migrate cutover --rule app` abandons it');
    expect((JSON.parse((await target.readKey(docKey))!.value.toString()) as { phase: string }).phase).toBe('cutover');
    // Its id edited: no state under the new one, and the refusal names the migration that copies the same etcd prefixes
    // (it said to run copy, which then met the other migration's keys).
    const renamed = join(s.dir, 'renamed.yaml');
    writeFileSync(renamed, readFileSync(join(s.dir, 'migration.yaml'), 'utf8').replace(`id: ${s.id}`, `id: ${s.id}-new`));
    const lost = await s.cli(['cutover', '--rule', 'app', '--yes', '--config', renamed]);
    expect(lost.code).toBe(4);
    expect(lost.stderr).toContain(`error[cutover_no_state]: Migration "${s.id}-new" has no state in Consul under _migrate/${s.id}-new/: no copy has run with this id and state prefix (migration "${s.id}" there copies the same etcd prefixes).`);
    expect(lost.stderr).toContain(`If migration.yaml's id was changed since the copy, put it back ("${s.id}")`);
  }, 120_000);

  it('finalize, then finalize --delete-etcd: a late write made in between while no dual-run runs is judged as in one step (it was deleted unseen)', async () => {
    const s = scenario('fintwo');
    await seed(s);
    await cutOverApp(s);
    expect((await s.cli(['finalize', '--rule', 'app', '--yes'])).code).toBe(0);
    await etcd.put(`${s.root}/app/k2`).value('late');
    const refused = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd']);
    expect(refused.code, refused.stdout + refused.stderr).toBe(4);
    expect(refused.stdout.replace(/\s+/g, ' ')).toContain(`FAIL app: etcd changes judged 1 etcd key(s) of rule app changed or deleted after revision`);
    expect(await etcdValue(`${s.root}/app/k2`)).toBe('late');
    // --export-etcd keeps it on disk: then it goes.
    const file = join(s.dir, 'app-etcd.json');
    const exported = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--export-etcd', file]);
    expect(exported.code, exported.stdout + exported.stderr).toBe(0);
    expect(await etcdValue(`${s.root}/app/k2`)).toBeNull();
    expect(readFileSync(file, 'utf8')).toContain(Buffer.from('late').toString('base64'));
  }, 120_000);

  it('a standby started with a new to: (--accept-mapping-change) is refused when it comes to lead after the rule was cut over, before its reverse mirror writes etcd (it emptied etcd of the rule)', async () => {
    const s = scenario('standbyto');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const leader = await dualRun(s);
    const moved = join(s.dir, 'moved.yaml');
    writeFileSync(moved, readFileSync(join(s.dir, 'migration.yaml'), 'utf8').replace(`to: ${s.id}/app/`, `to: ${s.id}/app2/`));
    // Nothing is cut over yet: its start checks pass, and it waits.
    const standby = await startDualRun(s.dir, ['--ha', '--accept-mapping-change', '--config', moved]);
    try {
      await eventually('standby waits', async () => standby.stderr().includes('another dual-run leads'), 20_000);
      const cut = await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now', '--drain', '200ms']);
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
      expect(await leader.stop()).toBe(0);
      await eventually('standby refused', async () => standby.child.exitCode !== null, 40_000);
      expect(standby.child.exitCode, standby.stderr()).toBe(4);
      expect(standby.stderr()).toContain(`error[mapping_changed_cut_over]: migration.yaml changes what Consul owns: rule app (cut over as ${s.root}/app/ → ${s.id}/app/, now ${s.root}/app/ → ${s.id}/app2/)`);
      expect(standby.stderr()).not.toContain('reverse mirror of rule app started');
      for (let i = 0; i < 5; i++) expect(await etcdValue(`${s.root}/app/k${i}`)).toBe(`v${i}`);
    } finally {
      await leader.stop();
      await standby.stop();
    }
  }, 120_000);

  it('dualrun --accept-mapping-change refuses a new to: of a cut-over rule (exit 4): the reverse mirror would have emptied etcd of it; and dropping it, which would have stopped its mirror', async () => {
    const s = scenario('moveto');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    let dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now', '--drain', '200ms'])).code).toBe(0);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    const file = join(s.dir, 'migration.yaml');
    const original = readFileSync(file, 'utf8');
    writeFileSync(file, original.replace(`to: ${s.id}/app/`, `to: ${s.id}/app2/`));
    const refused = await s.cli(['dualrun', '--accept-mapping-change']);
    expect(refused.code, refused.stderr).toBe(4);
    expect(refused.stderr).toContain(`error[mapping_changed_cut_over]: migration.yaml changes what Consul owns: rule app (cut over as ${s.root}/app/ → ${s.id}/app/, now ${s.root}/app/ → ${s.id}/app2/)`);
    for (let i = 0; i < 5; i++) expect(await etcdValue(`${s.root}/app/k${i}`)).toBe(`v${i}`);
    // doctor says so too: not a change to take with the flag, as it says of others.
    const doctor = await s.cli(['doctor', '--format', 'json']);
    expect(doctor.code, doctor.stdout).toBe(4);
    expect(JSON.parse(doctor.stdout).checks).toContainEqual(expect.objectContaining({ name: 'state.mapping', status: 'fail', code: 'mapping_changed_cut_over' }));
    // Dropped (kept on etcd instead): its writes in Consul would no longer reach etcd, and rollback would not know the rule.
    writeFileSync(file, original.replace(`{ name: app, from: ${s.root}/app/, to: ${s.id}/app/ }`, `{ name: app, from: ${s.root}/app/, action: keep }`));
    const dropped = await s.cli(['dualrun', '--accept-mapping-change']);
    expect(dropped.code, dropped.stderr).toBe(4);
    expect(dropped.stderr).toContain(`error[mapping_changed_cut_over]: migration.yaml changes what Consul owns: rule app (cut over as ${s.root}/app/ → ${s.id}/app/, no longer copied here)`);
    // Renamed (the same prefixes under another name): copied from etcd, it would overwrite what applications wrote in Consul.
    writeFileSync(file, original.replace('{ name: app,', '{ name: app2,'));
    for (const command of [['dualrun', '--accept-mapping-change'], ['copy', '--accept-mapping-change']]) {
      const renamed = await s.cli(command);
      expect(renamed.code, renamed.stderr).toBe(4);
      expect(renamed.stderr).toContain(`rule app2 (its to: ${s.id}/app/ overlaps ${s.id}/app/, where Consul owns the data of rule app, cut over)`);
    }
    // A new rule nested in its from (the keep rule k8s nested there from the start is no change): it would take those keys from the reverse mirror.
    writeFileSync(file, `${original}  - { name: a1, from: ${s.root}/app/k1, to: ${s.id}/elsewhere/ }\n`);
    for (const command of [['dualrun', '--accept-mapping-change'], ['copy', '--accept-mapping-change']]) {
      const nested = await s.cli(command);
      expect(nested.code, nested.stderr).toBe(4);
      expect(nested.stderr).toContain(`rule a1 (its from: ${s.root}/app/k1 lies in ${s.root}/app/, which rule app is cut over with`);
      expect(nested.stderr).not.toContain('rule k8s');
    }
    // The nested keep rule removed: its keys would fall to the reverse mirror, which would delete them from etcd (Consul never had them).
    writeFileSync(file, original.replace(`  - { name: k8s, from: ${s.root}/app/k8s/, action: keep }\n`, ''));
    const unnested = await s.cli(['dualrun', '--accept-mapping-change']);
    expect(unnested.code, unnested.stderr).toBe(4);
    expect(unnested.stderr).toContain(`rule k8s (its from: ${s.root}/app/k8s/ lay in ${s.root}/app/, which rule app is cut over with, and is gone`);
    for (let i = 0; i < 5; i++) expect(await etcdValue(`${s.root}/app/k${i}`)).toBe(`v${i}`);
    // Nothing recorded: without the flag the change is still refused as such.
    expect((await s.cli(['dualrun'])).stderr).toContain('error[identity_mapping_changed]');
    // State of an earlier release: meta lists no rules. Whether the change adds or removes a nested rule cannot be
    // told (it took the removal, and the reverse mirror deleted the keep rule's keys from etcd): refused, saying how to record them.
    const metaKey = `_migrate/${s.id}/meta`;
    const { rules: recorded, ...earlier } = JSON.parse((await target.readKey(metaKey))!.value.toString('utf8')) as { rules?: unknown };
    expect(recorded).toBeDefined();
    await target.applyTxn([{ verb: 'set', key: metaKey, value: Buffer.from(JSON.stringify(earlier)) }]);
    for (const command of [['dualrun', '--accept-mapping-change'], ['copy', '--accept-mapping-change']]) {
      const unknown = await s.cli(command);
      expect(unknown.code, unknown.stderr).toBe(4);
      expect(unknown.stderr).toContain(`rule app (cut over with ${s.root}/app/: the migration's state, recorded by an earlier release of migrate, does not list its rules`);
    }
    const plan = await s.cli(['plan', '--format', 'json']);
    expect(JSON.parse(plan.stdout).mappingChange.refused).toEqual([expect.stringContaining('does not list its rules')]);
    expect(await etcdValue(`${s.root}/app/k8s/pod`)).toBe('kept on etcd');
    // The mapping put back, the dual-run runs again, and records the rules: the removal is refused as such again.
    writeFileSync(file, original);
    dr = await dualRun(s);
    expect(await dr.stop()).toBe(0);
    expect(JSON.parse((await target.readKey(metaKey))!.value.toString('utf8')).rules).toEqual(recorded);
    writeFileSync(file, original.replace(`  - { name: k8s, from: ${s.root}/app/k8s/, action: keep }\n`, ''));
    expect((await s.cli(['dualrun', '--accept-mapping-change'])).stderr).toContain(`rule k8s (its from: ${s.root}/app/k8s/ lay in ${s.root}/app/, which rule app is cut over with, and is gone`);
    expect(await etcdValue(`${s.root}/app/k8s/pod`)).toBe('kept on etcd');
  }, 60_000);

  it('cutover refuses a rule whose from overlaps one another migration has cut over: two reverse mirrors would write the same etcd keys', async () => {
    const a = scenario('mirror');
    await seed(a);
    await cutOverApp(a);
    // Another team's migration of part of the same etcd keys, to a Consul prefix of its own.
    const id = `co-shared-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: shared, from: ${a.root}/app/k1, to: ${id}/shared/ }\n`);
    const cli = (args: string[]) => runCli(args, { cwd: dir, env: serverEnv() });
    expect((await cli(['copy'])).code).toBe(0);
    const dr = await startDualRun(dir);
    try {
      await waitCaughtUp(etcd, target, id);
      const refused = await cli(['cutover', '--rule', 'shared', '--yes', '--verify-now', '--format', 'json']);
      expect(refused.code, refused.stdout + refused.stderr).toBe(4);
      const check = JSON.parse(refused.stdout).rules[0].checks.find((c: { name: string }) => c.name === 'other migrations');
      expect(check).toMatchObject({ ok: false, detail: expect.stringContaining(`rule app of migration ${a.id} (from: ${a.root}/app/) is cut over, and its from overlaps ${a.root}/app/k1`) });
      expect(await target.readKey(`_migrate/${id}/owners`)).toBeUndefined();
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('finalize --delete-etcd refuses while Consul lacks keys etcd holds: nothing deleted or exported, the rule stays cut over', async () => {
    const s = scenario('finlack');
    await seed(s);
    await cutOverApp(s);
    // No dual-run mirrors Consul's deletes back to etcd: Consul lost two keys etcd still holds.
    await target.deleteKey(`${s.id}/app/k1`);
    await target.deleteKey(`${s.id}/app/k2`);
    const before = await snapshot(s);
    const args = ['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--export-etcd', 'app-etcd.json'];
    const lacking = await s.cli(args);
    expect(lacking.code, lacking.stdout + lacking.stderr).toBe(4);
    expect(lacking.stdout).toMatch(/FAIL app: consul holds the keys\s+Consul lacks 2 of the 5 etcd key\(s\) of rule app \(\/co-finlack-[0-9a-f]+\/app\/k1, \/co-finlack-[0-9a-f]+\/app\/k2\)/);
    expect(await snapshot(s)).toBe(before);
    expect(existsSync(join(s.dir, 'app-etcd.json'))).toBe(false);
    expect((await phases(s)).app.phase).toBe('cutover');
    // Written back in Consul: finalize deletes the rule's etcd keys (the kept ones stay).
    await target.putKey(`${s.id}/app/k1`, Buffer.from('v1'));
    await target.putKey(`${s.id}/app/k2`, Buffer.from('v2'));
    const fin = await s.cli(args);
    expect(fin.code, fin.stdout + fin.stderr).toBe(0);
    expect(await etcd.getAll().prefix(`${s.root}/app/`).keys()).toEqual([`${s.root}/app/k8s/pod`]);
  }, 60_000);

  it('finalize --delete-etcd again, for keys an earlier finalize left: a key the application deleted in Consul since goes with --export-etcd, which keeps it on disk', async () => {
    const s = scenario('finleft');
    await seed(s);
    await cutOverApp(s);
    const fin = await s.cli(['finalize', '--rule', 'app', '--yes']);
    expect(fin.code, fin.stdout + fin.stderr).toBe(0);
    // Consul owns the rule: an application deletes a key there; etcd's copy is stale.
    await target.deleteKey(`${s.id}/app/k3`);
    const before = await snapshot(s);
    const refused = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd']);
    expect(refused.code, refused.stdout + refused.stderr).toBe(4);
    expect(refused.stdout).toMatch(/FAIL app: consul holds the keys\s+Consul lacks 1 of the 5 etcd key\(s\) left of finalized rule app \(\/co-finleft-[0-9a-f]+\/app\/k3\): deleted there since the cutover .* Pass --export-etcd <file>/);
    // Not sent to verify, which compares no finalized rule.
    expect(refused.stdout).not.toContain('migrate verify');
    expect(await snapshot(s)).toBe(before);
    const done = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--export-etcd', 'left.json']);
    expect(done.code, done.stdout + done.stderr).toBe(0);
    expect(done.stdout).toContain('4 etcd key(s) of rule app that the migration copies are in Consul; 1 deleted in Consul since the cutover go to the export file only');
    expect(await etcd.getAll().prefix(`${s.root}/app/`).keys()).toEqual([`${s.root}/app/k8s/pod`]);
    const exported = JSON.parse(readFileSync(join(s.dir, 'left.json'), 'utf8')) as { key: string; value: string }[];
    expect(exported.map((k) => Buffer.from(k.key, 'base64').toString())).toContain(`${s.root}/app/k3`);
    // Once more: nothing is left to delete, and it says so (it said "all 0 etcd key(s) … are in Consul").
    const none = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd']);
    expect(none.code, none.stdout + none.stderr).toBe(0);
    expect(none.stdout).toContain('etcd holds no key of rule app: nothing to delete');
  }, 60_000);

  it('a dual-run stopped while an application writes a cut-over rule in Consul: its reverse mirror\'s last write, landing as it stops, is no late write for the next run', async () => {
    const s = scenario('mirrorstop');
    await seed(s);
    await cutOverApp(s);
    let writing = true;
    let n = 0;
    const writer = (async () => {
      while (writing) await target.putKey(`${s.id}/app/hot`, Buffer.from(`v${n++}`));
    })();
    try {
      for (let cycle = 0; cycle < 4; cycle++) {
        const dr = await startDualRun(s.dir);
        try {
          await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
          await eventually('the application\'s writes reach etcd', async () => Number((await etcdValue(`${s.root}/app/hot`))?.slice(1) ?? -1) > n - 50);
        } finally {
          expect(await dr.stop()).toBe(0);
        }
        expect(dr.stderr(), `cycle ${cycle}`).not.toMatch(/late write/);
      }
    } finally {
      writing = false;
      await writer;
    }
    expect((await phases(s)).app).toMatchObject({ phase: 'cutover', lateWrites: 0 });
  }, 120_000);

  it('a lock an application takes in Consul after the cutover (its own session) is named by verify and by rollback: etcd gets it without a lease and keeps it after the session ends', async () => {
    const s = scenario('applock');
    await seed(s);
    await cutOverApp(s);
    const session = await target.createSession({ name: 'an application leader election', ttlSeconds: 60 });
    const dr = await startDualRun(s.dir);
    try {
      expect(await target.putKey(`${s.id}/app/leader`, Buffer.from('member-2'), { acquire: session })).toBe(true);
      await eventually('the lock mirrored to etcd', async () => (await etcdValue(`${s.root}/app/leader`)) === 'member-2');
      const leased = await etcd.get(`${s.root}/app/leader`).exec();
      expect(leased.kvs[0]!.lease).toBe('0');
      const verified = await s.cli(['verify', '--format', 'json']);
      expect(verified.code, verified.stdout).toBe(0);
      const rule = (JSON.parse(verified.stdout) as { rules: { name: string; appLocks: { keys: number; examples: string[] } }[] }).rules.find((r) => r.name === 'app')!;
      expect(rule.appLocks).toEqual({ keys: 1, examples: [`${s.root}/app/leader`] });
      expect((await s.cli(['verify'])).stdout).toContain("1 key(s) locked by an application's own session in Consul, mirrored to etcd without a lease");
      const back = await s.cli(['rollback', '--rule', 'app', '--yes']);
      expect(back.code, back.stdout + back.stderr).toBe(0);
      expect(back.stdout).toContain(`1 of them (in etcd ${s.root}/app/leader) are locked in Consul by an application's own session: etcd holds them without a lease, so they stay in etcd when that session ends`);
    } finally {
      expect(await dr.stop()).toBe(0);
      await target.destroySession(session);
    }
  }, 90_000);

  it('a dual-run killed (SIGKILL) while an application writes a cut-over rule in Consul: the writes its reverse mirror made past its last checkpoint are no late writes for the next run', async () => {
    const s = scenario('mirrorkill');
    await seed(s);
    await cutOverApp(s);
    let writing = true;
    let n = 0;
    const writer = (async () => {
      while (writing) {
        await target.putKey(`${s.id}/app/hot`, Buffer.from(`v${n++}`));
        if (n % 10 === 0) await target.deleteKey(`${s.id}/app/cold`);
        else await target.putKey(`${s.id}/app/cold`, Buffer.from(`c${n}`));
      }
    })();
    try {
      for (let cycle = 0; cycle < 4; cycle++) {
        const dr = await startDualRun(s.dir);
        await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
        await eventually('the application\'s writes reach etcd', async () => Number((await etcdValue(`${s.root}/app/hot`))?.slice(1) ?? -1) > n - 50);
        // Killed between two checkpoints: nothing records the mirror's last writes but what it announced before each.
        await new Promise((resolve) => setTimeout(resolve, 300 + cycle * 450));
        await dr.kill();
        expect(dr.stderr(), `cycle ${cycle}`).not.toMatch(/late write/);
      }
      // The killed leader's last write, which it announced: the same value written to etcd by someone else after the
      // takeover is a late write all the same.
      const stale = (await etcdValue(`${s.root}/app/hot`))!;
      const last = await startDualRun(s.dir);
      try {
        await eventually('reverse mirror running', async () => metric(await last.metrics(), 'migrate_dualrun_reverse_rules') === 1);
        await eventually('the application\'s writes reach etcd', async () => Number((await etcdValue(`${s.root}/app/hot`))?.slice(1) ?? -1) > n - 50);
        expect(last.stderr()).not.toMatch(/late write/);
        await etcd.put(`${s.root}/app/hot`).value(stale);
        await eventually('the late write is reported', async () => /late write: etcd put of \/co-mirrorkill-[0-9a-f]+\/app\/hot/.test(last.stderr()));
      } finally {
        expect(await last.stop()).toBe(0);
      }
    } finally {
      writing = false;
      await writer;
    }
    expect((await phases(s)).app).toMatchObject({ phase: 'cutover', lateWrites: 1 });
  }, 150_000);

  it('finalize --delete-etcd deletes only once the running dual-run says its reverse mirror of the rule stopped (a write it had in flight landed after the delete); held back, it says so, and --delete-etcd again on the finalized rule deletes', async () => {
    const s = scenario('finmirror');
    await seed(s);
    await cutOverApp(s);
    const dr = await dualRun(s);
    try {
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      // Frozen, it cannot stop its mirror nor say so; its lock is still held (its session lives on for a while).
      dr.child.kill('SIGSTOP');
      const held = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--catch-up-timeout', '2s']);
      expect(held.code, held.stdout + held.stderr).toBe(0);
      expect(held.stdout).toContain('Deleted nothing from etcd for rule app: the dual-run has not confirmed that its reverse mirror stopped');
      expect(held.stderr).toMatch(/nothing was deleted from etcd for rule app: the dual-run holding the leader lock \(if it died, the lock expires within 20 s\) did not confirm within 2s .*Run `migrate finalize --rule app --delete-etcd` again/);
      expect((await phases(s)).app.phase).toBe('finalized');
      expect(await etcd.getAll().prefix(`${s.root}/app/`).keys()).toHaveLength(6);
      dr.child.kill('SIGCONT');
      // Running again, it stops the mirror and records so; the delete goes ahead.
      const again = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--format', 'json']);
      expect(again.code, again.stdout + again.stderr).toBe(0);
      expect(JSON.parse(again.stdout).rules[0]).toMatchObject({ rule: 'app', from: 'finalized', etcdDeleted: 5 });
      expect(await etcd.getAll().prefix(`${s.root}/app/`).keys()).toEqual([`${s.root}/app/k8s/pod`]);
      expect(metric(await dr.metrics(), 'migrate_dualrun_reverse_rules')).toBe(0);
      // Nothing left to delete: a third run deletes nothing and says the rule is finalized.
      const third = await s.cli(['finalize', '--rule', 'app', '--yes', '--delete-etcd', '--format', 'json']);
      expect(JSON.parse(third.stdout).rules[0]).toMatchObject({ from: 'finalized', etcdDeleted: 0 });
    } finally {
      dr.child.kill('SIGCONT');
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('a value too large for Consul stays in etcd after the cutover: the reverse mirror\'s first pass does not take Consul\'s lack of it for a delete', async () => {
    const s = scenario('toolarge');
    await seed(s);
    const big = Buffer.alloc(700_000, 7);
    await etcd.put(`${s.root}/app/model.bin`).value(big);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      // A Consul write after the cutover: the mirror has passed its first pass once it reaches etcd.
      await target.putKey(`${s.id}/app/k0`, Buffer.from('after'));
      await eventually('the Consul write in etcd', async () => (await etcdValue(`${s.root}/app/k0`)) === 'after');
      const kept = (await etcd.get(`${s.root}/app/model.bin`).buffer());
      expect(kept?.equals(big)).toBe(true);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('large values an application wrote in Consul after the cutover reach etcd in txns etcd takes (six of 400 KB passed its request limit in one, and the mirror retried it forever)', async () => {
    const s = scenario('bigvals');
    await seed(s);
    await cutOverApp(s);
    // Written while no dual-run runs: its first pass takes all six at once.
    const values = [0, 1, 2, 3, 4, 5].map((i) => randomBytes(400_000));
    for (const [i, value] of values.entries()) await target.putKey(`${s.id}/app/b${i}`, value);
    const dr = await startDualRun(s.dir);
    try {
      await eventually('the six values in etcd', async () => {
        for (const [i, value] of values.entries()) if (!(await etcd.get(`${s.root}/app/b${i}`).buffer())?.equals(value)) return false;
        return true;
      }, 30_000);
      // And the rule's later changes go on reaching etcd.
      await target.putKey(`${s.id}/app/k0`, Buffer.from('after'));
      await eventually('a later Consul write in etcd', async () => (await etcdValue(`${s.root}/app/k0`)) === 'after');
      expect(dr.stderr()).not.toMatch(/request is too large/);
      expect(await dr.metrics()).not.toMatch(/^migrate_dualrun_errors_total/m);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('finalize says how many of the rule\'s Consul keys still hang on etcd leases (they go with the lease, or once no dual-run renews their sessions)', async () => {
    const s = scenario('finlease');
    await seed(s);
    const { ID: lease } = await etcd.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
    for (let i = 0; i < 2; i++) await etcd.kv.put({ key: Buffer.from(`${s.root}/app/held/${i}`), value: Buffer.from('h'), lease });
    try {
      await cutOverApp(s);
      const fin = await s.cli(['finalize', '--rule', 'app', '--yes']);
      expect(fin.code, fin.stdout + fin.stderr).toBe(0);
      expect(fin.stdout).toMatch(/ok +app: leased keys 2 Consul key\(s\) of rule app are held by sessions that mirror etcd leases: finalized, they still go when their etcd lease ends, or within twice the session TTL once no dual-run renews those sessions/);
    } finally {
      await etcd.leaseClient.leaseRevoke({ ID: lease });
    }
  }, 60_000);

  it('a rule document deleted by hand is rebuilt from the owners document: copy leaves the rule\'s data in Consul, status says cut over, and the dual-run writes the document back', async () => {
    const s = scenario('ruledoc');
    await seed(s);
    await cutOverApp(s);
    const ruleKey = `_migrate/${s.id}/rules/app`;
    await target.deleteKey(ruleKey);
    // The application goes on writing to Consul, which owns the rule.
    await target.putKey(`${s.id}/app/k1`, Buffer.from('from the application'));
    await target.deleteKey(`${s.id}/app/k2`);
    const copy = await s.cli(['copy']);
    expect(copy.code, copy.stdout + copy.stderr).toBe(0);
    expect(copy.stderr).toContain('rule app is not copied: it is cut over, and Consul owns its data');
    expect((await target.readKey(`${s.id}/app/k1`))?.value.toString()).toBe('from the application');
    expect(await target.readKey(`${s.id}/app/k2`)).toBeUndefined();
    expect((await phases(s)).app).toMatchObject({ phase: 'cutover', owner: 'consul' });
    const dr = await dualRun(s);
    try {
      await eventually('written back', async () => dr.stderr().includes('the rule document of rule(s) app was missing while the owners document says Consul owns them (deleted by hand?): rebuilt from it'));
      expect(JSON.parse((await target.readKey(ruleKey))!.value.toString())).toMatchObject({ rule: 'app', phase: 'cutover', owner: 'consul' });
      // The reverse mirror takes Consul's data to etcd, not the other way.
      await eventually('mirrored to etcd', async () => (await etcdValue(`${s.root}/app/k1`)) === 'from the application' && (await etcdValue(`${s.root}/app/k2`)) === null);
      // Deleted while the dual-run runs: written back without waiting for a restart.
      await target.deleteKey(ruleKey);
      await eventually('written back again', async () => (await target.readKey(ruleKey)) !== undefined, 20_000);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    // The rebuilt history has no routing: the recorded mapping stands for it, so moving the rule is still refused.
    const file = join(s.dir, 'migration.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace(`to: ${s.id}/app/ }`, `to: ${s.id}/app2/ }`));
    const moved = await s.cli(['copy', '--accept-mapping-change']);
    expect(moved.code, moved.stdout + moved.stderr).toBe(4);
    expect(moved.stderr).toContain(`error[mapping_changed_cut_over]: migration.yaml changes what Consul owns: rule app (cut over as ${s.root}/app/ → ${s.id}/app/, now ${s.root}/app/ → ${s.id}/app2/)`);
    expect((await target.readKey(`${s.id}/app/k1`))?.value.toString()).toBe('from the application');
  }, 90_000);

  it('the owners document deleted by hand is rebuilt from the rule documents (the rule stays Consul\'s); edited to disagree with them, the dual-run stops (exit 4)', async () => {
    const s = scenario('owners');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    let exited = false;
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      const ownersKey = `_migrate/${s.id}/owners`;
      await target.deleteKey(ownersKey);
      await eventually('rebuilt', async () => dr.stderr().includes('the owners document was missing while the rule documents say Consul owns rule(s) app (deleted by hand?): rebuilt from them'));
      expect(JSON.parse((await target.readKey(ownersKey))!.value.toString()).rules.app.phase).toBe('cutover');
      // Still Consul's: an application's write reaches etcd, and a late etcd write does not reach Consul.
      await target.putKey(`${s.id}/app/k1`, Buffer.from('from the application'));
      await eventually('mirrored to etcd', async () => (await etcdValue(`${s.root}/app/k1`)) === 'from the application');
      await etcd.put(`${s.root}/app/k2`).value('late');
      await eventually('late write counted', async () => metric(await dr.metrics(), 'migrate_dualrun_late_writes_total') === 1);
      expect((await target.readKey(`${s.id}/app/k2`))?.value.toString()).toBe('v2');
      expect(metric(await dr.metrics(), 'migrate_dualrun_reverse_rules')).toBe(1);
      // Edited to say etcd owns the rule its rule document gives to Consul: no ownership to replicate by.
      const owners = JSON.parse((await target.readKey(ownersKey))!.value.toString()) as { rules: Record<string, unknown> };
      delete owners.rules.app;
      await target.putKey(ownersKey, Buffer.from(JSON.stringify(owners)));
      const code = await new Promise<number | null>((resolve) => (dr.child.exitCode !== null ? resolve(dr.child.exitCode) : dr.child.once('exit', resolve)));
      exited = true;
      expect(code, dr.stderr()).toBe(4);
      expect(dr.stderr()).toContain('error[state_inconsistent]: The migration\'s state disagrees with itself on who owns a rule: rule app:');
      expect((await target.readKey(`${s.id}/app/k2`))?.value.toString()).toBe('v2');
      // Its checkpoint says it stopped: no dual-run shown as running once the state is put right.
      expect(JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString())).toMatchObject({ by: 'dualrun', stopped: expect.any(String) });
      const status = await s.cli(['status']);
      expect(status.code).toBe(4);
      expect(status.stderr).toContain('error[state_inconsistent]');
    } finally {
      if (!exited) expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('an application never switched writes etcd at its own rate: each late write is counted, the first 10 of a rule in a minute logged', async () => {
    const s = scenario('lateflood');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      for (let i = 0; i < 15; i++) await etcd.put(`${s.root}/app/late${i}`).value(`late ${i}`);
      await eventually('late writes counted', async () => metric(await dr.metrics(), 'migrate_dualrun_late_writes_total') === 15);
      await eventually('late writes recorded', async () => (await phases(s)).app.lateWrites === 15);
      const lines = dr.stderr().split('\n').filter((l) => l.includes('late write: etcd'));
      expect(lines).toHaveLength(10);
      expect(lines[9]).toContain('more late writes under rule app until');
      expect(lines[9]).toContain('are counted (migrate_dualrun_late_writes_total, and the trips in `migrate status`), not logged');
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('a late writer: a direct etcd write under a cut-over rule is counted, logged by key, and fails verify', async () => {
    const s = scenario('late');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      await etcd.put(`${s.root}/app/k0`).value('secret-late-value');
      await eventually('late write counted', async () => metric(await dr.metrics(), 'migrate_dualrun_late_writes_total') === 1);
      // The dual-run records late writes in the rule's trips document in batches (300 ms): wait for the record.
      await eventually('late write recorded', async () => (await phases(s)).app.lateWrites === 1);
      expect(dr.stderr()).toContain(`late write: etcd put of ${s.root}/app/k0 under rule app`);
      expect(dr.stderr()).not.toContain('secret-late-value');
      // Not replicated: Consul, the owner, keeps its value.
      expect((await target.readKey(`${s.id}/app/k0`))?.value.toString()).toBe('v0');
      const verify = await s.cli(['verify', '--progress', 'none', '--format', 'json', '--round-pause', '200ms']);
      expect(verify.code, verify.stderr).toBe(1);
      const report = JSON.parse(verify.stdout) as { rules: { name: string; status: string; owner: string; lateWrites: number }[] };
      expect(report.rules.find((r) => r.name === 'app')).toMatchObject({ status: 'drift', owner: 'consul', lateWrites: 1 });
      expect(verify.stdout).not.toContain('secret-late-value');
      expect((await phases(s)).app).toMatchObject({ lateWrites: 1 });
      expect((await phases(s)).app.next).toContain('--acknowledge-trips');
      // Rolling back over an open late write is refused.
      expect((await s.cli(['rollback', '--rule', 'app', '--yes'])).code).toBe(4);
      // Acknowledged, but etcd still holds the late value: parity with writes paused fails, by kind, and nothing changes.
      const unequal = await s.cli(['rollback', '--rule', 'app', '--yes', '--acknowledge-trips', '--drain', '200ms']);
      expect(unequal.code, unequal.stdout + unequal.stderr).toBe(4);
      expect(unequal.stdout).toMatch(/FAIL app: parity\s+etcd and Consul differ on 1 key\(s\) of rule app with writes paused \(verify: 1 value\)/);
      // Writing the value again in Consul changes nothing (Consul keeps an identical value as it is): the way out is said.
      expect(unequal.stdout.replace(/\s+/g, ' ')).toContain('A late write stays in etcd until Consul\'s value is mirrored over it: restart the dual-run (its first pass mirrors the rule\'s keys from Consul to etcd, and deletes from etcd a key Consul does not hold: the late write is lost unless it is written in Consul first), then roll back again');
      expect((await phases(s)).app).toMatchObject({ phase: 'cutover', lateWrites: 1 });
      // Repaired through the owner: the reverse mirror brings etcd back in line (its own write is no late
      // write), but the recorded late write keeps failing verify until an operator acknowledges it.
      await target.putKey(`${s.id}/app/k0`, Buffer.from('v0 repaired'));
      await eventually('etcd repaired by the reverse mirror', async () => (await etcdValue(`${s.root}/app/k0`)) === 'v0 repaired');
      const still = await s.cli(['verify', '--progress', 'none', '--format', 'json']);
      expect(still.code).toBe(1);
      expect((JSON.parse(still.stdout) as { rules: { name: string; differences: number; lateWrites: number }[] }).rules.find((r) => r.name === 'app')).toMatchObject({ differences: 0, lateWrites: 1 });
      expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBe(1);
      expect((await phases(s)).app.next).toContain(`migrate cutover --rule app --acknowledge-trips`);
      // Acknowledged where it stands: the rule stays cut over, its history says so, and verify passes again.
      const ack = await s.cli(['cutover', '--rule', 'app', '--yes', '--acknowledge-trips']);
      expect(ack.code, ack.stdout + ack.stderr).toBe(0);
      expect(ack.stdout).toContain('Rule app: still cut over (owner consul); its recorded trips are acknowledged');
      expect(await target.readKey(`_migrate/${s.id}/trips/app`)).toBeUndefined();
      const history = () => target.readKey(`_migrate/${s.id}/rules/app`).then((e) => JSON.parse(e!.value.toString()).history as { phase: string; evidence?: object }[]);
      expect((await history()).at(-1)).toMatchObject({ phase: 'cutover', evidence: { acknowledgedTrips: 1 } });
      expect((await phases(s)).app).toMatchObject({ phase: 'cutover', owner: 'consul', lateWrites: 0 });
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      // Nothing left to acknowledge: refused, nothing written.
      const again = await s.cli(['cutover', '--rule', 'app', '--yes', '--acknowledge-trips']);
      expect(again.code).toBe(4);
      expect(again.stdout).toContain('nothing to acknowledge');
      const back = await s.cli(['rollback', '--rule', 'app', '--yes']);
      expect(back.code, back.stdout + back.stderr).toBe(0);
      expect((await history()).at(-1)).toMatchObject({ phase: 'rolledback' });
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('a dual-run stopped cleanly right after a cutover on an idle etcd marks its checkpoint stopped', async () => {
    const s = scenario('stopafter');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    let stopped = false;
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      stopped = true;
      expect(await dr.stop()).toBe(0);
    } finally {
      if (!stopped) await dr.stop();
    }
    expect(dr.stderr()).not.toContain('could not mark the checkpoint stopped');
    const checkpoint = JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()) as { stopped?: string };
    expect(checkpoint.stopped).toBeDefined();
  }, 60_000);

  it('an etcd lease that ends after cutover takes its keys from both stores and trips no guard: etcd deleted them itself', async () => {
    const s = scenario('leaseend');
    await seed(s);
    const { ID: lease } = await etcd.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
    for (let i = 0; i < 20; i++) await etcd.kv.put({ key: Buffer.from(`${s.root}/app/held/${i}`), value: Buffer.from('h'), lease });
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      // 20 of the rule's 25 keys: over the reverse mirror's delete guard, were they deletes to mirror.
      await etcd.leaseClient.leaseRevoke({ ID: lease });
      await eventually('the lease\'s keys gone from Consul with its session', async () => (await target.listKeys(`${s.id}/app/held/`)).length === 0, 20_000);
      await sleep(1_500);
      expect(dr.stderr()).not.toMatch(/delete guard tripped/);
      const status = JSON.parse((await s.cli(['status', '--format', 'json'])).stdout) as { rules: { name: string; guardTrips: number; lateWrites: number }[] };
      expect(status.rules.find((r) => r.name === 'app')).toMatchObject({ guardTrips: 0, lateWrites: 0 });
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('a lease session Consul loses after the cutover (reaped while no dual-run renewed it, or while it ran) takes the keys from Consul for a moment only: the etcd lease lives on, so they are written back, and etcd never loses them', async () => {
    const s = scenario('reaped');
    await seed(s);
    const { ID: lease } = await etcd.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
    for (let i = 0; i < 3; i++) await etcd.kv.put({ key: Buffer.from(`${s.root}/app/held/${i}`), value: Buffer.from(`h${i}`), lease });
    expect((await s.cli(['copy'])).code).toBe(0);
    const sessionOf = async () => (JSON.parse((await target.readKey(`_migrate/${s.id}/sessions/${lease}`))!.value.toString()) as { sessionId: string }).sessionId;
    const heldInConsul = async (session: string) => {
      const entries = await target.readEntries([0, 1, 2].map((i) => `${s.id}/app/held/${i}`));
      return entries.length === 3 && entries.every((e) => e.session === session);
    };
    // etcd keeps the keys on their lease: never deleted (nor written back without it by the reverse mirror).
    const etcdIntact = async () => {
      const kvs = (await etcd.getAll().prefix(`${s.root}/app/held/`).exec()).kvs;
      return kvs.length === 3 && kvs.every((kv) => kv.lease === lease);
    };
    let dr = await dualRun(s);
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      // While the dual-run runs.
      const first = await sessionOf();
      await target.destroySession(first);
      await eventually('the keys back in Consul, held by a new session of the lease', async () => {
        const now = await sessionOf();
        return now !== first && (await heldInConsul(now));
      }, 30_000);
      expect(await etcdIntact()).toBe(true);
      // While no dual-run ran (kill -9, then Consul reaped the session: here destroyed by hand).
      await dr.kill();
      const second = await sessionOf();
      await target.destroySession(second);
      expect(await target.listKeys(`${s.id}/app/held/`)).toEqual([]);
      dr = await dualRun(s);
      await eventually('the keys back in Consul after the restart', async () => {
        const now = await sessionOf();
        return now !== second && (await heldInConsul(now));
      }, 30_000);
      await sleep(1_500);
      expect(await etcdIntact()).toBe(true);
      expect(dr.stderr()).toMatch(/session of etcd lease \S+ was gone from Consul; re-created it and rewrote 3 key\(s\)/);
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
    } catch (err) {
      process.stderr.write(`dual-run log:\n${dr.stderr()}\n`);
      throw err;
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 120_000);

  it('Consul dropping many keys at once after the cutover trips the reverse mirror\'s guard once (not on every later answer); a dual-run started with --allow-mass-delete mirrors the deletes', async () => {
    const s = scenario('dropburst');
    await seed(s);
    for (let i = 0; i < 25; i++) await etcd.put(`${s.root}/app/burst/${i}`).value('b');
    expect((await s.cli(['copy'])).code).toBe(0);
    let dr = await dualRun(s);
    const trips = async () => (JSON.parse((await s.cli(['status', '--format', 'json'])).stdout) as { rules: { name: string; guardTrips: number }[] }).rules.find((r) => r.name === 'app')!.guardTrips;
    try {
      expect((await s.cli(['cutover', '--rule', 'app', '--yes', '--verify-now'])).code).toBe(0);
      await eventually('reverse mirror running', async () => metric(await dr.metrics(), 'migrate_dualrun_reverse_rules') === 1);
      // 20 of the rule's 30 keys in one txn: past the guard.
      await target.applyTxn(Array.from({ length: 20 }, (_, i) => ({ verb: 'delete' as const, key: `${s.id}/app/burst/${i}` })));
      await eventually('the guard tripped', async () => (await trips()) === 1);
      // Later changes in Consul are mirrored, and trip nothing more.
      for (let i = 0; i < 5; i++) await target.putKey(`${s.id}/app/k${i}`, Buffer.from(`after ${i}`));
      await eventually('later changes mirrored', async () => (await etcdValue(`${s.root}/app/k4`)) === 'after 4');
      expect(await trips()).toBe(1);
      expect((await etcd.getAll().prefix(`${s.root}/app/burst/`).keys()).length).toBe(25);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    // Intended: the operator starts the dual-run with the flag; its first pass mirrors the deletes.
    dr = await startDualRun(s.dir, ['--allow-mass-delete']);
    try {
      await eventually('the deletes mirrored to etcd', async () => (await etcd.getAll().prefix(`${s.root}/app/burst/`).keys()).length === 5);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('an application on etcd-consul-migrate/client keeps working across a real cutover and rollback: writes pause at the flip, none is late or lost, shadow reads match', async () => {
    const s = scenario('client');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    const client = await createKvClient({ config: join(s.dir, 'migration.yaml'), rules: ['app'], env: serverEnv(), blockingWaitSeconds: 5, shadowReads: { recheckDelayMs: 200, writeWindowMs: 1_000 } });
    const switches: SwitchEvent[] = [];
    const pauses: PauseEvent[] = [];
    client.on('switch', (e) => switches.push(e));
    client.on('pause', (e) => pauses.push(e));
    // It also watches what it writes: across both switches, each value once and in order per key.
    const watch = client.watch(`${s.root}/app/counter/`);
    await watch.ready;
    const watched: { key: string; value: string; store: string }[] = [];
    const watching = (async () => {
      for await (const e of watch) if (e.type === 'put') watched.push({ key: e.key.toString(), value: e.value.toString(), store: e.store });
    })();
    // The application: writes a counter to a few keys as fast as it can, reads them back, never restarted.
    const last = new Map<string, string>();
    const failures: string[] = [];
    let writes = 0;
    let stop = false;
    const app = (async () => {
      for (let i = 0; !stop; i++) {
        const key = `${s.root}/app/counter/${i % 4}`;
        try {
          await client.put(key, String(i));
          last.set(key, String(i));
          writes++;
          const read = await client.getString(key);
          if (read !== String(i)) failures.push(`read ${key} = ${read}, wrote ${i}`);
        } catch (err) {
          failures.push(String(err));
        }
      }
    })();
    try {
      await sleep(1_000);
      const verified = await s.cli(['verify', '--progress', 'none']);
      expect(verified.code, verified.stdout).toBe(0);
      // The pause is timed: the client must see it within --drain. 3 s rather than 1: on a loaded machine a blocking
      // query answered late once let a write reach the old owner after the flip (a late write, as designed).
      const cut = await s.cli(['cutover', '--rule', 'app', '--yes', '--drain', '3s']);
      expect(cut.code, cut.stdout + cut.stderr).toBe(0);
      await eventually('the client switched to Consul', async () => client.owner('app') === 'consul');
      const atCutover = writes;
      await sleep(1_500);
      expect(writes, 'the application kept writing on Consul').toBeGreaterThan(atCutover);

      const back = await s.cli(['rollback', '--rule', 'app', '--yes', '--drain', '3s']);
      expect(back.code, back.stdout + back.stderr).toBe(0);
      await eventually('the client switched back to etcd', async () => client.owner('app') === 'etcd');
      const atRollback = writes;
      await sleep(1_500);
      expect(writes, 'the application kept writing on etcd').toBeGreaterThan(atRollback);
    } finally {
      stop = true;
      await app;
    }
    try {
      expect(failures).toEqual([]);
      expect(switches.map((e) => `${e.from}→${e.to}`)).toEqual(['etcd→consul', 'consul→etcd']);
      // Each move paused writes once and resumed them with its flip.
      expect(pauses.map((p) => p.paused)).toEqual([true, false, true, false]);
      // No write was in flight to the old owner at a flip: no late write, and every last write is in both stores.
      expect((await phases(s)).app).toMatchObject({ phase: 'rolledback', owner: 'etcd', lateWrites: 0 });
      expect(metric(await dr.metrics(), 'migrate_dualrun_late_writes_total')).toBeNaN();
      await waitCaughtUp(etcd, target, s.id);
      for (const [key, value] of last) {
        expect(await etcdValue(key), key).toBe(value);
        expect((await target.readKey(`${s.id}${key.slice(s.root.length)}`))?.value.toString(), key).toBe(value);
      }
      const parity = await s.cli(['verify', '--progress', 'none']);
      expect(parity.code, parity.stdout).toBe(0);
      for (const key of last.keys()) await client.get(key);
      await sleep(500);
      expect(client.stats().shadow.mismatches).toBe(0);
      // The old owner's stream ends at the flip: the other direction's copies of the new owner's writes
      // (the reverse mirror's into etcd, the dual-run's into Consul) are no events; they came as duplicates,
      // some after newer values of the new owner.
      await watch.close();
      await watching;
      for (const key of last.keys()) {
        const values = watched.filter((e) => e.key === key).map((e) => Number(e.value));
        expect(values.length, key).toBeGreaterThan(0);
        for (let i = 1; i < values.length; i++) expect(values[i], `${key}: ${watched.filter((e) => e.key === key).map((e) => `${e.value}@${e.store}`).join(' ')}`).toBeGreaterThan(values[i - 1]!);
      }
    } finally {
      await client.close();
      expect(await dr.stop()).toBe(0);
    }
  }, 120_000);

  it('on a terminal, cutover asks for the rule name: a wrong answer refuses and changes nothing, the right one cuts over (with a Consul snapshot)', async () => {
    const s = scenario('tty');
    await seed(s);
    expect((await s.cli(['copy'])).code).toBe(0);
    const dr = await dualRun(s);
    try {
      expect((await s.cli(['verify', '--progress', 'none'])).code).toBe(0);
      const before = await snapshot(s);
      const wrong = new Terminal(['cutover', '--rule', 'app', '--drain', '200ms'], { cwd: s.dir, env: serverEnv() });
      try {
        await wrong.until('the prompt', (screen) => screen.includes('Type the rule name to cutover (app):'));
        wrong.send('other', 'Enter');
        const refused = await wrong.exit();
        expect(refused.code, refused.screen).toBe(4);
        expect(refused.screen).toContain('nothing was changed');
      } finally {
        wrong.close();
      }
      expect(await snapshot(s)).toBe(before);
      expect((await phases(s)).app.owner).toBe('etcd');

      // Ctrl-C at the prompt is the operator's interrupt (130), Ctrl-D a no (4): neither is a crash, neither changes anything.
      for (const [key, code, said] of [['C-c', 130, 'interrupted at its confirmation prompt; nothing was changed'], ['C-d', 4, 'error[not_confirmed]: cutover was not confirmed; nothing was changed.']] as const) {
        const quit = new Terminal(['cutover', '--rule', 'app', '--drain', '200ms'], { cwd: s.dir, env: serverEnv() });
        try {
          const prompt = await quit.until('the prompt', (screen) => screen.includes('Type the rule name to cutover (app):'));
          // What the command found comes before the question.
          expect(prompt.indexOf('cutover of rule app: every precondition passed'), prompt).toBeGreaterThanOrEqual(0);
          expect(prompt.indexOf('ok   dual-run'), prompt).toBeLessThan(prompt.indexOf('Type the rule name'));
          quit.send(key);
          const ended = await quit.exit();
          expect(ended.code, ended.screen).toBe(code);
          expect(ended.screen).toContain(said);
          expect(ended.screen).not.toContain('internal error');
        } finally {
          quit.close();
        }
        expect(await snapshot(s)).toBe(before);
      }

      const right = new Terminal(['cutover', '--rule', 'app', '--drain', '200ms', '--snapshot', 'before-app.snap'], { cwd: s.dir, env: serverEnv() });
      try {
        await right.until('the prompt', (screen) => screen.includes('Type the rule name to cutover (app):'));
        right.send('app', 'Enter');
        const done = await right.exit();
        expect(done.code, done.screen).toBe(0);
      } finally {
        right.close();
      }
      expect((await phases(s)).app).toMatchObject({ phase: 'cutover', owner: 'consul' });
      // The snapshot is Consul's own archive (gzip), recorded as evidence by its full path, as the rollback file is.
      const snap = readFileSync(join(s.dir, 'before-app.snap'));
      expect(snap.subarray(0, 2).toString('hex')).toBe('1f8b');
      const doc = JSON.parse((await target.readKey(`_migrate/${s.id}/rules/app`))!.value.toString());
      expect(doc.history.at(-1).evidence.snapshotFile).toBe(join(s.dir, 'before-app.snap'));
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
