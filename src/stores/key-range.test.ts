import { describe, expect, it } from 'vitest';
import { prefixRange, readRanges, splitRanges } from './key-range.js';
import type { KeyRange, SourcePage } from './types.js';

const b = (text: string) => Buffer.from(text);
const show = (ranges: KeyRange[]) => ranges.map((r) => `${r.start.toString()}..${r.end.length === 0 ? '∞' : r.end.toString()}`);

describe('splitRanges', () => {
  const ranges: KeyRange[] = [{ start: b('a'), end: b('c') }, { start: b('e'), end: b('g') }, { start: b('x'), end: Buffer.alloc(0) }];

  it('cuts the range the key falls in, and keeps the others whole on their side', () => {
    expect(splitRanges(ranges, b('b')).map(show)).toEqual([['a..b'], ['b..c', 'e..g', 'x..∞']]);
    expect(splitRanges(ranges, b('f')).map(show)).toEqual([['a..c', 'e..f'], ['f..g', 'x..∞']]);
    expect(splitRanges(ranges, b('z')).map(show)).toEqual([['a..c', 'e..g', 'x..z'], ['z..∞']]);
  });

  it('puts a key between ranges, or at a range\'s edge, on no range', () => {
    expect(splitRanges(ranges, b('d')).map(show)).toEqual([['a..c'], ['e..g', 'x..∞']]);
    expect(splitRanges(ranges, b('e')).map(show)).toEqual([['a..c'], ['e..g', 'x..∞']]);
    expect(splitRanges(ranges, b('c')).map(show)).toEqual([['a..c'], ['e..g', 'x..∞']]);
    expect(splitRanges(ranges, b('0')).map(show)).toEqual([[], ['a..c', 'e..g', 'x..∞']]);
  });
});

describe('readRanges', () => {
  it('reads each range in turn, with the same options', async () => {
    const asked: string[] = [];
    const source = {
      async *readPages(range: KeyRange, options?: { pageKeys?: number }): AsyncIterable<SourcePage> {
        asked.push(`${show([range])[0]} ${options?.pageKeys}`);
        yield { entries: [], revision: 1 } as unknown as SourcePage;
      },
    };
    const pages = [];
    for await (const page of readRanges(source, [prefixRange('/a/'), prefixRange('/c/')], { pageKeys: 7 })) pages.push(page);
    expect(pages).toHaveLength(2);
    expect(asked).toEqual(['/a/../a0 7', '/c/../c0 7']);
  });
});
