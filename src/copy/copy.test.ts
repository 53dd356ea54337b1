import { getMaxListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { ConsulTooLargeError, TxnFailedError } from '../stores/consul-http.js';
import type { ReadPagesOptions, TxnOp } from '../stores/types.js';
import { acquireCopyLock, runCopy, type CopyOptions, type CopyProgressEvent } from './copy.js';
import { renderCopy } from './render.js';

const loaded = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/, leases: session }
`, 'migration.yaml');

const deps = (source: MemorySource, target: MemoryTarget) => ({ source, target, config: loaded.config, mapping: loaded.mapping });

function options(over: Partial<CopyOptions> = {}): CopyOptions & { events: CopyProgressEvent[] } {
  const events: CopyProgressEvent[] = [];
  return {
    dryRun: false, recordOps: false, resume: false, onConflict: 'overwrite', deleteExtraneous: false, allowMassDelete: false, acceptMappingChange: false,
    rate: 0, concurrency: 2, pageKeys: 5, signal: new AbortController().signal, now: () => new Date('2026-01-01T00:00:00Z'), toolVersion: 'test',
    onProgress: (event) => events.push(event), events, ...over,
  };
}

/** 30 keys under /app/ (one of them leased) and a key under the target prefix that no etcd key produces, there before any copy. */
function world() {
  const source = new MemorySource();
  // Four ops per txn: the copy's batches land page by page, before the read goes on.
  const target = new MemoryTarget({}, { txnMaxOps: 4 });
  for (let i = 0; i < 30; i++) source.put(`/app/k${String(i).padStart(2, '0')}`, 'v1');
  source.put('/app/leased', 'held', source.grantLease(60));
  target.entries.set('app/foreign', { key: 'app/foreign', value: Buffer.from('theirs'), flags: 0, modifyIndex: 1 });
  return { source, target };
}

/**
 * At the `page`-th page read at a pinned revision, the application changes etcd and
 * auto-compaction runs, as on a busy cluster, `times` times in all.
 */
function compactWhileRead(source: MemorySource, page: number, times: number, change: () => void) {
  const read = source.readPages.bind(source);
  const seen = { compactions: 0, pages: 0 };
  source.readPages = async function* (range, opts?: ReadPagesOptions) {
    for await (const p of read(range, opts)) {
      if (opts?.revision !== undefined && !opts.keysOnly && ++seen.pages % page === 0 && seen.compactions < times) {
        seen.compactions++;
        change();
        source.compact();
      }
      yield p;
    }
  };
  return seen;
}

function targetValues(target: MemoryTarget): Record<string, string> {
  return Object.fromEntries([...target.entries].filter(([k]) => k.startsWith('app/')).map(([k, e]) => [k, e.value.toString()]));
}

describe('copy when etcd compacts the pinned revision while it is read', () => {
  it('a rule range etcd will not let it read stops the copy before it writes anything: the copy document of the last copy stays as it was', async () => {
    const { source, target } = world();
    await runCopy(deps(source, target), options());
    const before = target.entries.get('_migrate/demo/copy');
    expect(before).toBeDefined();
    const count = source.count.bind(source);
    source.count = async (range, revision) => {
      // The range read of the count: `[0, 0)` is the compaction check of a resume.
      if (range.start.length > 1) throw Object.assign(new Error('etcdserver: permission denied'), { code: 'etcd_permission_denied' });
      return count(range, revision);
    };
    await expect(runCopy(deps(source, target), options())).rejects.toThrow(/permission denied/);
    expect(target.entries.get('_migrate/demo/copy')).toEqual(before);
  });

  it('--rate holds every txn until the bucket holds all its ops: 31 writes at 10 ops/s take 2 s or more (they went out at once, the debt left unpaid)', async () => {
    const source = new MemorySource();
    for (let i = 0; i < 31; i++) source.put(`/app/r${String(i).padStart(2, '0')}`, 'v');
    const target = new MemoryTarget({}, { txnMaxOps: 64 });
    const began = Date.now();
    const result = await runCopy(deps(source, target), options({ rate: 10, pageKeys: 100 }));
    expect(result.rules[0]).toMatchObject({ created: 31 });
    // A bucket of one second's worth (10) to start with: the other 21 ops and the copy document wait 2.2 s.
    expect(Date.now() - began).toBeGreaterThanOrEqual(2000);
  });

  it('--rate sends txns of about one second\'s worth of writes, so the first lands within a second (a full txn waited for 128 tokens)', async () => {
    const source = new MemorySource();
    for (let i = 0; i < 40; i++) source.put(`/app/r${String(i).padStart(2, '0')}`, 'v');
    const target = new MemoryTarget({}, { txnMaxOps: 64 });
    const sizes: number[] = [];
    let firstAt: number | undefined;
    const apply = target.applyTxn.bind(target);
    target.applyTxn = (ops: readonly TxnOp[]) => {
      if (ops.some((op) => op.key.startsWith('app/'))) {
        sizes.push(ops.filter((op) => op.key.startsWith('app/')).length);
        firstAt ??= Date.now();
      }
      return apply(ops);
    };
    const began = Date.now();
    const result = await runCopy(deps(source, target), options({ rate: 20, pageKeys: 100 }));
    expect(result.rules[0]).toMatchObject({ created: 40 });
    expect(sizes.every((n) => n <= 20)).toBe(true);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(40);
    expect(firstAt! - began).toBeLessThan(1500);
  });

  it('copies again at the current revision: parity with etcd there, its own keys etcd deleted meanwhile removed, keys it did not write kept', async () => {
    const { source, target } = world();
    const pinned = (await source.status()).revision;
    const seen = compactWhileRead(source, 4, 1, () => {
      // k00–k14 are written by now; the application deletes two of them and changes one.
      source.delete('/app/k01');
      source.delete('/app/k02');
      source.put('/app/k03', 'v2');
      source.put('/app/k29', 'v2');
      source.put('/app/new', 'added');
    });
    const o = options();
    const result = await runCopy(deps(source, target), o);

    expect(seen.compactions).toBe(1);
    const now = (await source.status()).revision;
    expect(result).toMatchObject({ revision: now, compactedAt: [pinned], interrupted: false });
    expect(o.events.some((e) => e.type === 'warning' && e.message.includes(`etcd compacted revision ${pinned} while the copy read it`) && e.message.includes(`copying again at revision ${now}`))).toBe(true);
    const expected: Record<string, string> = { 'app/foreign': 'theirs', 'app/leased': 'held', 'app/new': 'added' };
    for (let i = 0; i < 30; i++) if (i !== 1 && i !== 2) expected[`app/k${String(i).padStart(2, '0')}`] = i === 3 || i === 29 ? 'v2' : 'v1';
    expect(targetValues(target)).toEqual(expected);
    expect(result.rules[0]).toMatchObject({ deletedStale: 2, extraneous: 1, extraneousExamples: ['app/foreign'], deleted: 0 });
    // One session for the lease, however many passes.
    expect(result.sessions.created).toBe(1);
    expect(target.entries.get('app/leased')?.session).toBe([...target.sessions.keys()][0]);
    // The dual-run starts from the revision the data is at.
    const state = JSON.parse(target.entries.get('_migrate/demo/copy')!.value.toString());
    expect(state).toMatchObject({ revision: now, rules: { app: { done: true } } });
    expect(state.completed).toBeDefined();
    expect(JSON.parse(target.entries.get('_migrate/demo/checkpoint')!.value.toString()).revision).toBe(now);
  });

  it('a dry-run packs its txns as the copy does, the copy lock\'s check included: the same txns, the same ops in each', async () => {
    const { source, target } = world();
    const signal = new AbortController().signal;
    const lock = () => acquireCopyLock(target, loaded.config, signal);
    const dry = await runCopy(deps(source, target), options({ dryRun: true, recordOps: true, lock }));
    expect(target.writes).toBe(0);
    const sent: number[] = [];
    const applyTxn = target.applyTxn.bind(target);
    target.applyTxn = async (ops: readonly TxnOp[]) => {
      if (ops.some((o) => o.key.startsWith('app/'))) sent.push(ops.length);
      return applyTxn(ops);
    };
    const copied = await runCopy(deps(source, target), options({ lock }));
    expect(copied.txns).toBe(dry.txns);
    const planned = dry.ops!.filter((op) => op.op === 'txn' && op.ops!.some((o) => o.key.startsWith('app/'))).map((op) => op.ops!.length);
    expect(planned).toEqual(sent);
    // Each with the lock's check, as the copy sends it (a placeholder session, as long as Consul's ids).
    expect(planned.length).toBeGreaterThan(5);
    expect(dry.ops!.filter((op) => op.op === 'txn' && op.ops!.some((o) => o.key.startsWith('app/'))).every((op) => op.ops!.at(-1)!.verb === 'check-session' && op.ops!.at(-1)!.session!.length === 36)).toBe(true);
  });

  it('a dry-run plans again at the current revision and shows only the second plan', async () => {
    const { source, target } = world();
    compactWhileRead(source, 2, 1, () => source.put('/app/k29', 'v2'));
    const result = await runCopy(deps(source, target), options({ dryRun: true, recordOps: true }));
    expect(result.compactedAt).toHaveLength(1);
    expect(target.writes).toBe(0);
    const puts = result.ops!.flatMap((op) => op.ops ?? []).filter((o) => o.verb !== 'set' || !o.key.startsWith('_migrate/')).map((o) => o.key);
    // Every key once, as one plan: none twice from the pass that was dropped.
    expect(puts.filter((k) => k.startsWith('app/k')).sort()).toEqual(Array.from({ length: 30 }, (_, i) => `app/k${String(i).padStart(2, '0')}`));
    expect(result.ops!.filter((op) => op.op === 'create-session')).toHaveLength(1);
  });

  it('its own keys deleted meanwhile past the delete guard are kept and counted as extraneous, unless --allow-mass-delete', async () => {
    for (const allowMassDelete of [false, true]) {
      const { source, target } = world();
      // By the 5th page, k00–k19 are written; the application then deletes twelve of them.
      compactWhileRead(source, 5, 1, () => {
        for (let i = 0; i < 12; i++) source.delete(`/app/k${String(i).padStart(2, '0')}`);
      });
      const o = options({ allowMassDelete });
      const result = await runCopy(deps(source, target), o);
      const gone = Array.from({ length: 12 }, (_, i) => `app/k${String(i).padStart(2, '0')}`);
      if (allowMassDelete) {
        expect(result.rules[0]).toMatchObject({ deletedStale: 12, extraneous: 1 });
        for (const key of gone) expect(target.entries.has(key)).toBe(false);
      } else {
        expect(result.rules[0]).toMatchObject({ deletedStale: 0, extraneous: 13 });
        for (const key of gone) expect(target.entries.has(key)).toBe(true);
        expect(o.events.some((e) => e.type === 'warning' && /12 keys this copy wrote were deleted in etcd .*--allow-mass-delete to remove them/.test(e.message))).toBe(true);
      }
      expect(target.entries.get('app/foreign')?.value.toString()).toBe('theirs');
    }
  });

  it('compacted at every pass, it stops with etcd_compacted after three, and --resume then completes the copy', async () => {
    const { source, target } = world();
    const seen = compactWhileRead(source, 2, 3, () => source.put('/other/tick', 'x'));
    const failed = await runCopy(deps(source, target), options()).catch((err: unknown) => err);
    expect(failed).toMatchObject({ code: 'etcd_compacted', exitCode: 3 });
    expect(seen.compactions).toBe(3);
    const state = JSON.parse(target.entries.get('_migrate/demo/copy')!.value.toString());
    expect(state.completed).toBeUndefined();

    source.delete('/app/k00');
    const resumed = await runCopy(deps(source, target), options({ resume: true }));
    expect(resumed.resumedFrom).toBe(state.revision);
    // k00 was written by the failed run at a revision since compacted: the resume removes it.
    expect(resumed.rules[0]).toMatchObject({ deletedStale: 1, extraneous: 1 });
    expect(target.entries.has('app/k00')).toBe(false);
    expect(target.entries.get('app/k29')?.value.toString()).toBe('v1');
    expect(JSON.parse(target.entries.get('_migrate/demo/copy')!.value.toString()).completed).toBeDefined();
  });

  it('a later copy of a key nobody deleted changes nothing: stale deletes only follow a compacted revision', async () => {
    const { source, target } = world();
    await runCopy(deps(source, target), options());
    source.delete('/app/k05');
    const again = await runCopy(deps(source, target), options());
    expect(again.compactedAt).toBeUndefined();
    expect(again.rules[0]).toMatchObject({ deletedStale: 0, extraneous: 2 });
    expect(target.entries.get('app/k05')?.value.toString()).toBe('v1');
  });
});

describe('copy of nested rules', () => {
  it('counts as each rule\'s source keys only the keys it owns, not those a nested rule takes', async () => {
    const nested = parseConfig(`version: 1
id: demo
rules:
  - { name: services, from: /services/, to: services/ }
  - { name: web, from: /services/web/, to: web/ }
  - { name: big, from: /services/big/, action: keep }
`, 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    for (let i = 0; i < 3; i++) source.put(`/services/api-${i}`, 'a');
    for (let i = 0; i < 5; i++) source.put(`/services/web/w${i}`, 'w');
    source.put('/services/big/blob', 'b');
    const opts = options();
    const result = await runCopy({ source, target, config: nested.config, mapping: nested.mapping }, opts);
    expect(result.rules.map((r) => [r.name, r.sourceKeys, r.created])).toEqual([['services', 3, 3], ['web', 5, 5]]);
    const start = opts.events.find((e) => e.type === 'start');
    expect(start).toMatchObject({ rules: [{ name: 'services', keys: 3 }, { name: 'web', keys: 5 }] });
    // The kept key is the keep rule's, not a skip of the rule around it; progress ends at each rule's own keys.
    expect(result.rules.map((r) => [r.name, r.skipped])).toEqual([['services', {}], ['web', {}]]);
    const last = (rule: string) => opts.events.filter((e) => e.type === 'progress' && e.rule === rule).at(-1);
    expect([last('services'), last('web')]).toMatchObject([{ keysDone: 3 }, { keysDone: 5 }]);
  });
});

describe('copy --dry-run', () => {
  it('counts every txn it lists, the session records\' included', async () => {
    const { source, target } = world();
    const result = await runCopy(deps(source, target), options({ dryRun: true, recordOps: true }));
    expect(result.ops!.filter((op) => op.op === 'create-session')).toHaveLength(1);
    expect(result.ops!.filter((op) => op.op === 'txn' && op.ops!.some((o) => o.key.startsWith('_migrate/demo/sessions/')))).toHaveLength(1);
    expect(result.txns).toBe(result.ops!.filter((op) => op.op === 'txn').length);
    expect(target.writes).toBe(0);
  });

  it('--show-ops names the session a lock takes and the size of every value, an empty one\'s too; nothing to do says so', async () => {
    const { source, target } = world();
    source.put('/app/empty', '');
    const text = renderCopy(await runCopy(deps(source, target), options({ dryRun: true, recordOps: true })), 'text', true);
    expect(text).toMatch(/^ {4}lock +app\/leased {2}4 B {2}session dry-run-session-0{19}1$/m);
    expect(text).toMatch(/^ {4}cas +app\/empty {2}0 B$/m);
    await runCopy(deps(source, target), options());
    expect(renderCopy(await runCopy(deps(source, target), options({ dryRun: true, recordOps: true })), 'text', true)).toMatch(/^Operations: none$/m);
  });
});

describe('copy --delete-extraneous and the delete guard', () => {
  const two = parseConfig(`version: 1
id: guard
rules:
  - { name: a, from: /a/, to: a/ }
  - { name: b, from: /b/, to: b/ }
`, 'migration.yaml');

  it('a rule over the guard refuses the whole copy before its first write: no rule written, no extraneous key of any rule deleted, the copy document untouched', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget({}, { txnMaxOps: 4 });
    for (let i = 0; i < 30; i++) source.put(`/a/k${i}`, 'v');
    for (let i = 0; i < 10; i++) source.put(`/b/k${i}`, 'v');
    const d = { source, target, config: two.config, mapping: two.mapping };
    expect((await runCopy(d, options())).rules.map((r) => r.created)).toEqual([30, 10]);
    // Since: 3 extraneous keys under a/ (within its guard), 20 under b/ (over it), and a new etcd key of rule a.
    for (let i = 0; i < 3; i++) target.entries.set(`a/extra${i}`, { key: `a/extra${i}`, value: Buffer.from('x'), flags: 0, modifyIndex: 1 });
    for (let i = 0; i < 20; i++) target.entries.set(`b/extra${i}`, { key: `b/extra${i}`, value: Buffer.from('x'), flags: 0, modifyIndex: 1 });
    source.put('/a/new', 'n');
    const before = JSON.stringify([...target.entries].map(([k, e]) => [k, e.value.toString('base64'), e.modifyIndex]));
    const writes = target.writes;

    for (const dryRun of [false, true]) {
      const refused = await runCopy(d, options({ deleteExtraneous: true, dryRun })).catch((err: unknown) => err);
      expect(refused).toMatchObject({ code: 'delete_guard', exitCode: 4, message: expect.stringMatching(/20 extraneous keys would remove 66\.7% of rule b's 30 target keys; nothing was written or deleted/) });
    }
    expect(target.writes).toBe(writes);
    expect(JSON.stringify([...target.entries].map(([k, e]) => [k, e.value.toString('base64'), e.modifyIndex]))).toBe(before);

    // Reported, not deleted, without the flag; the text says how many it does not list.
    const reported = renderCopy(await runCopy(d, options({ dryRun: true })), 'text', false);
    expect(reported).toContain('b: 20 extraneous key(s) under b/ have no etcd key (kept; pass --delete-extraneous to remove them)');
    expect(reported).toContain('… and 15 more (--format json lists them all)');

    // Past the guard on purpose: both rules' extraneous keys go, the new key is written.
    const allowed = await runCopy(d, options({ deleteExtraneous: true, allowMassDelete: true }));
    expect(allowed.rules.map((r) => [r.created, r.deleted])).toEqual([[1, 3], [0, 20]]);
    // A copy that only deletes counts the txns of its deletes (it reported 0 txns).
    for (let i = 0; i < 6; i++) target.entries.set(`a/late${i}`, { key: `a/late${i}`, value: Buffer.from('x'), flags: 0, modifyIndex: 1 });
    const deletesOnly = await runCopy(d, options({ deleteExtraneous: true }));
    expect(deletesOnly.rules.map((r) => [r.created, r.updated, r.deleted])).toEqual([[0, 0, 6], [0, 0, 0]]);
    expect(deletesOnly.txns).toBe(2);
  });

  it('keys held by a session whose etcd lease ended are no mass delete: etcd dropped them itself; keys deleted under a live lease still trip the guard', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget({}, { txnMaxOps: 4 });
    const ending = source.grantLease(60);
    const living = source.grantLease(60);
    for (let i = 0; i < 20; i++) source.put(`/app/reg${i}`, 'host:port', ending);
    for (let i = 0; i < 20; i++) source.put(`/app/live${i}`, 'host:port', living);
    for (let i = 0; i < 10; i++) source.put(`/app/k${i}`, 'v');
    const d = deps(source, target);
    expect((await runCopy(d, options())).rules[0]!.created).toBe(50);
    // The lease ends while nothing replicates: etcd deletes its 20 keys; Consul still holds them until the session goes.
    source.revokeLease(ending);
    const shed = await runCopy(d, options({ deleteExtraneous: true }));
    expect(shed.rules[0]).toMatchObject({ extraneous: 20, deleted: 20 });
    // Keys deleted in etcd while their lease lives: a mass delete by this copy, refused.
    for (let i = 0; i < 15; i++) source.delete(`/app/live${i}`);
    const refused = await runCopy(d, options({ deleteExtraneous: true })).catch((err: unknown) => err);
    expect(refused).toMatchObject({ code: 'delete_guard', exitCode: 4 });
    expect([...target.entries.keys()].filter((k) => k.startsWith('app/live'))).toHaveLength(20);
  });
});

describe('copy and its abort signal', () => {
  it('lets every request and throttle wait in flight listen on the signal without Node\'s leak warning (more than 10 listeners)', async () => {
    const { source, target } = world();
    const signal = new AbortController().signal;
    await runCopy(deps(source, target), options({ signal, rate: 100_000, concurrency: 16 }));
    expect(getMaxListeners(signal)).toBeGreaterThanOrEqual(256);
  });
});

describe('copy after a dual-run', () => {
  it('leaves the dual-run\'s checkpoint where it is, so the dual-run replays the deletes in between; with --delete-extraneous it moves it', async () => {
    const { source, target } = world();
    await runCopy(deps(source, target), options());
    // A dual-run replicated up to here and stopped; then etcd deleted a key.
    const stoppedAt = (await source.status()).revision;
    const checkpoint = { schemaVersion: 1, revision: stoppedAt, updated: '2026-01-01T00:00:00Z', by: 'dualrun', stopped: '2026-01-01T00:00:00Z' };
    target.entries.set('_migrate/demo/checkpoint', { key: '_migrate/demo/checkpoint', value: Buffer.from(JSON.stringify(checkpoint)), flags: 0, modifyIndex: 1 });
    source.delete('/app/k03');
    const o = options();
    await runCopy(deps(source, target), o);
    expect(JSON.parse(target.entries.get('_migrate/demo/checkpoint')!.value.toString())).toMatchObject({ revision: stoppedAt, by: 'dualrun' });
    expect(o.events.some((e) => e.type === 'warning' && e.message.startsWith(`the dual-run's checkpoint stays at revision ${stoppedAt}`))).toBe(true);
    // The key etcd deleted is still in Consul: the dual-run's replay from its checkpoint deletes it.
    expect(target.entries.has('app/k03')).toBe(true);

    const cleaned = await runCopy(deps(source, target), options({ deleteExtraneous: true, allowMassDelete: true }));
    expect(target.entries.has('app/k03')).toBe(false);
    expect(JSON.parse(target.entries.get('_migrate/demo/checkpoint')!.value.toString())).toMatchObject({ revision: cleaned.revision, by: 'copy' });
  });
});

describe('copy of a rule Consul owns', () => {
  it('leaves a cut-over or finalized rule alone, deletes included, and says so', async () => {
    const { source, target } = world();
    await runCopy(deps(source, target), options());
    for (const phase of ['cutover', 'finalized'] as const) {
      const doc = { schemaVersion: 1, rule: 'app', phase, owner: 'consul', updated: '2026-01-01T00:00:00Z', history: [] };
      target.entries.set('_migrate/demo/rules/app', { key: '_migrate/demo/rules/app', value: Buffer.from(JSON.stringify(doc)), flags: 0, modifyIndex: 1 });
      // The application writes to Consul now; etcd's copy is stale (finalize may even have emptied it).
      target.entries.set('app/k01', { key: 'app/k01', value: Buffer.from('written in Consul'), flags: 0, modifyIndex: 2 });
      source.put('/app/k02', 'stale in etcd');
      const o = options({ deleteExtraneous: true, allowMassDelete: true });
      const result = await runCopy(deps(source, target), o);
      expect(result.rules).toEqual([]);
      // Said in the result too (a script reading --format json), and in its text.
      expect(result.ownedByConsul).toEqual([{ rule: 'app', phase }]);
      expect(renderCopy(result, 'text', false)).toContain(`  app: not copied: ${phase === 'finalized' ? 'finalized' : 'cut over'}, Consul owns its data\n`);
      expect(target.entries.get('app/k01')?.value.toString()).toBe('written in Consul');
      expect(target.entries.get('app/k02')?.value.toString()).toBe('v1');
      expect(target.entries.has('app/foreign')).toBe(true);
      expect(o.events.some((e) => e.type === 'warning' && e.message === `rule app is not copied: it is ${phase === 'finalized' ? 'finalized' : 'cut over'}, and Consul owns its data; a copy from etcd would overwrite it`)).toBe(true);
    }
  });
});

describe('copy text', () => {
  it('lists each skipped key under its own reason', async () => {
    const { source, target } = world();
    source.put('/app//double', 'x');
    source.put('/app/big', Buffer.alloc(600_000));
    const text = renderCopy(await runCopy(deps(source, target), options({ dryRun: true })), 'text', false);
    const lines = text.split('\n');
    const at = (needle: string) => lines.findIndex((l) => l.includes(needle));
    expect(at('/app//double')).toBe(at('skipped: empty-segment') + 1);
    expect(at('/app/big')).toBe(at('skipped: value-too-large') + 1);
  });

  it('a value the servers refuse as too large (their limits lower than assumed): the error names the key and says to set target.limits', async () => {
    // Full txns of 128 ops: the refused batch is halved down to the one write.
    const source = new MemorySource();
    const target = new MemoryTarget({}, { txnMaxOps: 128 });
    for (let i = 0; i < 200; i++) source.put(`/app/k${String(i).padStart(3, '0')}`, 'v');
    source.put('/app/big-one', Buffer.alloc(300, 1));
    // Servers whose kv_max_value_size is 200 bytes, which the tool could not read.
    const apply = target.applyTxn.bind(target);
    target.applyTxn = async (ops: readonly TxnOp[]) => {
      if (ops.some((op) => 'value' in op && op.key.startsWith('app/') && op.value.length > 200)) throw new ConsulTooLargeError('consul_too_large', 413, 'Consul refused PUT /v1/txn as too large', 'Value for key "app/big-one" is too large (300 > 200 bytes)');
      return apply(ops);
    };
    const err = await runCopy(deps(source, target), options({ pageKeys: 500 })).then(() => undefined, (e: unknown) => e as ConsulTooLargeError);
    expect(err).toBeInstanceOf(ConsulTooLargeError);
    expect(err!.message).toBe('Consul refused the write of app/big-one (etcd key /app/big-one, a value of 300 bytes) as too large: Value for key "app/big-one" is too large (300 > 200 bytes).');
    expect(err!.hint).toMatch(/set target\.limits\.txnMaxBytes \/ maxValueBytes in migration\.yaml to the servers' values \(an interrupted copy then goes on with --resume\)/);
  });

  it('against an agent with Consul 1.21.5\'s key rule, holds back the keys it would refuse on /v1/kv, and says why', async () => {
    const { source, target } = world();
    source.put('/app/hosts/10.0.0.1:8080', 'up');
    source.put('/app/users/alice@example.com', 'admin');
    const strict = { ...deps(source, target), mapping: Object.freeze({ ...loaded.mapping, strictKeys: true }) };
    const result = await runCopy(strict, options());
    expect(result.rules[0]).toMatchObject({ skipped: { 'key-charset': 2 } });
    expect([...target.entries.keys()].filter((k) => k.includes(':') || k.includes('@'))).toEqual([]);
    expect(target.entries.get('app/k00')?.value.toString()).toBe('v1');
    const text = renderCopy(result, 'text', false);
    expect(text).toContain('skipped: key-charset');
    expect(text).toContain('/app/hosts/10.0.0.1:8080');
  });

  it('shows extraneous Consul keys escaped: a key written to Consul cannot put terminal escapes into the operator\'s output', async () => {
    const { source, target } = world();
    target.entries.set('app/ctl\x1b[31mRED\x1b[0m ', { key: 'app/ctl\x1b[31mRED\x1b[0m ', value: Buffer.from('x'), flags: 0, modifyIndex: 1 });
    const text = renderCopy(await runCopy(deps(source, target), options({ dryRun: true })), 'text', false);
    expect(text).not.toContain('\x1b');
    expect(text).toContain('      app/ctl\\x1b[31mRED\\x1b[0m\\x20\n');
  });
});

describe('copy --resume', () => {
  it('checks the interrupted copy\'s revision inside a rule: an etcd role that reads only the rules\' prefixes resumes', async () => {
    const { source, target } = world();
    const controller = new AbortController();
    await runCopy(deps(source, target), options({ signal: controller.signal, onProgress: (e) => e.type === 'progress' && e.keysDone >= 10 && controller.abort() }));
    // The role `migrate acl` prints: the rules' prefixes and nothing else (a count of the whole keyspace was denied).
    const count = source.count.bind(source);
    source.count = async (range, revision) => {
      if (!range.start.toString().startsWith('/app/')) throw Object.assign(new Error('etcdserver: permission denied'), { code: 'etcd_permission_denied' });
      return count(range, revision);
    };
    const resumed = await runCopy(deps(source, target), options({ resume: true }));
    expect(resumed.resumedFrom).toBeDefined();
    expect(resumed.rules[0]!.resumedBelow).toBeGreaterThan(0);
  });

  it('counts the keys below the low-water mark the interrupted copy did, so its rows add up to the rule\'s keys', async () => {
    const { source, target } = world();
    const controller = new AbortController();
    const stopped = await runCopy(deps(source, target), options({
      signal: controller.signal,
      onProgress: (e) => e.type === 'progress' && e.keysDone >= 10 && controller.abort(),
    }));
    expect(stopped.interrupted).toBe(true);
    const resumed = await runCopy(deps(source, target), options({ resume: true }));
    const rule = resumed.rules[0]!;
    expect(rule.resumedBelow).toBeGreaterThan(0);
    expect(rule.resumedBelow + rule.created + rule.updated + rule.unchanged).toBe(rule.sourceKeys);
    expect(renderCopy(resumed, 'text', false)).toContain(`app: ${rule.resumedBelow} key(s) below the interrupted copy's low-water mark: done by it, not planned again (not in the row above)`);
  });
});

describe('copy --delete-extraneous and sessions', () => {
  it('deletes an extraneous key held by one of the migration\'s sessions (its lease revoked in etcd), keeps one held by another session and says so', async () => {
    const { source, target } = world();
    const lease = source.grantLease(60);
    source.put('/app/gone', 'held', lease);
    const first = await runCopy(deps(source, target), options());
    expect(target.entries.get('app/gone')?.session).toBeDefined();
    // Session-held keys last only while something renews their sessions: the copy says so.
    expect(renderCopy(first, 'text', false)).toContain('session-held keys: Consul deletes them 1 to 2 × their session\'s TTL after the copy ends, unless `migrate dualrun` renews the sessions');
    // The lease is revoked in etcd (its key with it); another client holds a key of its own under app/.
    source.revokeLease(lease);
    target.entries.set('app/theirs', { key: 'app/theirs', value: Buffer.from('x'), flags: 0, modifyIndex: 1, session: 'someone-elses-session' });
    const result = await runCopy(deps(source, target), options({ deleteExtraneous: true }));
    expect(result.rules[0]).toMatchObject({ extraneous: 3, deleted: 2, extraneousHeld: 1 });
    expect(target.entries.has('app/gone')).toBe(false);
    expect(target.entries.has('app/foreign')).toBe(false);
    expect(target.entries.get('app/theirs')?.session).toBe('someone-elses-session');
    const text = renderCopy(result, 'text', false);
    expect(text).toContain('app: 3 extraneous key(s) under app/ have no etcd key; 2 deleted, 1 kept: held by a session this migration does not own');
    expect(text).not.toContain('pass --delete-extraneous');
  });
});

describe('copy --resume with nothing to resume', () => {
  it('says so (no copy started, or the last one completed) and copies the whole mapping', async () => {
    const { source, target } = world();
    const first = options({ resume: true });
    expect((await runCopy(deps(source, target), first)).rules[0]!.created).toBe(31);
    expect(first.events).toContainEqual({ type: 'warning', message: expect.stringContaining('--resume: no copy has started, so there is nothing to resume') });
    const again = options({ resume: true });
    await runCopy(deps(source, target), again);
    expect(again.events).toContainEqual({ type: 'warning', message: expect.stringMatching(/--resume: the last copy completed \(at revision \d+\), so there is nothing to resume/) });
  });
});

/** Every txn takes `ms` before it lands, as on a loaded Consul or under --rate. */
function slowTxns(target: MemoryTarget, ms: number): void {
  const apply = target.applyTxn.bind(target);
  target.applyTxn = async (ops) => {
    await new Promise((r) => setTimeout(r, ms));
    return apply(ops);
  };
}

describe('copy progress', () => {
  it('ends each rule with every key done and every byte written, the last batches\' included', async () => {
    const { source, target } = world();
    source.put('/app/big', Buffer.alloc(300_000, 1));
    const o = options();
    const result = await runCopy(deps(source, target), o);
    const start = o.events.find((e) => e.type === 'start');
    const last = o.events.filter((e) => e.type === 'progress').at(-1);
    expect(start).toMatchObject({ rules: [{ name: 'app', keys: 32 }] });
    expect(last).toMatchObject({ rule: 'app', keysDone: 32, bytes: result.rules[0]!.bytesWritten });
    expect(result.rules[0]!.bytesWritten).toBeGreaterThan(300_000);
  });

  it('counts a key done once its write has landed in Consul, not when it was queued: with slow txns the figures never run ahead of Consul', async () => {
    const { source, target } = world();
    slowTxns(target, 15);
    const landed = () => [...target.entries.keys()].filter((k) => k.startsWith('app/k') || k === 'app/leased').length;
    const seen: { reported: number; landed: number }[] = [];
    await runCopy(deps(source, target), options({ concurrency: 4, onProgress: (e) => e.type === 'progress' && seen.push({ reported: e.keysDone, landed: landed() }) }));
    expect(seen.length).toBeGreaterThan(3);
    for (const s of seen) expect(s.reported).toBeLessThanOrEqual(s.landed);
    expect(seen.at(-1)!.reported).toBe(31);
  });

  it('with several rules, counts each rule\'s own writes in flight: never below 0 (the next rule started while the last one\'s batches landed)', async () => {
    const source = new MemorySource();
    const target = new MemoryTarget({}, { txnMaxOps: 4 });
    const two = parseConfig('version: 1\nid: two\nrules:\n  - { name: a, from: /a/, to: a/ }\n  - { name: b, from: /b/, to: b/ }\n', 'migration.yaml');
    for (let i = 0; i < 40; i++) source.put(`/a/k${i}`, 'v');
    for (let i = 0; i < 40; i++) source.put(`/b/k${i}`, 'v');
    slowTxns(target, 40);
    const o = options({ concurrency: 2 });
    await runCopy({ source, target, config: two.config, mapping: two.mapping }, o);
    const progress = o.events.filter((e) => e.type === 'progress') as Extract<CopyProgressEvent, { type: 'progress' }>[];
    expect(progress.filter((e) => e.rule === 'b').length).toBeGreaterThan(1);
    for (const e of progress) expect(e.keysDone, `${e.rule}`).toBeGreaterThanOrEqual(0);
  });

  it('goes on while the last batches land (it froze until the end under --rate)', async () => {
    const { source, target } = world();
    slowTxns(target, 300);
    const o = options({ concurrency: 2 });
    await runCopy(deps(source, target), o);
    const done = o.events.findIndex((e) => e.type === 'rule-done');
    const after = o.events.slice(done + 1).filter((e) => e.type === 'progress') as Extract<CopyProgressEvent, { type: 'progress' }>[];
    // Ticks while draining, then the final figure.
    expect(after.length).toBeGreaterThan(1);
    expect(after[0]!.keysDone).toBeLessThan(31);
    expect(after.at(-1)!.keysDone).toBe(31);
  });
});

describe('copy and Consul\'s lock delay', () => {
  it('waits out the lock delay of a session that ended on a leased key, then locks it with the lease\'s session', async () => {
    const { source, target } = world();
    const applyTxn = target.applyTxn.bind(target);
    let refused = 0;
    target.applyTxn = async (ops) => {
      // Consul refuses the lock for the first two tries, as it does for an ended session's lock delay.
      if (refused < 2 && ops.some((op) => op.verb === 'lock' && op.key === 'app/leased')) {
        refused++;
        throw new TxnFailedError([{ opIndex: 0, what: 'failed to lock key "app/leased" due to lock delay' }]);
      }
      return applyTxn(ops);
    };
    const o = options();
    const result = await runCopy(deps(source, target), o);
    expect(refused).toBe(2);
    expect(result.rules[0]!.created).toBe(31);
    expect(target.entries.get('app/leased')?.session).toBeDefined();
    expect(o.events.filter((e) => e.type === 'warning' && /lock delay/.test(e.message))).toHaveLength(1);
  });
});

describe('copy of a rule with leases: skip', () => {
  it('counts a Consul key of an etcd key that is leased now as extraneous, and --delete-extraneous deletes it (the dual-run\'s re-baseline too)', async () => {
    const skip = parseConfig('version: 1\nid: demo\nrules:\n  - { name: locks, from: /locks/, to: locks/, leases: skip }\n', 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/locks/job', 'free');
    source.put('/locks/other', 'free');
    await runCopy({ source, target, config: skip.config, mapping: skip.mapping }, options());
    expect(target.entries.has('locks/job')).toBe(true);
    // Taken under a lease: a key leases: skip leaves on etcd; Consul's copy of it is left over.
    source.put('/locks/job', 'mine', source.grantLease(60));
    const kept = await runCopy({ source, target, config: skip.config, mapping: skip.mapping }, options());
    expect(kept.rules[0]).toMatchObject({ extraneous: 1, deleted: 0, skipped: { 'lease-skip': 1 } });
    expect(kept.rules[0]!.extraneousExamples).toEqual(['locks/job']);
    const deleted = await runCopy({ source, target, config: skip.config, mapping: skip.mapping }, options({ deleteExtraneous: true, allowMassDelete: true }));
    expect(deleted.rules[0]).toMatchObject({ extraneous: 1, deleted: 1 });
    expect(target.entries.has('locks/job')).toBe(false);
    expect(target.entries.get('locks/other')?.value.toString()).toBe('free');
  });
});

describe('copy and the instances of a service rule removed from migration.yaml', () => {
  it('says they are still registered, and deregisters them with --delete-extraneous; other instances stay', async () => {
    const before = parseConfig('version: 1\nid: demo\nrules:\n  - { name: keepme, from: /a/, action: service }\n  - { name: dropme, from: /b/, action: service }\n', 'migration.yaml');
    const after = parseConfig('version: 1\nid: demo\nrules:\n  - { name: keepme, from: /a/, action: service }\n', 'migration.yaml');
    const source = new MemorySource();
    const target = new MemoryTarget();
    source.put('/a/alpha/1', '10.4.0.1:80');
    source.put('/b/beta/1', '10.4.0.2:80');
    await runCopy({ source, target, config: before.config, mapping: before.mapping }, options());
    await target.registerService({ id: 'by-hand', name: 'beta', address: '10.9.9.9', port: 1, tags: [], meta: {} });
    expect([...target.services.keys()].sort()).toEqual(['alpha-1', 'beta-1', 'by-hand']);
    const warned = options({ acceptMappingChange: true });
    await runCopy({ source, target, config: after.config, mapping: after.mapping }, warned);
    expect(warned.events).toContainEqual({ type: 'warning', message: '1 instance(s) of service rule(s) dropme, no longer in migration.yaml, are registered on the agent; nothing keeps them in step with etcd any more (`migrate copy --delete-extraneous` deregisters them)' });
    expect([...target.services.keys()].sort()).toEqual(['alpha-1', 'beta-1', 'by-hand']);
    const deleting = options({ acceptMappingChange: true, deleteExtraneous: true });
    await runCopy({ source, target, config: after.config, mapping: after.mapping }, deleting);
    expect(deleting.events).toContainEqual({ type: 'warning', message: '1 instance(s) of service rule(s) dropme, no longer in migration.yaml, are registered on the agent: deregistered them (--delete-extraneous)' });
    expect([...target.services.keys()].sort()).toEqual(['alpha-1', 'by-hand']);
  });
});
