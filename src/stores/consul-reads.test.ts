import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareKeys, inKeyOrder, keysOf, packReads, planReads, readLimits, readTxnBody, sortKeys, type ReadLimits, type ReadOp } from './consul-reads.js';

/** A read-only txn against a simulated Consul holding `store`; null when a `get` misses (Consul fails the whole txn). */
function run(txn: readonly ReadOp[], store: ReadonlySet<string>): string[] | null {
  const out: string[] = [];
  for (const op of txn) {
    if (op.verb === 'get') {
      if (!store.has(op.key)) return null;
      out.push(op.key);
    } else {
      out.push(...[...store].filter((k) => k.startsWith(op.prefix)).sort(compareKeys));
    }
  }
  return out;
}

// Characters of one and two UTF-16 units, around the orders that differ (U+E000+ against surrogates).
const char = fc.constantFrom('a', 'b', '/', '0', '9', 'é', '\uE000', '\uFFFD', '😀', '😁', '𝄞');
const key = fc.array(char, { minLength: 1, maxLength: 6 }).map((cs) => `app/${cs.join('')}`);

describe('planReads', () => {
  it('fetches every wanted key that exists, once, whatever was written or deleted since the listing, in txns within the limits', () => {
    fc.assert(fc.property(
      fc.uniqueArray(key, { maxLength: 80 }),
      fc.array(fc.boolean(), { maxLength: 80 }),
      fc.array(key, { maxLength: 10 }),
      fc.array(fc.nat(), { maxLength: 5 }),
      fc.record({ opKeys: fc.integer({ min: 1, max: 4 }), maxKeys: fc.integer({ min: 1, max: 12 }), maxBytes: fc.integer({ min: 0, max: 60 }) }),
      fc.option(fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 80, maxLength: 80 })),
      fc.boolean(),
      fc.integer({ min: 1, max: 5 }),
      (keys, wantedMask, written, deletedAt, limitsIn, sizes, shuffle, maxOps) => {
        const limits: ReadLimits = { ...limitsIn, maxKeys: Math.max(limitsIn.opKeys, limitsIn.maxKeys), requestBytes: 512 * 1024 };
        const listed = [...keys].sort(compareKeys);
        const wanted = listed.filter((_, i) => wantedMask[i] ?? true);
        const size = new Map(wanted.map((k, i) => [k, sizes?.[i] ?? Infinity]));
        // Callers may pass the keys in another order (escaped targets): sizes travel with their keys.
        const asked = shuffle ? [...wanted].reverse() : wanted;
        const store = new Set([...listed, ...written]);
        for (const i of deletedAt) if (listed.length > 0) store.delete(listed[i % listed.length]!);
        const ops = planReads(asked, { listed, ...(sizes ? { valueBytes: asked.map((k) => size.get(k)!) } : {}) }, limits);
        // Every wanted key is planned exactly once, in key order.
        expect(keysOf(ops)).toEqual(wanted);
        for (const op of ops) {
          if (op.verb !== 'get-tree') continue;
          expect(/[\uD800-\uDBFF]$/.test(op.prefix), `prefix ${JSON.stringify(op.prefix)} ends inside a character`).toBe(false);
          // A tree fetches no listed key that was not asked for.
          expect(listed.filter((k) => k.startsWith(op.prefix))).toEqual(op.keys);
          expect(op.bytes).toBe(op.keys.reduce((a, k) => a + size.get(k)!, 0));
        }
        const read: string[] = [];
        for (const txn of packReads(ops, maxOps, limits)) {
          expect(txn.length).toBeLessThanOrEqual(maxOps);
          // Up to opKeys keys whatever their size; more only within maxKeys and maxBytes (a lone get always goes).
          const n = keysOf(txn).length;
          const bytes = txn.reduce((a, op) => a + op.bytes, 0);
          expect(n <= limits.opKeys || (n <= limits.maxKeys && bytes <= limits.maxBytes), `${n} keys, ${bytes} bytes`).toBe(true);
          // A get of a deleted key fails the txn: the reader drops it and reads the rest again.
          const result = run(txn, store) ?? run(txn.filter((op) => op.verb !== 'get' || store.has(op.key)), store)!;
          read.push(...result.filter((k) => size.has(k)));
        }
        expect(read).toEqual(wanted.filter((k) => store.has(k)));
      },
    ), { numRuns: 500 });
  });

  it('reads 100,000 numbered keys of 256 bytes in 100 txns of 1,000 (782 txns of 128 gets without the list)', () => {
    const listed = Array.from({ length: 100_000 }, (_, i) => `app/${String(i).padStart(8, '0')}`);
    const limits = readLimits(128);
    const txns = packReads(planReads(listed, { listed, valueBytes: listed.map(() => 256) }, limits), 128, limits);
    expect(txns).toHaveLength(100);
    expect(txns.every((t) => t.length === 1 && t[0]!.verb === 'get-tree' && t[0]!.keys.length === 1000)).toBe(true);
    expect(packReads(planReads(listed, {}, limits), 128, limits)).toHaveLength(782);
  });

  it('keeps a txn of large values to the op limit, and of unknown sizes too', () => {
    const listed = Array.from({ length: 1000 }, (_, i) => `app/${String(i).padStart(4, '0')}`);
    const limits = readLimits(128);
    for (const hints of [{ listed, valueBytes: listed.map(() => 400_000) }, { listed }]) {
      const txns = packReads(planReads(listed, hints, limits), 128, limits);
      expect(Math.max(...txns.map((t) => keysOf(t).length))).toBeLessThanOrEqual(128);
      expect(txns.some((t) => t.some((op) => op.verb === 'get-tree'))).toBe(true);
    }
    // 16 KiB values: 256 keys fill the 4 MiB of a txn.
    const mid = packReads(planReads(listed, { listed, valueBytes: listed.map(() => 16 * 1024) }, limits), 128, limits);
    expect(Math.max(...mid.map((t) => keysOf(t).length))).toBeLessThanOrEqual(256);
    expect(Math.max(...mid.map((t) => keysOf(t).length))).toBeGreaterThan(128);
  });

  it('reads a key that prefixes others, and the keys around a page, with gets when their neighbours are not wanted', () => {
    const listed = ['app/a', 'app/a/1', 'app/a/2', 'app/b', 'app/c/1', 'app/c/2'];
    const limits: ReadLimits = { opKeys: 10, maxKeys: 10, maxBytes: 0, requestBytes: 512 * 1024 };
    expect(planReads(listed, { listed }, limits)).toEqual([{ verb: 'get-tree', prefix: 'app/', keys: listed, bytes: Infinity }]);
    // app/a/1 and app/a/2 without app/a: the tree "app/a" would fetch app/a too; "app/a/" would not.
    expect(planReads(['app/a/1', 'app/a/2', 'app/b'], { listed }, limits)).toEqual([
      { verb: 'get-tree', prefix: 'app/a/', keys: ['app/a/1', 'app/a/2'], bytes: Infinity },
      { verb: 'get', key: 'app/b', bytes: Infinity },
    ]);
    // A wanted key outside the list (written since) is read with a get.
    expect(planReads(['app/z'], { listed }, limits)).toEqual([{ verb: 'get', key: 'app/z', bytes: Infinity }]);
    expect(planReads([], { listed }, limits)).toEqual([]);
  });
});

describe('inKeyOrder and sortKeys', () => {
  const text = fc.array(char, { maxLength: 6 }).map((cs) => cs.join(''));
  const byBytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));

  it('say a list is in order exactly when its UTF-8 bytes strictly increase, sorted or shuffled, with characters past U+D800 or without', () => {
    fc.assert(
      fc.property(fc.array(text, { maxLength: 30 }), fc.boolean(), (keys, sort) => {
        const list = sort ? [...new Set(keys)].sort(byBytes) : keys;
        const expected = list.every((k, i) => i === 0 || byBytes(list[i - 1]!, k) < 0);
        expect(inKeyOrder(list)).toBe(expected);
        expect(sortKeys([...list])).toEqual([...list].sort(byBytes));
      }),
      { numRuns: 1000 },
    );
  });

  it('catches the pairs where UTF-16 order is not byte order, and repeats', () => {
    // U+E000 sorts before U+1F600 in UTF-8 but after its surrogates in UTF-16.
    expect(inKeyOrder(['a\uE000', 'a😀'])).toBe(true);
    expect(inKeyOrder(['a😀', 'a\uE000'])).toBe(false);
    expect(sortKeys(['a😀', 'a\uE000'])).toEqual(['a\uE000', 'a😀']);
    expect(inKeyOrder(['a', 'a'])).toBe(false);
    expect(inKeyOrder([])).toBe(true);
  });

  it('packs the gets of long keys into txns whose request bodies stay within the txn limit', () => {
    const long = (c: string) => `app/${c.repeat(200_000)}`;
    const ops = [long('a'), long('b'), long('c'), 'app/d'].map((key) => ({ verb: 'get' as const, key, bytes: 1 }));
    const txns = packReads(ops, 64, readLimits(64, 512 * 1024));
    // 200,004 characters count as up to 600,012 bytes: a txn for each long key (the short one too comes after a full one).
    expect(txns.map((t) => t.length)).toEqual([1, 1, 1, 1]);
    expect(packReads([ops[3]!, { ...ops[3]!, key: 'app/e' }], 64, readLimits(64, 512 * 1024)).map((t) => t.length)).toEqual([2]);
    for (const txn of txns) expect(Buffer.byteLength(readTxnBody(txn))).toBeLessThan(512 * 1024);
  });
});
