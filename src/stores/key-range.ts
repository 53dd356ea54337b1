import type { KeyRange } from './types.js';

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
