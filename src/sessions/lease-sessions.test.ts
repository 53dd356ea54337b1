import { describe, expect, it } from 'vitest';
import { statePaths } from '../state/state.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { TxnOp } from '../stores/types.js';
import { LeaseSessions } from './lease-sessions.js';

const paths = statePaths('_migrate/', 'demo');

function world(leases: number) {
  const source = new MemorySource();
  const ids = Array.from({ length: leases }, (_, i) => {
    const id = source.grantLease(30 + i);
    source.put(`/reg/i${i}`, 'x', id);
    return id;
  });
  return { source, target: new MemoryTarget(), ids };
}

describe('LeaseSessions', () => {
  it('records the sessions of leases ensured together in a few txns, whatever order Consul answers in, before the ensure resolves; a later run adopts them', async () => {
    const { source, target, ids } = world(150);
    const txns: number[] = [];
    const applyTxn = target.applyTxn.bind(target);
    target.applyTxn = async (ops: readonly TxnOp[]) => {
      txns.push(ops.length);
      return applyTxn(ops);
    };
    const sessions = new LeaseSessions(source, target, paths, 'demo');
    // Consul answers the session creates in any order; the records still go in the same txns.
    const createSession = target.createSession.bind(target);
    target.createSession = async (spec) => {
      await new Promise((r) => setTimeout(r, Math.random() * 5));
      return createSession(spec);
    };
    const ensured = await sessions.ensureAll(ids);
    const made = ids.map((id) => ensured.get(id));
    // Recorded by the time the caller may lock keys with them.
    for (const [i, id] of ids.entries()) expect(JSON.parse(target.entries.get(paths.session(id))!.value.toString())).toMatchObject({ leaseId: id, sessionId: made[i] });
    expect(new Set(made).size).toBe(150);
    expect(sessions.created).toBe(150);
    // 150 records in txns of at most 64 ops, not one txn each.
    expect(txns).toEqual([64, 64, 22]);
    expect(sessions.recordTxns).toBe(3);

    const later = new LeaseSessions(source, target, paths, 'demo');
    await later.load();
    expect(await Promise.all(ids.map((id) => later.ensure(id)))).toEqual(made);
    expect(later).toMatchObject({ adopted: 150, created: 0 });
  });

  it('a record txn Consul refuses fails the ensures it carried, and their sessions are not taken as recorded', async () => {
    const { source, target, ids } = world(3);
    target.applyTxn = async () => {
      throw new Error('Consul said 500');
    };
    const sessions = new LeaseSessions(source, target, paths, 'demo');
    const results = await Promise.allSettled(ids.map((id) => sessions.ensure(id)));
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(String((results[0] as PromiseRejectedResult).reason)).toContain('Consul said 500');
    expect(sessions.records()).toEqual([]);
    expect(sessions.own.size).toBe(0);
    expect([...target.entries.keys()].filter((k) => k.startsWith(paths.sessions))).toEqual([]);
  });
});

describe('LeaseSessions after a failure', () => {
  it('does not keep a failed look-up: once Consul answers again, the lease gets its session (the dual-run stopped replicating for good)', async () => {
    const { source, target, ids } = world(1);
    const createSession = target.createSession.bind(target);
    let down = true;
    target.createSession = async (spec) => {
      if (down) throw new Error('Consul is unreachable');
      return createSession(spec);
    };
    const sessions = new LeaseSessions(source, target, paths, 'demo');
    await expect(sessions.ensure(ids[0]!)).rejects.toThrow('Consul is unreachable');
    down = false;
    const session = await sessions.ensure(ids[0]!);
    expect(session).toBeTruthy();
    expect(await target.readSession(session!)).toBeDefined();
  });

  it('adopts a recorded session by renewing it, so one near the end of its TTL is not reaped before the first renewal round', async () => {
    const { source, target, ids } = world(3);
    const first = new LeaseSessions(source, target, paths, 'demo');
    const made = await first.ensureAll(ids);
    const renewed: string[] = [];
    const renewSession = target.renewSession.bind(target);
    target.renewSession = async (id) => {
      renewed.push(id);
      return renewSession(id);
    };
    const later = new LeaseSessions(source, target, paths, 'demo');
    await later.load();
    await later.ensureAll(ids);
    expect(later).toMatchObject({ adopted: 3, created: 0 });
    expect(renewed.sort()).toEqual([...made.values()].sort());
  });

  it('takes over the sessions a run made and died before recording (kill -9): no second session per lease; another migration\'s, or one already gone, is not taken', async () => {
    const { source, target, ids } = world(3);
    // The killed run: sessions made, records never written.
    const orphans = await Promise.all(ids.slice(0, 2).map((id) => target.createSession({ name: `migrate demo etcd lease ${id}`, ttlSeconds: 30 })));
    const foreign = await target.createSession({ name: `migrate other etcd lease ${ids[2]}`, ttlSeconds: 30 });
    await target.destroySession(orphans[1]!);
    const resumed = new LeaseSessions(source, target, paths, 'demo');
    await resumed.load();
    const made = await resumed.ensureAll(ids);
    expect(made.get(ids[0]!)).toBe(orphans[0]);
    expect([orphans[1], foreign]).not.toContain(made.get(ids[1]!));
    expect(made.get(ids[2]!)).not.toBe(foreign);
    expect(resumed).toMatchObject({ adopted: 1, created: 2 });
    // Recorded now: one session per lease of this migration, and the other migration's left alone.
    expect(JSON.parse(target.entries.get(paths.session(ids[0]!))!.value.toString()).sessionId).toBe(orphans[0]);
    const names = (await target.listSessions()).map((x) => x.name).sort();
    expect(names).toEqual([...ids.map((id) => `migrate demo etcd lease ${id}`), `migrate other etcd lease ${ids[2]}`].sort());
  });

  it('reload adopts the sessions another run recorded since (the re-baseline\'s copy), not the ones it had resolved', async () => {
    const { source, target, ids } = world(2);
    const dualrun = new LeaseSessions(source, target, paths, 'demo');
    await dualrun.load();
    const first = await dualrun.ensure(ids[0]!);
    // The copy of a re-baseline replaces the first lease's session and makes one for the second.
    await target.destroySession(first!);
    const copy = new LeaseSessions(source, target, paths, 'demo');
    await copy.load();
    const [replaced, made] = await Promise.all(ids.map((id) => copy.ensure(id)));
    await dualrun.reload();
    expect(dualrun.records().map((r) => r.sessionId).sort()).toEqual([replaced, made].sort());
    expect(await dualrun.ensure(ids[0]!)).toBe(replaced);
    expect(dualrun.created).toBe(1);
    expect([...dualrun.own].sort()).toEqual([replaced, made].sort());
  });
});

describe('LeaseSessions.isOurs', () => {
  it('knows a session of this migration by its name, also when no record names it any more; not another\'s', async () => {
    const { source, target, ids } = world(1);
    const made = await new LeaseSessions(source, target, paths, 'demo').ensure(ids[0]!);
    const forgetful = new LeaseSessions(source, target, paths, 'demo');
    expect(await forgetful.isOurs(made!)).toBe(true);
    expect(await new LeaseSessions(source, target, paths, 'other').isOurs(made!)).toBe(false);
    const foreign = await target.createSession({ name: 'an application lock', ttlSeconds: 30 });
    expect(await forgetful.isOurs(foreign)).toBe(false);
  });
});
