import { describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../config/load.js';
import { runCopy, type CopyOptions } from '../copy/copy.js';
import { copyLockKey } from '../copy/lock.js';
import { LeaderLock } from './leader.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import type { SourceWatch, TargetInfo, TxnOp, WatchMessage } from '../stores/types.js';
import { ConsulTooLargeError } from '../stores/consul-http.js';
import { runDualRun, type DualRunOptions } from './dualrun.js';
import { lagSeconds } from './metrics.js';

const loaded = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/ }
`, 'migration.yaml');

function copyOptions(signal: AbortSignal, over: Partial<CopyOptions> = {}): CopyOptions {
  return {
    dryRun: false, recordOps: false, resume: false, onConflict: 'overwrite', deleteExtraneous: false, allowMassDelete: false, acceptMappingChange: false,
    rate: 0, concurrency: 1, pageKeys: 100, signal, now: () => new Date(), toolVersion: 'test', ...over,
  };
}

/**
 * Copies `source` into `target`, then runs a dual-run over them (stopped with `stop`); its log lines as `level message`.
 * `leaderElsewhere`: another process holds the leader lock first, so the dual-run (under --ha) stands by until it is released.
 */
async function copyThenDualRun(source: MemorySource, target: MemoryTarget, over: { leaderElsewhere?: boolean; onStats?: DualRunOptions['onStats'] } = {}) {
  await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
  const leader = new LeaderLock(target, '_migrate/demo/leader', 'another-host:4242');
  if (over.leaderElsewhere) await leader.acquire({ wait: false, signal: new AbortController().signal });
  const stop = new AbortController();
  const logs: string[] = [];
  const run = runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
    ha: over.leaderElsewhere ?? false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: (level, message) => logs.push(`${level} ${message}`),
    copy: () => Promise.reject(new Error('no copy in this test')), onStats: over.onStats,
  });
  return { stop, logs, run, leader };
}

const checkpointOf = async (target: MemoryTarget) => (JSON.parse((await target.readKey('_migrate/demo/checkpoint'))!.value.toString()) as { revision: number }).revision;

describe('a re-baseline stopped part way', () => {
  it('leaves the checkpoint where it was and says it did not finish: the keys are not all etcd\'s yet', async () => {
    const source = new MemorySource();
    // Four ops per txn: the re-baseline writes its 30 keys in many txns.
    const target = new MemoryTarget({}, { txnMaxOps: 4 });
    for (let i = 0; i < 30; i++) source.put(`/app/k${String(i).padStart(2, '0')}`, 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    const before = await checkpointOf(target);
    // Changed while no dual-run ran, and the history compacted: the next start must copy again.
    for (let i = 0; i < 30; i++) source.put(`/app/k${String(i).padStart(2, '0')}`, 'v2');
    source.compact();

    // Stopped (Ctrl-C) once the re-baseline's first data txn has landed: the copy stops between its batches.
    const stop = new AbortController();
    let rebaselining = false;
    const apply = target.applyTxn.bind(target);
    target.applyTxn = async (ops) => {
      const index = await apply(ops);
      if (rebaselining && ops.some((op) => op.key.startsWith('app/'))) stop.abort();
      return index;
    };
    const logs: string[] = [];
    const summary = await runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha: false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test',
      log: (level, message) => logs.push(`${level} ${message}`),
      copy: async (over) => {
        rebaselining = true;
        return runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(stop.signal, over));
      },
    });
    expect(summary.reason).toBe('signal');
    expect(logs).toContainEqual(expect.stringMatching(/re-baselining$/));
    const copied = [...target.entries.values()].filter((e) => e.key.startsWith('app/') && e.value.toString() === 'v2').length;
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThan(30);
    expect(logs.join('\n')).not.toContain('re-baselined at revision');
    expect(logs).toContainEqual(expect.stringContaining(`re-baseline interrupted: the checkpoint stays at revision ${before}`));
    expect(await checkpointOf(target)).toBe(before);
  });
});

describe('a copy running when a dual-run starts', () => {
  it('stops a lone dual-run (exit 4); a standby (--ha) waits for the copy to end instead of exiting', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    // Another copy holds the copy lock (on another host: one of this host is taken for dead when its pid is this one's).
    const copyLock = new LeaderLock(target, copyLockKey(loaded.config), 'another-host:4242', 'copy lock');
    await copyLock.acquire({ wait: false, signal: new AbortController().signal });
    const run = (ha: boolean, signal: AbortSignal, logs: string[]) => runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha, baseline: false, acceptMappingChange: false, signal, toolVersion: 'test', log: (level, message) => logs.push(`${level} ${message}`),
      copy: () => Promise.reject(new Error('no copy in this test')),
    });
    await expect(run(false, new AbortController().signal, [])).rejects.toMatchObject({ code: 'dualrun_copy_running', exitCode: 4 });
    const stop = new AbortController();
    const logs: string[] = [];
    const seen: { role: string; connected: boolean }[] = [];
    const standby = runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha: true, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: (level, message) => logs.push(`${level} ${message}`),
      copy: () => Promise.reject(new Error('no copy in this test')), onStats: (s) => seen.push({ role: s.role, connected: s.connected }),
    });
    await vi.waitFor(() => expect(logs).toContainEqual(expect.stringMatching(/^warn A copy of migration "demo" is running \(it holds the copy lock: .*\): waiting for it to end/)));
    expect(logs).not.toContain('info leading the dual-run');
    // /healthz of a standby that Consul answers: ready (it said disconnected).
    expect(seen.at(-1)).toEqual({ role: 'standby', connected: true });
    // The copy ends: the standby leads at its next look.
    await copyLock.release();
    await vi.waitFor(() => expect(logs).toContain('info leading the dual-run'), { timeout: 8000, interval: 100 });
    stop.abort();
    expect(await standby).toMatchObject({ reason: 'signal', leading: true });
  }, 15_000);
});

describe('a standby (--ha) waiting for the leader lock', () => {
  it('says each time Consul answers it, so /healthz stays ready while it waits (it said disconnected 10 s in)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v1');
    const answered = new Set<number>();
    const { stop, run: standby, leader } = await copyThenDualRun(source, target, {
      leaderElsewhere: true,
      onStats: (s) => {
        if (s.role === 'standby' && s.consulAnsweredAt !== undefined) answered.add(s.consulAnsweredAt);
      },
    });
    // The standby looks once a second: every answer reaches the published stats, not only the first.
    await vi.waitFor(() => expect(answered.size).toBeGreaterThanOrEqual(3), { timeout: 8000, interval: 100 });
    stop.abort();
    expect(await standby).toMatchObject({ reason: 'signal', leading: false });
    await leader.release();
  }, 15_000);
});

describe('leases under 10 s', () => {
  it('the raise of a TTL to 10 s is said once per TTL, not once per lease (an application granting a lease per request made hundreds of lines)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v1');
    const { stop, logs, run } = await copyThenDualRun(source, target);
    await vi.waitFor(() => expect(logs).toContain('info leading the dual-run'));
    for (let i = 0; i < 5; i++) source.put(`/app/s${i}`, 'x', source.grantLease(6));
    source.put('/app/t', 'x', source.grantLease(3));
    await vi.waitFor(() => expect([...target.entries.values()].filter((e) => e.key.startsWith('app/') && e.session)).toHaveLength(6), { timeout: 8000, interval: 100 });
    stop.abort();
    await run;
    const said = logs.filter((l) => /TTL \d+s raised to 10s/.test(l));
    expect(said).toHaveLength(2);
    expect(said[0]).toMatch(/TTL 6s raised to 10s .*other leases of 6s are not said again/);
    expect(said[1]).toMatch(/TTL 3s raised to 10s/);
  }, 15_000);
});

describe('a dual-run started behind etcd', () => {
  it('counts its lag in seconds from when its checkpoint was written, not from its own start', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    // The checkpoint was written a minute ago; etcd moved on since.
    const key = '_migrate/demo/checkpoint';
    const doc = JSON.parse((await target.readKey(key))!.value.toString()) as { updated: string };
    await target.putKey(key, Buffer.from(JSON.stringify({ ...doc, updated: new Date(Date.now() - 60_000).toISOString() })));
    for (let i = 0; i < 5; i++) source.put(`/app/k${i}`, 'v2');
    const stop = new AbortController();
    let behind: { lag: number } | undefined;
    let atStart: number | undefined;
    const head = (await source.status()).revision;
    const run = runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha: false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: () => undefined,
      copy: () => Promise.reject(new Error('no copy in this test')),
      onStats: (s) => {
        // As the watch opens, before it replays anything: etcd's head, not the revision of the first batch replayed.
        if (atStart === undefined && s.started) atStart = s.etcdRevision;
        if (!behind && s.role === 'leader' && s.etcdRevision > s.checkpoint) behind = { lag: lagSeconds(s, Date.now()) };
      },
    });
    await vi.waitFor(() => expect(behind).toBeDefined());
    stop.abort();
    await run;
    expect(behind!.lag).toBeGreaterThanOrEqual(59);
    expect(atStart).toBe(head);
  });
});

describe('a standby (--ha) that takes over', () => {
  it('counts its lag in seconds from when the last leader wrote its checkpoint, not from when the standby started (a standby waiting for days said days)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v1');
    let behind: { lag: number } | undefined;
    const { stop, run, leader } = await copyThenDualRun(source, target, {
      leaderElsewhere: true,
      onStats: (s) => {
        if (!behind && s.role === 'leader' && s.etcdRevision > s.checkpoint) behind = { lag: lagSeconds(s, Date.now()) };
      },
    });
    // The standby waits 4 s; the other leader writes its checkpoint just before it dies, and etcd moves on.
    await new Promise((r) => setTimeout(r, 4000));
    const key = '_migrate/demo/checkpoint';
    const doc = JSON.parse((await target.readKey(key))!.value.toString()) as { updated: string };
    await target.putKey(key, Buffer.from(JSON.stringify({ ...doc, by: 'dualrun', updated: new Date().toISOString() })));
    for (let i = 0; i < 5; i++) source.put(`/app/k${i}`, 'v2');
    await leader.release();
    await vi.waitFor(() => expect(behind).toBeDefined(), { timeout: 8000, interval: 50 });
    stop.abort();
    await run;
    expect(behind!.lag).toBeLessThan(3);
  }, 20_000);
});

describe('a Consul agent replaced by an older release under a running dual-run', () => {
  it('takes the smaller op limit the agent now has and goes on, rather than exit on its refusal (1.14 rolled back to 1.13: 64 ops a txn, not 128)', async () => {
    /** An agent whose release changes: info() says what was read, until forgetInfo(); the txn limit is the agent's own. */
    class Agent extends MemoryTarget {
      agentOps = 128;
      private read: number | undefined;
      override async info(): Promise<TargetInfo> {
        this.read ??= this.agentOps;
        return { ...(await super.info()), txnMaxOps: this.read, version: this.read === 64 ? '1.13.9' : '1.14.11' };
      }

      forgetInfo(): void {
        this.read = undefined;
      }

      override async applyTxn(ops: readonly TxnOp[]): Promise<number | undefined> {
        if (ops.length > this.agentOps) throw new ConsulTooLargeError('consul_too_large', 413, `Consul refused PUT /v1/txn as too large: Transaction contains too many operations (${ops.length} > ${this.agentOps})`, `Transaction contains too many operations (${ops.length} > ${this.agentOps})`);
        return super.applyTxn(ops);
      }
    }
    const source = new MemorySource();
    const target = new Agent();
    source.put('/app/k', 'v1');
    const { stop, logs, run } = await copyThenDualRun(source, target);
    await vi.waitFor(() => expect(logs).toContain('info leading the dual-run'));
    target.agentOps = 64;
    // One etcd revision of 100 puts: one txn under the limit the dual-run started with, two under the agent's.
    source.write(Array.from({ length: 100 }, (_, i) => ({ key: `/app/bulk/${String(i).padStart(3, '0')}`, value: `v${i}` })));
    const head = (await source.status()).revision;
    await vi.waitFor(async () => expect(await checkpointOf(target)).toBe(head), { timeout: 8000, interval: 100 });
    stop.abort();
    await run;
    expect([...target.entries.keys()].filter((k) => k.startsWith('app/bulk/'))).toHaveLength(100);
    expect(logs.some((l) => /^warn Consul refused a txn of more ops than its agent now takes \(64 a txn/.test(l))).toBe(true);
    expect(logs.some((l) => /^warn revision \d+ has 100 ops, more than one Consul txn holds \(\d+ of its 64/.test(l))).toBe(true);
  }, 15_000);
});

describe('lease sessions while etcd hangs', () => {
  it('are renewed on time while a lease pass waits on etcd (a read that hangs until its deadline), so Consul does not reap them and their keys', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/k', 'v', source.grantLease(10));
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    let hang = false;
    const readLease = source.readLease.bind(source);
    // As a read of an etcd that holds requests open: it fails at its deadline, 9 s on.
    source.readLease = (id, options) => (hang ? new Promise((_, reject) => setTimeout(() => reject(new Error('etcd at x is unreachable (4 DEADLINE_EXCEEDED)')), 9_000)) : readLease(id, options));
    // The lease's session (the leader lock's session is renewed too, apart).
    const record = [...target.entries.values()].find((e) => e.key.startsWith('_migrate/demo/sessions/'))!;
    const leaseSession = (JSON.parse(record.value.toString()) as { sessionId: string }).sessionId;
    const renewedAt: number[] = [];
    const renew = target.renewSession.bind(target);
    target.renewSession = async (id) => {
      if (id === leaseSession) renewedAt.push(Date.now());
      return renew(id);
    };
    const stop = new AbortController();
    const run = runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha: false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: () => undefined,
      // A pass every 4 s; a 10 s session is due 1 s after its last renewal (renewed before half its TTL, counting the wait).
      leaseEveryMs: 4_000,
      copy: async () => { throw new Error('no re-baseline expected'); },
    });
    await vi.waitFor(() => expect(renewedAt.length).toBeGreaterThan(0), { timeout: 5_000 });
    hang = true;
    const from = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 8_500));
    stop.abort();
    await run;
    // The pass at about 4 s renews, then waits on etcd; the next tick, 4 s later, renews apart from it.
    expect(renewedAt.filter((t) => t >= from).length).toBeGreaterThanOrEqual(2);
  }, 30_000);
});

/** A watch that yields what `messages` makes (an order real etcd shows only under load), reporting `latest()` as etcd's revision. */
function scriptedWatch(latest: () => number, messages: () => AsyncGenerator<WatchMessage>): SourceWatch {
  return { buffered: () => 0, requestProgress() {}, latestRevision: latest, async close() {}, [Symbol.asyncIterator]: messages };
}

/** The dual-run of migration demo over `source` and `target`, until `stop` aborts. */
function dualRunOf(source: MemorySource, target: MemoryTarget, stop: AbortController) {
  return runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
    ha: false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: () => undefined,
    copy: async (over) => runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(stop.signal, over)),
  });
}

describe('a watch that stays silent (etcd reading a revision of many keys)', () => {
  it('once the checkpoint stalls, etcd\'s head is read, so the lag counts what the watch has not delivered (it said 0)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/a', 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    const stop = new AbortController();
    let head = 0;
    source.watch = async () => scriptedWatch(() => 0, async function* () {
      // Once the watch is open, etcd moves on; the watch delivers nothing (etcd still builds its answer).
      for (let i = 0; i < 5; i++) source.put(`/app/k${i}`, 'x');
      head = (await source.status()).revision;
      await new Promise((r) => stop.signal.addEventListener('abort', r, { once: true }));
    });
    const seen: number[] = [];
    const run = runDualRun({ source, lanes: [{ datacenter: 'dc1', primary: true, target, config: loaded.config, mapping: loaded.mapping }] }, {
      ha: false, baseline: false, acceptMappingChange: false, signal: stop.signal, toolVersion: 'test', log: () => undefined,
      copy: () => Promise.reject(new Error('no copy in this test')), onStats: (s) => s.errors.stalled && seen.push(s.etcdRevision),
    });
    await vi.waitFor(() => expect(seen.at(-1)).toBe(head), { timeout: 30_000, interval: 200 });
    stop.abort();
    await run;
  }, 40_000);
});

describe('etcd before 3.4.31 answering a progress request ahead of the watch\'s queued events (etcd-io/etcd#15220)', () => {
  it('the checkpoint does not take that answer while etcd shows changes after it: the watch, opened again, still replays them', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/kept', 'v1');
    source.put('/app/gone', 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    // While no dual-run ran: a put and a delete, which the next watch replays.
    source.put('/app/kept', 'v2');
    source.delete('/app/gone');
    const head = (await source.status()).revision;
    const watchOf = source.watch.bind(source);
    let opened = 0;
    source.watch = async (range, from) => {
      opened++;
      if (opened > 1) return watchOf(range, from);
      // The first watch is behind: etcd's answer to a progress request (its current revision) comes before the events, then the stream breaks.
      return scriptedWatch(() => head, async function* () {
        // Past the checkpoint's throttle (one write a second), so the answer would be written at once.
        await new Promise((r) => setTimeout(r, 1100));
        yield { kind: 'progress', revision: head, requested: true };
        await new Promise((r) => setTimeout(r, 50));
        throw new Error('watch ended');
      });
    };
    const stop = new AbortController();
    const run = dualRunOf(source, target, stop);
    for (let i = 0; i < 60 && !(opened > 1 && target.entries.get('app/kept')?.value.toString() === 'v2' && !target.entries.has('app/gone')); i++) await new Promise((r) => setTimeout(r, 50));
    stop.abort();
    await run;
    expect(opened).toBeGreaterThan(1);
    expect(target.entries.get('app/kept')?.value.toString()).toBe('v2');
    expect(target.entries.has('app/gone')).toBe(false);
    expect(await checkpointOf(target)).toBe(head);
  });

  it('idle rules on a busy etcd that compacts within seconds: the answer still moves the checkpoint (the last revision known complete can no longer be counted)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/app/a', 'v1');
    await runCopy({ source, target, config: loaded.config, mapping: loaded.mapping }, copyOptions(new AbortController().signal));
    const copied = await checkpointOf(target);
    const stop = new AbortController();
    let head = 0;
    source.watch = async () => scriptedWatch(() => head, async function* () {
      await new Promise((r) => setTimeout(r, 1100));
      // Busy elsewhere while the dual-run runs, then compacted at the head: the revision its checkpoint is at is gone.
      for (let i = 0; i < 20; i++) source.put(`/busy/${i}`, 'x');
      head = (await source.status()).revision;
      source.compact();
      yield { kind: 'progress', revision: head, requested: true };
      await new Promise((r) => stop.signal.addEventListener('abort', r, { once: true }));
    });
    const run = dualRunOf(source, target, stop);
    for (let i = 0; i < 60 && (head === 0 || (await checkpointOf(target)) < head); i++) await new Promise((r) => setTimeout(r, 50));
    stop.abort();
    await run;
    expect(head).toBeGreaterThan(copied);
    expect(await checkpointOf(target)).toBe(head);
  });
});
