import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { freePort, startEtcd, startEtcdCluster } from '../scripts/local-servers.js';
import { EtcdSource, SourceCompactedError } from '../src/stores/etcd.js';
import { prefixRange } from '../src/stores/key-range.js';
import type { SourceEntry, WatchMessage } from '../src/stores/types.js';
import { etcdSource, rawEtcd, repoRoot, servers, uniquePrefix } from './support/harness.js';

const raw = rawEtcd();
const source = etcdSource();
afterAll(() => {
  raw.close();
  source.close();
});

async function readAll(prefix: string | Buffer, options: { revision?: number; pageKeys?: number } = {}): Promise<{ entries: SourceEntry[]; revisions: Set<number>; pages: number }> {
  const entries: SourceEntry[] = [];
  const revisions = new Set<number>();
  let pages = 0;
  for await (const page of source.readPages(prefixRange(prefix), options)) {
    pages++;
    revisions.add(page.revision);
    entries.push(...page.entries);
  }
  return { entries, revisions, pages };
}

describe('etcd source (real etcd)', () => {
  it('round-trips binary keys and values exactly: all 256 byte values and an empty value', async () => {
    const prefix = Buffer.from(uniquePrefix('bin'));
    const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const written = new Map<string, Buffer>();
    for (let i = 0; i < 256; i++) {
      const key = Buffer.concat([prefix, Buffer.from([i, 0xff - i, i])]);
      const value = Buffer.concat([allBytes.subarray(i), allBytes.subarray(0, i)]);
      written.set(key.toString('hex'), value);
      await raw.put(key).value(value);
    }
    const emptyKey = Buffer.concat([prefix, Buffer.from('empty')]);
    written.set(emptyKey.toString('hex'), Buffer.alloc(0));
    await raw.put(emptyKey).value(Buffer.alloc(0));

    const { entries } = await readAll(prefix, { pageKeys: 50 });
    expect(entries).toHaveLength(257);
    for (const entry of entries) {
      expect(written.get(entry.key.toString('hex'))?.equals(entry.value), `value of ${entry.key.toString('hex')}`).toBe(true);
    }
    // Key order is byte order, as etcd stores it.
    const keys = entries.map((e) => e.key);
    expect([...keys].sort(Buffer.compare)).toEqual(keys);
    expect(entries.find((e) => e.key.equals(emptyKey))?.value.length).toBe(0);
  });

  it('pages bounded by shared prefixes return every key once and in order: numbered keys, 0xff bytes, keys that are prefixes of others', async () => {
    const prefix = Buffer.from(uniquePrefix('bounds'));
    const suffixes: Buffer[] = [];
    for (let i = 0; i < 1200; i++) suffixes.push(Buffer.from(String(i).padStart(6, '0')));
    for (const tail of [[0xff], [0xff, 0xff], [0xff, 0x00], [0x30, 0x30, 0xff], [0x30], [0x30, 0x30, 0x30, 0x31, 0x30]]) suffixes.push(Buffer.from(tail));
    const written = [...new Map(suffixes.map((s) => [s.toString('hex'), Buffer.concat([prefix, s])])).values()].sort(Buffer.compare);
    for (let i = 0; i < written.length; i += 100) {
      await raw.if(written[0]!, 'Mod', '>', -1).then(...written.slice(i, i + 100).map((k) => raw.put(k).value('v'))).commit();
    }
    for (const pageKeys of [1, 7, 100, 5000]) {
      const { entries } = await readAll(prefix, { pageKeys });
      expect(entries.map((e) => e.key.toString('hex')), `pages of ${pageKeys}`).toEqual(written.map((k) => k.toString('hex')));
    }
  });

  it('pages at one pinned revision, undisturbed by writes made during the read', async () => {
    const prefix = uniquePrefix('pin');
    for (let i = 0; i < 300; i++) await raw.put(`${prefix}${String(i).padStart(4, '0')}`).value(`v1-${i}`);
    const pages = source.readPages(prefixRange(prefix), { pageKeys: 40 });
    const seen: SourceEntry[] = [];
    let pinned = 0;
    let disturbed = false;
    for await (const page of pages) {
      pinned ||= page.revision;
      expect(page.revision).toBe(pinned);
      seen.push(...page.entries);
      if (!disturbed) {
        disturbed = true;
        // Overwrite keys not read yet, delete one, and add a new one inside the range.
        for (let i = 100; i < 200; i++) await raw.put(`${prefix}${String(i).padStart(4, '0')}`).value(`v2-${i}`);
        await raw.delete().key(`${prefix}0250`);
        await raw.put(`${prefix}0150a`).value('new');
      }
    }
    expect(seen).toHaveLength(300);
    expect(seen.every((e) => e.value.toString().startsWith('v1-'))).toBe(true);
    expect(seen.some((e) => e.key.toString() === `${prefix}0250`)).toBe(true);
    expect(seen.some((e) => e.key.toString() === `${prefix}0150a`)).toBe(false);
    const after = await readAll(prefix);
    expect(after.entries).toHaveLength(300);
    expect(after.entries.filter((e) => e.value.toString().startsWith('v2-'))).toHaveLength(100);
  });

  it('starts with a small page and doubles it up to the page size asked for, every key once and in order', async () => {
    const prefix = uniquePrefix('ramp');
    const keys = Array.from({ length: 5000 }, (_, i) => `${prefix}${String(i).padStart(5, '0')}`);
    for (let i = 0; i < keys.length; i += 500) {
      await raw.if(keys[i]!, 'Create', '==', 0).then(...keys.slice(i, i + 500).map((k) => raw.put(k).value('v'))).commit();
    }
    const sizes: number[] = [];
    const read: string[] = [];
    for await (const page of source.readPages(prefixRange(prefix), { pageKeys: 4000 })) {
      sizes.push(page.entries.length);
      read.push(...page.entries.map((e) => e.key.toString()));
    }
    // The reader of the first page has it after 500 keys, not 4,000: a copy's first txn leaves at once.
    expect(sizes).toEqual([500, 1000, 2000, 1500]);
    expect(read).toEqual(keys);
    // A page size below the first page's is taken as it is.
    const small = await readAll(prefix, { pageKeys: 300 });
    expect(small.pages).toBe(17);
  });

  it('after a page of more than 8 MiB of values, reads smaller pages: memory stays bounded by bytes, not by the page size in keys', async () => {
    const prefix = uniquePrefix('heavy');
    const keys = Array.from({ length: 1500 }, (_, i) => `${prefix}${String(i).padStart(5, '0')}`);
    const value = Buffer.alloc(20_000, 3);
    for (let i = 0; i < keys.length; i += 100) {
      await raw.if(keys[i]!, 'Create', '==', 0).then(...keys.slice(i, i + 100).map((k) => raw.put(k).value(value))).commit();
    }
    const sizes: number[] = [];
    for await (const page of source.readPages(prefixRange(prefix), { pageKeys: 10_000 })) sizes.push(page.entries.length);
    // The first page (500 keys, 10 MB) is over: the next ones hold half as many keys, 5 MB (they held 1,000, 20 MB).
    expect(sizes).toEqual([500, 250, 250, 250, 250]);
  });

  it('a page read on a closed source fails at once, not after retrying as if etcd were unreachable (a verify whose round failed stayed alive ~15 s after its result)', async () => {
    const closed = etcdSource();
    await closed.status();
    closed.close();
    const began = Date.now();
    await expect((async () => {
      for await (const page of closed.readPages(prefixRange('/anything/'))) return page;
    })()).rejects.toMatchObject({ code: 'etcd_unreachable' });
    // The retries wait 250 ms, then 0.5, 1, 2 and 4 s.
    expect(Date.now() - began).toBeLessThan(2_000);
  });

  it('reads large values with a page size that would overflow one message', async () => {
    const prefix = uniquePrefix('big');
    const value = Buffer.alloc(1_000_000, 7);
    for (let i = 0; i < 40; i++) await raw.put(`${prefix}${i}`).value(value);
    const { entries, pages } = await readAll(prefix, { pageKeys: 1000 });
    expect(entries).toHaveLength(40);
    expect(entries.every((e) => e.value.equals(value))).toBe(true);
    expect(pages).toBeGreaterThanOrEqual(1);
  });

  it('looks up a lease with its TTL and keys; -1 once it is revoked', async () => {
    const prefix = uniquePrefix('lease');
    const lease = raw.lease(30, { autoKeepAlive: false });
    const id = await lease.grant();
    await lease.put(`${prefix}a`).value('1');
    await lease.put(`${prefix}b`).value('2');
    const info = await source.readLease(id, { keys: true });
    expect(info.grantedTtl).toBe(30);
    expect(info.ttl).toBeGreaterThan(20);
    expect(info.keys!.map((k) => k.toString()).sort()).toEqual([`${prefix}a`, `${prefix}b`]);
    // Without the keys unless asked: a renewal of a lease holding thousands of keys reads none of them.
    expect(await source.readLease(id)).toEqual({ id, ttl: expect.any(Number), grantedTtl: 30 });
    expect(await source.listLeases()).toContain(id);
    const { entries } = await readAll(prefix);
    expect(entries.every((e) => e.lease === id)).toBe(true);
    await lease.revoke();
    expect((await source.readLease(id)).ttl).toBe(-1);
  });

  it('watches in revision order, grouping one etcd transaction into one revision, with progress', async () => {
    const prefix = uniquePrefix('watch');
    const start = (await source.status()).revision + 1;
    const watch = await source.watch(prefixRange(prefix), start);
    const put = await raw.put(`${prefix}a`).value('1').exec();
    const txn = await raw.if(`${prefix}a`, 'Value', '==', '1').then(raw.put(`${prefix}b`).value('2'), raw.put(`${prefix}c`).value('3'), raw.delete().key(`${prefix}a`)).commit();
    await raw.put('outside-the-range').value('x');
    const messages: WatchMessage[] = [];
    for await (const message of watch) {
      messages.push(message);
      if (messages.filter((m) => m.kind === 'revision').length === 2) {
        watch.requestProgress();
      }
      if (message.kind === 'progress') break;
    }
    await watch.close();
    const revisions = messages.filter((m): m is Extract<WatchMessage, { kind: 'revision' }> => m.kind === 'revision');
    expect(revisions).toHaveLength(2);
    expect(revisions[0]!.events.map((e) => [e.type, e.entry.key.toString()])).toEqual([['put', `${prefix}a`]]);
    // Exactly the revisions etcd gave the put and the txn (other test files write to this etcd in between).
    expect(revisions[0]!.revision).toBe(Number(put.header.revision));
    expect(revisions[1]!.revision).toBe(Number(txn.header.revision));
    expect(revisions[1]!.events.map((e) => [e.type, e.entry.key.toString()])).toEqual([
      ['put', `${prefix}b`],
      ['put', `${prefix}c`],
      ['delete', `${prefix}a`],
    ]);
    const progress = messages.at(-1)!;
    expect(progress.kind).toBe('progress');
    expect(progress.revision).toBeGreaterThanOrEqual(revisions[1]!.revision);
  });

  it('surfaces a watch from a compacted revision as a typed error carrying the compact revision', async () => {
    // Its own etcd: compacting the shared one would compact the revisions other test files are reading at.
    const own = await startEtcd();
    const ownRaw = new Etcd3({ hosts: own.endpoint });
    const ownSource = new EtcdSource({ endpoints: [own.endpoint] });
    try {
      const prefix = uniquePrefix('compact');
      const before = (await ownSource.status()).revision;
      await ownRaw.put(`${prefix}x`).value('1');
      const after = (await ownRaw.put(`${prefix}x`).value('2').exec()).header.revision;
      await ownRaw.kv.compact({ revision: after, physical: true });
      const watch = await ownSource.watch(prefixRange(prefix), before);
      const error = await (async () => {
        try {
          for await (const _ of watch) {
            /* no events expected */
          }
        } catch (err) {
          return err;
        }
        return undefined;
      })();
      expect(error).toBeInstanceOf(SourceCompactedError);
      expect((error as SourceCompactedError).compactRevision).toBe(Number(after));
      expect((error as SourceCompactedError).requestedRevision).toBe(before);
    } finally {
      ownRaw.close();
      ownSource.close();
      await own.stop();
    }
  });

  it('reads without loading etcd3 or grpc-js (node:http2 alone), and loads them for the first lease call', async () => {
    const prefix = uniquePrefix('light');
    for (let i = 0; i < 3; i++) await raw.put(`${prefix}k${i}`).value(`v${i}`);
    // A fresh process on the built code, as the CLI runs it: which CommonJS packages did each step load?
    const script = `
      import { createRequire } from 'node:module';
      import { EtcdSource } from ${JSON.stringify(join(repoRoot, 'dist', 'stores', 'etcd.js'))};
      import { prefixRange } from ${JSON.stringify(join(repoRoot, 'dist', 'stores', 'key-range.js'))};
      const cache = createRequire(import.meta.url).cache;
      const loaded = (name) => Object.keys(cache).some((path) => path.includes('/node_modules/' + name + '/'));
      const source = new EtcdSource({ endpoints: [${JSON.stringify(servers().etcdEndpoint)}] });
      const status = await source.status();
      let keys = 0;
      for await (const page of source.readPages(prefixRange(${JSON.stringify(prefix)}), { pageKeys: 2 })) keys += page.entries.length;
      const afterReads = { etcd3: loaded('etcd3'), protobufjs: loaded('protobufjs'), grpc: loaded('@grpc/grpc-js') };
      await source.listLeases();
      console.log(JSON.stringify({ keys, revision: status.revision, clusterId: status.clusterId, afterReads, afterLeases: { etcd3: loaded('etcd3'), grpc: loaded('@grpc/grpc-js') } }));
      source.close();
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: repoRoot });
    const result = JSON.parse(stdout) as { keys: number; revision: number; clusterId: string; afterReads: Record<string, boolean>; afterLeases: Record<string, boolean> };
    expect(result.keys).toBe(3);
    expect(result.clusterId).toBe((await raw.maintenance.status()).header.cluster_id);
    expect(result.revision).toBeGreaterThan(0);
    expect(result.afterReads).toEqual({ etcd3: false, protobufjs: false, grpc: false });
    expect(result.afterLeases).toEqual({ etcd3: true, grpc: true });
  });

  it('reads through the live member when another endpoint is down, whichever is named first', async () => {
    const prefix = uniquePrefix('failover');
    for (let i = 0; i < 5; i++) await raw.put(`${prefix}k${i}`).value(`v${i}`);
    const dead = `http://127.0.0.1:${await freePort()}`;
    for (const endpoints of [[dead, servers().etcdEndpoint], [servers().etcdEndpoint, dead]]) {
      const twoMembers = new EtcdSource({ endpoints, timeoutMs: 3_000 });
      try {
        // Each call may start on the dead member; it must move to the live one, every time.
        for (let i = 0; i < 6; i++) expect((await twoMembers.status()).revision).toBeGreaterThan(0);
        const keys: string[] = [];
        for await (const page of twoMembers.readPages(prefixRange(prefix), { pageKeys: 2 })) keys.push(...page.entries.map((e) => e.key.toString()));
        expect(keys).toEqual([0, 1, 2, 3, 4].map((i) => `${prefix}k${i}`));
      } finally {
        twoMembers.close();
      }
    }
  });

  it('reads again as soon as a lone endpoint is back after a crash, not when grpc-js next retries on its own', async () => {
    const etcd = await startEtcdCluster(1);
    const lone = new EtcdSource({ endpoints: etcd.endpoints, timeoutMs: 3_000 });
    try {
      expect((await lone.status()).revision).toBeGreaterThan(0);
      await etcd.members[0]!.kill();
      // Calls while it is down: grpc-js backs off further after each failed connection (1 s, then ×1.6).
      for (let i = 0; i < 4; i++) {
        await expect(lone.status()).rejects.toMatchObject({ code: 'etcd_unreachable' });
        await new Promise((resolve) => setTimeout(resolve, 1_000));
      }
      await etcd.members[0]!.restart();
      // Healthy again: the first call reaches it (a single endpoint means a single try).
      expect((await lone.status()).revision).toBeGreaterThan(0);
    } finally {
      lone.close();
      await etcd.stop();
    }
  });

  it('opens no connection once closed: calls are refused, and the process can exit', async () => {
    // A fresh process on the built code: a connection left open would keep it alive until the timeout.
    const script = `
      import { EtcdSource } from ${JSON.stringify(join(repoRoot, 'dist', 'stores', 'etcd.js'))};
      const source = new EtcdSource({ endpoints: [${JSON.stringify(servers().etcdEndpoint)}] });
      await source.status();
      // One call in flight when it closes, then calls after.
      const inFlight = source.status();
      source.close();
      const outcomes = await Promise.all([inFlight, source.status(), Promise.resolve().then(() => source.client)].map((p) => p.then(() => 'done', (err) => err.message)));
      console.log(JSON.stringify(outcomes));
    `;
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: repoRoot, timeout: 20_000 });
    const [, status, client] = JSON.parse(stdout) as string[];
    expect(status).toMatch(/closed/);
    expect(client).toMatch(/closed/);
    expect(Date.now() - started).toBeLessThan(15_000);
  });
});
