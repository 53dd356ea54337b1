import { Ajv } from 'ajv';
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../config/load.js';
import { createValueHasher } from '../report/hash.js';
import { consulErrorFor } from '../stores/consul-http.js';
import { MemorySource, MemoryTarget } from '../stores/memory.js';
import { VERIFY_REPORT_SCHEMA } from './report-schema.js';
import { renderVerify, renderVerifyError } from './render.js';
import { runVerify, type VerifyOptions, type VerifyResult } from './verify.js';

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
  const checkpoint = (revision: number, by: 'copy' | 'dualrun', updated: Date) =>
    set('_migrate/demo/checkpoint', JSON.stringify({ schemaVersion: 1, revision, updated: updated.toISOString(), by }));
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
    const last = JSON.parse(w.target.entries.get('_migrate/demo/verify/last')!.value.toString());
    expect(last).toMatchObject({ schemaVersion: 1, cut: 'immediate', clean: true, rules: { app: { differences: 0, status: 'parity' } } });
    expectValidJson(result);
  });

  it('--no-record writes nothing at all', async () => {
    const w = world();
    seedParity(w);
    const writes = w.target.writes;
    const result = await runVerify({ source: w.source, target: w.target, config: loaded.config, mapping: loaded.mapping }, options({ record: false }));
    expect(result.recorded).toBe(false);
    expect(w.target.writes).toBe(writes);
    expect(w.target.entries.has('_migrate/demo/verify/last')).toBe(false);
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
