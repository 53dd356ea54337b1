import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareKeys, keysOf, packReads, planReads, type ReadOp } from './consul-reads.js';

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
  it('fetches every wanted key that exists, once, whatever was written or deleted since the listing', () => {
    fc.assert(fc.property(
      fc.uniqueArray(key, { maxLength: 80 }),
      fc.array(fc.boolean(), { maxLength: 80 }),
      fc.array(key, { maxLength: 10 }),
      fc.array(fc.nat(), { maxLength: 5 }),
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 1, max: 5 }),
      (keys, wantedMask, written, deletedAt, maxKeys, maxOps) => {
        const listed = [...keys].sort(compareKeys);
        const wanted = listed.filter((_, i) => wantedMask[i] ?? true);
        const store = new Set([...listed, ...written]);
        for (const i of deletedAt) if (listed.length > 0) store.delete(listed[i % listed.length]!);
        const ops = planReads(listed, wanted, maxKeys);
        // Every wanted key is planned exactly once.
        expect(keysOf(ops).sort(compareKeys)).toEqual(wanted);
        for (const op of ops) {
          if (op.verb !== 'get-tree') continue;
          expect(/[\uD800-\uDBFF]$/.test(op.prefix), `prefix ${JSON.stringify(op.prefix)} ends inside a character`).toBe(false);
          // A tree fetches no listed key that was not asked for, and no more than maxKeys of them.
          expect(listed.filter((k) => k.startsWith(op.prefix))).toEqual(op.keys);
          expect(op.keys.length).toBeLessThanOrEqual(maxKeys);
        }
        const asked = new Set(wanted);
        const read: string[] = [];
        for (const txn of packReads(ops, maxOps, maxKeys)) {
          expect(txn.length).toBeLessThanOrEqual(maxOps);
          expect(txn.length === 1 || keysOf(txn).length <= maxKeys).toBe(true);
          // A get of a deleted key fails the txn: the reader drops it and reads the rest again.
          const result = run(txn, store) ?? run(txn.filter((op) => op.verb !== 'get' || store.has(op.key)), store)!;
          read.push(...result.filter((k) => asked.has(k)));
        }
        expect(read.sort(compareKeys)).toEqual(wanted.filter((k) => store.has(k)));
      },
    ), { numRuns: 500 });
  });

  it('reads 100,000 numbered keys in 100 txns of 1,000 (782 txns of 128 gets without the list)', () => {
    const listed = Array.from({ length: 100_000 }, (_, i) => `app/${String(i).padStart(8, '0')}`);
    const txns = packReads(planReads(listed, listed, 1024), 128, 1024);
    expect(txns).toHaveLength(100);
    expect(txns.every((t) => t.length === 1 && t[0]!.verb === 'get-tree' && t[0]!.keys.length === 1000)).toBe(true);
    expect(packReads(listed.map((k) => ({ verb: 'get', key: k })), 128, 1024)).toHaveLength(782);
  });

  it('reads a key that prefixes others, and the keys around a page, with gets when their neighbours are not wanted', () => {
    const listed = ['app/a', 'app/a/1', 'app/a/2', 'app/b', 'app/c/1', 'app/c/2'];
    expect(planReads(listed, listed, 10)).toEqual([{ verb: 'get-tree', prefix: 'app/', keys: listed }]);
    // app/a/1 and app/a/2 without app/a: the tree "app/a" would fetch app/a too; "app/a/" would not.
    expect(planReads(listed, ['app/a/1', 'app/a/2', 'app/b'], 10)).toEqual([
      { verb: 'get-tree', prefix: 'app/a/', keys: ['app/a/1', 'app/a/2'] },
      { verb: 'get', key: 'app/b' },
    ]);
    // A wanted key outside the list (written since) is read with a get.
    expect(planReads(listed, ['app/z'], 10)).toEqual([{ verb: 'get', key: 'app/z' }]);
    expect(planReads(listed, [], 10)).toEqual([]);
  });
});
