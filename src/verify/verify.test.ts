import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import type { MigrateError } from '../errors.js';
import { createValueHasher } from '../report/hash.js';
import { checkIdOf } from '../services/registration.js';
import { syncServiceRule } from '../services/sync.js';
import { consulErrorFor } from '../stores/consul-http.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { mappingHash } from '../state/state.js';
import { withTransition } from '../cutover/phase.js';
import { DIFFERENCE_KINDS } from './compare.js';
import { VERIFY_REPORT_SCHEMA } from './report-schema.js';
import { renderVerify, renderVerifyError } from './render.js';
import { runVerify, type VerifyOptions, type VerifyResult, readBackShares } from './verify.js';

const loaded = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/ }
  - { name: services, from: /services/, to: services/, leases: session }
  - { name: locks, from: /locks/, to: locks/, leases: skip }
`, 'migration.yaml');

function world() {
  const source = new MemorySource();
  const target = new MemoryTarget();
  const set = (key: string, value: string | Buffer, session?: string) =>
    target.entries.set(key, { key, value: Buffer.isBuffer(value) ? value : Buffer.from(value), flags: 0, modifyIndex: 5, ...(session ? { session } : {}) });
  const checkpoint = (revision: number, by: 'copy' | 'dualrun', updated: Date, stopped?: Date) =>
    set('_migrate/demo/checkpoint', JSON.stringify({ schemaVersion: 1, revision, updated: updated.toISOString(), by, ...(stopped ? { stopped: stopped.toISOString() } : {}) }));
  // A copy has run: the migration's identity is recorded (verify records nothing without it).
  set('_migrate/demo/meta', JSON.stringify({ schemaVersion: 1, id: 'demo', etcdClusterId: source.clusterId, datacenters: ['dc1'], mappingHash: mappingHash(loaded.config), created: '2025-03-01T00:00:00Z', toolVersion: 'test' }));
  return { source, target, set, checkpoint };
}

/** A clock that only moves when verify sleeps, and a hook to act during the sleeps (a replicator catching up). */
function fakeTime(onSleep: (ms: number, now: Date) => void = () => undefined) {
  let t = Date.parse('2025-03-01T12:00:00Z');
  return {
    now: () => new Date(t),
    sleep: async (ms: number) => {
      t += ms;
      onSleep(ms, new Date(t));
    },
  };
}

function options(over: Partial<VerifyOptions> = {}): VerifyOptions {
  const time = fakeTime();
  return {
    rounds: 3, roundPauseMs: 2000, waitTimeoutMs: 60_000, maxDiffs: 1000, budgets: {}, record: true, readBack: 10, pageKeys: 2,
    signal: new AbortController().signal, hasher: createValueHasher(Buffer.alloc(32, 1)), toolVersion: 'test', now: time.now, sleep: time.sleep, ...over,
  };
}

function seedParity(w: ReturnType<typeof world>) {
  const lease = w.source.grantLease(60);
  w.source.put('/app/a', 'A');
  w.source.put('/app/b', Buffer.from([0, 1, 2, 255]));
  w.source.put('/app//double', 'rejected');
  w.source.put('/services/r1', 'ip1', lease);
  w.source.put('/locks/l', 'holder', lease);
  w.source.put('/other/x', 'unmapped');
  w.set('app/a', 'A');
  w.set('app/b', Buffer.from([0, 1, 2, 255]));
  w.target.sessions.set('S1', { id: 'S1', name: 's', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
  w.set(`_migrate/demo/sessions/${lease}`, JSON.stringify({ schemaVersion: 1, leaseId: lease, sessionId: 'S1', ttlSeconds: 60, etcdTtlSeconds: 60, created: 'then' }));
  w.set('services/r1', 'ip1', 'S1');
  return lease;
}

const validate = new Ajv({ allErrors: true, strict: true }).compile(VERIFY_REPORT_SCHEMA);
function expectValidJson(result: VerifyResult) {
  const doc = JSON.parse(renderVerify(result, 'json'));
  if (!validate(doc)) throw new Error(JSON.stringify(validate.errors, null, 2));
  return doc;
}

describe('readBackShares: keys read back through GET /v1/kv, in all', () => {
  it('shares --read-back among the copy rules by size, at least one each: 250 rules make about 250 requests, not 25,000', () => {
    const rules = [...Array.from({ length: 250 }, (_, i) => ({ name: `t${i}`, keys: 100 })), { name: 'big', keys: 25_000 }];
    const shares = readBackShares(100, rules);
    expect(shares.get('t0')).toBe(1);
    expect(shares.get('big')).toBe(50);
    expect([...shares.values()].reduce((n, v) => n + v, 0)).toBe(300);
  });

  it('gives one rule all of them, a rule without keys none, and --read-back all every key', () => {
    expect(readBackShares(100, [{ name: 'app', keys: 100_000 }])).toEqual(new Map([['app', 100]]));
    expect(readBackShares(100, [{ name: 'app', keys: 10 }, { name: 'empty', keys: 0 }])).toEqual(new Map([['app', 100], ['empty', 0]]));
    expect(readBackShares(0, [{ name: 'app', keys: 10 }])).toEqual(new Map([['app', 0]]));
    expect(readBackShares('all', [{ name: 'a', keys: 7 }, { name: 'b', keys: 0 }])).toEqual(new Map([['a', 7], ['b', 0]]));
  });
});

describe('runVerify on in-memory stores', () => {
  it('a clean copy: parity in every rule, one round, unmappable keys counted but not drift, verify/last recorded', async () => {
    const w = world();
    seedParity(w);
    w.checkpoint(await w.source.status().then((s) => s.revision), 'copy', new Date('2025-03-01T11:00:00Z'));
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options());
    expect(result.clean).toBe(true);
    expect(result.cut).toMatchObject({ cut: 'immediate', reason: 'copy-checkpoint' });
    expect(result.rounds).toHaveLength(1);
    expect(result.differencesTotal).toBe(0);
    const app = result.rules.find((r) => r.name === 'app')!;
    expect(app).toMatchObject({ status: 'parity', sourceKeys: 3, compared: 2, targetKeys: 2, unmappable: { 'empty-segment': 1 } });
    expect(app.readBack.checked).toBe(2);
    expect(result.rules.find((r) => r.name === 'locks')).toMatchObject({ leaseSkipped: 1, status: 'parity' });
    // None is in Consul: the line says where one would be listed, not that one was found.
    expect(renderVerify(result, 'text')).toContain('locks: 1 leased key(s) under leases: skip, expected absent from Consul (any found there is listed as extra, lease-skip)');
    const last = JSON.parse(w.target.entries.get('_migrate/demo/verify/last')!.value.toString());
    expect(last).toMatchObject({ schemaVersion: 1, cut: 'immediate', clean: true, rules: { app: { differences: 0, status: 'parity' } } });
    expect(result).toMatchObject({ recorded: true, notRecorded: null });
    expectValidJson(result);
  });

  it('a copy not completed: stopped part way, it says to resume it; running (it holds the copy lock), to wait for it', async () => {
    const w = world();
    seedParity(w);
    w.set('_migrate/demo/copy', JSON.stringify({ schemaVersion: 1, revision: 7, started: '2025-03-01T11:00:00Z', updated: '2025-03-01T11:00:00Z', rules: {} }));
    const deps = { source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping };
    expect((await runVerify(deps, options())).warnings.join('\n')).toContain('the copy of migration "demo" has not completed (interrupted at revision 7); run `migrate copy --resume` first');
    w.set('_migrate/demo/copy-lock', JSON.stringify({ holder: 'host-a:4242' }), 'S-copy');
    const running = (await runVerify(deps, options())).warnings.join('\n');
    expect(running).toContain('a copy of migration "demo" is running (host-a:4242, at revision 7): what it has not written yet is reported as missing or different; verify once it has finished');
    expect(running).not.toContain('--resume');
    // No copy lock, but a dual-run's leader lock: the dual-run's own copy (a re-baseline).
    w.target.entries.delete('_migrate/demo/copy-lock');
    w.set('_migrate/demo/leader', JSON.stringify({ holder: 'host-b:7' }), 'S-leader');
    expect((await runVerify(deps, options())).warnings.join('\n')).toContain('the dual-run of migration "demo" (host-b:7) is copying the rules again (re-baselining, at revision 7)');
    // Stopped part way: the dual-run's next start copies again.
    w.target.entries.delete('_migrate/demo/leader');
    w.checkpoint(3, 'dualrun', new Date('2025-03-01T10:00:00Z'));
    expect((await runVerify(deps, options())).warnings.join('\n')).toContain('a re-baseline of migration "demo" stopped part way (at revision 7); start `migrate dualrun`');
  });

  it('takes the owners document as every command does: deleted by hand, rebuilt from the rule documents; edited to disagree, refused', async () => {
    const w = world();
    seedParity(w);
    // Rule app cut over: Consul owns it, and an application wrote a key etcd does not have.
    w.set('_migrate/demo/rules/app', JSON.stringify(withTransition(undefined, 'app', 'verified', 'cutover', { at: '2025-03-01T11:00:00Z', by: 'ops', evidence: { etcdRevision: 3 } })));
    w.set('app/new', 'written in Consul');
    const deps = { source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping };
    const rebuilt = await runVerify(deps, options({ rounds: 1 }));
    expect(rebuilt.rules.find((r) => r.name === 'app')).toMatchObject({ owner: 'consul' });
    w.set('_migrate/demo/owners', JSON.stringify({ schemaVersion: 1, updated: '2025-03-01T11:00:00Z', rules: {} }));
    await expect(runVerify(deps, options({ rounds: 1 }))).rejects.toMatchObject({ code: 'state_inconsistent', exitCode: 4 });
  });

  it('before any copy (no meta): compared, but nothing recorded, and it says so; no orphan verify/last', async () => {
    const w = world();
    seedParity(w);
    w.target.entries.delete('_migrate/demo/meta');
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options());
    expect(result).toMatchObject({ recorded: false, notRecorded: 'no-state' });
    expect(w.target.entries.has('_migrate/demo/verify/last')).toBe(false);
    expect(result.warnings.join('\n')).toContain('no copy has run); this verify is not recorded');
    expect(renderVerify(result, 'text')).toContain('Not recorded (see the warning above).');
  });

  it('late writes recorded by the dual-run: the warning\'s command runs as printed, naming --datacenter for a rule copied to several', async () => {
    const several = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/, datacenters: [dc1, dc2] }
  - { name: one, from: /one/, to: one/ }
`, 'migration.yaml');
    const w = world();
    seedParity(w);
    for (const rule of ['app', 'one']) w.set(`_migrate/demo/trips/${rule}`, JSON.stringify({ schemaVersion: 1, rule, lateWrites: { count: 2, keys: [`/${rule}/late`] }, guardTrips: { count: 0 } }));
    const result = await runVerify({ source: w.source, target: w.target, config: several.config, mapping: several.mapping, datacenter: 'dc2' }, options({ record: false }));
    const warnings = result.warnings.join('\n');
    expect(warnings).toContain('`migrate cutover --rule app --datacenter dc2 --acknowledge-trips`');
    expect(warnings).toContain('`migrate cutover --rule one --acknowledge-trips`');
  });

  it('with another mapping than the migration recorded (another file): compared, but not recorded, so status and the cutover gate keep the migration\'s own last verify', async () => {
    const w = world();
    seedParity(w);
    const narrow = parseConfig('version: 1\nid: demo\nrules:\n  - { name: app, from: /app/a, to: app/a }\n', 'narrow.yaml');
    const result = await runVerify({ source: w.source, target: w.target, config: narrow.config, mapping: narrow.mapping }, options());
    expect(result.clean).toBe(true);
    expect(result).toMatchObject({ recorded: false, notRecorded: 'mapping-changed' });
    expect(w.target.entries.has('_migrate/demo/verify/last')).toBe(false);
    expect(result.warnings.join('\n')).toContain('verify compares against the current mapping and records nothing');
    expect(renderVerify(result, 'text')).toContain('Not recorded (see the warning above).');
    expect(renderVerify(result, 'text')).not.toContain('--no-record');
  });

  it('--no-record writes nothing at all', async () => {
    const w = world();
    seedParity(w);
    const writes = w.target.writes;
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ record: false }));
    expect(result).toMatchObject({ recorded: false, notRecorded: 'no-record' });
    expect(renderVerify(result, 'text')).toContain('Not recorded (--no-record).');
    expect(w.target.writes).toBe(writes);
    expect(w.target.entries.has('_migrate/demo/verify/last')).toBe(false);
  });

  it('many leased keys: one list of sessions, and a read only for a session the list leaves out (ACLs) or that is gone', async () => {
    const w = world();
    for (let i = 0; i < 40; i++) {
      const lease = w.source.grantLease(60);
      w.source.put(`/services/r${i}`, `ip${i}`, lease);
      w.target.sessions.set(`S${i}`, { id: `S${i}`, name: 's', node: 'n', ttlSeconds: 60, behavior: 'delete', lockDelayNs: 0 });
      w.set(`_migrate/demo/sessions/${lease}`, JSON.stringify({ schemaVersion: 1, leaseId: lease, sessionId: `S${i}`, ttlSeconds: 60, etcdTtlSeconds: 60, created: 'then' }));
      w.set(`services/r${i}`, `ip${i}`, `S${i}`);
    }
    w.target.sessions.delete('S7');
    w.checkpoint(await w.source.status().then((s) => s.revision), 'copy', new Date('2025-03-01T11:00:00Z'));
    const listSessions = w.target.listSessions.bind(w.target);
    let lists = 0;
    w.target.listSessions = async () => {
      lists++;
      return (await listSessions()).filter((s) => s.id !== 'S5');
    };
    const read: string[] = [];
    const readSession = w.target.readSession.bind(w.target);
    w.target.readSession = async (id) => {
      read.push(id);
      return readSession(id);
    };
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ rounds: 1, pageKeys: 100 }));
    expect(result.differences.map((d) => [d.key, d.kind, d.reason])).toEqual([['services/r7', 'session', 'session-gone']]);
    // Nothing to copy: the dual-run mends a lost session itself.
    const next = renderVerify(result, 'text').replace(/\s+/g, ' ');
    expect(next).toContain('a running dual-run makes a lost session again and writes its keys at its next check of the lease');
    expect(next).not.toContain('run `migrate copy`');
    expect(lists).toBe(1);
    expect(read.sort()).toEqual(['S5', 'S7']);

    // A token that may not list sessions: each is read; any other failure of the list is verify's failure.
    read.length = 0;
    w.target.listSessions = async () => {
      throw consulErrorFor('http://consul', 'GET', '/v1/session/list', 403, Buffer.from('Permission denied'));
    };
    const denied = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ rounds: 1, pageKeys: 100 }));
    expect(denied.differences.map((d) => [d.key, d.kind, d.reason])).toEqual([['services/r7', 'session', 'session-gone']]);
    expect(read).toHaveLength(40);
    w.target.listSessions = async () => {
      throw consulErrorFor('http://consul', 'GET', '/v1/session/list', 500, Buffer.from('rpc error: leadership lost'));
    };
    await expect(runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ rounds: 1, pageKeys: 100 }))).rejects.toThrow(/leadership lost/);
  });

  it('drift of every kind persists over the rounds and is reported once per key', async () => {
    const w = world();
    seedParity(w);
    w.target.entries.delete('app/a');
    w.set('app/b', Buffer.from([0, 1, 2, 254]));
    w.set('app/extra', 'x');
    w.set('app/app//stranded', 'x');
    w.set('services/r1', 'ip1');
    w.set('locks/l', 'holder');
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options());
    expect(result.clean).toBe(false);
    expect(result.rounds).toHaveLength(3);
    expect(result.differences.map((d) => [d.rule, d.key, d.kind, d.reason])).toEqual([
      ['app', 'app/a', 'missing', 'absent'],
      ['app', 'app/app//stranded', 'not-servable', 'empty-segment'],
      ['app', 'app/b', 'value', 'bytes'],
      ['app', 'app/extra', 'extra', 'no-etcd-key'],
      ['services', 'services/r1', 'session', 'no-session'],
      ['locks', 'locks/l', 'extra', 'lease-skip'],
    ]);
    expect(result.rules.find((r) => r.name === 'app')).toMatchObject({ status: 'drift', differences: 4, settled: 0, byKind: { missing: 1, extra: 1, value: 1, 'not-servable': 1, session: 0 } });
    expect(result.differencesTotal).toBe(6);
    const text = renderVerify(result, 'text');
    expect(text).toContain('6 persistent differences, all listed');
    expect(text).not.toContain('holder');
    expectValidJson(result);
  });

  it('a rule cut over, whose application writes a key all the time in Consul: the reverse mirror\'s writes in flight settle (etcd is always a write behind), real drift does not', async () => {
    const w = world();
    seedParity(w);
    w.set('_migrate/demo/rules/app', JSON.stringify(withTransition(undefined, 'app', 'verified', 'cutover', { at: '2025-03-01T11:00:00Z', by: 'ops', evidence: { etcdRevision: 3 } })));
    // Drift: a value etcd has and Consul does not, which no mirror will change.
    w.set('app/b', 'changed by hand');
    let n = 0;
    // Whenever time passes, the reverse mirror writes Consul's value to etcd, and the application writes the next one in Consul.
    const time = fakeTime(() => {
      w.source.put('/app/a', `v${n}`);
      w.set('app/a', `v${++n}`);
    });
    w.set('app/a', 'v0');
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep }));
    expect(result.differences.map((d) => [d.key, d.kind])).toEqual([['app/b', 'value']]);
    expect(result.rules.find((r) => r.name === 'app')).toMatchObject({ owner: 'consul', settled: 1 });
  });

  it('writes in flight settle in later rounds; with one round they count', async () => {
    for (const rounds of [3, 1]) {
      const w = world();
      seedParity(w);
      w.source.put('/app/a', 'A2');
      // The "replicator" applies the change while verify pauses between rounds.
      const time = fakeTime(() => w.set('app/a', 'A2'));
      const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ rounds, now: time.now, sleep: time.sleep }));
      if (rounds === 3) {
        expect(result.clean).toBe(true);
        expect(result.rounds.map((r) => [r.differences, r.settled])).toEqual([[1, 0], [0, 1]]);
        expect(result.totals.settled).toBe(1);
      } else {
        expect(result.clean).toBe(false);
        expect(result.differences.map((d) => [d.key, d.kind])).toEqual([['app/a', 'value']]);
      }
    }
  });

  it('etcd compacting the cut while verify reads it: the round starts again at a fresh revision, with a warning; compacted every time, it fails with etcd_compacted', async () => {
    const w = world();
    seedParity(w);
    w.checkpoint(await w.source.status().then((s) => s.revision), 'copy', new Date('2025-03-01T11:00:00Z'));
    const read = w.source.readPages.bind(w.source);
    let compactions = 0;
    // The first page read of a revision compacts it away (an application writes, then auto-compaction runs).
    const compactingReads = (times: number) => (w.source.readPages = async function* (range, opts) {
      if (compactions < times && opts?.revision === (await w.source.status()).revision) {
        compactions++;
        w.source.put('/other/tick', String(compactions));
        w.source.compact();
      }
      yield* read(range, opts);
    });
    compactingReads(1);
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options());
    expect(compactions).toBe(1);
    expect(result.clean).toBe(true);
    expect(result.cut.revision).toBe(await w.source.status().then((s) => s.revision));
    expect(result.warnings.some((m) => /etcd compacted revision \d+ while verify read it; round 1 starts again/.test(m))).toBe(true);
    expect(result.rules.find((r) => r.name === 'app')).toMatchObject({ compared: 2, differences: 0 });

    compactions = 0;
    compactingReads(Infinity);
    const before = JSON.stringify([...w.target.entries]);
    const failed = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options()).catch((err: unknown) => err);
    expect(failed).toMatchObject({ code: 'etcd_compacted', exitCode: 3 });
    expect(String((failed as Error).message)).toMatch(/etcd has compacted revision \d+, which was being read/);
    expect(compactions).toBe(3);
    expect(JSON.stringify([...w.target.entries])).toBe(before);
  });

  it('waits for a running dual-run\'s checkpoint to reach the etcd revision (checkpoint cut)', async () => {
    const w = world();
    seedParity(w);
    const revision = (await w.source.status()).revision;
    let polls = 0;
    const time = fakeTime((_ms, now) => {
      polls++;
      if (polls === 3) w.checkpoint(revision + 1, 'dualrun', now);
    });
    w.checkpoint(revision - 1, 'dualrun', time.now());
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep, pollMs: 100 }));
    expect(result.cut).toMatchObject({ cut: 'checkpoint', reason: 'dualrun-running', revision, checkpoint: revision + 1, checkpointBy: 'dualrun', waitedMs: 300 });
    expect(result.clean).toBe(true);
  });

  it('no consistent cut in time: refused with verify_cut_timeout (exit 4)', async () => {
    const w = world();
    seedParity(w);
    const time = fakeTime();
    w.checkpoint(1, 'dualrun', time.now());
    const run = runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep, waitTimeoutMs: 5000 }));
    await expect(run).rejects.toMatchObject({ code: 'verify_cut_timeout', exitCode: 4 });
    const error = await run.catch((err: unknown) => err);
    const xml = renderVerifyError(error, 'junit', 'demo')!;
    expect(XMLValidator.validate(xml)).toBe(true);
    expect(new XMLParser({ ignoreAttributes: false }).parse(xml).testsuites.testsuite.testcase.error['@_type']).toBe('verify_cut_timeout');
  });

  it('a dual-run whose checkpoint stops moving while verify waits (killed, or frozen with writes in flight): waited for to --wait-timeout, then verify_cut_timeout saying it stalled or died, not its writes in flight as drift', async () => {
    const w = world();
    seedParity(w);
    const time = fakeTime();
    w.checkpoint(1, 'dualrun', time.now());
    const started = time.now().getTime();
    const failed = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep, waitTimeoutMs: 120_000 })).catch((err: unknown) => err);
    expect(failed).toMatchObject({ code: 'verify_cut_timeout', exitCode: 4 });
    expect(String((failed as Error).message)).toMatch(/stayed at etcd revision 1, behind revision \d+, for 120 s, and was last written 120 s ago: the dual-run stalled \(a frozen process, or a server that does not answer\) or died/);
    expect((failed as MigrateError).hint).toMatch(/its \/healthz \(stalled\?\) and its logs; start it again if it died/);
    expect(time.now().getTime() - started).toBeGreaterThanOrEqual(120_000);
  });

  it('a dual-run frozen for 30 s while verify waits, then going on: the checkpoint cut once it reaches the revision, no drift', async () => {
    const w = world();
    seedParity(w);
    const revision = (await w.source.status()).revision;
    let frozenUntil = 0;
    const time = fakeTime((_ms, now) => {
      frozenUntil ||= now.getTime() + 30_000;
      if (now.getTime() >= frozenUntil) w.checkpoint(revision, 'dualrun', now);
    });
    w.checkpoint(revision - 1, 'dualrun', time.now());
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep, waitTimeoutMs: 120_000 }));
    expect(result.cut).toMatchObject({ cut: 'checkpoint', reason: 'dualrun-running', checkpoint: revision });
    expect(result.rounds[0]!.waitedMs).toBeGreaterThanOrEqual(30_000);
    expect(result.clean).toBe(true);
  });

  it('a dual-run that stops cleanly while verify waits (its checkpoint marked stopped): an immediate cut at once, nothing more will be replicated', async () => {
    const w = world();
    seedParity(w);
    const time = fakeTime((_ms, now) => w.checkpoint(1, 'dualrun', now, now));
    w.checkpoint(1, 'dualrun', time.now());
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep, waitTimeoutMs: 120_000 }));
    expect(result.cut).toMatchObject({ cut: 'immediate', reason: 'dualrun-stopped', checkpoint: 1 });
    expect(result.rounds[0]!.waitedMs).toBeLessThan(5_000);
  });

  it('a stale dual-run checkpoint counts as stopped: immediate cut with a warning', async () => {
    const w = world();
    seedParity(w);
    const time = fakeTime();
    w.checkpoint(1, 'dualrun', new Date(time.now().getTime() - 10 * 60_000));
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ now: time.now, sleep: time.sleep }));
    expect(result.cut).toMatchObject({ cut: 'immediate', reason: 'dualrun-stopped' });
    expect(result.warnings.join('\n')).toContain('treated as stopped');
  });

  it('--allow budgets, --max-diffs truncation: summary and artifact agree', async () => {
    const w = world();
    seedParity(w);
    for (let i = 0; i < 5; i++) w.set(`app/extra-${i}`, 'x');
    const within = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ budgets: { app: 5 }, rounds: 1 }));
    expect(within.clean).toBe(true);
    expect(within.rules[0]).toMatchObject({ status: 'within-budget', differences: 5, budget: 5 });
    expect(renderVerify(within, 'text')).toContain('PARITY WITHIN BUDGET');

    const cut = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ budgets: { app: 4 }, maxDiffs: 2, rounds: 1 }));
    expect(cut.clean).toBe(false);
    expect(cut).toMatchObject({ differencesTotal: 5, truncated: true });
    expect(cut.differences).toHaveLength(2);
    expect(renderVerify(cut, 'text')).toContain('5 persistent differences; 2 listed, 3 not listed (--max-diffs 2)');
    const junit = new XMLParser({ ignoreAttributes: false }).parse(renderVerify(cut, 'junit'));
    const app = junit.testsuites.testsuite.testcase.find((t: { '@_name': string }) => t['@_name'] === 'app');
    expect(app.failure['@_message']).toContain('5 persistent differences');
    expect(app.failure['#text']).toContain('3 more not listed');
    expect(renderVerify(cut, 'markdown')).toContain('2 of 5 differences');
    expectValidJson(cut);

    await expect(runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ budgets: { nope: 1 } }))).rejects.toMatchObject({ code: 'verify_budget_unknown_rule', exitCode: 2 });
  });

  it('a key GET /v1/kv does not serve (read back) is not-servable, and stays so over the rounds', async () => {
    const w = world();
    seedParity(w);
    const readKey = w.target.readKey.bind(w.target);
    w.target.readKey = async (key) => {
      if (key === 'app/a') throw consulErrorFor('memory', 'GET', '/v1/kv/app/a', 307, Buffer.alloc(0));
      return readKey(key);
    };
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ readBack: 'all' }));
    expect(result.rounds).toHaveLength(3);
    expect(result.differences.map((d) => [d.key, d.kind, d.reason, d.sourceKey])).toEqual([['app/a', 'not-servable', 'read-back-failed', '/app/a']]);
    expect(result.rules[0]!.readBack).toEqual({ checked: 2, failed: 1 });
  });

  it('a read-back that fails in round 1 only (a key written or deleted meanwhile) settles, and is not counted as failed', async () => {
    const w = world();
    seedParity(w);
    const readKey = w.target.readKey.bind(w.target);
    let first = true;
    w.target.readKey = async (key) => {
      if (key === 'app/a' && first) {
        first = false;
        return undefined;
      }
      return readKey(key);
    };
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ readBack: 'all' }));
    expect(result.clean).toBe(true);
    expect(result.rules[0]).toMatchObject({ settled: 1, readBack: { checked: 2, failed: 0 } });
    expect(renderVerify(result, 'text')).not.toContain('read back through GET /v1/kv failed');
  });

  it('a Consul key listing that fails while the first etcd page is read fails verify with its error and closes the etcd read', async () => {
    const w = world();
    seedParity(w);
    // More pages than verify reads ahead: the etcd read is still open when the listing fails.
    for (let i = 0; i < 10; i++) w.source.put(`/app/more/${i}`, 'x');
    const readPages = w.source.readPages.bind(w.source);
    let opened = 0;
    let closed = 0;
    w.source.readPages = (range, opts) => {
      const pages = readPages(range, opts)[Symbol.asyncIterator]();
      opened++;
      return {
        [Symbol.asyncIterator]: () => ({
          next: () => pages.next(),
          return: async (value?: unknown) => {
            closed++;
            return (await pages.return?.(value)) ?? { done: true, value: undefined };
          },
        }),
      };
    };
    const listKeys = w.target.listKeys.bind(w.target);
    w.target.listKeys = async (prefix: string) => {
      if (prefix === 'app/') throw consulErrorFor('memory', 'GET', '/v1/kv/app/?keys', 503, Buffer.from('No cluster leader'));
      return listKeys(prefix);
    };
    await expect(runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options())).rejects.toMatchObject({ code: 'consul_unavailable' });
    expect(opened).toBe(1);
    expect(closed).toBe(1);
    expect(w.target.entries.has('_migrate/demo/verify/last')).toBe(false);
  });

  it('escapes keys for XML and markdown', async () => {
    const w = world();
    seedParity(w);
    w.set('app/<b>&"\'|`x', 'x');
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ rounds: 1 }));
    const xml = renderVerify(result, 'junit');
    expect(XMLValidator.validate(xml)).toBe(true);
    expect(new XMLParser({ ignoreAttributes: false }).parse(xml).testsuites.testsuite.testcase[0].failure['#text']).toContain('app/<b>&"\'|`x');
    expect(renderVerify(result, 'markdown')).toContain('\\|');
  });
});

const withServices = parseConfig(`version: 1
id: demo
rules:
  - { name: app, from: /app/, to: app/ }
  - { name: web, from: /services/, action: service, service: { check: { ttl: 10m } } }
  - { name: dns, from: /skydns/, action: service, service: { format: skydns, name: "{-2}", id: "{-2}-{-1}" } }
`, 'migration.yaml');

/** etcd holds Registrator-style and SkyDNS registrations (one value that makes no instance); the target is what `migrate copy` registers. */
async function serviceWorld() {
  const w = world();
  // The copy recorded this mapping.
  w.set('_migrate/demo/meta', JSON.stringify({ schemaVersion: 1, id: 'demo', etcdClusterId: w.source.clusterId, datacenters: ['dc1'], mappingHash: mappingHash(withServices.config), created: '2025-03-01T00:00:00Z', toolVersion: 'test' }));
  const lease = w.source.grantLease(60);
  w.source.put('/app/a', 'A');
  w.set('app/a', 'A');
  w.source.put('/services/web/w1', '10.0.0.5:50061', lease);
  w.source.put('/services/web/w2', '10.0.0.6:50061', lease);
  w.source.put('/services/web/w3', '10.0.0.7:8080');
  w.source.put('/services/web/bad', 'not an address');
  w.source.put('/skydns/local/cluster/db/x1', JSON.stringify({ host: '10.0.0.9', port: 5432, priority: 10 }), lease);
  await copyServices(w);
  return { ...w, lease };
}

/** Registers every service rule's instances as the copy does. */
async function copyServices(w: ReturnType<typeof world>) {
  const revision = (await w.source.status()).revision;
  for (const rule of withServices.mapping.serviceRules) {
    const existing = await w.target.listServiceInstances('demo');
    await syncServiceRule(rule, { source: w.source, target: w.target, mapping: withServices.mapping, migrationId: 'demo' }, revision, existing, { deleteExtraneous: false, allowMassDelete: false });
  }
}

function verifyServices(w: ReturnType<typeof world>, over: Partial<VerifyOptions> = {}) {
  return runVerify({ source: w.source, target: w.target, config: withServices.config, mapping: withServices.mapping }, options(over));
}

describe('runVerify of service rules (catalog instances)', () => {
  it('after a copy: parity; the rule is reported as a service rule counting instances, keys that make no instance counted but not drift, verify/last recorded', async () => {
    const w = await serviceWorld();
    const result = await verifyServices(w);
    expect(result.clean).toBe(true);
    expect(result.rounds).toHaveLength(1);
    expect(result.rules.map((r) => [r.name, r.action])).toEqual([['app', 'copy'], ['web', 'service'], ['dns', 'service']]);
    expect(result.rules[1]).toMatchObject({ status: 'parity', to: null, keys: null, leases: null, sourceKeys: 4, compared: 3, targetKeys: 3, differences: 0, unmappable: { 'value-not-hostport': 1 } });
    expect(result.rules[2]).toMatchObject({ status: 'parity', sourceKeys: 1, compared: 1, targetKeys: 1 });
    expect(result.totals).toMatchObject({ unmappable: 1, differences: 0, compared: 5 });
    expect(result.rounds[0]!.checked).toBe(5);
    const last = JSON.parse(w.target.entries.get('_migrate/demo/verify/last')!.value.toString());
    expect(last.rules.web).toMatchObject({ status: 'parity', compared: 3, byKind: { 'check-critical': 0, instance: 0 } });
    const doc = expectValidJson(result);
    expect(doc.rules[1].action).toBe('service');
    const text = renderVerify(result, 'text');
    expect(text).toContain('web: service rule: 3 instances its etcd keys make, 3 instances of it in Consul\'s catalog');
    expect(text).toContain('web: 1 value-not-hostport source key(s) that make no service instance; not registered by design, not drift');
    expect(text).toContain('PARITY: etcd and Consul agree for every copy and service rule (exit 0).');
    expect(renderVerify(result, 'markdown')).toContain('| `web` (service) | ✅ parity |');
  });

  it('reports each kind of difference once per instance, naming fields, never what the etcd value holds', async () => {
    const w = await serviceWorld();
    // Missing: deregistered behind the tool's back.
    w.target.services.delete('web-w1');
    // Instance differs: another port and an added tag.
    const w2 = w.target.services.get('web-w2')!;
    w.target.services.set('web-w2', { ...w2, port: 9999, tags: ['canary'] });
    // A leased key whose instance has no TTL check, and an unleased one that has one.
    const x1 = w.target.services.get('db-x1')!;
    w.target.services.set('db-x1', { ...x1, check: undefined, checkStatus: undefined });
    const w3 = w.target.services.get('web-w3')!;
    w.target.services.set('web-w3', { ...w3, check: { id: checkIdOf('web-w3'), name: 'ttl', ttlSeconds: 600, status: 'passing' } });
    // Extra: ours by meta, no etcd key makes it.
    await w.target.registerService({ id: 'web-gone', name: 'web', address: '10.0.0.8', port: 1, tags: [], meta: { 'etcd-migrate-id': 'demo', 'etcd-migrate-rule': 'web' } });
    // Someone else's instance is none of the rule's business.
    await w.target.registerService({ id: 'web-other', name: 'web', address: '10.0.0.8', port: 1, tags: [], meta: { 'etcd-migrate-id': 'other' } });
    const result = await verifyServices(w);
    expect(result.clean).toBe(false);
    expect(result.rounds).toHaveLength(3);
    expect(result.differences.map((d) => [d.rule, d.key, d.kind, d.reason, d.sourceKey])).toEqual([
      ['web', 'web-gone', 'extra', 'no-etcd-key', null],
      ['web', 'web-w1', 'missing', 'no-instance', '/services/web/w1'],
      ['web', 'web-w2', 'instance', 'port,tags', '/services/web/w2'],
      ['web', 'web-w3', 'check', 'unexpected-check', '/services/web/w3'],
      ['dns', 'db-x1', 'check', 'no-check', '/skydns/local/cluster/db/x1'],
    ]);
    expect(result.differences.find((d) => d.key === 'web-w2')!.detail).toBe('the instance on node memory differs from what etcd key /services/web/w2 makes in port, tags');
    // Fields agree on a check difference: the keyed hashes of the two sides match.
    const check = result.differences.find((d) => d.key === 'db-x1')!;
    expect(check.etcd!.hash).toBe(check.consul!.hash);
    expect(result.differences.find((d) => d.key === 'web-w1')!.consul).toBeNull();
    // The catalog may hold the id under another service (someone else's): the detail does not say it has none.
    expect(result.differences.find((d) => d.key === 'web-w1')!.detail).toContain('no instance of that service with this id');
    expect(result.rules.find((r) => r.name === 'web')).toMatchObject({ status: 'drift', differences: 4, targetKeys: 3, byKind: { missing: 1, extra: 1, instance: 1, check: 1, 'check-critical': 0, value: 0 } });
    for (const format of ['json', 'text', 'markdown', 'junit'] as const) {
      const out = renderVerify(result, format);
      expect(out).not.toContain('10.0.0.');
      expect(out).not.toContain('50061');
    }
    expectValidJson(result);
    const junit = new XMLParser({ ignoreAttributes: false }).parse(renderVerify(result, 'junit'));
    const web = junit.testsuites.testsuite.testcase.find((t: { '@_name': string }) => t['@_name'] === 'web');
    expect(web.failure['@_message']).toBe('4 persistent differences (missing 1, extra 1, instance 1, check 1)');
    expect(web.failure['#text']).toContain('service rule web: /services/ -> Consul\'s catalog; 3 instances compared, 3 catalog instances');
  });

  it('a critical TTL check while its etcd lease is alive is check-critical; once the lease has ended it is not', async () => {
    const w = await serviceWorld();
    await w.target.updateCheck(checkIdOf('web-w1'), 'critical');
    const result = await verifyServices(w, { rounds: 1 });
    expect(result.differences.map((d) => [d.key, d.kind, d.reason])).toEqual([['web-w1', 'check-critical', 'critical']]);
    expect(result.differences[0]!.detail).toContain(`while etcd lease ${w.lease} of /services/web/w1 is alive`);
    expectValidJson(result);

    // The lease ends while verify reads: etcd still has the key at the cut, the critical check is right.
    const readLease = w.source.readLease.bind(w.source);
    w.source.readLease = async (id) => ({ ...(await readLease(id)), ttl: -1 });
    expect((await verifyServices(w, { rounds: 1 })).clean).toBe(true);
  });

  it('a second instance of an id on another node is extra (duplicate)', async () => {
    const w = await serviceWorld();
    const list = w.target.listServiceInstances.bind(w.target);
    w.target.listServiceInstances = async (id) => {
      const instances = await list(id);
      return [...instances, { ...instances.find((i) => i.id === 'web-w3')!, node: 'old-agent', port: 1 }];
    };
    const result = await verifyServices(w, { rounds: 1 });
    expect(result.differences.map((d) => [d.key, d.kind, d.reason])).toEqual([['web-w3@old-agent', 'extra', 'duplicate']]);
    expect(result.differences[0]!.detail).toContain('also registered on node old-agent, besides node memory');
  });

  it('a registration applied just after the cut settles in a later round; one the catalog shows ahead of the round\'s cut matches at the checkpoint', async () => {
    const w = await serviceWorld();
    w.source.put('/services/web/w4', '10.0.0.10:50061', w.lease);
    await copyServices(w);
    const w4 = w.target.services.get('web-w4')!;
    w.target.services.delete('web-w4');
    // The "dual-run" registers the new key while verify pauses between rounds.
    const time = fakeTime(() => w.target.services.set('web-w4', w4));
    const result = await verifyServices(w, { now: time.now, sleep: time.sleep });
    expect(result.clean).toBe(true);
    expect(result.rounds.map((r) => [r.differences, r.settled])).toEqual([[1, 0], [0, 1]]);
    expect(result.rules.find((r) => r.name === 'web')).toMatchObject({ settled: 1, differences: 0 });

    const v = await serviceWorld();
    let applied = (await v.source.status()).revision;
    // A running dual-run: its checkpoint is refreshed whenever verify sleeps, as its heartbeat would.
    const clock = fakeTime((_ms, now) => v.checkpoint(applied, 'dualrun', now));
    v.checkpoint(applied, 'dualrun', clock.now());
    v.target.services.delete('web-w2');
    const list = v.target.listServiceInstances.bind(v.target);
    let catalogReads = 0;
    v.target.listServiceInstances = async (id: string, scope?: 'agent' | 'catalog') => {
      // Round 2's catalog read: etcd changes the key and the dual-run registers it (and checkpoints) just before.
      if (scope === 'catalog' && ++catalogReads === 2) {
        applied = v.source.put('/services/web/w2', '10.0.0.6:6000', v.lease);
        await copyServices(v);
        v.checkpoint(applied, 'dualrun', clock.now());
      }
      return list(id);
    };
    const ahead = await verifyServices(v, { now: clock.now, sleep: clock.sleep });
    expect(ahead.cut).toMatchObject({ cut: 'checkpoint', reason: 'dualrun-running' });
    // Settled in round 2: the catalog matches etcd at the checkpoint, though not at round 2's cut.
    expect(ahead.rounds.map((r) => [r.differences, r.settled])).toEqual([[1, 0], [0, 1]]);
    expect(ahead.rounds[1]!.revision).toBeLessThan(applied);
    expect(ahead.clean).toBe(true);
  });

  it('--allow budgets name service rules; verify/last records their status', async () => {
    const w = await serviceWorld();
    w.target.services.delete('web-w1');
    const within = await verifyServices(w, { budgets: { web: 1 }, rounds: 1 });
    expect(within.clean).toBe(true);
    expect(within.rules.find((r) => r.name === 'web')).toMatchObject({ status: 'within-budget', differences: 1, budget: 1 });
    expect(JSON.parse(w.target.entries.get('_migrate/demo/verify/last')!.value.toString()).rules.web).toMatchObject({ status: 'within-budget', differences: 1, budget: 1, byKind: { missing: 1 } });
    const over = await verifyServices(w, { budgets: { web: 0 }, rounds: 1 });
    expect(over.clean).toBe(false);
    expect(JSON.parse(w.target.entries.get('_migrate/demo/verify/last')!.value.toString())).toMatchObject({ clean: false, rules: { web: { status: 'drift' }, dns: { status: 'parity' } } });
    await expect(verifyServices(w, { budgets: { nope: 1 } })).rejects.toMatchObject({ code: 'verify_budget_unknown_rule', message: expect.stringContaining('not a copy or service rule') });
  });

  it('the report schema lists every kind of difference', () => {
    expect(VERIFY_REPORT_SCHEMA.properties.differences.items.properties.kind.enum).toEqual(DIFFERENCE_KINDS);
    expect(VERIFY_REPORT_SCHEMA.properties.rules.items.properties.byKind.required).toEqual(DIFFERENCE_KINDS);
  });
});
