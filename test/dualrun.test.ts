import { randomBytes, randomInt } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Etcd3, Range } from 'etcd3';
import { parseConfig } from '../src/config/load.js';
import { txnCapacity } from '../src/audit/inventory.js';
import { startEtcd } from '../scripts/local-servers.js';
import { checkParity } from './support/parity.js';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';

const etcd = rawEtcd();
const target = consulTarget();
afterAll(() => {
  etcd.close();
  target.close();
});

function scenario(label: string) {
  const id = `${label}-${randomBytes(3).toString('hex')}`;
  const root = `/${id}`;
  const yaml = `version: 1
id: ${id}
rules:
  - { name: app, from: ${root}/app/, to: ${id}/app/ }
  - { name: services, from: ${root}/services/, to: ${id}/services/, leases: session }
  - { name: locks, from: ${root}/locks/, to: ${id}/locks/, leases: skip }
`;
  return { id, root, yaml, dir: configDir(yaml), mapping: parseConfig(yaml, 'migration.yaml').mapping };
}

async function expectParity(s: ReturnType<typeof scenario>, source = etcd): Promise<void> {
  const parity = await checkParity(source, target, s.mapping, s.id);
  expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
}

describe('migrate dualrun (real servers)', () => {
  it('refuses to start without a checkpoint (exit 4) and says how to get one', async () => {
    const s = scenario('nockpt');
    const run = await runCli(['dualrun'], { cwd: s.dir, env: serverEnv() });
    expect(run.code).toBe(4);
    expect(run.stderr).toContain('error[dualrun_no_checkpoint]');
    expect(run.stderr).toContain('--baseline');
    expect(run.stderr).toContain('Run `migrate copy` first');
    // Refused before it wrote anything: the migration's identity too (a mapping edited before the first copy was then refused as a change).
    expect(await target.listKeys(`_migrate/${s.id}/`)).toEqual([]);
    // A copy that started and stopped (Ctrl-C) left its progress, not a checkpoint: the way on is to resume it.
    await target.putKey(`_migrate/${s.id}/copy`, Buffer.from(JSON.stringify({ schemaVersion: 1, revision: 5, started: new Date().toISOString(), updated: new Date().toISOString(), rules: {} })));
    const stopped = await runCli(['dualrun'], { cwd: s.dir, env: serverEnv() });
    expect(stopped.code).toBe(4);
    expect(stopped.stderr).toContain('Run `migrate copy --resume` first (a copy started and did not finish');
    // A completed copy whose checkpoint went (deleted by hand): a copy leaves one again.
    await target.putKey(`_migrate/${s.id}/copy`, Buffer.from(JSON.stringify({ schemaVersion: 1, revision: 5, started: new Date().toISOString(), completed: new Date().toISOString(), rules: {} })));
    const completed = await runCli(['dualrun'], { cwd: s.dir, env: serverEnv() });
    expect(completed.code).toBe(4);
    expect(completed.stderr).toContain('Run `migrate copy` first');
  });

  it('--progress json: stderr holds NDJSON events only (its log lines as `log` events), ending with the end event', async () => {
    const s = scenario('ndjson');
    await etcd.put(`${s.root}/app/a`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir, ['--progress', 'json']);
    await etcd.put(`${s.root}/app/b`).value('2');
    await waitCaughtUp(etcd, target, s.id);
    expect(await dr.stop()).toBe(0);
    const events = dr.stderr().trim().split('\n').map((line) => JSON.parse(line) as { ts: string; event: string; msg?: string; exitCode?: number });
    for (const e of events) expect(e).toMatchObject({ ts: expect.any(String), event: expect.any(String) });
    expect(events.some((e) => e.event === 'log' && e.msg === 'leading the dual-run')).toBe(true);
    expect(events.at(-1)).toMatchObject({ event: 'end', exitCode: 0 });
  });

  it('replicates puts, deletes, binary values and etcd transactions in order; splits revisions over the op limit', async () => {
    const s = scenario('basic');
    await etcd.put(`${s.root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir);
    try {
      await eventually('dual-run leads', async () => (await fetch(`http://127.0.0.1:${dr.metricsPort}/healthz`)).ok);
      const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i));
      await etcd.put(`${s.root}/app/new`).value('created');
      await etcd.put(`${s.root}/app/seed`).value('updated');
      await etcd.put(`${s.root}/app/bin`).value(binary);
      await etcd.put(`${s.root}/app/gone`).value('x');
      await etcd.delete().key(`${s.root}/app/gone`);
      await etcd.if(`${s.root}/app/seed`, 'Value', '==', 'updated').then(
        etcd.put(`${s.root}/app/txn/a`).value('A'),
        etcd.put(`${s.root}/app/txn/b`).value('B'),
        etcd.delete().key(`${s.root}/app/new`),
      ).commit();
      const limits = await target.limits();
      const big = Array.from({ length: limits.txnMaxOps + 50 }, (_, i) => etcd.put(`${s.root}/app/bulk/${String(i).padStart(4, '0')}`).value(`v${i}`));
      await etcd.if(`${s.root}/app/seed`, 'Mod', '>', 0).then(...big).commit();
      // The audit's room for a revision is the dual-run's: a revision of that many ops is one txn, one more is split.
      const room = txnCapacity(limits).ops;
      for (const [group, n] of [['fits', room], ['over', room + 1]] as const) {
        await etcd.if(`${s.root}/app/seed`, 'Mod', '>', 0).then(...Array.from({ length: n }, (_, i) => etcd.put(`${s.root}/app/${group}/${String(i).padStart(4, '0')}`).value(group))).commit();
      }
      // Few ops, but more bytes than a txn holds (base64 values): split too, and said so.
      await etcd.if(`${s.root}/app/seed`, 'Mod', '>', 0).then(...Array.from({ length: 3 }, (_, i) => etcd.put(`${s.root}/app/heavy/${i}`).value(randomBytes(200_000)))).commit();
      // Keys outside every rule are not replicated.
      await etcd.put(`${s.root}/elsewhere`).value('ignored');
      // Puts Consul cannot take: logged and counted; a value grown past the limit takes its last copy out of Consul.
      await etcd.put(`${s.root}/app/grows`).value('small');
      await waitCaughtUp(etcd, target, s.id);
      expect((await target.readKey(`${s.id}/app/grows`))?.value.toString()).toBe('small');
      await etcd.put(`${s.root}/app/grows`).value(Buffer.alloc(limits.maxValueBytes + 1, 7));
      await etcd.put(`${s.root}/app/a//b`).value('unservable');
      await waitCaughtUp(etcd, target, s.id);
      await expectParity(s);
      expect((await target.readKey(`${s.id}/app/bin`))!.value.equals(binary)).toBe(true);
      expect(await target.readKey(`${s.id}/app/new`)).toBeUndefined();
      expect(await target.listKeys(`${s.id}/app/bulk/`)).toHaveLength(limits.txnMaxOps + 50);
      const metrics = await dr.metrics();
      expect(metric(metrics, 'migrate_dualrun_split_revisions_total')).toBe(3);
      const split = /revision \d+ has 3 ops of (\d+) bytes as txn ops \(values base64-encoded\), more than one Consul txn holds \((\d+) of its \d+: the dual-run keeps the rest for its checkpoint and checks\); applied in \d txns, not atomically/.exec(dr.stderr());
      expect(split, dr.stderr()).not.toBeNull();
      // The revision's size, as the line says it: more than a txn holds.
      expect(Number(split![1])).toBeGreaterThan(Number(split![2]));
      expect(dr.stderr()).toMatch(new RegExp(`revision \\d+ has ${room + 1} ops, more than one Consul txn holds \\(${room} of its`));
      expect(metric(metrics, 'migrate_dualrun_lag_revisions')).toBe(0);
      expect(await target.readKey(`${s.id}/app/grows`)).toBeUndefined();
      expect(metric(metrics, 'migrate_dualrun_unmappable_total')).toBe(2);
      // Progress lines give etcd's revision once the watch has told it, never a 0 before that.
      expect(dr.stderr()).toMatch(/progress \{"checkpoint":\d+,"etcdRevision":[1-9]/);
      expect(dr.stderr()).not.toMatch(/"etcdRevision":0[,}]/);
      expect(dr.stderr()).toMatch(/etcd put of \S+\/app\/grows under rule app not replicated: value-too-large .*; its earlier value is deleted from Consul/);
      expect(dr.stderr()).toMatch(/etcd put of \S+\/app\/a\/\/b under rule app not replicated: empty-segment/);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    // A clean stop releases the leader lock, and marks its last checkpoint stopped: verify (and status) know at once.
    expect(await target.readKey(`_migrate/${s.id}/leader`)).toBeUndefined();
    expect(JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString())).toMatchObject({ by: 'dualrun', stopped: expect.any(String) });
    const verified = await runCli(['verify', '--rounds', '1', '--no-record', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
    expect(JSON.parse(verified.stdout).cut).toMatchObject({ cut: 'immediate', reason: 'dualrun-stopped', waitedMs: 0 });
  });

  it('a split revision moves the checkpoint for good: a stop right after it marks that revision stopped, not the one before', async () => {
    const s = scenario('split-stop');
    await etcd.put(`${s.root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir);
    let revision: number;
    try {
      await eventually('dual-run leads', async () => (await fetch(`http://127.0.0.1:${dr.metricsPort}/healthz`)).ok);
      const room = txnCapacity(await target.limits()).ops;
      const txn = await etcd.if(`${s.root}/app/seed`, 'Mod', '>', 0).then(...Array.from({ length: room + 20 }, (_, i) => etcd.put(`${s.root}/app/split/${String(i).padStart(4, '0')}`).value(`v${i}`))).commit();
      revision = Number(txn.header.revision);
      await waitCaughtUp(etcd, target, s.id);
      expect(dr.stderr()).toMatch(new RegExp(`revision ${revision} has ${room + 20} ops`));
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    const checkpoint = JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()) as { revision: number; stopped?: string };
    expect(checkpoint).toMatchObject({ revision, stopped: expect.any(String) });
    expect(dr.stderr()).toContain(`at checkpoint ${revision}`);
  });

  it('mirrors leases as sessions: renewed past their TTL while the lease lives, keys deleted when it ends, released when a key leaves its lease', async () => {
    const s = scenario('lease');
    await etcd.put(`${s.root}/app/seed`).value('1');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(s.dir);
    const lease = etcd.lease(10);
    try {
      const leaseId = await lease.grant();
      await lease.put(`${s.root}/services/api/1`).value('10.0.0.1:80');
      await lease.put(`${s.root}/services/api/2`).value('10.0.0.2:80');
      await lease.put(`${s.root}/locks/job`).value('me');
      await waitCaughtUp(etcd, target, s.id);
      const held = await target.readKey(`${s.id}/services/api/1`);
      expect(held?.session).toBeTruthy();
      expect(await target.readSession(held!.session!)).toMatchObject({ ttlSeconds: 10, behavior: 'delete' });
      expect(await target.readKey(`${s.id}/locks/job`)).toBeUndefined();
      // Past 2× the session TTL: only the dual-run's renewals keep the keys.
      await new Promise((r) => setTimeout(r, 23_000));
      expect((await target.readKey(`${s.id}/services/api/1`))?.session).toBe(held!.session);
      // A key leaves its lease: it stays, released from the session.
      await etcd.put(`${s.root}/services/api/2`).value('10.0.0.2:81');
      await waitCaughtUp(etcd, target, s.id);
      const released = await target.readKey(`${s.id}/services/api/2`);
      expect(released?.value.toString()).toBe('10.0.0.2:81');
      expect(released?.session).toBeUndefined();
      await expectParity(s);
      await lease.revoke();
      await eventually('leased key deleted in Consul', async () => (await target.readKey(`${s.id}/services/api/1`)) === undefined);
      await eventually('session destroyed', async () => (await target.readSession(held!.session!)) === undefined, 10_000);
      // Its record goes right after the session (a separate request: read in between on a busy machine, it was still there).
      await eventually('session record removed', async () => (await target.readKey(`_migrate/${s.id}/sessions/${leaseId}`)) === undefined, 5_000);
      await expectParity(s);
    } finally {
      lease.release();
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('loses no write across 10 SIGKILLs at random moments while a writer keeps changing etcd', async () => {
    const s = scenario('kill');
    for (let i = 0; i < 50; i++) await etcd.put(`${s.root}/app/k${i}`).value('0');
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    let writing = true;
    let writes = 0;
    const writer = (async () => {
      while (writing) {
        const i = randomInt(100);
        if (randomInt(10) === 0) await etcd.delete().key(`${s.root}/app/k${i}`);
        else if (randomInt(10) === 0) await etcd.if(`${s.root}/app/k0`, 'Mod', '>', -1).then(etcd.put(`${s.root}/app/k${i}`).value(`t${writes}`), etcd.put(`${s.root}/app/k${(i + 1) % 100}`).value(`t${writes}`)).commit();
        else await etcd.put(`${s.root}/app/k${i}`).value(`w${writes}`);
        writes++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    let kills = 0;
    try {
      for (; kills < 10; kills++) {
        const dr = await startDualRun(s.dir);
        await new Promise((r) => setTimeout(r, 300 + randomInt(1200)));
        await dr.kill();
      }
    } finally {
      writing = false;
      await writer;
    }
    const dr = await startDualRun(s.dir);
    try {
      await waitCaughtUp(etcd, target, s.id);
      await expectParity(s);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    process.stderr.write(`dualrun-kill: ${kills} SIGKILLs during ${writes} etcd writes; parity after restart\n`);
    expect(writes).toBeGreaterThan(100);
  }, 120_000);

  it('renews the sessions its re-baseline made for leases granted while it was stopped: their keys stay in Consul', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const env = serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
    const lease = etcd.lease(10);
    lease.on('lost', () => undefined);
    try {
      const s = scenario('rebaselease');
      await etcd.put(`${s.root}/app/a`).value('1');
      expect((await runCli(['copy'], { cwd: s.dir, env })).code).toBe(0);
      let dr = await startDualRun(s.dir, [], env);
      await waitCaughtUp(etcd, target, s.id);
      expect(await dr.stop()).toBe(0);
      // While it is stopped: a new lease with a key, and etcd compacted past the checkpoint.
      await lease.grant();
      const put = await lease.put(`${s.root}/services/api/1`).value('10.0.0.1:80');
      await etcd.kv.compact({ revision: Number(put.header.revision), physical: true });
      dr = await startDualRun(s.dir, [], env);
      try {
        await eventually('re-baselined', async () => dr.stderr().includes('re-baselined at revision'));
        const session = (await target.readKey(`${s.id}/services/api/1`))?.session;
        expect(session).toBeTruthy();
        // Consul reaps a 10 s session 10 to 20 s after its last renewal: 25 s later it must still hold the key.
        await new Promise((r) => setTimeout(r, 25_000));
        expect((await target.readKey(`${s.id}/services/api/1`))?.session).toBe(session);
        await expectParity(s, etcd);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      lease.release();
      etcd.close();
      await own.stop();
    }
  }, 90_000);

  it('re-baselines when etcd compacted at the revision just after its checkpoint: a delete made there leaves no event to watch', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const env = serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
    try {
      const s = scenario('compact1');
      for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${String(i).padStart(2, '0')}`).value('v1');
      expect((await runCli(['copy'], { cwd: s.dir, env })).code).toBe(0);
      let dr = await startDualRun(s.dir, [], env);
      await waitCaughtUp(etcd, target, s.id);
      expect(await dr.stop()).toBe(0);
      const checkpoint = (JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()) as { revision: number }).revision;
      // Two keys deleted in one revision, the one after the checkpoint, and etcd compacted right there (`etcdctl compact $(rev)`).
      const deleted = Number((await etcd.delete().range(new Range(`${s.root}/app/k00`, `${s.root}/app/k02`)).exec()).header.revision);
      expect(deleted).toBe(checkpoint + 1);
      await etcd.kv.compact({ revision: deleted, physical: true });
      dr = await startDualRun(s.dir, [], env);
      try {
        await waitCaughtUp(etcd, target, s.id);
        expect(await target.readKey(`${s.id}/app/k00`)).toBeUndefined();
        expect(await target.readKey(`${s.id}/app/k01`)).toBeUndefined();
        await expectParity(s, etcd);
        expect(metric(await dr.metrics(), 'migrate_dualrun_rebaselines_total')).toBe(1);
        expect(dr.stderr()).toContain(`etcd compacted its history past the checkpoint ${checkpoint}; re-baselining`);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      etcd.close();
      await own.stop();
    }
  });

  it('re-baselines after etcd compacted past its checkpoint, including keys deleted meanwhile', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const env = serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
    try {
      const s = scenario('compact');
      for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i}`).value('v1');
      expect((await runCli(['copy'], { cwd: s.dir, env })).code).toBe(0);
      let dr = await startDualRun(s.dir, [], env);
      await waitCaughtUp(etcd, target, s.id);
      expect(await dr.stop()).toBe(0);
      for (let i = 0; i < 5; i++) await etcd.delete().key(`${s.root}/app/k${i}`);
      await etcd.put(`${s.root}/app/k10`).value('v2');
      await etcd.put(`${s.root}/app/added`).value('new');
      const revision = Number((await etcd.put(`${s.root}/app/k11`).value('v2').exec()).header.revision);
      await etcd.kv.compact({ revision, physical: true });
      dr = await startDualRun(s.dir, [], env);
      try {
        await waitCaughtUp(etcd, target, s.id);
        await expectParity(s, etcd);
        expect(await target.readKey(`${s.id}/app/k0`)).toBeUndefined();
        expect(metric(await dr.metrics(), 'migrate_dualrun_rebaselines_total')).toBe(1);
        expect(dr.stderr()).toContain('re-baselining');
      } finally {
        expect(await dr.stop()).toBe(0);
      }

      // Stopped again, and most of the rule deleted in etcd before a compaction: the re-baseline would
      // delete past the guard. Refused (exit 4) before any write, with the dual-run's own way out.
      const deleted = Array.from({ length: 12 }, (_, i) => `${s.root}/app/k${i + 5}`);
      for (const key of deleted) await etcd.delete().key(key);
      await etcd.kv.compact({ revision: Number((await etcd.put(`${s.root}/app/added`).value('new2').exec()).header.revision), physical: true });
      const refused = await runCli(['dualrun'], { cwd: s.dir, env });
      expect(refused.code, refused.stderr).toBe(4);
      expect(refused.stderr).toMatch(/error\[delete_guard\]: Deleting 12 extraneous keys .* the re-baseline wrote and deleted nothing \(it ran because etcd compacted past the checkpoint \d+/);
      expect(refused.stderr).toContain('start the dual-run again with --allow-mass-delete');
      expect(await target.readKey(`${s.id}/app/k5`)).toBeDefined();
      expect((await target.readKey(`${s.id}/app/added`))?.value.toString()).toBe('new');
      dr = await startDualRun(s.dir, ['--allow-mass-delete'], env);
      try {
        await waitCaughtUp(etcd, target, s.id);
        await expectParity(s, etcd);
        expect(await target.readKey(`${s.id}/app/k5`)).toBeUndefined();
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      etcd.close();
      await own.stop();
    }
  });

  it('--accept-mapping-change with a rule added since the copy: the dual-run re-baselines, so the new rule\'s existing keys reach Consul (not only those written later)', async () => {
    const s = scenario('addrule');
    await etcd.put(`${s.root}/app/a`).value('1');
    for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/added/k${i}`).value(`v${i}`);
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    const yaml = `${s.yaml}  - { name: added, from: ${s.root}/added/, to: ${s.id}/added/ }\n`;
    writeFileSync(join(s.dir, 'migration.yaml'), yaml);
    const grown = { ...s, yaml, mapping: parseConfig(yaml, 'migration.yaml').mapping };
    const refused = await runCli(['dualrun'], { cwd: s.dir, env: serverEnv() });
    expect(refused.code, refused.stderr).toBe(4);
    expect(refused.stderr).toContain('error[identity_mapping_changed]');
    const dr = await startDualRun(s.dir, ['--accept-mapping-change']);
    try {
      await etcd.put(`${s.root}/added/later`).value('after the restart');
      await waitCaughtUp(etcd, target, s.id);
      await expectParity(grown);
      expect(await target.listKeys(`${s.id}/added/`)).toHaveLength(21);
      expect(dr.stderr()).toMatch(/rules changed since the migration recorded them \(--accept-mapping-change\); re-baselining/);
      expect(metric(await dr.metrics(), 'migrate_dualrun_rebaselines_total')).toBe(1);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    // Started again (the mapping now recorded): no second re-baseline.
    const again = await startDualRun(s.dir);
    try {
      await waitCaughtUp(etcd, target, s.id);
      expect(metric(await again.metrics(), 'migrate_dualrun_rebaselines_total')).toBe(0);
      expect(again.stderr()).not.toContain('re-baselining');
    } finally {
      expect(await again.stop()).toBe(0);
    }
  });

  it('--accept-mapping-change whose re-baseline the delete guard refuses records nothing: the change is still pending at the next start, and applied with --allow-mass-delete', async () => {
    const s = scenario('guardmap');
    for (let i = 0; i < 20; i++) await etcd.put(`${s.root}/app/k${i}`).value(`v${i}`);
    expect((await runCli(['copy'], { cwd: s.dir, env: serverEnv() })).code).toBe(0);
    // A nested keep rule takes 11 of the 20 keys (k1, k10–k19) off the copy: the re-baseline would delete them from Consul.
    const yaml = `${s.yaml}  - { name: kept, from: ${s.root}/app/k1, action: keep }\n`;
    writeFileSync(join(s.dir, 'migration.yaml'), yaml);
    const refused = await runCli(['dualrun', '--accept-mapping-change'], { cwd: s.dir, env: serverEnv() });
    expect(refused.code, refused.stderr).toBe(4);
    // Its cause: the change, not a compaction.
    expect(refused.stderr).toMatch(/error\[delete_guard\]: .*the re-baseline wrote and deleted nothing \(it ran for migration\.yaml's changed rules: the change takes those keys out of the rule/);
    expect(refused.stderr).toContain('start the dual-run again with --accept-mapping-change --allow-mass-delete');
    expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(20);
    // Its checkpoint says it stopped: status does not show a dual-run running once it has exited.
    const checkpoint = JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString()) as { by: string; stopped?: string };
    expect(checkpoint).toMatchObject({ by: 'dualrun', stopped: expect.any(String) });
    const after = JSON.parse((await runCli(['status', '--format', 'json'], { cwd: s.dir, env: serverEnv() })).stdout) as { dualRun: { running: boolean } };
    expect(after.dualRun.running).toBe(false);
    // Not recorded: a plain start still sees the change (it ran as if nothing had changed, and never removed the keys).
    const plain = await runCli(['dualrun'], { cwd: s.dir, env: serverEnv() });
    expect(plain.code, plain.stderr).toBe(4);
    expect(plain.stderr).toContain('error[identity_mapping_changed]');
    const dr = await startDualRun(s.dir, ['--accept-mapping-change', '--allow-mass-delete']);
    try {
      await eventually('re-baselined', async () => (await target.listKeys(`${s.id}/app/`)).length === 9);
      await waitCaughtUp(etcd, target, s.id);
    } finally {
      expect(await dr.stop()).toBe(0);
    }
    const status = JSON.parse((await runCli(['status', '--format', 'json'], { cwd: s.dir, env: serverEnv() })).stdout) as { mappingChanged: boolean };
    expect(status.mappingChanged).toBe(false);
  }, 60_000);
});
