import { describe, expect, it } from 'vitest';
import { BoundedMap, CappedList, Histogram, TopN } from './aggregate.js';

describe('Histogram', () => {
  it('counts values into inclusive upper bounds with an open last bucket', () => {
    const h = new Histogram([0, 10, 100]);
    for (const v of [0, 1, 10, 11, 100, 101, 5000]) h.add(v);
    expect(h.buckets()).toEqual([
      { le: 0, count: 1 },
      { le: 10, count: 2 },
      { le: 100, count: 2 },
      { le: null, count: 2 },
    ]);
    expect(h.total).toBe(7);
  });

  it('merges another histogram with the same bounds', () => {
    const a = new Histogram([1]);
    const b = new Histogram([1]);
    a.add(1);
    b.add(2, 3);
    a.merge(b);
    expect(a.buckets()).toEqual([{ le: 1, count: 1 }, { le: null, count: 3 }]);
  });
});

describe('TopN', () => {
  it('keeps the n highest scores and builds items only when they enter', () => {
    const top = new TopN<string>(3);
    let built = 0;
    for (const score of [5, 1, 9, 3, 7, 2, 8]) top.add(score, () => (built++, `s${score}`));
    expect(top.sorted().map((e) => e.item)).toEqual(['s9', 's8', 's7']);
    expect(built).toBeLessThan(7);
    expect(top.accepts(6)).toBe(false);
    expect(top.accepts(10)).toBe(true);
  });

  it('accepts nothing with n = 0', () => {
    const top = new TopN<number>(0);
    top.add(1, () => 1);
    expect(top.size).toBe(0);
  });
});

describe('CappedList and BoundedMap', () => {
  it('CappedList keeps the first items and counts all', () => {
    const list = new CappedList<number>(2);
    for (let i = 0; i < 5; i++) list.add(() => i);
    expect(list.items).toEqual([0, 1]);
    expect(list.total).toBe(5);
    expect(list.truncated).toBe(true);
  });

  it('BoundedMap stops creating entries when full and counts the misses', () => {
    const map = new BoundedMap<{ n: number }>(2);
    map.get('a', () => ({ n: 1 }));
    map.get('b', () => ({ n: 2 }));
    expect(map.get('c', () => ({ n: 3 }))).toBeUndefined();
    expect(map.get('a', () => ({ n: 9 }))?.n).toBe(1);
    expect(map.overflow).toBe(1);
  });
});
