import type { KeyRange, ReadPagesOptions, SourcePage, SourceReader } from './types.js';

/** A prefix as the half-open range etcd uses (`[prefix, prefix+1)`; the empty prefix is the whole keyspace). */
export function prefixRange(prefix: Buffer | string): KeyRange {
  const start = Buffer.isBuffer(prefix) ? prefix : Buffer.from(prefix);
  return { start: start.length === 0 ? Buffer.from([0]) : start, end: prefixEnd(start) };
}

/** The first key after every key that starts with `prefix`; empty when there is none (all 0xff). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.alloc(0);
}

/** Whether `key` lies before the end of `range` (an empty end is the end of the keyspace). */
function beforeEnd(key: Buffer, range: KeyRange): boolean {
  return range.end.length === 0 || Buffer.compare(key, range.end) < 0;
}

/** Disjoint `ranges` in key order, cut at `at`: the parts before it, and the parts from it on. */
export function splitRanges(ranges: readonly KeyRange[], at: Buffer): [KeyRange[], KeyRange[]] {
  const before: KeyRange[] = [];
  const after: KeyRange[] = [];
  for (const range of ranges) {
    if (Buffer.compare(range.start, at) >= 0) after.push(range);
    else if (!beforeEnd(at, range)) before.push(range);
    else {
      before.push({ start: range.start, end: at });
      after.push({ start: at, end: range.end });
    }
  }
  return [before, after];
}

/** The pages of disjoint `ranges`, one range after the other (key order when the ranges are in it). */
export async function* readRanges(source: Pick<SourceReader, 'readPages'>, ranges: readonly KeyRange[], options: ReadPagesOptions): AsyncGenerator<SourcePage> {
  for (const range of ranges) yield* source.readPages(range, options);
}
