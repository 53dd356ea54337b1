import { afterAll, describe, expect, it, vi } from 'vitest';
import { ConsulSessionError, ConsulTooLargeError, TxnFailedError } from '../src/stores/consul-http.js';
import { ConsulTarget, ValueTooLargeError } from '../src/stores/consul.js';
import { compareKeys } from '../src/stores/consul-reads.js';
import { packTxnBatches, fitsInTxn } from '../src/stores/txn-batcher.js';
import type { TxnOp } from '../src/stores/types.js';
import { consulIndex, consulTarget, privateConsul, servers, uniquePrefix } from './support/harness.js';

const target = consulTarget();
afterAll(() => target.close());

describe('Consul target (real Consul)', () => {
  it('detects the op limit from the server version', async () => {
    const info = await target.info();
    expect(info.version).toBe(servers().consulVersion);
    const [major, minor] = info.version.split('.').map(Number) as [number, number];
    expect(info.txnMaxOps).toBe(major > 1 || minor >= 14 ? 128 : 64);
    expect(info.datacenter).toBe('dc1');
    expect(info.leader).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it('finds that the agent serves keys outside Consul 1.21.5\'s character set, with a read that writes nothing', async () => {
    expect((await target.info()).strictKeys).toBe(false);
    expect(await target.agentLimits()).toMatchObject({ strictKeys: false });
    expect(await target.readKey('migrate-key-rule-probe:')).toBeUndefined();
    // What the answer promises: such a key is served back.
    const key = `${uniquePrefix('charset')}hosts/10.0.0.1:8080@café`;
    expect(await target.putKey(key, Buffer.from('up'))).toBe(true);
    expect((await target.readKey(key))?.value.toString()).toBe('up');
  });

  it('splits a batch larger than the op limit into txns that are all applied', async () => {
    const prefix = uniquePrefix('split');
    const limits = await target.limits();
    const count = limits.txnMaxOps * 3 + 17;
    const ops: TxnOp[] = Array.from({ length: count }, (_, i) => ({ verb: 'set', key: `${prefix}${String(i).padStart(5, '0')}`, value: Buffer.from(`value-${i}`) }));
    const batches = packTxnBatches(ops, limits, { reservedOps: 1 });
    expect(batches.length).toBe(4);
    expect(Math.max(...batches.map((b) => b.length))).toBeLessThanOrEqual(limits.txnMaxOps - 1);
    for (const batch of batches) await target.applyTxn(batch);
    const keys = await target.listKeys(prefix);
    expect(keys).toHaveLength(count);
    const entries = await target.readEntries(keys);
    expect(entries).toHaveLength(count);
    expect(entries.every((e) => e.value.toString() === `value-${Number(e.key.slice(prefix.length))}`)).toBe(true);
  });

  it('Consul itself refuses one op over its limit, which is why the batcher exists', async () => {
    const prefix = uniquePrefix('over');
    const limits = await target.limits();
    const body = JSON.stringify(Array.from({ length: limits.txnMaxOps + 1 }, (_, i) => ({ KV: { Verb: 'set', Key: `${prefix}${i}`, Value: '' } })));
    await expect(target.http.request({ method: 'PUT', path: '/v1/txn', body })).rejects.toBeInstanceOf(ConsulTooLargeError);
    expect(await target.listKeys(prefix)).toEqual([]);
  });

  it('refuses a value over 524288 bytes before sending any request', async () => {
    const prefix = uniquePrefix('huge');
    const own = await privateConsul();
    const target = new ConsulTarget({ address: own.address });
    const before = await consulIndex(own.address);
    const value = Buffer.alloc(524289, 1);
    const single = await target.putKey(`${prefix}big`, value).catch((e: unknown) => e);
    expect(single).toBeInstanceOf(ValueTooLargeError);
    expect((single as ValueTooLargeError).message).toContain('524289 bytes, over the target\'s limit of 524288 bytes');
    expect((single as ValueTooLargeError).exitCode).toBe(2);
    const txn = await target.applyTxn([{ verb: 'set', key: `${prefix}big`, value }]).catch((e: unknown) => e);
    expect(txn).toBeInstanceOf(ValueTooLargeError);
    expect(await consulIndex(own.address)).toBe(before);
    expect(await target.listKeys(prefix)).toEqual([]);
    target.close();
    await own.stop();
  });

  it('writes a value too large for any txn with a single PUT, byte for byte', async () => {
    const prefix = uniquePrefix('put');
    const value = Buffer.from(Array.from({ length: 500_000 }, (_, i) => (i * 7) % 256));
    expect(fitsInTxn({ verb: 'set', key: `${prefix}v`, value }, await target.limits())).toBe(false);
    expect(await target.putKey(`${prefix}v`, value)).toBe(true);
    const [entry] = await target.readEntries([`${prefix}v`]);
    expect(entry?.value.equals(value)).toBe(true);
  });

  it('round-trips binary values (all 256 bytes) and empty values through txns', async () => {
    const prefix = uniquePrefix('binval');
    const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await target.applyTxn([
      { verb: 'set', key: `${prefix}all`, value: allBytes },
      { verb: 'set', key: `${prefix}empty`, value: Buffer.alloc(0) },
    ]);
    const entries = await target.readEntries([`${prefix}all`, `${prefix}empty`, `${prefix}missing`]);
    expect(entries.map((e) => e.key)).toEqual([`${prefix}all`, `${prefix}empty`]);
    expect(entries[0]!.value.equals(allBytes)).toBe(true);
    expect(entries[1]!.value.length).toBe(0);
    expect((await target.readKey(`${prefix}all`))?.value.equals(allBytes)).toBe(true);
  });

  it('reads listed keys by whole sub-prefixes: only the keys asked for, as they are now, in a few txns', async () => {
    const prefix = uniquePrefix('tree');
    const odd = ['a', 'a/1', 'a/2', 'b/x', 'é', '😀1', '😁2', '\uE000', 'sp ace'];
    const numbered = Array.from({ length: 3000 }, (_, i) => `n/${String(i).padStart(5, '0')}`);
    const ops: TxnOp[] = [...odd, ...numbered].map((k) => ({ verb: 'set', key: `${prefix}${k}`, value: Buffer.from(`v:${k}`) }));
    for (const batch of packTxnBatches(ops, await target.limits())) await target.applyTxn(batch);
    const listed = await target.listKeys(prefix);
    expect(listed).toHaveLength(ops.length);
    // After the listing: a key appears under a prefix read as a whole, a listed key goes.
    await target.applyTxn([{ verb: 'set', key: `${prefix}a/3`, value: Buffer.from('new') }, { verb: 'delete', key: `${prefix}b/x` }]);
    const wanted = listed.filter((k) => k !== `${prefix}a`);
    const request = vi.spyOn(target.http, 'request');
    try {
      const entries = await target.readEntries(wanted, undefined, { listed, valueBytes: wanted.map(() => 8) });
      const txns = request.mock.calls.filter(([r]) => r.path === '/v1/txn').length;
      expect(entries.map((e) => e.key).sort(compareKeys)).toEqual(wanted.filter((k) => k !== `${prefix}b/x`));
      expect(entries.every((e) => e.value.toString() === `v:${e.key.slice(prefix.length)}`)).toBe(true);
      // 3,007 keys: 24+ txns of gets; whole prefixes take a handful (a retry without the deleted key's get included).
      expect(txns).toBeLessThanOrEqual(6);
    } finally {
      request.mockRestore();
    }
  });

  it('reports an unknown session as such', async () => {
    const prefix = uniquePrefix('nosession');
    const bogus = '0b7e6f7e-5b55-4f0f-9d4b-4f0f2f1d0c11';
    const put = await target.putKey(`${prefix}k`, Buffer.from('v'), { acquire: bogus }).catch((e: unknown) => e);
    expect(put).toBeInstanceOf(ConsulSessionError);
    expect((put as ConsulSessionError).message).toContain('does not know the session');
    const txn = await target.applyTxn([{ verb: 'lock', key: `${prefix}k`, value: Buffer.from('v'), session: bogus }]).catch((e: unknown) => e);
    expect(txn instanceof ConsulSessionError || (txn instanceof TxnFailedError && /invalid session/.test(txn.message))).toBe(true);
    expect(await target.renewSession(bogus)).toBe(false);
    expect(await target.readSession(bogus)).toBeUndefined();
    expect(await target.listKeys(prefix)).toEqual([]);
  });

  it('creates sessions with Behavior delete, LockDelay 0 and no node checks; lock, check and destroy', async () => {
    const prefix = uniquePrefix('session');
    const id = await target.createSession({ name: 'migrate test', ttlSeconds: 30 });
    const info = await target.readSession(id);
    expect(info).toMatchObject({ id, behavior: 'delete', lockDelayNs: 0, ttlSeconds: 30 });
    const raw = JSON.parse((await target.http.request({ method: 'GET', path: `/v1/session/info/${id}` })).body.toString()) as { NodeChecks?: string[]; Checks?: string[] }[];
    expect(raw[0]!.NodeChecks ?? raw[0]!.Checks ?? []).toEqual([]);
    await target.applyTxn([{ verb: 'lock', key: `${prefix}held`, value: Buffer.from('x'), session: id }]);
    expect((await target.readKey(`${prefix}held`))?.session).toBe(id);
    await target.applyTxn([{ verb: 'check-session', key: `${prefix}held`, session: id }]);
    const failed = await target.applyTxn([{ verb: 'check-session', key: `${prefix}held`, session: 'someone-else' }]).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(TxnFailedError);
    expect((failed as TxnFailedError).errors[0]!.what).toContain('failed session check');
    expect(await target.renewSession(id)).toBe(true);
    await target.destroySession(id);
    // Behavior delete: the held key goes with the session.
    expect(await target.readKey(`${prefix}held`)).toBeUndefined();
  });

  it('a failed cas rolls the whole txn back', async () => {
    const prefix = uniquePrefix('cas');
    await target.applyTxn([{ verb: 'set', key: `${prefix}a`, value: Buffer.from('1') }]);
    const failed = await target.applyTxn([
      { verb: 'set', key: `${prefix}b`, value: Buffer.from('2') },
      { verb: 'cas', key: `${prefix}a`, value: Buffer.from('3'), index: 1 },
    ]).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(TxnFailedError);
    expect(await target.listKeys(prefix)).toEqual([`${prefix}a`]);
  });

  it('refuses to delete the empty key, which would address the whole KV store', async () => {
    await expect(target.deleteKey('')).rejects.toThrow(/whole KV store/);
  });
});
