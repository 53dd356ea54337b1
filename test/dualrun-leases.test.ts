import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { parseConfig } from '../src/config/load.js';
import { startEtcd } from '../scripts/local-servers.js';
import { checkParity } from './support/parity.js';
import { configDir, consulTarget, rawEtcd, runCli, serverEnv } from './support/harness.js';
import { eventually, metric, startDualRun, waitCaughtUp } from './support/dualrun.js';

/**
 * Many etcd leases (a service registry: one lease per instance) mirrored as
 * sessions. The dual-run's lease passes check a lease only when its session
 * is due for renewal or its keys were just deleted, one pass at a time; before,
 * every pass read every lease and renewed every session, and passes that
 * outlasted the 3 s interval piled up on each other. Counted on etcd's own
 * metrics (LeaseTimeToLive calls) of an etcd only this test uses.
 */
const target = consulTarget();
const shared = rawEtcd();
afterAll(() => {
  target.close();
  shared.close();
});

const LEASES = 1_200;

/** LeaseTimeToLive calls the etcd at `endpoint` has answered. */
async function leaseReads(endpoint: string): Promise<number> {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  const line = /^grpc_server_handled_total\{grpc_code="OK",grpc_method="LeaseTimeToLive",[^}]*\} (\d+)$/m.exec(text);
  if (!line) throw new Error('etcd exports no LeaseTimeToLive counter');
  return Number(line[1]);
}

describe('dual-run with many leases (real servers)', () => {
  it(`${LEASES} leases: after the start, a pass reads only the leases that are due or lost keys; ended leases still lose their sessions; a clean stop logs no failed pass`, async () => {
    const own = await startEtcd();
    const etcd = new Etcd3({ hosts: own.endpoint });
    const id = `leases-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const yaml = `version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`;
    const dir = configDir(yaml);
    const env = serverEnv({ ETCDCTL_ENDPOINTS: own.endpoint });
    try {
      // An hour's TTL: no session falls due while the test runs, so every lease read after the start is one too many.
      const leases: string[] = [];
      for (let i = 0; i < LEASES; i += 200) {
        leases.push(...await Promise.all(Array.from({ length: Math.min(200, LEASES - i) }, async (_, j) => {
          const { ID } = await etcd.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
          await etcd.kv.put({ key: Buffer.from(`${root}/reg/svc-${(i + j) % 20}/inst-${i + j}`), value: Buffer.from(`10.0.0.${(i + j) % 250}:80`), lease: ID });
          return ID;
        })));
      }
      const copy = await runCli(['copy', '--format', 'json'], { cwd: dir, env });
      expect(copy.code, copy.stderr).toBe(0);
      expect((JSON.parse(copy.stdout) as { sessions: { created: number } }).sessions.created).toBe(LEASES);

      const before = await leaseReads(own.endpoint);
      const dr = await startDualRun(dir, [], env);
      try {
        // Three pass intervals and more: before, each pass read all of them again.
        await new Promise((r) => setTimeout(r, 10_000));
        const afterStart = (await leaseReads(own.endpoint)) - before;
        // The start checks every lease once (sessions Consul reaped while no dual-run ran).
        expect(afterStart).toBeGreaterThanOrEqual(LEASES);
        expect(afterStart).toBeLessThan(LEASES * 1.5);

        // 50 instances deregister: their keys go at once, their sessions at the next pass.
        const ended = leases.slice(0, 50);
        await Promise.all(ended.map((ID) => etcd.leaseClient.leaseRevoke({ ID })));
        await waitCaughtUp(etcd, target, id);
        const sessionRecords = async () => (await target.listKeys(`_migrate/${id}/sessions/`)).length;
        await eventually('the ended leases\' sessions destroyed', async () => (await sessionRecords()) === LEASES - 50, 15_000);
        const sessions = (await (await fetch(`${serverEnv().CONSUL_HTTP_ADDR}/v1/session/list`)).json()) as { ID: string; Name: string }[];
        expect(sessions.filter((s) => s.Name.includes(id)).length).toBe(LEASES - 50);
        const parity = await checkParity(etcd, target, parseConfig(yaml, 'migration.yaml').mapping, id);
        expect(parity).toMatchObject({ checked: LEASES - 50, missing: [], extra: [], wrongValue: [], wrongSession: [] });
        // verify agrees, reading Consul's session list once rather than each session.
        const verified = await runCli(['verify', '--format', 'json', '--rounds', '1'], { cwd: dir, env, timeoutMs: 60_000 });
        expect(verified.code, verified.stderr).toBe(0);
        expect((JSON.parse(verified.stdout) as { rules: { name: string; compared: number; differences: number }[] }).rules).toEqual([expect.objectContaining({ name: 'reg', compared: LEASES - 50, differences: 0 })]);
        expect((await leaseReads(own.endpoint)) - before).toBeLessThan(LEASES * 1.5 + 50);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
      expect(dr.stderr()).not.toMatch(/lease maintenance failed/);
      // Stopped, it says what becomes of the leased keys in Consul.
      expect(dr.stderr()).toMatch(/\d+ Consul session\(s\) mirror etcd leases and nothing renews them now: Consul deletes their keys 1 to 2 × their TTL from now/);
    } finally {
      etcd.close();
      await own.stop();
    }
  }, 120_000);

  it('a key moved to another lease while no dual-run ran, whose session Consul reaped meanwhile: the restart takes the key from the old session and writes the lease\'s keys back', async () => {
    const id = `moved-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`);
    const long = shared.lease(600);
    const short = shared.lease(10);
    for (const lease of [long, short]) lease.on('lost', () => undefined);
    try {
      await long.put(`${root}/reg/a`).value('a1');
      await short.put(`${root}/reg/x`).value('x1');
      expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
      let dr = await startDualRun(dir);
      await waitCaughtUp(shared, target, id);
      expect(await dr.stop()).toBe(0);
      // Stopped: `a` moves to the short lease, whose session nobody renews; Consul reaps it and deletes `x`.
      await short.put(`${root}/reg/a`).value('a2');
      await eventually('Consul reaps the short lease\'s session', async () => (await target.readKey(`${id}/reg/x`)) === undefined, 40_000);
      dr = await startDualRun(dir);
      try {
        await waitCaughtUp(shared, target, id);
        expect(dr.child.exitCode).toBeNull();
        const [a, x] = await Promise.all([target.readKey(`${id}/reg/a`), target.readKey(`${id}/reg/x`)]);
        expect([a?.value.toString(), x?.value.toString()]).toEqual(['a2', 'x1']);
        expect(a?.session).toBeTruthy();
        expect(a?.session).toBe(x?.session);
        const parity = await checkParity(shared, target, parseConfig(readFileSync(join(dir, 'migration.yaml'), 'utf8'), 'migration.yaml').mapping, id);
        expect(parity).toMatchObject({ missing: [], extra: [], wrongValue: [], wrongSession: [] });
        // The repair of a restart is the usual path: an info line, not a warning that reads as a fault.
        expect(dr.stderr()).toMatch(/ info  txn up to revision \d+ found a key held by another session than planned \(usual after a restart/);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
    } finally {
      await Promise.all([long.revoke(), short.revoke()].map((revoked) => revoked.catch(() => undefined)));
    }
  }, 90_000);

  it('a value too large for a txn that leaves its lease, or moves to another: freed of the old session and written whole (it kept the old lock and went with the lease, or was left empty), by the dual-run and by copy', async () => {
    const id = `bigmove-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`);
    const [a, b, c] = [shared.lease(600), shared.lease(600), shared.lease(600)];
    for (const lease of [a, b, c]) lease.on('lost', () => undefined);
    const big = (tag: string) => Buffer.concat([Buffer.from(tag), randomBytes(450_000)]);
    try {
      for (const key of ['left', 'moved', 'copied']) await a.put(`${root}/reg/${key}`).value('small');
      expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
      const dr = await startDualRun(dir);
      const [left, moved] = [big('left'), big('moved')];
      try {
        await waitCaughtUp(shared, target, id);
        await shared.put(`${root}/reg/left`).value(left);
        await b.put(`${root}/reg/moved`).value(moved);
        await waitCaughtUp(shared, target, id);
        const sessionB = (await target.readKey(`${id}/reg/moved`))?.session;
        expect(sessionB).toBeTruthy();
        expect(sessionB).not.toBe((await target.readKey(`${id}/reg/copied`))?.session);
        // Lease a ends: its session goes, with the keys it still holds (copied), and only those.
        await a.revoke();
        await eventually('lease a\'s key goes from Consul', async () => (await target.readKey(`${id}/reg/copied`)) === undefined, 30_000);
        const [l, m] = await Promise.all([target.readKey(`${id}/reg/left`), target.readKey(`${id}/reg/moved`)]);
        expect(l?.value.equals(left)).toBe(true);
        expect(l?.session).toBeUndefined();
        expect(m?.value.equals(moved)).toBe(true);
        expect(m?.session).toBe(sessionB);
        expect(dr.stderr()).not.toMatch(/single PUT of .* could not/);
      } finally {
        expect(await dr.stop()).toBe(0);
      }
      // copy: the same moves while no dual-run runs (lease c's key moves to b, then leaves it), written by copy's single PUTs.
      await c.put(`${root}/reg/copied`).value('small');
      expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
      const sessionC = (await target.readKey(`${id}/reg/copied`))?.session;
      expect(sessionC).toBeTruthy();
      const copiedMoved = big('copied');
      await b.put(`${root}/reg/copied`).value(copiedMoved);
      const move = await runCli(['copy'], { cwd: dir, env: serverEnv() });
      expect(move.code, move.stderr).toBe(0);
      const locked = await target.readKey(`${id}/reg/copied`);
      expect(locked?.value.equals(copiedMoved)).toBe(true);
      expect(locked?.session).toBe((await target.readKey(`${id}/reg/moved`))?.session);
      const copiedLeft = big('again');
      await shared.put(`${root}/reg/copied`).value(copiedLeft);
      const leave = await runCli(['copy'], { cwd: dir, env: serverEnv() });
      expect(leave.code, leave.stderr).toBe(0);
      const freed = await target.readKey(`${id}/reg/copied`);
      expect(freed?.value.equals(copiedLeft)).toBe(true);
      expect(freed?.session).toBeUndefined();
    } finally {
      await Promise.all([a, b, c].map((lease) => lease.revoke().catch(() => undefined)));
    }
  }, 90_000);

  it('a lease that ended while no dual-run ran: its session goes only once the restart has replayed the puts that took keys off it, so those keys never leave Consul', async () => {
    const id = `ended-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`);
    const lease = shared.lease(60);
    lease.on('lost', () => undefined);
    await lease.put(`${root}/reg/a`).value('a1');
    await lease.put(`${root}/reg/b`).value('b1');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    let dr = await startDualRun(dir);
    await waitCaughtUp(shared, target, id);
    expect(await dr.stop()).toBe(0);
    // Stopped: `a` leaves the lease, then the lease ends (etcd deletes `b`).
    await shared.put(`${root}/reg/a`).value('a2');
    await lease.revoke();
    const gaps: string[] = [];
    let polling = true;
    const poll = (async () => {
      while (polling) {
        if ((await target.readKey(`${id}/reg/a`)) === undefined) gaps.push(new Date().toISOString());
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    dr = await startDualRun(dir);
    try {
      await waitCaughtUp(shared, target, id);
      await eventually('the ended lease\'s session destroyed', async () => dr.stderr().includes('ended; destroyed its session'), 15_000);
      await new Promise((r) => setTimeout(r, 1000));
      polling = false;
      await poll;
      expect(gaps, 'reads of a that found nothing').toEqual([]);
      const a = await target.readKey(`${id}/reg/a`);
      expect([a?.value.toString(), a?.session]).toEqual(['a2', undefined]);
      expect(await target.readKey(`${id}/reg/b`)).toBeUndefined();
    } finally {
      polling = false;
      expect(await dr.stop()).toBe(0);
    }
  }, 60_000);

  it('the dual-run makes sessions only for leases of keys a leases: session rule copies: none for skip or persist rules, nor for keys of no rule inside the watch range', async () => {
    const id = `only-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: a-skip, from: ${root}/a/, to: ${id}/a/, leases: skip }\n  - { name: p-persist, from: ${root}/p/, to: ${id}/p/, leases: persist }\n  - { name: s-session, from: ${root}/s/, to: ${id}/s/, leases: session }\n`);
    await shared.put(`${root}/s/seed`).value('x');
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(dir);
    const leases: string[] = [];
    try {
      for (const key of ['a/job', 'p/cfg', 'm/unmapped', 's/reg']) {
        const { ID } = await shared.leaseClient.leaseGrant({ TTL: 600, ID: 0 });
        leases.push(ID);
        await shared.kv.put({ key: Buffer.from(`${root}/${key}`), value: Buffer.from('v'), lease: ID });
      }
      await waitCaughtUp(shared, target, id);
      await eventually('the session rule\'s key held by its lease\'s session', async () => (await target.readKey(`${id}/s/reg`))?.session !== undefined);
      // One session, recorded for the session rule's lease only.
      expect(await target.listKeys(`_migrate/${id}/sessions/`)).toEqual([`_migrate/${id}/sessions/${leases[3]}`]);
      const named = ((await (await fetch(`${serverEnv().CONSUL_HTTP_ADDR}/v1/session/list`)).json()) as { Name: string }[]).filter((x) => x.Name.startsWith(`migrate ${id} `));
      expect(named.map((x) => x.Name)).toEqual([`migrate ${id} etcd lease ${leases[3]}`]);
      expect((await target.readKey(`${id}/p/cfg`))?.session).toBeUndefined();
      expect(await target.readKey(`${id}/a/job`)).toBeUndefined();
    } finally {
      expect(await dr.stop()).toBe(0);
      for (const ID of leases) await shared.leaseClient.leaseRevoke({ ID });
    }
  }, 60_000);

  it('a session destroyed by hand under a long TTL (not due for renewal for half an hour): the next write of the lease brings every key of it back under a new session', async () => {
    const id = `lost-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`);
    const { ID: lease } = await shared.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
    for (const name of ['a', 'b']) await shared.kv.put({ key: Buffer.from(`${root}/reg/${name}`), value: Buffer.from(`${name}1`), lease });
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const dr = await startDualRun(dir);
    const held = async () => {
      const [a, b] = await Promise.all([target.readKey(`${id}/reg/a`), target.readKey(`${id}/reg/b`)]);
      return { a: a?.value.toString(), b: b?.value.toString(), session: a?.session !== undefined && a.session === b?.session ? a.session : undefined };
    };
    /** Destroys the session holding the lease's keys (Behavior delete: Consul deletes them), then writes `a` in etcd. */
    const destroyThenWrite = async (value: string) => {
      const { session } = await held();
      expect(session).toBeTruthy();
      await fetch(`${serverEnv().CONSUL_HTTP_ADDR}/v1/session/destroy/${session}`, { method: 'PUT' });
      await eventually('keys gone with the session', async () => (await held()).a === undefined);
      await shared.kv.put({ key: Buffer.from(`${root}/reg/a`), value: Buffer.from(value), lease });
      return session!;
    };
    try {
      // A write replicated: the dual-run leads and is past its start, which checks every lease.
      await shared.put(`${root}/reg/c`).value('c1');
      await waitCaughtUp(shared, target, id);
      // The lease's first event since the start finds its recorded session gone and replaces it.
      const first = await destroyThenWrite('a2');
      await eventually('both keys back under a new session', async () => {
        const now = await held();
        return now.a === 'a2' && now.b === 'b1' && now.session !== undefined && now.session !== first;
      });
      expect(dr.stderr()).toMatch(/was gone from Consul; replaced it and rewrote 2 key\(s\)/);
      // Counted where alerts look: a session lost while the dual-run led means its keys were gone from Consul for a while.
      await eventually('the lost session counted', async () => metric(await dr.metrics(), 'migrate_dualrun_sessions_recreated_total') === 1);
      // Now the dual-run holds the new session for the lease: the write's lock fails and the repair hands it to the next pass.
      const second = await destroyThenWrite('a3');
      await eventually('both keys back under a third session', async () => {
        const now = await held();
        return now.a === 'a3' && now.b === 'b1' && now.session !== undefined && now.session !== first && now.session !== second;
      });
      expect(dr.stderr()).toMatch(/is gone; the next lease pass re-creates it/);
    } finally {
      expect(await dr.stop()).toBe(0);
      await shared.leaseClient.leaseRevoke({ ID: lease });
    }
  }, 60_000);

  it.each([false, true])('an older session of a lease holding its keys (Consul restored it after a restart, once the dual-run had made a new one) is retired, the keys back under the recorded session; with the recorded one gone, it is taken over (recorded session gone too: %s)', async (recordedGone) => {
    const id = `dup-${randomBytes(3).toString('hex')}`;
    const root = `/${id}`;
    const dir = configDir(`version: 1\nid: ${id}\nrules:\n  - { name: reg, from: ${root}/reg/, to: ${id}/reg/, leases: session }\n`);
    const consul = serverEnv().CONSUL_HTTP_ADDR;
    const { ID: lease } = await shared.leaseClient.leaseGrant({ TTL: 3600, ID: 0 });
    for (const name of ['a', 'b']) await shared.kv.put({ key: Buffer.from(`${root}/reg/${name}`), value: Buffer.from(`${name}1`), lease });
    expect((await runCli(['copy'], { cwd: dir, env: serverEnv() })).code).toBe(0);
    const recorded = (await target.readKey(`${id}/reg/a`))!.session!;
    // The older session: same name, and it holds the lease's keys (moved to it from the recorded one).
    const created = await fetch(`${consul}/v1/session/create`, { method: 'PUT', body: JSON.stringify({ Name: `migrate ${id} etcd lease ${lease}`, TTL: '3600s', Behavior: 'delete', LockDelay: '0s' }) });
    const older = ((await created.json()) as { ID: string }).ID;
    for (const name of ['a', 'b']) {
      await fetch(`${consul}/v1/kv/${id}/reg/${name}?release=${recorded}`, { method: 'PUT', body: `${name}1` });
      expect(await (await fetch(`${consul}/v1/kv/${id}/reg/${name}?acquire=${older}`, { method: 'PUT', body: `${name}1` })).json()).toBe(true);
    }
    // With `recordedGone`, the recorded session is gone too: the start re-creates it and rewrites the lease's keys,
    // which the older session holds; else a write of the lease's key meets it.
    if (recordedGone) await fetch(`${consul}/v1/session/destroy/${recorded}`, { method: 'PUT' });
    const dr = await startDualRun(dir);
    try {
      if (!recordedGone) await shared.kv.put({ key: Buffer.from(`${root}/reg/a`), value: Buffer.from('a2'), lease });
      const a = recordedGone ? 'a1' : 'a2';
      let holder: string | undefined;
      // The recorded session gone too, the older one (alive, of the lease's name, recorded nowhere) is taken over as
      // the lease's session, as a session a killed run made is: it holds the keys already. Else it is retired.
      const expected = recordedGone ? older : recorded;
      const recordedNow = async () => (JSON.parse((await target.readKey(`_migrate/${id}/sessions/${lease}`))!.value.toString()) as { sessionId: string }).sessionId;
      await eventually('both keys under the lease\'s session, the one its record names', async () => {
        const [ka, kb] = await Promise.all([target.readKey(`${id}/reg/a`), target.readKey(`${id}/reg/b`)]);
        holder = ka?.session;
        return ka?.value.toString() === a && kb?.value.toString() === 'b1' && holder === expected && kb.session === holder && (await recordedNow()) === expected;
      }, 20_000);
      if (recordedGone) {
        expect(await target.readSession(older)).toBeDefined();
      } else {
        expect(await target.readSession(older)).toBeUndefined();
        expect(dr.stderr()).toMatch(new RegExp(`session ${older} is an older session of etcd lease ${lease} .*destroyed it`));
      }
      expect(dr.stderr()).not.toMatch(/held by a session this migration does not own|lease maintenance failed/);
    } finally {
      expect(await dr.stop()).toBe(0);
      await shared.leaseClient.leaseRevoke({ ID: lease });
    }
  });
});
