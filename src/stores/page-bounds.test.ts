import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PageBounds } from './etcd.js';
import { prefixEnd } from './key-range.js';

/**
 * A prefix read in pages the way `EtcdSource.readPages` does it, against a
 * sorted key list standing in for etcd 3.4: a limited Range returns up to
 * `limit` keys of `[key, end)` and `more`, and costs a walk over all of
 * `[key, end)`.
 */
function readAll(keys: Buffer[], start: Buffer, end: Buffer, pageKeys: number): { read: Buffer[]; walked: number; reads: number } {
  const inRange = (k: Buffer, from: Buffer, to: Buffer) => k.compare(from) >= 0 && (to.length === 0 || k.compare(to) < 0);
  const bounds = new PageBounds(end);
  const read: Buffer[] = [];
  let walked = 0;
  let reads = 0;
  let at = start;
  for (;;) {
    const bound = bounds.next(at);
    expect(bound.length === 0 || bound.compare(at) > 0, 'a bound above the start').toBe(true);
    const matching = keys.filter((k) => inRange(k, at, bound));
    walked += matching.length;
    reads++;
    const page = matching.slice(0, pageKeys);
    const more = matching.length > pageKeys;
    read.push(...page);
    if (!more || page.length === 0) {
      if (bounds.isEnd(bound)) return { read, walked, reads };
      at = bound;
      bounds.short();
      continue;
    }
    bounds.full(page[0]!, page.at(-1)!);
    at = Buffer.concat([page.at(-1)!, Buffer.from([0])]);
  }
}

const sorted = (keys: Buffer[]) => [...new Map(keys.map((k) => [k.toString('hex'), k])).values()].sort(Buffer.compare);

describe('PageBounds', () => {
  it('every key of the range comes back once and in order, whatever the keys, bytes and page size', () => {
    // Short keys over a few byte values (0x00, 0xff and neighbours) make shared prefixes and carries common.
    const byte = fc.constantFrom(0x00, 0x01, 0x2f, 0x30, 0x31, 0x39, 0x7f, 0xfe, 0xff);
    const key = fc.array(byte, { minLength: 1, maxLength: 6 }).map((b) => Buffer.from(b));
    fc.assert(fc.property(fc.array(key, { maxLength: 200 }), fc.array(byte, { maxLength: 2 }), fc.integer({ min: 1, max: 17 }), (raw, prefixBytes, pageKeys) => {
      const keys = sorted(raw);
      const start = Buffer.from(prefixBytes);
      const end = prefixBytes.length === 0 ? Buffer.alloc(0) : prefixEnd(start);
      const expected = keys.filter((k) => k.compare(start) >= 0 && (end.length === 0 || k.compare(end) < 0));
      const { read } = readAll(keys, start, end, pageKeys);
      expect(read.map((k) => k.toString('hex'))).toEqual(expected.map((k) => k.toString('hex')));
    }), { numRuns: 500 });
  });

  it('numbered keys: etcd walks a few times the page, not the rest of the range, for each page', () => {
    const prefix = '/app/';
    const keys = Array.from({ length: 20_000 }, (_, i) => Buffer.from(`${prefix}${String(i).padStart(8, '0')}`));
    const start = Buffer.from(prefix);
    const bounded = readAll(keys, start, prefixEnd(start), 100);
    expect(bounded.read).toHaveLength(20_000);
    // Unbounded, page i walks the 20,000 − 100·i keys left: 2,010,000 in all. Bounded, 210,000.
    const unbounded = Array.from({ length: 200 }, (_, i) => 20_000 - 100 * i).reduce((a, b) => a + b, 0);
    expect(bounded.walked).toBeLessThan(unbounded / 9);
    // One read per page, plus one that comes back short each time the pages cross a thousand.
    expect(bounded.reads).toBeLessThan(200 + 20 + 5);
  });

  it('random keys with no shared prefix beyond the range: every read goes to the range end, as before', () => {
    const keys = sorted(Array.from({ length: 500 }, (_, i) => Buffer.from(`/r/${((i * 7919) % 500).toString(36)}${'x'.repeat(i % 3)}`)));
    const start = Buffer.from('/r/');
    const { read } = readAll(keys, start, prefixEnd(start), 50);
    expect(read.map(String)).toEqual(keys.map(String));
  });
});
