import { randomBytes } from 'node:crypto';
import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { VERIFY_REPORT_SCHEMA } from '../src/verify/report-schema.js';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv, servers } from './support/harness.js';
import { eventually, startDualRun, waitCaughtUp } from './support/dualrun.js';
import { startReplicator } from './support/replicator.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

const validateReport = new Ajv({ allErrors: true, strict: true }).compile(VERIFY_REPORT_SCHEMA);

interface Diff {
  rule: string;
  key: string;
  kind: string;
  reason: string;
  etcd: { size: number; hash: string } | null;
  consul: { size: number; hash: string } | null;
}

function scenario(label: string, rules?: (id: string, root: string) => string) {
  const id = `v-${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1
id: ${id}
rules:
${rules?.(id, root) ?? `  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }
  - { name: locks, from: ${root}/locks/, to: ${id}/locks/, leases: skip }
  - { name: legacy, from: ${root}/legacy/, to: ${id}/legacy/, keys: escape }
  - { name: k8s, from: ${root}/registry/, action: keep }`}
`;
  return { id, root, yaml, loaded: parseConfig(yaml, 'migration.yaml'), dir: configDir(yaml) };
}

const appOnly = (id: string, root: string) => `  - { name: app, from: ${root}/app/, to: ${id}/app/ }`;

function parseReport(stdout: string) {
  const doc = JSON.parse(stdout);
  if (!validateReport(doc)) throw new Error(`verify JSON does not match its schema: ${JSON.stringify(validateReport.errors, null, 2)}`);
  return doc as { clean: boolean; status: string; cut: { cut: string; reason: string; revision: number; checkpoint: number | null }; rounds: { round: number; settled: number; differences: number }[]; rules: { name: string; status: string; differences: number; settled: number; unmappable: Record<string, number>; leaseSkipped: number; compared: number }[]; differences: Diff[]; differencesTotal: number; totals: { settled: number } };
}

async function copy(dir: string): Promise<number> {
  const run = await runCli(['copy', '--format', 'json'], { cwd: dir, env: serverEnv() });
  expect(run.code, run.stderr).toBe(0);
  return JSON.parse(run.stdout).revision as number;
}

/**
 * The highest ModifyIndex under the migration's data and state prefixes (Consul's X-Consul-Index of a
 * prefix listing): proves verify wrote nothing there, whatever other test files write elsewhere meanwhile.
 */
async function writesUnder(id: string): Promise<number> {
  let index = 0;
  for (const prefix of [`${id}/`, `_migrate/${id}/`]) {
    const response = await target.http.request({ method: 'GET', path: `/v1/kv/${prefix}`, query: { keys: true }, accept: [404] });
    expect(response.status).toBe(200);
    index = Math.max(index, Number(response.headers['x-consul-index']));
  }
  return index;
}

function verify(dir: string, args: string[], timeoutMs = 60_000) {
  return runCli(['verify', '--progress', 'none', ...args], { cwd: dir, env: serverEnv(), timeoutMs });
}

describe('migrate verify (real servers)', () => {
  it('a clean copy is at parity (exit 0); injected drift of every kind is reported with the right kind (exit 1), never a value', async () => {
    const s = scenario('drift');
    const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const leaseA = etcd.lease(3600, { autoKeepAlive: false });
    const leaseB = etcd.lease(3600, { autoKeepAlive: false });
    const [a, b] = [await leaseA.grant(), await leaseB.grant()];
    await etcd.put(`${s.root}/app/config/db_url`).value('postgres://db:5432/app');
    await etcd.put(`${s.root}/app/config/binary`).value(allBytes);
    await etcd.put(`${s.root}/app/config/empty`).value(Buffer.alloc(0));
    await etcd.put(`${s.root}/app/config/missing-me`).value('m');
    await etcd.put(`${s.root}/app//double`).value('unmappable under reject');
    await etcd.put(`${s.root}/services/redis/r1`).value('10.0.0.1:6379').lease(a);
    await etcd.put(`${s.root}/services/redis/r2`).value('10.0.0.2:6379').lease(a);
    await etcd.put(`${s.root}/services/pg/p1`).value('10.0.0.3:5432').lease(b);
    await etcd.put(`${s.root}/services/plain/x`).value('no lease');
    await etcd.put(`${s.root}/locks/nightly`).value('holder').lease(a);
    await etcd.put(`${s.root}/legacy//slash`).value('escaped');
    await etcd.put(`${s.root}/registry/pods/x`).value('kept on etcd');
    try {
      await copy(s.dir);

      const clean = await verify(s.dir, ['--format', 'json']);
      expect(clean.code, clean.stderr).toBe(0);
      const ok = parseReport(clean.stdout);
      expect(ok).toMatchObject({ clean: true, status: 'ok', differencesTotal: 0, differences: [] });
      expect(ok.cut).toMatchObject({ cut: 'immediate', reason: 'copy-checkpoint' });
      expect(ok.rules.find((r) => r.name === 'app')).toMatchObject({ status: 'parity', compared: 4, unmappable: { 'empty-segment': 1 } });
      expect(ok.rules.find((r) => r.name === 'locks')).toMatchObject({ status: 'parity', leaseSkipped: 1 });
      expect(ok.rules.map((r) => r.name)).not.toContain('k8s');
      const last = JSON.parse((await target.readKey(`_migrate/${s.id}/verify/last`))!.value.toString());
      expect(last).toMatchObject({ schemaVersion: 1, clean: true, cut: 'immediate', revision: ok.cut.revision, rules: { app: { differences: 0 } } });

      // --no-record: verify writes nothing at all.
      const before = await writesUnder(s.id);
      expect((await verify(s.dir, ['--no-record', '--rounds', '1'])).code).toBe(0);
      expect(await writesUnder(s.id)).toBe(before);

      // Drift, injected in Consul.
      const to = `${s.id}/app/`;
      await target.deleteKey(`${to}config/missing-me`);
      await target.putKey(`${to}extra`, Buffer.from('nobody wrote me in etcd'));
      await target.putKey(`${to}config/db_url`, Buffer.from('postgres://db:5432/apq'));
      const binary = Buffer.from(allBytes);
      binary[128] = 0;
      await target.putKey(`${to}config/binary`, binary);
      const sessionOf = async (key: string) => (await target.readKey(key))!.session!;
      const sessionA = await sessionOf(`${s.id}/services/redis/r1`);
      const sessionB = await sessionOf(`${s.id}/services/pg/p1`);
      // A lost session: Behavior delete takes its keys with it.
      await target.destroySession(sessionA);
      // A released session: the key is rewritten without it (txn unlock).
      await target.applyTxn([{ verb: 'unlock', key: `${s.id}/services/pg/p1`, value: Buffer.from('10.0.0.3:5432'), session: sessionB }]);
      // A session on a key etcd holds without a lease.
      const foreign = await target.createSession({ name: 'verify test foreign', ttlSeconds: 3600 });
      await target.putKey(`${s.id}/services/plain/x`, Buffer.from('no lease'), { acquire: foreign });
      // A key etcd holds under leases: skip.
      await target.putKey(`${s.id}/locks/nightly`, Buffer.from('holder'));
      // Stranded keys, written through the txn endpoint.
      await target.applyTxn([{ verb: 'set', key: `${to}app//x`, value: Buffer.from('stranded') }]);
      const storedDouble = (await target.listKeys(`${to}app/`)).find((k) => k.startsWith(`${to}app/`));
      let leadingStored = true;
      try {
        await target.applyTxn([{ verb: 'set', key: `/${to}lead`, value: Buffer.from('stranded') }]);
      } catch {
        // Consul releases with hashicorp/consul#23185 refuse a leading "/" in txns: nothing to strand.
        leadingStored = false;
      }

      const drift = await verify(s.dir, ['--format', 'json', '--round-pause', '200ms']);
      expect(drift.code, drift.stderr).toBe(1);
      const report = parseReport(drift.stdout);
      expect(report).toMatchObject({ clean: false, status: 'drift' });
      const byKey = new Map(report.differences.map((d) => [d.key, d]));
      const kindOf = (key: string) => {
        const d = byKey.get(key);
        return d ? [d.kind, d.reason] : undefined;
      };
      expect(kindOf(`${to}config/missing-me`)).toEqual(['missing', 'absent']);
      expect(kindOf(`${to}extra`)).toEqual(['extra', 'no-etcd-key']);
      expect(kindOf(`${to}config/db_url`)).toEqual(['value', 'bytes']);
      const dbUrl = byKey.get(`${to}config/db_url`)!;
      expect(dbUrl.etcd!.size).toBe(dbUrl.consul!.size);
      expect(dbUrl.etcd!.hash).not.toBe(dbUrl.consul!.hash);
      expect(kindOf(`${to}config/binary`)).toEqual(['value', 'bytes']);
      expect(kindOf(`${s.id}/services/redis/r1`)).toEqual(['session', 'session-gone']);
      expect(kindOf(`${s.id}/services/redis/r2`)).toEqual(['session', 'session-gone']);
      expect(kindOf(`${s.id}/services/pg/p1`)).toEqual(['session', 'no-session']);
      expect(kindOf(`${s.id}/services/plain/x`)).toEqual(['session', 'unexpected-session']);
      expect(kindOf(`${s.id}/locks/nightly`)).toEqual(['extra', 'lease-skip']);
      // What Consul stored for the `//` txn key decides the kind: kept as is, it is stranded.
      if (storedDouble === `${to}app//x`) expect(kindOf(`${to}app//x`)).toEqual(['not-servable', 'empty-segment']);
      else expect(kindOf(storedDouble!)).toEqual(['extra', 'no-etcd-key']);
      if (leadingStored) expect(kindOf(`/${to}lead`)).toEqual(['not-servable', 'leading-slash']);
      const expected = 10 + (leadingStored ? 1 : 0);
      expect(report.differencesTotal).toBe(expected);
      expect(report.differences).toHaveLength(expected);
      expect(report.rules.find((r) => r.name === 'legacy')).toMatchObject({ status: 'parity' });
      expect(drift.stdout).not.toContain('postgres');
      expect(drift.stdout).not.toContain('10.0.0.');

      // The text summary counts what the artifact lists.
      const text = await verify(s.dir, ['--no-record', '--round-pause', '200ms']);
      expect(text.code).toBe(1);
      expect(text.stdout).toContain(`${expected} persistent differences, all listed`);
      expect(text.stdout).not.toContain('postgres');

      // JUnit: well-formed, one testcase per copy rule, failures naming the differences.
      const junit = await verify(s.dir, ['--format', 'junit', '--no-record', '--round-pause', '200ms', '--max-diffs', '3']);
      expect(junit.code).toBe(1);
      expect(XMLValidator.validate(junit.stdout)).toBe(true);
      const xml = new XMLParser({ ignoreAttributes: false, isArray: (name) => name === 'testcase' }).parse(junit.stdout);
      const cases = xml.testsuites.testsuite.testcase as { '@_name': string; failure?: { '@_message': string; '#text': string } }[];
      expect(cases.map((c) => c['@_name'])).toEqual(['app', 'services', 'locks', 'legacy']);
      expect(cases.find((c) => c['@_name'] === 'legacy')!.failure).toBeUndefined();
      const appCase = cases.find((c) => c['@_name'] === 'app')!;
      expect(appCase.failure!['@_message']).toMatch(/^\d+ persistent differences/);
      expect(xml.testsuites['@_failures']).toBe('3');
      expect(junit.stdout).toContain('not listed (--max-diffs 3)');

      // A summary file the disk refuses after the report (/dev/full: ENOSPC): said on stderr; the report stays the one
      // document on stdout and drift stays exit 1 (a second, error document followed it, and the exit was 2).
      const full = await verify(s.dir, ['--format', 'json', '--no-record', '--rounds', '1', '--summary-file', '/dev/full']);
      expect(full.code, full.stderr).toBe(1);
      expect(parseReport(full.stdout)).toMatchObject({ clean: false, status: 'drift' });
      expect(full.stderr).toContain('the markdown summary was not written to /dev/full (--summary-file)');
      // A directory is refused before anything is read.
      const folder = await verify(s.dir, ['--format', 'json', '--no-record', '--summary-file', s.dir]);
      expect(folder.code).toBe(2);
      expect(JSON.parse(folder.stdout)).toMatchObject({ status: 'error', error: { code: 'file_unwritable', message: `Cannot write ${s.dir} (--summary-file): it is a directory.` } });

      const markdown = await verify(s.dir, ['--format', 'markdown', '--no-record', '--round-pause', '200ms']);
      expect(markdown.stdout).toContain('## migrate verify: ❌ drift');
      expect(markdown.stdout).toContain(`All ${expected} differences`);

      const recorded = JSON.parse((await target.readKey(`_migrate/${s.id}/verify/last`))!.value.toString());
      expect(recorded).toMatchObject({ clean: false, rules: { app: { status: 'drift' }, legacy: { status: 'parity', differences: 0 } } });

      // Budgets: tolerating every difference of every drifting rule makes it exit 0.
      const allowed = await verify(s.dir, ['--format', 'json', '--no-record', '--rounds', '1', ...report.rules.filter((r) => r.differences > 0).flatMap((r) => ['--allow', `${r.name}=${r.differences}`])]);
      expect(allowed.code, allowed.stderr).toBe(0);
      expect(parseReport(allowed.stdout).rules.filter((r) => r.differences > 0).every((r) => r.status === 'within-budget')).toBe(true);
      const unknown = await verify(s.dir, ['--allow', 'nope=1']);
      expect(unknown.code).toBe(2);
      expect(unknown.stderr).toContain('verify_budget_unknown_rule');
      await target.destroySession(foreign);
    } finally {
      await Promise.all([leaseA.revoke(), leaseB.revoke()]).catch(() => undefined);
    }
  });

  it('tells writes in flight from drift: with a replicating dual-run they settle over rounds; one round reports them; without a dual-run they are drift', async () => {
    const s = scenario('inflight', appOnly);
    const dir = s.dir;
    const keys = Array.from({ length: 20 }, (_, i) => `${s.root}/app/k${String(i).padStart(2, '0')}`);
    for (const key of keys) await etcd.put(key).value('v0');
    const revision = await copy(dir);

    const writer = (ms: number) => {
      let stop = false;
      const done = (async () => {
        const end = Date.now() + ms;
        for (let n = 1; !stop && Date.now() < end; n++) {
          const key = keys[n % keys.length]!;
          if (n % 7 === 0) await etcd.delete().key(`${s.root}/app/new-${n - 7}`);
          else if (n % 5 === 0) await etcd.put(`${s.root}/app/new-${n}`).value(`n${n}`);
          else await etcd.put(key).value(`v${n}`);
          await new Promise((resolve) => setTimeout(resolve, 30));
        }
      })();
      return { done, stop: () => (stop = true) };
    };

    const replicator = startReplicator({ etcd, target, watchPrefix: `${s.root}/`, from: `${s.root}/app/`, to: `${s.id}/app/`, checkpointKey: `_migrate/${s.id}/checkpoint`, fromRevision: revision });
    try {
      await replicator.started;
      // Writes during round 1; the pause outlasts them, so later rounds see them applied.
      const w1 = writer(4_000);
      const settled = await verify(dir, ['--format', 'json', '--rounds', '3', '--round-pause', '5s']);
      await w1.done;
      expect(settled.code, settled.stderr + settled.stdout).toBe(0);
      const report = parseReport(settled.stdout);
      expect(report.cut).toMatchObject({ cut: 'checkpoint', reason: 'dualrun-running' });
      expect(report.cut.checkpoint).toBeGreaterThanOrEqual(report.cut.revision);
      expect(report.rounds[0]!.differences).toBeGreaterThan(0);
      expect(report.totals.settled).toBe(report.rounds[0]!.differences);
      expect(report.differencesTotal).toBe(0);

      const w2 = writer(6_000);
      const oneRound = await verify(dir, ['--format', 'json', '--rounds', '1', '--no-record']);
      w2.stop();
      await w2.done;
      expect(oneRound.code, oneRound.stderr).toBe(1);
      const inflight = parseReport(oneRound.stdout);
      expect(inflight.cut.cut).toBe('checkpoint');
      expect(inflight.differencesTotal).toBeGreaterThan(0);
      expect(inflight.differences.every((d) => d.key.startsWith(`${s.id}/app/`))).toBe(true);
    } finally {
      await replicator.stop();
    }

    // The replicator stopped: its checkpoint goes stale. A fresh migration without any dual-run:
    const t = scenario('nodualrun', appOnly);
    const tdir = t.dir;
    for (let i = 0; i < 10; i++) await etcd.put(`${t.root}/app/k${i}`).value('v0');
    await copy(tdir);
    await etcd.put(`${t.root}/app/k1`).value('changed after the copy');
    await etcd.delete().key(`${t.root}/app/k2`);
    await etcd.put(`${t.root}/app/k-new`).value('created after the copy');
    const drift = await verify(tdir, ['--format', 'json', '--round-pause', '100ms']);
    expect(drift.code).toBe(1);
    const report = parseReport(drift.stdout);
    expect(report.cut).toMatchObject({ cut: 'immediate', reason: 'copy-checkpoint' });
    expect(report.differences.map((d) => [d.key, d.kind]).sort()).toEqual([[`${t.id}/app/k-new`, 'missing'], [`${t.id}/app/k1`, 'value'], [`${t.id}/app/k2`, 'extra']]);
    expect(report.totals.settled).toBe(0);
  });

  it('with the real `migrate dualrun` replicating (leases as sessions), verify takes the checkpoint cut and finds parity; a dual-run stopped since is no cut to wait for: later etcd writes are drift (exit 1)', async () => {
    const s = scenario('realdr', (id, root) => `  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }`);
    const lease = etcd.lease(3600, { autoKeepAlive: false });
    const leaseId = await lease.grant();
    for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i}`).value(`v${i}`);
    await etcd.put(`${s.root}/services/web/w1`).value('10.1.0.1').lease(leaseId);
    await copy(s.dir);
    const dr = await startDualRun(s.dir);
    try {
      await waitCaughtUp(etcd, target, s.id);
      // The copy's checkpoint is caught up too: wait for the dual-run's own (a slow start on a busy machine made the cut immediate).
      await eventually('the dual-run wrote its checkpoint', async () => JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()).by === 'dualrun');
      let stop = false;
      const writes = (async () => {
        for (let n = 0; !stop; n++) {
          await etcd.put(`${s.root}/app/k${n % 20}`).value(`w${n}`);
          if (n % 10 === 0) await etcd.put(`${s.root}/services/web/w${n}`).value(`10.1.0.${n % 250}`).lease(leaseId);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })();
      const run = await verify(s.dir, ['--format', 'json', '--round-pause', '1s']);
      stop = true;
      await writes;
      expect(run.code, run.stderr + run.stdout).toBe(0);
      const report = parseReport(run.stdout);
      expect(report.cut).toMatchObject({ cut: 'checkpoint', reason: 'dualrun-running' });
      expect(report.rules.find((r) => r.name === 'services')!.compared).toBeGreaterThan(1);
    } finally {
      expect(await dr.stop()).toBe(0);
      await lease.revoke().catch(() => undefined);
    }
    // Stopped cleanly a moment ago: its last checkpoint says so, and verify compares at once, without
    // waiting for a checkpoint that no longer follows etcd: the write made since is drift.
    await etcd.put(`${s.root}/app/k0`).value('after the dual-run stopped');
    const stopped = await verify(s.dir, ['--rounds', '1', '--no-record', '--format', 'json']);
    expect(stopped.code, stopped.stderr).toBe(1);
    const after = parseReport(stopped.stdout);
    expect(after.cut).toMatchObject({ cut: 'immediate', reason: 'dualrun-stopped', waitedMs: 0 });
    // Said as it is: stopped (at a time), not a checkpoint "not moved for more than 20 s" seconds after the stop.
    expect(stopped.stderr).toMatch(/the dual-run stopped at \S+ \(checkpoint revision \d+\): nothing replicates/);
    expect(stopped.stderr).not.toContain('has not moved');
    // (The revoked lease's keys are extra too: etcd deleted them after the dual-run stopped.)
    expect(after.differences.map((d) => [d.key, d.kind])).toContainEqual([`${s.id}/app/k0`, 'value']);
  });

  it('no consistent cut in time: a dual-run checkpoint that does not reach the etcd revision exits 4 (and JUnit still gets a document)', async () => {
    const s = scenario('cut', appOnly);
    const dir = s.dir;
    await etcd.put(`${s.root}/app/k`).value('v');
    await copy(dir);
    await target.putKey(`_migrate/${s.id}/checkpoint`, Buffer.from(JSON.stringify({ schemaVersion: 1, revision: 1, updated: new Date().toISOString(), by: 'dualrun' })));
    const before = await writesUnder(s.id);
    const run = await verify(dir, ['--format', 'junit', '--wait-timeout', '2s']);
    expect(run.code).toBe(4);
    expect(run.stderr).toContain('error[verify_cut_timeout]');
    expect(XMLValidator.validate(run.stdout)).toBe(true);
    expect(run.stdout).toContain('type="verify_cut_timeout"');
    // Nothing recorded: no verify/last for a verify that could not compare.
    expect(await writesUnder(s.id)).toBe(before);
  });
});

// Keep the servers' version visible in failures: kinds of stranded keys depend on it.
it('runs against the pinned Consul', () => {
  expect(servers().consulVersion).toMatch(/^\d+\.\d+\.\d+/);
});
