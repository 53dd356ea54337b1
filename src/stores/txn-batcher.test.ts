import { describe, expect, it } from 'vitest';
import { base64Length, batchCapacity, fitsInTxn, packTxnBatches, serializeTxn, splitBatch, toWireOp, TxnBatcher, txnMaxOpsForVersion, wireOpBytes, type TargetLimits } from './txn-batcher.js';
import type { TxnOp } from './types.js';

const limits = (over: Partial<TargetLimits> = {}): TargetLimits => ({ txnMaxOps: 64, txnMaxBytes: 524288, maxValueBytes: 524288, ...over });
const set = (key: string, size: number): TxnOp => ({ verb: 'set', key, value: Buffer.alloc(size, 0x61) });

describe('txn op limit by Consul version', () => {
  it.each([
    ['1.13.9', 64],
    ['1.10.11', 64],
    ['v1.13.0', 64],
    ['1.14.0', 128],
    ['1.22.2', 128],
    ['1.21.5+ent', 128],
    ['2.0.0', 128],
    ['0.9.3', 64],
    [undefined, 64],
    ['unknown', 64],
    ['', 64],
  ])('%s → %i ops', (version, ops) => {
    expect(txnMaxOpsForVersion(version)).toBe(ops);
  });
});

describe('body size math', () => {
  it('base64 inflates by 4/3, rounded up to whole quads', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 524288].map(base64Length)).toEqual([0, 4, 4, 4, 8, 8, 8, 699052]);
    for (const n of [0, 1, 2, 3, 100, 1000, 4097]) expect(base64Length(n)).toBe(Buffer.alloc(n).toString('base64').length);
  });

  it('wireOpBytes is the exact JSON length of the op plus its separator', () => {
    const ops: TxnOp[] = [
      set('a', 0),
      set('app/config/ünïcödé "quoted"\\', 1234),
      { verb: 'lock', key: 'svc/x', value: Buffer.from([0, 1, 2, 255]), session: '3f2c1b0a-0000-4000-8000-000000000001', flags: 7 },
      { verb: 'delete', key: 'gone' },
      { verb: 'cas', key: 'k', value: Buffer.from('v'), index: 123456 },
      { verb: 'check-session', key: '_migrate/x/leader', session: 'abc' },
      { verb: 'set', key: 'emoji/🚀/ctl\u0001/quote"/tab\t', value: Buffer.alloc(5), flags: 18446744073709 },
      { verb: 'delete-cas', key: 'lone\ud800surrogate', index: 0 },
    ];
    for (const op of ops) expect(wireOpBytes(op)).toBe(Buffer.byteLength(JSON.stringify(toWireOp(op))) + 1);
    const body = JSON.stringify(ops.map(toWireOp));
    expect(serializeTxn(ops)).toBe(body);
    expect(ops.reduce((sum, op) => sum + wireOpBytes(op), 2) - 1).toBe(Buffer.byteLength(body));
  });

  it('sends values base64-encoded and leaves flags 0 out, as Consul\'s own client does', () => {
    expect(toWireOp({ verb: 'set', key: 'k', value: Buffer.from('hi'), flags: 0 })).toEqual({ KV: { Verb: 'set', Key: 'k', Value: 'aGk=' } });
  });
});

describe('batching', () => {
  it('splits by op count under the version limit, minus reserved ops', () => {
    const ops = Array.from({ length: 300 }, (_, i) => set(`k${i}`, 10));
    const batches = packTxnBatches(ops, limits({ txnMaxOps: 64 }), { reservedOps: 2 });
    expect(batches.map((b) => b.length)).toEqual([62, 62, 62, 62, 52]);
    expect(batches.flat()).toEqual(ops);
    const wide = packTxnBatches(ops, limits({ txnMaxOps: 128 }));
    expect(wide.map((b) => b.length)).toEqual([128, 128, 44]);
  });

  it('splits by bytes, counting base64 inflation, so no body exceeds the limit', () => {
    const ops = Array.from({ length: 40 }, (_, i) => set(`key/${i}`, 100_000));
    const l = limits({ txnMaxOps: 128 });
    const batches = packTxnBatches(ops, l);
    // 100,000 bytes become 133,336 base64 characters: three fit in 512 KiB, four do not.
    expect(batches.map((b) => b.length)).toEqual(Array(13).fill(3).concat([1]));
    for (const batch of batches) {
      expect(Buffer.byteLength(JSON.stringify(batch.map(toWireOp)))).toBeLessThanOrEqual(l.txnMaxBytes);
    }
  });

  it('keeps room for the bytes of the caller\'s own ops', () => {
    const ops = Array.from({ length: 3 }, (_, i) => set(`k${i}`, 170_000));
    expect(packTxnBatches(ops, limits()).map((b) => b.length)).toEqual([2, 1]);
    expect(packTxnBatches(ops, limits(), { reservedBytes: 100_000 }).map((b) => b.length)).toEqual([1, 1, 1]);
  });

  it('refuses an op that fits no txn, which the caller sends by single PUT instead', () => {
    const big = set('big', 400_000); // 533,336 bytes of base64
    expect(fitsInTxn(big, limits())).toBe(false);
    expect(fitsInTxn(set('ok', 390_000), limits())).toBe(true);
    expect(() => new TxnBatcher(limits()).add(big)).toThrow(/more than a txn holds/);
  });

  it('tells whether a group of ops fits the open batch (one etcd revision, one txn)', () => {
    const batcher = new TxnBatcher(limits({ txnMaxOps: 10 }));
    for (let i = 0; i < 6; i++) batcher.add(set(`k${i}`, 1));
    expect(batcher.wouldFit([set('a', 1), set('b', 1), set('c', 1), set('d', 1)])).toBe(true);
    expect(batcher.wouldFit([set('a', 1), set('b', 1), set('c', 1), set('d', 1), set('e', 1)])).toBe(false);
    expect(batcher.pendingOps).toBe(6);
    expect(batcher.flush()).toHaveLength(6);
    expect(batcher.flush()).toBeUndefined();
  });

  it('splits a batch in two halves after a 413', () => {
    const batch = Array.from({ length: 5 }, (_, i) => set(`k${i}`, 1));
    const [a, b] = splitBatch(batch);
    expect(a.map((o) => o.key)).toEqual(['k0', 'k1', 'k2']);
    expect(b.map((o) => o.key)).toEqual(['k3', 'k4']);
  });

  it('refuses limits that leave no room for data', () => {
    expect(() => batchCapacity(limits({ txnMaxOps: 2 }), { reservedOps: 2 })).toThrow(/leave no room/);
  });
});
