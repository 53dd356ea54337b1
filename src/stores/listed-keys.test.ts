import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compareKeys } from './consul-reads.js';
import { ListedKeys } from './listed-keys.js';

const key = fc.string({ unit: fc.constantFrom('a', 'b', '/', '~', 'é', '\uE000', '\uFFFD', '😀', '𝄞', 'Z'), maxLength: 8 });

describe('compareKeys', () => {
  it('orders keys as their UTF-8 bytes, astral characters included', () => {
    fc.assert(fc.property(key, key, (a, b) => Math.sign(compareKeys(a, b)) === Buffer.compare(Buffer.from(a), Buffer.from(b))));
  });
});

describe('ListedKeys', () => {
  it('takes each listed key once, in or out of list order, and leaves the rest as leftovers', () => {
    fc.assert(
      fc.property(fc.uniqueArray(key, { maxLength: 40 }), fc.array(key, { maxLength: 60 }), (listedKeys, asked) => {
        const sorted = [...listedKeys].sort(compareKeys);
        const listed = new ListedKeys(sorted);
        const model = new Set(sorted);
        for (const k of [...asked, ...sorted.filter((_, i) => i % 3 === 0)]) expect(listed.take(k)).toBe(model.delete(k));
        expect([...listed.leftovers()]).toEqual(sorted.filter((k) => model.has(k)));
        expect(listed.remaining).toBe(model.size);
      }),
    );
  });
});
