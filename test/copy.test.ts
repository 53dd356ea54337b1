import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { runCopy, type CopyOptions } from '../src/copy/copy.js';
import type { TargetStore } from '../src/stores/types.js';
import { checkParity } from './support/parity.js';
import { eventually, startDualRun } from './support/dualrun.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { Terminal } from './support/terminal.js';
import { configDir, consulIndex, consulTarget, etcdSource, privateConsul, rawEtcd, runCli, serverEnv, servers } from './support/harness.js';

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
  - { name: flat, from: ${root}/flat/, to: ${id}/flat/, leases: persist }
  - { name: legacy, from: ${root}/legacy/, to: ${id}/legacy/, keys: escape }
  - { name: k8s, from: ${root}/registry/, action: keep }
`;
  const loaded = parseConfig(yaml, 'migration.yaml');
  return { id, root, yaml, loaded, dir: configDir(yaml) };
}

async function seed(root: string) {
  const leases: Record<string, string> = {};
  const thirty = etcd.lease(30);
  const short = etcd.lease(5);
  const long = etcd.lease(30 * 3600);
  leases.thirty = await thirty.grant();
  leases.short = await short.grant();
  leases.long = await long.grant();
  const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  await etcd.put(`${root}/app/config/db_url`).value('postgres://db:5432/app');
  await etcd.put(`${root}/app/config/binary`).value(allBytes);
  await etcd.put(`${root}/app/config/empty`).value(Buffer.alloc(0));
  await etcd.put(`${root}/app/big/500k`).value(Buffer.alloc(500_000, 0x42));
  await etcd.put(`${root}/app/big/600k`).value(Buffer.alloc(600_000, 0x43));
  await etcd.put(`${root}/app//double`).value('x');
  await etcd.put(`${root}/app/./dot`).value('x');
  await etcd.put(Buffer.concat([Buffer.from(`${root}/app/bin`), Buffer.from([0xff, 0xfe])])).value('x');
  await etcd.put(`${root}/services/redis/r1`).value('10.0.0.1:6379').lease(leases.thirty);
  await etcd.put(`${root}/services/redis/r2`).value('10.0.0.2:6379').lease(leases.thirty);
  await etcd.put(`${root}/services/pg/p1`).value('10.0.0.3:5432').lease(leases.short);
  await etcd.put(`${root}/services/pg/p2`).value('10.0.0.4:5432').lease(leases.long);
  await etcd.put(`${root}/locks/nightly`).value('holder').lease(leases.thirty);
  await etcd.put(`${root}/flat/token`).value('t').lease(leases.thirty);
  await etcd.put(`${root}/legacy//slash`).value('esc1');
  await etcd.put(`${root}/legacy/./dot`).value('esc2');
  await etcd.put(`${root}/registry/pods/x`).value('k8s');
  return { leases, stop: () => [thirty, short, long].forEach((l) => l.release()), revoke: async () => Promise.all([thirty.revoke(), short.revoke(), long.revoke()]) };
}

describe('migrate copy (real servers)', () => {
  it('copies every mapped key byte for byte, with sessions for leases, and reports what it did not copy', async () => {
    const s = scenario('full');
    const data = await seed(s.root);
    try {
      // On an agent no other test writes to, the dry-run must not move Consul's index at all.
      const own = await privateConsul();
      const before = await consulIndex(own.address);
      const dry = await runCli(['copy', '--dry-run', '--format', 'json'], { cwd: s.dir, env: serverEnv({ CONSUL_HTTP_ADDR: own.address }) });
      expect(dry.code, dry.stderr).toBe(0);
      expect(await consulIndex(own.address)).toBe(before);
      await own.stop();
      const plan = JSON.parse(dry.stdout);
      expect(plan.dryRun).toBe(true);
      const dryOps = plan.ops.flatMap((o: { ops?: { key: string }[]; key?: string }) => o.ops?.map((x) => x.key) ?? [o.key]);
      expect(dryOps).toContain(`${s.id}/app/config/binary`);
      expect(JSON.stringify(plan)).not.toContain('postgres://');

      const run = await runCli(['copy', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
      expect(run.code, run.stderr).toBe(0);
      const result = JSON.parse(run.stdout);
      const app = result.rules.find((r: { name: string }) => r.name === 'app');
      expect(app).toMatchObject({ created: 4, updated: 0, singlePuts: 1, skipped: { 'value-too-large': 1, 'empty-segment': 1, 'dot-segment': 1, 'invalid-utf8': 1 } });
      expect(result.rules.find((r: { name: string }) => r.name === 'locks').skipped).toEqual({ 'lease-skip': 1 });
      expect(result.rules.find((r: { name: string }) => r.name === 'legacy').created).toBe(2);
      expect(result.sessions.created).toBe(3);
      // The dry-run showed the txns the copy sent, session records too, however Consul's session creates interleaved.
      expect(result.txns).toBe(plan.txns);
      expect(result.sessions.clamps.map((c: { clamped: string; sessionTtl: number }) => [c.clamped, c.sessionTtl]).sort()).toEqual([['lowered', 86400], ['raised', 10]]);

      const parity = await checkParity(etcd, target, s.loaded.mapping, s.id);
      expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [], notServable: [] });
      expect(parity.checked).toBe(4 + 4 + 1 + 2);
      const leased = await target.readKey(`${s.id}/services/redis/r1`);
      expect(leased?.session).toBeTruthy();
      expect(await target.readSession(leased!.session!)).toMatchObject({ behavior: 'delete', lockDelayNs: 0, ttlSeconds: 30 });
      expect(await target.readKey(`${s.id}/app/big/600k`)).toBeUndefined();
      // The copy leaves the checkpoint the dual-run starts from.
      const checkpoint = JSON.parse((await target.readKey(`_migrate/${s.id}/checkpoint`))!.value.toString());
      expect(checkpoint.revision).toBe(result.revision);

      const again = JSON.parse((await runCli(['copy', '--format', 'json'], { cwd: s.dir, env: serverEnv() })).stdout);
      expect(again.rules.reduce((n: number, r: { created: number; updated: number }) => n + r.created + r.updated, 0)).toBe(0);
      expect(again.sessions).toMatchObject({ created: 0, adopted: 3 });
    } finally {
      data.stop();
    }
  });

  it('handles a key changed in Consul between plan and apply per --on-conflict', async () => {
    for (const policy of ['overwrite', 'skip', 'fail'] as const) {
      const s = scenario(`conflict-${policy}`);
      await etcd.put(`${s.root}/app/a`).value('etcd-a');
      await etcd.put(`${s.root}/app/b`).value('etcd-b');
      await target.putKey(`${s.id}/app/b`, Buffer.from('consul-old'));
      // Between the planning read and the first write, someone writes b in Consul.
      let injected = false;
      const racing: TargetStore = Object.create(target, {
        applyTxn: {
          value: async (ops: Parameters<TargetStore['applyTxn']>[0]) => {
            if (!injected && ops.some((o) => o.key === `${s.id}/app/b`)) {
              injected = true;
              await target.putKey(`${s.id}/app/b`, Buffer.from('consul-racer'));
            }
            return target.applyTxn(ops);
          },
        },
      });
      const source = etcdSource();
      try {
        const run = runCopy({ source, target: racing, config: s.loaded.config, mapping: s.loaded.mapping }, copyOptions({ onConflict: policy }));
        if (policy === 'fail') {
          await expect(run).rejects.toMatchObject({ code: 'copy_conflict', exitCode: 4 });
          continue;
        }
        const result = await run;
        const app = result.rules.find((r) => r.name === 'app')!;
        const b = (await target.readKey(`${s.id}/app/b`))!.value.toString();
        if (policy === 'overwrite') {
          expect(app.conflicts).toEqual({ overwritten: 1, skipped: 0 });
          expect(b).toBe('etcd-b');
        } else {
          expect(app.conflicts).toEqual({ overwritten: 0, skipped: 1 });
          expect(b).toBe('consul-racer');
        }
        expect((await target.readKey(`${s.id}/app/a`))!.value.toString()).toBe('etcd-a');
      } finally {
        source.close();
      }
    }
  });

  it('reports extraneous keys, and --delete-extraneous over the guard exits 4 and deletes nothing', async () => {
    const s = scenario('extra');
    for (let i = 0; i < 5; i++) await etcd.put(`${s.root}/app/k${i}`).value(`v${i}`);
    for (let i = 0; i < 20; i++) await target.putKey(`${s.id}/app/stale-${i}`, Buffer.from('old'));
    const report = JSON.parse((await runCli(['copy', '--format', 'json'], { cwd: s.dir, env: serverEnv() })).stdout);
    expect(report.rules.find((r: { name: string }) => r.name === 'app')).toMatchObject({ created: 5, extraneous: 20, deleted: 0 });

    const unconfirmed = await runCli(['copy', '--delete-extraneous'], { cwd: s.dir, env: serverEnv() });
    expect(unconfirmed.code).toBe(2);
    expect(unconfirmed.stderr).toContain('error[confirmation_required]: copy --delete-extraneous deletes keys in Consul and needs confirmation; there is no terminal to ask on.');
    expect(unconfirmed.stderr).toContain('--yes');

    // On a terminal it asks: anything but "delete" (here a no, then Ctrl-C) writes and deletes nothing; "delete" copies, here into the delete guard.
    // Other test files write to this Consul meanwhile: the migration's own keys and state stand for it.
    const before = async () => ({ keys: await target.listKeys(`${s.id}/`), state: (await target.readKey(`_migrate/${s.id}/copy`))?.modifyIndex });
    const was = await before();
    const answers: [(t: Terminal) => void, number, string][] = [
      [(t) => (t.type('no'), t.send('Enter')), 4, 'error[not_confirmed]: copy --delete-extraneous was not confirmed; nothing was written or deleted.'],
      [(t) => t.send('C-c'), 130, 'interrupted at its confirmation prompt'],
      [(t) => (t.type('delete'), t.send('Enter')), 4, 'error[delete_guard]'],
    ];
    for (const [answer, code, said] of answers) {
      const asked = new Terminal(['copy', '--delete-extraneous'], { cwd: s.dir, env: serverEnv() });
      try {
        await asked.until('the prompt', (screen) => screen.includes('Type "delete" to copy and delete them:'));
        answer(asked);
        const ended = await asked.exit();
        expect(ended.code, ended.screen).toBe(code);
        expect(ended.screen.replace(/\s+/g, ' ')).toContain(said);
      } finally {
        asked.close();
      }
    }
    expect(await before()).toEqual(was);

    // A key new in etcd since: the refused copy must not write it either (it used to, before finding the guard tripped).
    await etcd.put(`${s.root}/app/k-new`).value('new');
    const guarded = await runCli(['copy', '--delete-extraneous', '--yes'], { cwd: s.dir, env: serverEnv() });
    expect(guarded.code).toBe(4);
    expect(guarded.stderr).toContain('error[delete_guard]');
    expect(guarded.stderr).toContain('nothing was written or deleted');
    expect(guarded.stderr).toContain('--allow-mass-delete');
    expect(await target.listKeys(`${s.id}/app/stale-`)).toHaveLength(20);
    expect(await target.readKey(`${s.id}/app/k-new`)).toBeUndefined();

    const allowed = await runCli(['copy', '--delete-extraneous', '--yes', '--allow-mass-delete', '--format', 'json'], { cwd: s.dir, env: serverEnv() });
    expect(allowed.code, allowed.stderr).toBe(0);
    expect(JSON.parse(allowed.stdout).rules.find((r: { name: string }) => r.name === 'app').deleted).toBe(20);
    expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(6);
  });

  it('keys over 256 KiB (GET /v1/kv answers 431 past about 1 MiB of URL): audit blocks them, copy skips them and goes on (exit 0), verify counts them unmappable', async () => {
    const id = `toolong-${randomBytes(3).toString('hex')}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: app, from: /${id}/, to: ${id}/ }\n`);
    await etcd.put(`/${id}/a-short`).value('s');
    await etcd.put(`/${id}/b-${'d'.repeat(1_100_000)}`).value('long');
    await etcd.put(`/${id}/c-${'é'.repeat(135_000)}`).value('wide');
    await etcd.put(`/${id}/d-short`).value('s');
    const under = `e-${'d'.repeat(250_000)}`;
    await etcd.put(`/${id}/${under}`).value('e');
    const audit = await runCli(['audit', '--prefix', `/${id}/`, '--format', 'json', '--progress', 'none'], { cwd: dir, env: serverEnv() });
    expect(audit.code).toBe(1);
    expect((JSON.parse(audit.stdout) as { findings: { code: string; severity: string; count: number }[] }).findings.find((f) => f.code === 'key_too_long')).toMatchObject({ severity: 'blocker', count: 2 });
    const copy = await runCli(['copy', '--format', 'json', '--progress', 'none'], { cwd: dir, env: serverEnv() });
    expect(copy.code, copy.stderr).toBe(0);
    expect(JSON.parse(copy.stdout).rules[0]).toMatchObject({ created: 3, skipped: { 'key-too-long': 2 } });
    expect(await target.listKeys(`${id}/`)).toEqual([`${id}/a-short`, `${id}/d-short`, `${id}/${under}`]);
    const verify = await runCli(['verify', '--format', 'json', '--read-back', 'all'], { cwd: dir, env: serverEnv() });
    expect(verify.code, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout).rules[0]).toMatchObject({ status: 'parity', unmappable: { 'key-too-long': 2 } });
    // The longest key that is copied: a difference on it is drift (exit 1), not a txn too large for Consul (exit 3).
    await etcd.put(`/${id}/${under}`).value('changed');
    const drift = await runCli(['verify', '--format', 'json', '--rounds', '1'], { cwd: dir, env: serverEnv() });
    expect(drift.code, drift.stderr).toBe(1);
    expect((JSON.parse(drift.stdout).differences as { kind: string }[]).map((d) => d.kind)).toEqual(['value']);
    // The dual-run replicates its change and its delete, and keeps running.
    const dr = await startDualRun(dir);
    try {
      await etcd.delete().key(`/${id}/${under}`);
      await eventually('the long key deleted in Consul', async () => (await target.listKeys(`${id}/`)).length === 2);
      expect(dr.child.exitCode).toBeNull();
    } finally {
      expect(await dr.stop()).toBe(0);
    }
  }, 90_000);

  it('--rate caps the write rate', async () => {
    const s = scenario('rate');
    for (let from = 0; from < 400; from += 100) {
      await etcd.if(`${s.root}/app/k0000`, 'Mod', '>', -1).then(...Array.from({ length: 100 }, (_, i) => etcd.put(`${s.root}/app/k${String(from + i).padStart(4, '0')}`).value(`v${i}`))).commit();
    }
    const began = Date.now();
    const run = await runCli(['copy', '--rate', '150', '--concurrency', '16'], { cwd: s.dir, env: serverEnv() });
    expect(run.code, run.stderr).toBe(0);
    // 400 writes at 150/s with a bucket of one second's worth: at least 1.6 s.
    expect(Date.now() - began).toBeGreaterThanOrEqual(1600);
    expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(400);
  });

  it('stops (exit 3, copy_lock_lost) when Consul loses the migration under it, rather than finish "done" without the keys written before; --resume then copies them', async () => {
    const s = scenario('wiped');
    for (let from = 0; from < 600; from += 100) {
      await etcd.if(`${s.root}/app/k0000`, 'Mod', '>', -1).then(...Array.from({ length: 100 }, (_, i) => etcd.put(`${s.root}/app/k${String(from + i).padStart(4, '0')}`).value(`v${i}`))).commit();
    }
    const copy = runCli(['copy', '--rate', '100', '--concurrency', '1', '--page-keys', '100', '--progress', 'none'], { cwd: s.dir, env: serverEnv(), timeoutMs: 60_000 });
    await eventually('the copy writing', async () => (await target.listKeys(`${s.id}/app/`)).length >= 100, 30_000);
    // Consul wiped (or restored from a snapshot taken before the copy) under the copy: its state and the keys written so far are gone.
    for (const prefix of [`_migrate/${s.id}/`, `${s.id}/`]) expect((await fetch(`${servers().consulAddress}/v1/kv/${prefix}?recurse`, { method: 'DELETE' })).status).toBe(200);
    const run = await copy;
    expect(run.code, run.stderr).toBe(3);
    expect(run.stderr).toContain('error[copy_lock_lost]');
    // Said once (the hint of a copy stopped after it began writing adds it otherwise).
    expect(run.stderr.split('migrate copy --resume')).toHaveLength(2);
    // Nothing says the copy is done.
    expect(await target.readEntries([`_migrate/${s.id}/copy`])).toEqual([]);
    const resumed = await runCli(['copy', '--resume', '--progress', 'none'], { cwd: s.dir, env: serverEnv() });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(await target.listKeys(`${s.id}/app/`)).toHaveLength(600);
  });

  it('refuses a state meta written for another etcd cluster (exit 4) and writes nothing', async () => {
    const s = scenario('identity');
    await etcd.put(`${s.root}/app/k`).value('v');
    const own = await privateConsul();
    const ownTarget = new ConsulTarget({ address: own.address });
    await ownTarget.putKey(`_migrate/${s.id}/meta`, Buffer.from(JSON.stringify({ schemaVersion: 1, id: s.id, etcdClusterId: '42', datacenters: ['dc1'], mappingHash: 'x', created: 'then', toolVersion: '0' })));
    const before = await consulIndex(own.address);
    const run = await runCli(['copy'], { cwd: s.dir, env: serverEnv({ CONSUL_HTTP_ADDR: own.address }) });
    expect(run.code).toBe(4);
    expect(run.stderr).toContain('error[identity_cluster_mismatch]');
    expect(await consulIndex(own.address)).toBe(before);
    ownTarget.close();
    await own.stop();
  });
});

function copyOptions(over: Partial<CopyOptions> = {}): CopyOptions {
  return {
    dryRun: false, recordOps: false, resume: false, onConflict: 'overwrite', deleteExtraneous: false, allowMassDelete: false, acceptMappingChange: false,
    rate: 0, concurrency: 4, pageKeys: 1000, signal: new AbortController().signal, now: () => new Date(), toolVersion: 'test', ...over,
  };
}
