import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createKvClient, type ClientErrorEvent, type KvClient, type KvWatchEvent, type MismatchEvent, type SwitchEvent } from '../src/client/index.js';
import { freePort, startConsul, startConsulCluster } from '../scripts/local-servers.js';
import { ConsulTarget } from '../src/stores/consul.js';
import { loadConfig } from '../src/config/load.js';
import { configDir, consulTarget, privateConsul, rawEtcd, serverEnv, servers, uniquePrefix } from './support/harness.js';
import { eventually } from './support/dualrun.js';

/**
 * The Node client against the real servers: the test plays `migrate cutover`
 * and `rollback` by writing the rule's phase document into Consul, while an
 * application loop keeps using one client, never restarted.
 */

const etcd = rawEtcd();
const consul = consulTarget();
const clients: KvClient[] = [];

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.close()));
  etcd.close();
  consul.close();
});

interface Migration {
  configFile: string;
  /** The application's etcd prefix (the rule's `from`) and its Consul prefix (`to`). */
  from: string;
  to: string;
  phaseKey: string;
  writePhase(owner: 'etcd' | 'consul', phase: string, extra?: Record<string, unknown>): Promise<void>;
}

function migration(label: string): Migration {
  const base = uniquePrefix(label);
  const from = `/${base}app/`;
  const to = `${base}app/`;
  const statePrefix = `${base}_migrate/`;
  const dir = configDir(`version: 1\nid: client-it\nstate:\n  prefix: ${statePrefix}\nrules:\n  - name: app\n    from: ${from}\n    to: ${to}\n  - name: other\n    from: /${base}other/\n    to: ${base}other/\n`);
  const phaseKey = `${statePrefix}client-it/rules/app`;
  return {
    configFile: join(dir, 'migration.yaml'),
    from,
    to,
    phaseKey,
    async writePhase(owner, phase, extra = {}) {
      const doc = { schemaVersion: 1, rule: 'app', phase, owner, updated: new Date().toISOString(), history: [], ...extra };
      await consul.putKey(phaseKey, Buffer.from(JSON.stringify(doc)));
    },
  };
}

async function open(m: Migration, options: Partial<Parameters<typeof createKvClient>[0]> = {}): Promise<KvClient> {
  const client = await createKvClient({ config: m.configFile, rules: ['app'], env: serverEnv(), blockingWaitSeconds: 10, ...options });
  clients.push(client);
  return client;
}

function nextEvent<T>(client: KvClient, name: 'switch' | 'mismatch', timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} event within ${timeoutMs} ms`)), timeoutMs);
    client.once(name, (event: unknown) => {
      clearTimeout(timer);
      resolve(event as T);
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('createKvClient', () => {
  it('keeps an application loop working across cutover and rollback; each write lands in the owner of its time; watch and shadow reads follow', async () => {
    const m = migration('client-loop');
    // Configuration both stores hold in step (copied before the cutover): shadow reads of it must match.
    for (let i = 0; i < 10; i++) {
      await etcd.put(`${m.from}cfg/${i}`).value(`setting-${i}`);
      await consul.putKey(`${m.to}cfg/${i}`, Buffer.from(`setting-${i}`));
    }
    const client = await open(m, { shadowReads: { recheckDelayMs: 100, writeWindowMs: 1_000 } });
    expect(client.owner()).toBe('etcd');
    const switches: (SwitchEvent & { seen: number })[] = [];
    client.on('switch', (event) => switches.push({ ...event, seen: Date.now() }));

    const watch = client.watch(`${m.from}log/`);
    await watch.ready;
    const events: KvWatchEvent[] = [];
    const collecting = (async () => {
      for await (const event of watch) events.push(event);
    })();

    interface Write { n: number; start: number; end: number }
    const writes: Write[] = [];
    const failures: string[] = [];
    let stop = false;
    const loop = (async () => {
      for (let n = 0; !stop; n++) {
        try {
          const key = `${m.from}log/${String(n).padStart(6, '0')}`;
          const switchesBefore = switches.length;
          const start = Date.now();
          await client.put(key, `value-${n}`);
          const end = Date.now();
          writes.push({ n, start, end });
          const read = await client.getString(key);
          // Read-your-write holds on one owner; across a switch the other store has not got the key (no mirror here).
          if (switches.length === switchesBefore && read !== `value-${n}`) failures.push(`read of ${key} gave ${read === undefined ? 'nothing' : 'another value'}`);
          const setting = await client.getString(`${m.from}cfg/${n % 10}`);
          if (setting !== `setting-${n % 10}`) failures.push(`cfg/${n % 10} read wrong`);
        } catch (err) {
          failures.push(String(err));
        }
      }
    })();

    const eras: { owner: 'etcd' | 'consul'; docWritten: number; switched: number }[] = [{ owner: 'etcd', docWritten: 0, switched: 0 }];
    async function flip(owner: 'etcd' | 'consul', phase: string) {
      const docWritten = Date.now();
      const seen = nextEvent<SwitchEvent>(client, 'switch', 2_000);
      await m.writePhase(owner, phase);
      const event = await seen;
      expect(event).toMatchObject({ rule: 'app', to: owner, phase });
      eras.push({ owner, docWritten, switched: switches.at(-1)!.seen });
    }

    await sleep(1_200);
    await flip('consul', 'cutover');
    expect(client.owner()).toBe('consul');
    await sleep(1_500);
    await flip('etcd', 'rolledback');
    expect(client.owner()).toBe('etcd');
    await sleep(1_200);
    stop = true;
    await loop;

    expect(failures).toEqual([]);
    // The switch was quick: well under two seconds after the document changed.
    for (const era of eras.slice(1)) expect(era.switched - era.docWritten).toBeLessThan(2_000);

    // Where every write landed: exactly one store, and the owner of its era when it did not overlap a switch.
    const inEtcd = new Set((await etcd.getAll().prefix(`${m.from}log/`).keys()).map((k) => k.slice(`${m.from}log/`.length)));
    const inConsul = new Set((await consul.listKeys(`${m.to}log/`)).map((k) => k.slice(`${m.to}log/`.length)));
    const perEra = eras.map(() => 0);
    for (const write of writes) {
      const name = String(write.n).padStart(6, '0');
      expect(Number(inEtcd.has(name)) + Number(inConsul.has(name)), `write ${name} lands in exactly one store`).toBe(1);
      const era = eras.findIndex((e, i) => write.start > e.switched && (i + 1 === eras.length || write.end <= eras[i + 1]!.docWritten));
      if (era < 0) continue;
      perEra[era]!++;
      expect(eras[era]!.owner === 'etcd' ? inEtcd.has(name) : inConsul.has(name), `write ${name} lands in ${eras[era]!.owner}`).toBe(true);
    }
    for (const count of perEra) expect(count).toBeGreaterThan(10);

    // The watch kept delivering across both switches, from the owner of the time.
    const deadline = Date.now() + 5_000;
    while (events.filter((e) => e.type === 'put').length < writes.length && Date.now() < deadline) await sleep(50);
    await watch.close();
    await collecting;
    const puts = new Map(events.flatMap((e) => (e.type === 'put' ? [[e.key.toString().slice(`${m.from}log/`.length), e] as const] : [])));
    for (const write of writes) {
      const name = String(write.n).padStart(6, '0');
      const event = puts.get(name);
      expect(event, `watch event for write ${name}`).toBeDefined();
      expect(event!.type === 'put' && event!.value.toString()).toBe(`value-${write.n}`);
      expect(event!.store).toBe(inEtcd.has(name) ? 'etcd' : 'consul');
    }
    expect(events.filter((e) => e.type === 'switch').map((e) => e.type === 'switch' && `${e.from}>${e.to}`)).toEqual(['etcd>consul', 'consul>etcd']);

    await client.shadowSettled();
    const stats = client.stats();
    expect(stats.operations.failed).toBe(0);
    expect(stats.shadow.mismatches).toBe(0);
    expect(stats.switches).toBe(2);
    expect(stats.byStore.etcd).toBeGreaterThan(0);
    expect(stats.byStore.consul).toBeGreaterThan(0);
    expect(stats.rules.app).toMatchObject({ owner: 'etcd', phase: 'rolledback', following: 'ok', error: undefined });
    expect(stats.shadow.matched).toBeGreaterThan(20);
    // The loop's own fresh keys exist in one store only: tolerated as this client's writes in flight.
    expect(stats.shadow.skipped['recent-write']).toBeGreaterThan(0);

    // The mirror catches up (here: the test copies each store's keys to the other); once this
    // client's write window has passed, every key read through it compares equal in both stores.
    for (const name of inEtcd) {
      if (!inConsul.has(name)) await consul.putKey(`${m.to}log/${name}`, (await etcd.get(`${m.from}log/${name}`).buffer())!);
    }
    for (const name of inConsul) {
      if (!inEtcd.has(name)) await etcd.put(`${m.from}log/${name}`).value((await consul.readKey(`${m.to}log/${name}`))!.value);
    }
    await sleep(1_100);
    const before = client.stats().shadow;
    for (const write of writes) expect(await client.getString(`${m.from}log/${String(write.n).padStart(6, '0')}`)).toBe(`value-${write.n}`);
    await client.shadowSettled();
    const after = client.stats().shadow;
    expect(after.compared - before.compared).toBe(writes.length);
    expect(after.matched - before.matched).toBe(writes.length);
    expect(after.mismatches).toBe(0);
  }, 30_000);

  it('counts a shadow difference that persists, not one that settles, and never reports values', async () => {
    const m = migration('client-shadow');
    const client = await open(m, { shadowReads: { recheckDelayMs: 600, writeWindowMs: 1_000 } });
    const mismatches: MismatchEvent[] = [];
    client.on('mismatch', (e) => mismatches.push(e));

    await etcd.put(`${m.from}differs`).value('secret-etcd');
    await consul.putKey(`${m.to}differs`, Buffer.from('secret-consul'));
    await etcd.put(`${m.from}only-etcd`).value('secret-only');
    await etcd.put(`${m.from}lagging`).value('secret-new');
    await consul.putKey(`${m.to}lagging`, Buffer.from('secret-old'));

    expect((await client.get(`${m.from}differs`))?.toString()).toBe('secret-etcd');
    await client.get(`${m.from}only-etcd`);
    await client.get(`${m.from}lagging`);
    // The dual-run catches up after the first comparison, within the re-check delay.
    await sleep(150);
    await consul.putKey(`${m.to}lagging`, Buffer.from('secret-new'));
    await client.shadowSettled();

    const { shadow } = client.stats();
    expect(shadow).toMatchObject({ mismatches: 2, settled: 1, matched: 0, compared: 3 });
    expect(shadow.mismatchedKeys.sort()).toEqual([`${m.from}differs`, `${m.from}only-etcd`]);
    expect(mismatches.map((e) => e.verdict).sort()).toEqual(['missing-in-consul', 'value-differs']);
    expect(JSON.stringify([mismatches, client.stats()])).not.toMatch(/secret-/);

    // Finalized: etcd is no longer mirrored, so its stale copy is not compared (it was a false mismatch).
    const switched = nextEvent<SwitchEvent>(client, 'switch', 2_000);
    await m.writePhase('consul', 'finalized');
    await switched;
    await client.get(`${m.from}differs`);
    await client.shadowSettled();
    expect(client.stats().shadow).toMatchObject({ compared: 3, mismatches: 2 });
  });

  it('watches puts and deletes in etcd terms from either owner, and deletes in the owner only', async () => {
    const m = migration('client-watch');
    const client = await open(m, { watchDrainMs: 100 });
    const watch = client.watch(`${m.from}w/`);
    await watch.ready;
    const events: KvWatchEvent[] = [];
    const collecting = (async () => {
      for await (const event of watch) events.push(event);
    })();
    await client.put(`${m.from}w/a`, 'one');
    await client.delete(`${m.from}w/a`);
    const switched = nextEvent<SwitchEvent>(client, 'switch', 2_000);
    await m.writePhase('consul', 'cutover');
    await switched;
    await client.put(`${m.from}w/b`, Buffer.from([0, 255]));
    // Past the drain of the old owner's watch (writes that were in flight when it switched).
    await sleep(300);
    await etcd.put(`${m.from}w/b`).value('stays');
    await client.delete(`${m.from}w/b`);
    const deadline = Date.now() + 3_000;
    while (events.length < 5 && Date.now() < deadline) await sleep(20);
    await watch.close();
    await collecting;
    const seen = events.map((e) => (e.type === 'switch' ? `switch ${e.to}` : `${e.type} ${e.key.toString().slice(m.from.length)} ${e.store}${e.type === 'put' ? ` ${e.value.toString('hex')}` : ''}`));
    // In order per store; the new owner's events after the marker (the old stream may still be delivering
    // around it). The direct etcd write after the cutover is not the owner's: the watch on Consul does not show it.
    expect(seen.filter((e) => e.includes(' etcd'))).toEqual(['put w/a etcd 6f6e65', 'delete w/a etcd']);
    expect(seen.filter((e) => !e.includes(' etcd'))).toEqual(['switch consul', 'put w/b consul 00ff', 'delete w/b consul']);
    expect(await consul.readKey(`${m.to}w/b`)).toBeUndefined();
    expect(await etcd.get(`${m.from}w/b`).string()).toBe('stays');
  });

  it('fails closed on a newer or invalid phase document at run time, and recovers when it is fixed', async () => {
    const m = migration('client-badphase');
    const client = await open(m);
    await client.put(`${m.from}k`, 'one');
    const problem = new Promise<Error>((resolve) => client.once('problem', (e) => resolve(e.error)));
    await m.writePhase('consul', 'cutover', { schemaVersion: 2 });
    expect(await problem).toMatchObject({ code: 'client_phase_newer' });
    await expect(client.put(`${m.from}k`, 'two')).rejects.toMatchObject({ code: 'client_phase_newer', exitCode: 2 });
    expect(client.stats().rules.app!.error?.code).toBe('client_phase_newer');

    const switched = nextEvent<SwitchEvent>(client, 'switch', 2_000);
    await m.writePhase('consul', 'cutover');
    await switched;
    await client.put(`${m.from}k`, 'three');
    expect((await consul.readKey(`${m.to}k`))?.value.toString()).toBe('three');
    expect((await etcd.get(`${m.from}k`).string())).toBe('one');
  });

  it('a phase document deleted while Consul owns the rule leaves the client with Consul, said once as a problem (it went back to etcd); written back, it goes on', async () => {
    const m = migration('client-gone');
    const client = await open(m);
    const switched = nextEvent<SwitchEvent>(client, 'switch', 5_000);
    await m.writePhase('consul', 'cutover');
    await switched;
    const problems: ClientErrorEvent[] = [];
    client.on('problem', (e) => problems.push(e));
    await consul.deleteKey(m.phaseKey);
    await eventually('said', async () => problems.length > 0);
    expect(problems[0]).toMatchObject({ source: 'phase', error: { code: 'client_phase_missing' } });
    expect(client.owner()).toBe('consul');
    await client.put(`${m.from}k`, 'still consul');
    expect((await consul.readKey(`${m.to}k`))?.value.toString()).toBe('still consul');
    expect(await etcd.get(`${m.from}k`).string()).toBeNull();
    // Written back (as the dual-run does): no switch, no second problem.
    await m.writePhase('consul', 'cutover');
    await sleep(500);
    expect(client.owner()).toBe('consul');
    expect(problems).toHaveLength(1);
    // A rule etcd owns: a document deleted (a refused cutover deletes the one its pause created) leaves etcd the owner.
    const back = nextEvent<SwitchEvent>(client, 'switch', 5_000);
    await m.writePhase('etcd', 'rolledback');
    await back;
    await consul.deleteKey(m.phaseKey);
    await sleep(500);
    expect(client.owner()).toBe('etcd');
    expect(problems).toHaveLength(1);
  });

  it('a client started while its rule\'s phase document is missing takes the owners document\'s word: Consul, said once after it returns', async () => {
    const m = migration('client-gone-start');
    const ownersKey = m.phaseKey.replace(/rules\/app$/, 'owners');
    await consul.putKey(ownersKey, Buffer.from(JSON.stringify({ schemaVersion: 1, updated: new Date().toISOString(), rules: { app: { phase: 'finalized', changes: [{ revision: 10, owner: 'consul', phase: 'finalized', at: new Date().toISOString() }] } } })));
    const client = await open(m);
    const problems: ClientErrorEvent[] = [];
    client.on('problem', (e) => problems.push(e));
    expect(client.owner()).toBe('consul');
    await eventually('said', async () => problems.length > 0);
    expect(problems).toEqual([expect.objectContaining({ rule: 'app', source: 'phase', error: expect.objectContaining({ code: 'client_phase_missing', message: expect.stringContaining('missing while the owners document says Consul owns the rule (finalized)') }) })]);
    await client.put(`${m.from}k`, 'to consul');
    expect((await consul.readKey(`${m.to}k`))?.value.toString()).toBe('to consul');
    expect(await etcd.get(`${m.from}k`).string()).toBeNull();
    await sleep(300);
    expect(problems).toHaveLength(1);
    // No owners document either (no rule has moved): etcd, nothing said.
    const fresh = migration('client-fresh');
    const plain = await open(fresh);
    const said: ClientErrorEvent[] = [];
    plain.on('problem', (e) => said.push(e));
    await sleep(300);
    expect(plain.owner()).toBe('etcd');
    expect(said).toEqual([]);
  });

  it('a token that may not read the owners document: a rule with no phase document is etcd\'s, and the client says it could not check', async () => {
    const m = migration('client-owners-acl');
    const own = await startConsul({ acl: true, version: servers().consulVersion });
    const admin = new ConsulTarget({ address: own.address, token: own.managementToken! });
    try {
      const put = async (path: string, body: unknown) => JSON.parse((await admin.http.request({ method: 'PUT', path, body: JSON.stringify(body) })).body.toString('utf8')) as { SecretID: string };
      // The policy of an earlier release: the rule's prefix and its phase document, not the owners document.
      await put('/v1/acl/policy', { Name: 'old-app', Rules: `key_prefix "${m.to}" { policy = "write" }\nkey "${m.phaseKey}" { policy = "read" }\n` });
      const token = (await put('/v1/acl/token', { Policies: [{ Name: 'old-app' }] })).SecretID;
      const client = await open(m, { env: serverEnv({ CONSUL_HTTP_ADDR: own.address, CONSUL_HTTP_TOKEN: token }) });
      const problems: ClientErrorEvent[] = [];
      client.on('problem', (e) => problems.push(e));
      await eventually('said', async () => problems.length > 0);
      expect(problems).toEqual([expect.objectContaining({ source: 'phase', error: expect.objectContaining({ code: 'client_owners_unreadable' }) })]);
      expect(client.owner()).toBe('etcd');
      await client.close();
    } finally {
      admin.close();
      await own.stop();
    }
  }, 60_000);

  it('a client started during a write pause says so after it returns, holds puts, and names the move to finish or abandon when the pause outlasts writePauseTimeoutMs', async () => {
    const m = migration('client-paused');
    await m.writePhase('consul', 'cutover', { writesPaused: { since: new Date().toISOString(), by: 'ops@host', for: 'rollback' } });
    const client = await open(m, { writePauseTimeoutMs: 500 });
    const pauses: { paused: boolean }[] = [];
    client.on('pause', (e) => pauses.push(e));
    await eventually('pause said', async () => pauses.length > 0);
    expect(pauses).toEqual([expect.objectContaining({ rule: 'app', paused: true })]);
    await expect(client.put(`${m.from}k`, 'held')).rejects.toMatchObject({
      code: 'client_writes_paused',
      message: expect.stringContaining('writes are paused while `migrate rollback` moves the rule'),
      hint: expect.stringContaining('running `migrate rollback --rule app` again finishes the move, and `migrate cutover --rule app` abandons it'),
    });
    // Abandoned (cutover again): the pause ends, said; the put goes to Consul.
    await m.writePhase('consul', 'cutover');
    await eventually('resumed', async () => pauses.length === 2);
    expect(pauses[1]).toMatchObject({ paused: false });
    await client.put(`${m.from}k`, 'after');
    expect((await consul.readKey(`${m.to}k`))?.value.toString()).toBe('after');
  });

  it('refuses bad input with clear, typed errors', async () => {
    const m = migration('client-bad');
    await expect(open(m, { rules: ['app', 'nope'] })).rejects.toMatchObject({ code: 'client_rule_unknown', message: expect.stringContaining('Unknown rule "nope"') });

    // The configuration as a path, as a loaded configuration, or from MIGRATE_CONFIG.
    const loaded = await open(m, { config: loadConfig({ configFlag: m.configFile, env: {}, cwd: '/' }) });
    expect(loaded.owner('app')).toBe('etcd');
    const fromEnv = await open(m, { config: undefined, env: serverEnv({ MIGRATE_CONFIG: m.configFile }) });
    expect(fromEnv.phases()).toEqual([{ rule: 'app', owner: 'etcd', phase: undefined, updated: undefined, modifyIndex: 0, writesPaused: false }]);
    expect(() => fromEnv.owner('other')).toThrow(/does not follow rule "other"/);

    const client = await open(m);
    await expect(client.put('/elsewhere/x', 'v')).rejects.toMatchObject({ code: 'client_key_outside_rules' });
    await expect(client.get(m.from.replace(/app\/$/, 'other/x'))).rejects.toMatchObject({ code: 'client_key_outside_rules', message: expect.stringContaining('belongs to rule "other"') });
    await client.close();
    await expect(client.get(`${m.from}x`)).rejects.toMatchObject({ code: 'client_closed' });

    await m.writePhase('consul', 'cutover', { schemaVersion: 2 });
    await expect(open(m)).rejects.toMatchObject({ code: 'client_phase_newer', message: expect.stringContaining(m.phaseKey) });
    await consul.putKey(m.phaseKey, Buffer.from('{"schemaVersion":1,"rule":"app","phase":"cutover"'));
    await expect(open(m)).rejects.toMatchObject({ code: 'client_phase_invalid' });
    await consul.putKey(m.phaseKey, Buffer.from(JSON.stringify({ schemaVersion: 1, rule: 'app', phase: 'cutover', owner: 'zookeeper', updated: '', history: [] })));
    await expect(open(m)).rejects.toMatchObject({ code: 'client_phase_invalid', message: expect.stringContaining('unknown owner') });
  });

  it('keeps the last known owner while Consul is down, and says it is retrying', async () => {
    const m = migration('client-outage');
    const own = await privateConsul();
    let stopped = false;
    try {
      const client = await open(m, { env: serverEnv({ CONSUL_HTTP_ADDR: own.address }) });
      const problem = new Promise<{ source: string; error: Error }>((resolve) => client.once('problem', resolve));
      await own.stop();
      stopped = true;
      // An agent shutting down may answer 500 for a moment before its port closes.
      expect(await problem).toMatchObject({ source: 'phase', error: { code: expect.stringMatching(/^consul_(unreachable|unavailable)$/) } });
      await client.put(`${m.from}k`, 'still-works');
      expect(await client.getString(`${m.from}k`)).toBe('still-works');
      expect(client.stats().rules.app).toMatchObject({ owner: 'etcd', following: 'retrying', error: undefined });
      await client.close();
    } finally {
      if (!stopped) await own.stop();
    }
  }, 30_000);

  it('shadow reads that fail while the other store is down are counted, and said once, not at every read', async () => {
    const m = migration('client-shadow-down');
    const own = await privateConsul();
    let stopped = false;
    try {
      const client = await open(m, { env: serverEnv({ CONSUL_HTTP_ADDR: own.address }), shadowReads: true });
      await client.put(`${m.from}k`, 'v');
      const problems: ClientErrorEvent[] = [];
      client.on('problem', (e) => problems.push(e));
      await own.stop();
      stopped = true;
      for (let i = 0; i < 5; i++) expect(await client.getString(`${m.from}k`)).toBe('v');
      await eventually('counted', async () => client.stats().shadow.errors === 5);
      expect(problems.filter((p) => p.source === 'shadow')).toHaveLength(1);
      await client.close();
    } finally {
      if (!stopped) await own.stop();
    }
  }, 30_000);

  it('follows again as soon as Consul is back, not after the blocking query\'s wait', async () => {
    const m = migration('client-back');
    const consul = await startConsulCluster({ size: 1 });
    const member = consul.members[0]!;
    try {
      const client = await open(m, { env: serverEnv({ CONSUL_HTTP_ADDR: member.address }), blockingWaitSeconds: 120 });
      await member.kill();
      await eventually('retrying', async () => client.stats().rules.app!.following === 'retrying', 20_000);
      await member.restart();
      await consul.healthy();
      const back = Date.now();
      await eventually('following again', async () => client.stats().rules.app!.following === 'ok', 20_000);
      expect(Date.now() - back).toBeLessThan(15_000);
      await client.close();
    } finally {
      await consul.stop();
    }
  }, 90_000);

  it('says which server is unreachable', async () => {
    const m = migration('client-down');
    const closed = await freePort();
    const started = Date.now();
    await expect(open(m, { env: serverEnv({ CONSUL_HTTP_ADDR: `http://127.0.0.1:${closed}` }) })).rejects.toMatchObject({ code: 'consul_unreachable', hint: expect.stringContaining('CONSUL_HTTP_ADDR') });
    await expect(open(m, { env: serverEnv({ ETCDCTL_ENDPOINTS: `http://127.0.0.1:${closed}` }), timeoutMs: 1_000 })).rejects.toMatchObject({ code: 'etcd_unreachable', hint: expect.stringContaining('ETCDCTL_ENDPOINTS') });
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 20_000);
});
