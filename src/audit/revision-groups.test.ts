import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RevisionGroupCounter } from './revision-groups.js';

function naive(entries: [number, number][]): Map<number, { ops: number; bytes: number }> {
  const map = new Map<number, { ops: number; bytes: number }>();
  for (const [revision, bytes] of entries) {
    const g = map.get(revision) ?? { ops: 0, bytes: 0 };
    g.ops++;
    g.bytes += bytes;
    map.set(revision, g);
  }
  return map;
}

describe('revision groups', () => {
  it('counts keys per revision exactly, in revision order, across spilled runs', () => {
    const counter = new RevisionGroupCounter({ memoryEntries: 4 });
    const entries: [number, number][] = [];
    for (let i = 0; i < 200; i++) entries.push([(i * 7919) % 37, 10 + (i % 5)]);
    for (const [revision, bytes] of entries) counter.add(revision, bytes, false, Buffer.from(`key-${revision}`));
    const groups = [...counter.groups()];
    counter.close();
    expect(counter.spilledRuns).toBeGreaterThan(1);
    const expected = naive(entries);
    expect(groups.map((g) => g.revision)).toEqual([...expected.keys()].sort((a, b) => a - b));
    for (const g of groups) {
      expect(g.ops).toBe(expected.get(g.revision)!.ops);
      expect(g.bytes).toBe(expected.get(g.revision)!.bytes);
      // A key, when one was kept, is one of the group's.
      if (g.key) expect(g.key.toString()).toBe(`key-${g.revision}`);
    }
  });

  it('keeps a key for every group of two or more while nothing spills', () => {
    const counter = new RevisionGroupCounter();
    for (let i = 0; i < 100; i++) counter.add(i % 10, 1, false, Buffer.from(`k${i % 10}`));
    counter.add(99, 1, false, Buffer.from('single'));
    const groups = [...counter.groups()];
    counter.close();
    expect(groups.filter((g) => g.ops > 1).every((g) => g.key?.toString() === `k${g.revision}`)).toBe(true);
    expect(groups.find((g) => g.revision === 99)?.key).toBeUndefined();
    expect(counter.spilledRuns).toBe(0);
  });

  it('matches a plain map for any input and table size (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 1000 })), { maxLength: 300 }), fc.integer({ min: 2, max: 16 }), (entries, memoryEntries) => {
      const counter = new RevisionGroupCounter({ memoryEntries });
      for (const [revision, bytes] of entries) counter.add(revision, bytes, bytes > 900, Buffer.from('k'));
      const groups = [...counter.groups()];
      counter.close();
      const expected = naive(entries);
      expect(groups.length).toBe(expected.size);
      for (const g of groups) {
        expect(g.ops).toBe(expected.get(g.revision)!.ops);
        expect(g.singlePut).toBe(entries.some(([r, b]) => r === g.revision && b > 900));
      }
    }), { numRuns: 60 });
  });

  it('handles revisions beyond 2^31', () => {
    const counter = new RevisionGroupCounter({ memoryEntries: 8 });
    const big = 2 ** 40;
    counter.add(big, 1, false, Buffer.from('a'));
    counter.add(big, 1, false, Buffer.from('b'));
    counter.add(big + 2 ** 32, 1, false, Buffer.from('c'));
    expect([...counter.groups()].map((g) => [g.revision, g.ops])).toEqual([[big, 2], [big + 2 ** 32, 1]]);
    counter.close();
  });
});
